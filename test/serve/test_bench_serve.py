"""``internvla bench serve`` against one real `internvla serve` (local Ray Serve, the default model, max batch
2; one Ray start for the module): two robot processes send the default model's observations through the
policy node's client, and the JSON holds the throughput, latencies and the server's batch sizes (values
not judged: timing belongs to the benchmark, not to a test). Without --endpoint the bench starts two such
servers itself (batch 1, then K), which `internvla bench serve` measurements exercise."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import pytest

from internvla_ros.cli.main import main
from internvla_ros.paths import default_model_dir
from internvla_ros.serve.process import ServerProcess, free_port

pytest.importorskip("ray", reason="ray[serve] is the `serve` extra: pip install -e .[serve]")
pytestmark = [pytest.mark.slow]

CLIENTS, MAX_BATCH = 2, 2
READY_S = 600.0  # a local Ray and the replica took up to 2 min on two heavily loaded cores


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    model = default_model_dir()
    if not (model / "model.safetensors").is_file():
        pytest.skip(f"no default model at {model}: run `internvla model make-default --out {model}`")
    logs = tmp_path_factory.mktemp("serve")
    process = ServerProcess(["--model", str(model), "--max-batch-size", str(MAX_BATCH), "--batch-wait-ms", "20"],
                            logs / "server.log", free_port())
    try:
        process.wait_ready(READY_S)
        yield process
    finally:
        assert process.stop() == 0, process.tail()


def test_two_robots_against_a_running_server(server: ServerProcess, tmp_path: Path,
                                             capsys: pytest.CaptureFixture[str]) -> None:
    path = tmp_path / "out" / "bench.json"
    code = main(["bench", "serve", "--clients", str(CLIENTS), "--duration", "4", "--warmup", "2",
                 "--endpoint", server.url, "--json", str(path)])
    out = capsys.readouterr().out
    assert code == 0, out
    summary = json.loads(path.read_text())
    for key in ("chunks_per_s", "latency_ms_p50", "latency_ms_p99", "batch_sizes", "throughput_gain_over_batch1"):
        assert key in summary, key
    assert summary["throughput_gain_over_batch1"] is None  # no batch-1 server of its own to compare with
    (run,) = summary["runs"]
    assert run["endpoint"] == server.url and run["errors"] == 0
    assert run["chunks"] > 0 and summary["chunks_per_s"] == pytest.approx(run["chunks"] / 4, abs=1e-3)
    assert [c["client"] for c in run["per_client"]] == list(range(CLIENTS))
    assert all(c["chunks"] > 0 and c["requests"] >= c["chunks"] for c in run["per_client"]), run["per_client"]
    assert sum(c["chunks"] for c in run["per_client"]) == run["chunks"]
    assert 0 < summary["latency_ms_p50"] <= summary["latency_ms_p99"]
    sizes = {int(size): count for size, count in summary["batch_sizes"].items()}
    assert sizes and set(sizes) <= set(range(1, MAX_BATCH + 1)) and all(count > 0 for count in sizes.values())
    assert "max batch ?: " in out and out.strip().splitlines()[-1] == "throughput_gain_over_batch1=None"


def test_bad_settings_are_refused_before_any_server_starts(capsys: pytest.CaptureFixture[str],
                                                           tmp_path: Path) -> None:
    assert main(["bench", "serve", "--clients", "0"]) == 2
    assert "--clients must be >= 1" in capsys.readouterr().err
    assert main(["bench", "serve", "--model", str(tmp_path)]) == 2
    assert "no stats.json" in capsys.readouterr().err
