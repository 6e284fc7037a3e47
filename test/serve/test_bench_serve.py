"""``internvla bench serve``'s settings, refused before any server starts. The bench against a running server
is measured in test_server.py, on that module's server (one Ray start). Without --endpoint the bench starts
two servers itself (batch 1, then K), which `internvla bench serve` measurements exercise."""

from __future__ import annotations

from pathlib import Path

import pytest

from internvla_ros.cli.main import main

pytest.importorskip("ray", reason="ray[serve] is the `serve` extra: pip install -e .[serve]")
pytestmark = [pytest.mark.slow]

CLIENTS, MAX_BATCH = 2, 2
READY_S = 600.0  # a local Ray and the replica took up to 2 min on two heavily loaded cores


def test_bad_settings_are_refused_before_any_server_starts(capsys: pytest.CaptureFixture[str],
                                                           tmp_path: Path) -> None:
    assert main(["bench", "serve", "--clients", "0"]) == 2
    assert "--clients must be >= 1" in capsys.readouterr().err
    assert main(["bench", "serve", "--model", str(tmp_path)]) == 2
    assert "no stats.json" in capsys.readouterr().err
