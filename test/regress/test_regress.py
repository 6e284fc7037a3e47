"""``internvla regress`` on a real local Ray: goldens recorded, then three sim bags compared (one drifted),
a bag the replay refuses and one without a golden, each its own bag's failure with the reason."""

from __future__ import annotations

import json
import shutil
from collections.abc import Iterator
from pathlib import Path

import pytest

from internvla_ros.cli.main import main
from internvla_ros.paths import default_model_dir
from test.replay.bagfactory import BagSpec, write_sim_bag

ray = pytest.importorskip("ray", reason="ray[serve] is the `serve` extra: pip install -e .[serve]")

FIXTURES = Path(__file__).resolve().parents[1] / "fixtures" / "rosbag2"
SORT, STACK = "sort the parcels", "stack the cups"
BAG_S = 1.7  # just longer than one 50-step chunk at 30 Hz
EXIT_PASSED, EXIT_FAILED = 0, 1


@pytest.fixture(scope="module", autouse=True)
def local_ray() -> Iterator[None]:
    """One local Ray for the module (2 CPUs: two bags at a time); `regress` uses the running one."""
    ray.init(address="local", num_cpus=2, include_dashboard=False, log_to_driver=False,
             object_store_memory=128 * 1024**2)
    yield
    ray.shutdown()


@pytest.fixture(scope="module")
def model() -> Path:
    path = default_model_dir()
    if not (path / "model.safetensors").is_file():
        pytest.skip(f"no default model at {path}: run `internvla model make-default --out {path}`")
    return path


def _regress(bags: Path, model: Path, *extra: str) -> int:
    return main(["regress", str(bags), "--config", "conveyor_sorting.yaml", "--model", str(model), *extra])


def _rows(text: str) -> dict[str, list[str]]:
    lines = text.splitlines()
    start = next(i for i, line in enumerate(lines) if line.startswith("bag "))
    return {line.split()[0]: line.split() for line in lines[start + 1:] if line and " bags passed in " not in line}


def test_record_then_compare(model: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    bags, golden = tmp_path / "bags", tmp_path / "golden"
    write_sim_bag(bags / "sort_a", spec=BagSpec(duration_s=BAG_S, instructions=((0.0, SORT),)))
    write_sim_bag(bags / "sort_b", spec=BagSpec(duration_s=BAG_S, instructions=((0.0, SORT),),
                                                compressed_camera="wrist"))
    write_sim_bag(bags / "stack", spec=BagSpec(duration_s=BAG_S, instructions=((0.0, STACK),)))

    assert _regress(bags, model, "--golden-dir", str(golden), "--record-golden") == EXIT_PASSED
    rows = _rows(capsys.readouterr().out)
    assert {name: row[1:3] for name, row in rows.items()} == {
        "sort_a": ["0", "recorded"], "sort_b": ["0", "recorded"], "stack": ["0", "recorded"]}
    assert sorted(p.name for p in golden.iterdir()) == ["sort_a", "sort_b", "stack"]

    # The stack bag's golden becomes the sort bag's output: same cell, other instruction, other actions.
    shutil.rmtree(golden / "stack")
    shutil.copytree(golden / "sort_a", golden / "stack")
    shutil.copytree(FIXTURES / "talker_mcap", bags / "talker")  # a real rosbag2 without robot topics
    shutil.copytree(golden / "sort_a", golden / "talker")
    shutil.copytree(FIXTURES / "talker_sqlite3", bags / "unrecorded")  # no golden
    summary_path = tmp_path / "out" / "regress.json"

    assert _regress(bags, model, "--golden-dir", str(golden), "--json", str(summary_path)) == EXIT_FAILED
    out = capsys.readouterr().out
    rows = _rows(out)
    assert rows["sort_a"][1:3] == ["0", "pass"] and rows["sort_b"][1:3] == ["0", "pass"]
    assert rows["stack"][1:5] == ["1", "OUT", "OF", "TOLERANCE"]
    assert rows["talker"][1:3] == ["2", "UNUSABLE"]
    assert rows["unrecorded"][1:4] == ["-", "NO", "GOLDEN"]
    assert "2 of 5 bags passed in " in out and "FAILED: stack, talker, unrecorded" in out

    summary = json.loads(summary_path.read_text())
    assert (summary["ok"], summary["bags_total"], summary["bags_passed"], summary["bags_failed"]) == (False, 5, 2, 3)
    by_name = {row["name"]: row for row in summary["bags"]}
    assert [row["name"] for row in summary["bags"]] == ["sort_a", "sort_b", "stack", "talker", "unrecorded"]
    for name in ("sort_a", "sort_b"):
        assert by_name[name]["ok"] and by_name[name]["worst_error"] == 0.0 and by_name[name]["chunks"] > 0
    drifted = by_name["stack"]
    assert drifted["exit_code"] == 1 and drifted["worst_error"] > drifted["worst_allowed"]
    assert any(p.startswith(f"{drifted['worst_joint']}: max ") for p in drifted["problems"])
    assert f"{drifted['worst_error']:.6f}" in " ".join(rows["stack"])
    assert "the bag lacks /joint_states" in by_name["talker"]["reason"] and by_name["talker"]["exit_code"] == 2
    assert by_name["unrecorded"]["exit_code"] is None and "--record-golden" in by_name["unrecorded"]["reason"]
    assert all(row["time_s"] >= 0 for row in summary["bags"])


def test_a_directory_without_bags_cannot_start(model: Path, tmp_path: Path,
                                               capsys: pytest.CaptureFixture[str]) -> None:
    (tmp_path / "notes.txt").write_text("not a bag")
    assert _regress(tmp_path, model) == 2
    assert "no bags" in capsys.readouterr().err
