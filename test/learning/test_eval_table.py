"""`internvla eval-table`: eval reports side by side, with the success rate's interval and the delay plot."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from internvla_ros.cli.main import main
from internvla_ros.learning.eval_table import mode_label, table_rows, wilson_interval
from test.learning.conftest import TINY_MODEL


def report(execution: str | None, added: float, right: int, parcels: int, model: Path | None = None) -> dict:
    return {"execution": execution, "added_latency_ms": added, "model": str(model) if model else None,
            "episodes": parcels // 3, "parcels": parcels, "right": right, "success_rate": right / parcels,
            "grasps": right, "closes": right + 1, "max_acceleration_ratio": 0.7, "mean_abs_jerk": 1.5,
            "node": {"commands_clamped": 30, "inference_latency_p50_s": 0.068}}


def test_wilson_interval_matches_textbook_values_and_stays_inside_zero_one() -> None:
    low, high = wilson_interval(3, 30)  # 10 %: 3.5 % to 25.6 %
    assert (round(low, 3), round(high, 3)) == (0.035, 0.256)
    assert wilson_interval(0, 9)[0] == 0.0 and 0.29 < wilson_interval(0, 9)[1] < 0.31
    assert wilson_interval(9, 9)[1] == pytest.approx(1.0) and wilson_interval(9, 9)[0] > 0.65
    assert wilson_interval(0, 0) == (0.0, 1.0)


def test_rtc_is_labelled_as_the_model_runs_it(tmp_path: Path) -> None:
    trained, plain = tmp_path / "trained", tmp_path / "plain"
    for directory, delay in ((trained, 10), (plain, 0)):
        directory.mkdir()
        (directory / "arch.json").write_text((TINY_MODEL / "arch.json").read_text())
        source = json.loads((TINY_MODEL / "config.json").read_text())
        (directory / "config.json").write_text(json.dumps({**source, "rtc_training_max_delay": delay}))
    assert mode_label(report("rtc", 0, 1, 3, trained)) == "rtc (training-time), trained"
    assert mode_label(report("rtc", 0, 1, 3, plain)) == "rtc (guidance), plain"
    assert mode_label(report("rtc", 0, 1, 3, tmp_path / "elsewhere")) == "rtc, elsewhere"
    assert mode_label(report(None, 0, 1, 3) | {"noise_scale": 0.0}) == "config default, noise x0.0"


def test_the_report_says_which_weights_ran_even_after_the_model_directory_is_retrained(tmp_path: Path) -> None:
    from internvla_ros.learning.eval import model_identity

    model = tmp_path / "sorting"
    model.mkdir()
    for name in ("arch.json", "config.json", "model.safetensors", "stats.json"):
        (model / name).write_bytes((TINY_MODEL / name).read_bytes())
    (model / "train_config.json").write_text(json.dumps({"step": 3000}))
    identity = model_identity(model)
    evaluated = report("rtc", 0, 1, 3, model) | {"model_identity": identity}
    assert identity["train_step"] == 3000 and len(identity["hash"]) == 64
    config = json.loads((model / "config.json").read_text())  # retrained in place, now with RTC
    (model / "config.json").write_text(json.dumps({**config, "rtc_training_max_delay": 10}))
    (model / "train_config.json").write_text(json.dumps({"step": 4000}))
    assert mode_label(evaluated) == "rtc (guidance), sorting step 3000"
    assert mode_label(report("rtc", 0, 1, 3, model)) == "rtc (training-time), sorting"
    assert model_identity(model)["hash"] != identity["hash"]


def test_cli_writes_table_and_plot_sorted_by_mode_then_delay(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    paths = []
    for index, (execution, added, right) in enumerate([("delay_compensated", 200, 4), ("delay_compensated", 0, 6),
                                                        ("uncompensated", 0, 2)]):
        paths.append(tmp_path / f"r{index}.json")
        paths[-1].write_text(json.dumps(report(execution, added, right, 9)))
    rows = table_rows([json.loads(p.read_text()) for p in paths])
    assert [(row["label"], row["added_latency_ms"]) for row in rows] == [
        ("delay_compensated", 0), ("delay_compensated", 200), ("uncompensated", 0)]
    assert rows[0]["clamped_per_episode"] == 10 and rows[0]["inference_p50_ms"] == 68
    png, table = tmp_path / "plot.png", tmp_path / "table.md"
    assert main(["eval-table", *map(str, paths), "--png", str(png), "--markdown", str(table)]) == 0
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    lines = table.read_text().splitlines()
    assert len(lines) == 5 and "| delay_compensated | 0 | 6 / 9 | 0.67 (0.35-0.88) |" in lines[2]
    assert lines[2].endswith("| 6 / 7 | - / - / - | 0.70 | 1.5 | 10 | 68 |")
    capsys.readouterr()
    (tmp_path / "bad.json").write_text(json.dumps({"episodes": 1}))
    assert main(["eval-table", str(tmp_path / "bad.json")]) == 2
    assert "not an `internvla eval --json` report (no parcels, right, success_rate)" in capsys.readouterr().err


def test_reports_of_one_cell_on_other_seeds_pool_into_one_row_with_their_hand_overs() -> None:
    first = report("rtc", 200, 1, 15) | {"seed": 1000000, "mean_abs_jerk": 10.0,
                                         "node": {"commands_clamped": 100, "inference_latency_p50_s": 0.2}}
    second = report("rtc", 200, 3, 15) | {
        "seed": 1000005, "mean_abs_jerk": 20.0, "max_acceleration_ratio": 0.9,
        "node": {"commands_clamped": 300, "inference_latency_p50_s": 0.4},
        "switch_samples": {"position_gap": [0.01, 0.03, 0.02], "velocity_jump": [0.5, 2.0, 1.0]}}
    other_delay = report("rtc", 400, 0, 15)
    rows = table_rows([first, other_delay, second])
    assert [(row["added_latency_ms"], row["runs"]) for row in rows] == [(200, 2), (400, 1)]
    pooled = rows[0]
    assert (pooled["episodes"], pooled["parcels"], pooled["right"]) == (10, 30, 4)
    assert pooled["success_rate"] == round(4 / 30, 4) and pooled["ci95"] == tuple(
        round(x, 3) for x in wilson_interval(4, 30))
    assert pooled["mean_abs_jerk"] == 15.0 and pooled["max_acceleration_ratio"] == 0.9
    assert pooled["clamped_per_episode"] == 40 and pooled["inference_p50_ms"] == 300
    assert (pooled["switch_velocity_jump_p50"], pooled["switch_velocity_jump_p90"],
            pooled["switch_velocity_jump_max"]) == (1.0, 1.8, 2.0)
    assert rows[1]["switch_velocity_jump_p50"] is None


def test_the_plot_gains_a_hand_over_panel_when_reports_judged_hand_overs(tmp_path: Path) -> None:
    from internvla_ros.learning.eval_table import plot_success

    judged = report("rtc", 0, 1, 15) | {"switch_samples": {"position_gap": [0.01, 0.02], "velocity_jump": [0.1, 0.5]}}
    sizes = []
    for reports in ([report("rtc", 0, 1, 15)], [judged, report("rtc", 200, 0, 15)]):
        path = plot_success(table_rows(reports), tmp_path / f"plot{len(sizes)}.png")
        width = int.from_bytes(path.read_bytes()[16:20], "big")  # the PNG header's width
        sizes.append(width)
    assert sizes == [7 * 120, 12 * 120]
