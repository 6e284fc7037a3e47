"""`internvla model compact`: the token embedding stored in bfloat16, everything else as it was."""

from __future__ import annotations

import argparse
from pathlib import Path

import pytest
import torch

from internvla_ros.cli import model_compact
from internvla_ros.learning.training_checkpoint import EMBEDDING_KEY
from internvla_ros.model.checkpoint import TIED_KEYS, WEIGHTS_FILE, load_checkpoint, read_header, read_tensors
from test.learning.conftest import TINY_MODEL


def run(*argv: str) -> int:
    parser = argparse.ArgumentParser()
    model_compact.register(parser.add_subparsers(required=True))
    args = parser.parse_args(["model", "compact", *argv])
    return args.func(args)


def test_the_embedding_is_rounded_to_bf16_and_nothing_else_changes(tmp_path: Path, capsys) -> None:
    out = tmp_path / "small"
    assert run(str(TINY_MODEL), "--out", str(out)) == 0
    before, after = read_header(TINY_MODEL / WEIGHTS_FILE), read_header(out / WEIGHTS_FILE)
    assert after[EMBEDDING_KEY][1] == "BF16" and before[EMBEDDING_KEY][1] == "F32"
    assert {k: v for k, v in after.items() if k != EMBEDDING_KEY} == {k: v for k, v in before.items()
                                                                         if k != EMBEDDING_KEY}
    source = read_tensors(TINY_MODEL / WEIGHTS_FILE)
    saved = (TINY_MODEL / WEIGHTS_FILE).stat().st_size - (out / WEIGHTS_FILE).stat().st_size
    assert abs(saved - source[EMBEDDING_KEY].numel() * 2) < 1024  # the data halved; headers differ a little
    loaded = load_checkpoint(out).model.state_dict()
    original = load_checkpoint(TINY_MODEL).model.state_dict()
    rounded = original[EMBEDDING_KEY].to(torch.bfloat16).float()
    assert torch.equal(loaded[EMBEDDING_KEY], rounded) and not torch.equal(rounded, original[EMBEDDING_KEY])
    assert all(torch.equal(loaded[name], t) for name, t in original.items() if name not in (EMBEDDING_KEY, *TIED_KEYS))
    assert {p.name for p in out.iterdir()} >= {"config.json", "stats.json", WEIGHTS_FILE}
    assert "token embedding in bfloat16, largest change" in capsys.readouterr().out


@pytest.mark.parametrize("case", ["occupied", "missing"])
def test_an_occupied_target_or_a_missing_model_is_refused(tmp_path: Path, capsys, case: str) -> None:
    out = tmp_path / "out"
    out.mkdir()
    (out / "keep.txt").write_text("someone's work")
    model = TINY_MODEL if case == "occupied" else tmp_path / "nothing"
    target = out if case == "occupied" else tmp_path / "new"
    assert run(str(model), "--out", str(target)) == 2
    err = capsys.readouterr().err
    assert ("exists and is not empty" in err) if case == "occupied" else ("not a directory" in err), err
    assert (out / "keep.txt").read_text() == "someone's work" and not (tmp_path / "new").exists()
