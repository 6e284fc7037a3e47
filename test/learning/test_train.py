"""`internvla train` on a tiny dataset with the shrunk reference model: loss, checkpoint round trip, resume."""

from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import save_file

from internvla_ros.cli import train as train_cli
from internvla_ros.learning.eval import model_identity
from internvla_ros.learning.training import Trainer, TrainingOptions, frame_latents, losses, steps_before
from internvla_ros.learning.training_checkpoint import STATE_FILE
from internvla_ros.model.checkpoint import WEIGHTS_FILE, load_checkpoint, read_header, read_tensors
from internvla_ros.model.normalization import NormalizationStats
from test.learning.conftest import TINY_MODEL

OPTIONS = TrainingOptions(steps=3, batch_size=2, lr=2e-3, seed=7, save_every=100, device="cpu")
EVAL_INDICES = [3, 17]


def fixed_loss(trainer: Trainer) -> float:
    """The loss on fixed samples, noise and flow times (so two models are compared on the same draw)."""
    generator = torch.Generator().manual_seed(0)
    batch = trainer.samples.batch(EVAL_INDICES)
    cfg = trainer.config
    noise = torch.randn(len(EVAL_INDICES), cfg.chunk_size, cfg.max_action_dim, generator=generator)
    time = torch.rand(len(EVAL_INDICES), generator=generator) * 0.9 + 0.05
    with torch.no_grad():
        return losses(trainer.model, batch, noise, time, OPTIONS.lambda_gen)[0].item()


def train(dataset: Path, out: Path, resume: bool = False, stop_at: int | None = None) -> int:
    return train_cli.command(dataset, TINY_MODEL, out, OPTIONS, resume=resume, progress=False, stop_at=stop_at)


def test_training_lowers_the_loss_and_resumes_identically(dataset: Path, tmp_path: Path,
                                                          capsys: pytest.CaptureFixture) -> None:
    straight, split = tmp_path / "straight", tmp_path / "split"
    trainer = Trainer(dataset, TINY_MODEL, straight, OPTIONS)
    before = fixed_loss(trainer)
    reports = trainer.run()
    assert fixed_loss(trainer) < before
    assert [r.step for r in reports] == [1, 2, 3]
    losses_run = json.loads((straight / "losses.json").read_text())

    # the checkpoint loads with the project's loader; stats.json gained the dataset's robot type
    checkpoint = load_checkpoint(straight)
    stats = NormalizationStats.load(checkpoint.stats_path, "test_arm6")
    assert stats.state_dim == 6 and "aloha" in json.loads(checkpoint.stats_path.read_text())
    assert json.loads((straight / "train_config.json").read_text())["step"] == 3
    loaded = checkpoint.model.state_dict()
    assert all(torch.equal(loaded[name], t.detach()) for name, t in trainer.model.state_dict().items())

    # stopped after 2 steps, then --resume: the same losses and weights as 3 steps at once
    capsys.readouterr()
    assert train(dataset, split, stop_at=2) == 0
    assert (split / "loss_curve.png").stat().st_size > 0
    assert train(dataset, split, resume=True) == 0
    lines = [line for line in capsys.readouterr().out.splitlines() if line.startswith("step ")]
    # without the bar, a line per step (1 % of 3 steps rounds up to 1), with the losses of that step
    assert [line.split(":")[0] for line in lines] == ["step 1/3", "step 2/3", "step 3/3"]
    assert f"loss {losses_run[2]['loss']:.4f}" in lines[2]
    assert json.loads((split / "losses.json").read_text()) == losses_run
    a, b = read_tensors(straight / WEIGHTS_FILE), read_tensors(split / WEIGHTS_FILE)
    assert a.keys() == b.keys()
    assert all(torch.equal(a[name], b[name]) for name in a)
    assert not all(torch.equal(a[name], t) for name, t in read_tensors(TINY_MODEL / WEIGHTS_FILE).items())


def test_resume_without_a_saved_run_is_refused(dataset: Path, tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    assert train(dataset, tmp_path / "none", resume=True) == 2
    assert "run without --resume first" in capsys.readouterr().err
    assert not (tmp_path / "none" / STATE_FILE).exists()


def test_schedule_warms_up_then_decays_to_the_floor() -> None:
    factor = TrainingOptions(steps=60000).schedule()
    values = np.asarray([factor(step) for step in (0, 1000, 2000, 31000, 60000, 70000)])
    assert values[0] == pytest.approx(1 / 2001) and values[1] == pytest.approx(0.5 + 0.5 / 2001, rel=1e-3)
    assert values[2] == pytest.approx(1.0, abs=1e-2) and values[3] < values[2]
    assert values[4] == pytest.approx(0.1) == values[5]


def test_cached_latents_equal_the_encoded_ones_and_are_encoded_once(dataset: Path, tmp_path: Path) -> None:
    trainer = Trainer(dataset, TINY_MODEL, tmp_path / "run", OPTIONS)
    assert trainer.latents is not None and trainer.latents.encoded() == 0
    batch = trainer.samples.batch(EVAL_INDICES)
    history, future = frame_latents(trainer.model, batch)
    calls: list[int] = []

    def encode(frames: torch.Tensor) -> torch.Tensor:
        calls.append(len(frames))
        return trainer.model.encode_frames(frames)

    cached = trainer.latents.lookup(batch.frame_indices, batch.inputs.view_mask, encode)
    torch.testing.assert_close(cached[:, :, :2], history, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(cached[:, :, 2], future, rtol=1e-5, atol=1e-5)
    unique = len(np.unique(batch.frame_indices))
    assert sum(calls) == unique * len(trainer.dataset.schema.cameras) == trainer.latents.encoded()
    assert torch.equal(trainer.latents.lookup(batch.frame_indices, batch.inputs.view_mask, encode), cached)
    assert sum(calls) == trainer.latents.encoded()  # nothing encoded twice

    # a new run in the same directory reuses the cache; other Cosmos weights invalidate it
    assert Trainer(dataset, TINY_MODEL, tmp_path / "run", OPTIONS).latents.encoded() == trainer.latents.encoded()
    altered = tmp_path / "altered"
    altered.mkdir()
    for item in TINY_MODEL.iterdir():
        if item.is_file():
            (altered / item.name).write_bytes(item.read_bytes())
    tensors = read_tensors(TINY_MODEL / WEIGHTS_FILE)
    name = next(n for n in tensors if n.startswith("model.cosmos._enc"))
    tensors[name] = tensors[name] + 0.5
    save_file({k: v.contiguous() for k, v in tensors.items()}, str(altered / WEIGHTS_FILE))
    assert Trainer(dataset, altered, tmp_path / "run", OPTIONS).latents.encoded() == 0


def test_token_embedding_is_frozen_unless_asked(dataset: Path, tmp_path: Path) -> None:
    key = "model.qwen3_vl_with_expert.und_expert.lm_head.weight"
    frozen = Trainer(dataset, TINY_MODEL, tmp_path / "frozen", replace(OPTIONS, steps=1))
    frozen.run()
    trained = Trainer(dataset, TINY_MODEL, tmp_path / "trained", replace(OPTIONS, steps=1, train_embeddings=True))
    trained.run()
    initial = read_tensors(TINY_MODEL / WEIGHTS_FILE)[key]
    assert torch.equal(frozen.model.state_dict()[key], initial)
    assert not torch.equal(trained.model.state_dict()[key], initial)


def test_bf16_embedding_checkpoint_is_smaller_and_loads_as_trained(dataset: Path, tmp_path: Path) -> None:
    key = "model.qwen3_vl_with_expert.und_expert.lm_head.weight"
    full, half = tmp_path / "full", tmp_path / "half"
    assert train_cli.command(dataset, TINY_MODEL, full, replace(OPTIONS, steps=1), progress=False) == 0
    trainer = Trainer(dataset, TINY_MODEL, half, replace(OPTIONS, steps=1, embedding_bf16=True))
    trainer.run()
    assert read_header(half / WEIGHTS_FILE)[key][1] == "BF16" and read_header(full / WEIGHTS_FILE)[key][1] == "F32"
    embedding = read_tensors(TINY_MODEL / WEIGHTS_FILE)[key]
    saved = (full / WEIGHTS_FILE).stat().st_size - (half / WEIGHTS_FILE).stat().st_size
    assert saved == embedding.numel() * 2
    loaded = load_checkpoint(half).model.state_dict()
    assert all(torch.equal(loaded[name], t) for name, t in trainer.model.state_dict().items())
    assert torch.equal(loaded[key], embedding.to(torch.bfloat16).float())
    assert train_cli.command(dataset, TINY_MODEL, tmp_path / "bad",
                             replace(OPTIONS, embedding_bf16=True, train_embeddings=True), progress=False) == 2
    # a continuation of a bf16-embedding checkpoint keeps it bf16 unless it trains the embedding
    assert train_cli.command(dataset, half, tmp_path / "kept", replace(OPTIONS, steps=1), progress=False) == 0
    assert read_header(tmp_path / "kept" / WEIGHTS_FILE)[key][1] == "BF16"
    assert json.loads((tmp_path / "kept" / "train_config.json").read_text())["embedding_bf16"] is True
    assert train_cli.command(dataset, half, tmp_path / "trained", replace(OPTIONS, steps=1, train_embeddings=True),
                             progress=False) == 0
    assert read_header(tmp_path / "trained" / WEIGHTS_FILE)[key][1] == "F32"


def test_sample_stride_trains_on_every_nth_frame_and_encodes_only_theirs(dataset: Path, tmp_path: Path,
                                                                          capsys: pytest.CaptureFixture) -> None:
    trainer = Trainer(dataset, TINY_MODEL, tmp_path / "stride", replace(OPTIONS, steps=2, sample_stride=5))
    trainer.run()
    starts = {e.start: e for e in trainer.dataset.episodes}
    ends = {e.stop - 1 for e in trainer.dataset.episodes}
    episode_start = np.asarray([trainer.dataset.episodes[int(i)].start for i in trainer.dataset.episode_of])
    assert len(trainer.samples) == sum(len(range(e.start, e.stop, 5)) for e in starts.values()) < len(trainer.dataset)
    assert trainer.latents is not None and trainer.latents.encoded() > 0
    for done in trainer.latents.done.values():
        encoded = np.flatnonzero(done)
        assert all((i - episode_start[i]) % 5 == 0 or i in ends for i in encoded)
    # The frame cache holds only the frames samples read (their own, t - h, t + h, an episode's last), each
    # exactly as a cache of every frame does; the rest stay black.
    whole = Trainer(dataset, TINY_MODEL, tmp_path / "whole", replace(OPTIONS, steps=1)).samples.frames
    last_samples = [max(range(e.start, e.stop, 5)) for e in trainer.dataset.episodes]
    read = np.unique(trainer.samples.batch([*trainer.samples.frame_index[:8], *last_samples]).frame_indices)
    assert set(read) & ends  # an episode's last frame, read by a sample whose t + h lies beyond its end
    for camera, frames in trainer.samples.frames.items():
        np.testing.assert_array_equal(frames[read], whole[camera][read])
        assert frames[read].any(axis=(1, 2, 3)).all()
        unread = [i for i in range(len(frames)) if (i - episode_start[i]) % 5 and i not in ends]
        assert unread and not frames[unread].any() and whole[camera][unread].any()
    assert train_cli.command(dataset, TINY_MODEL, tmp_path / "bad", replace(OPTIONS, sample_stride=4),
                             progress=False) == 2
    assert "must divide the frame history interval" in capsys.readouterr().err


def test_training_time_rtc_scores_only_the_steps_after_the_clean_prefix(dataset: Path, tmp_path: Path,
                                                                        capsys: pytest.CaptureFixture) -> None:
    trainer = Trainer(dataset, TINY_MODEL, tmp_path / "unused", OPTIONS)
    batch = trainer.samples.batch(EVAL_INDICES)
    cfg = trainer.config
    generator = torch.Generator().manual_seed(1)
    noise = torch.randn(2, cfg.chunk_size, cfg.max_action_dim, generator=generator)
    time = torch.tensor([0.6, 0.3])
    delays = torch.tensor([0, 7])
    latents = frame_latents(trainer.model, batch)
    with torch.no_grad():
        _, action, _ = losses(trainer.model, batch, noise, time, OPTIONS.lambda_gen, latents, delays)
        # by hand: the per-step times (0 on the prefix), the model's elementwise error, then the prefix left out
        times = torch.stack([torch.full((cfg.chunk_size,), 0.6), torch.full((cfg.chunk_size,), 0.3)])
        times[1, :7] = 0.0
        inputs = replace(batch.inputs, frames=None, cosmos_latents=latents[0])
        error = trainer.model(inputs, batch.actions, latents[1], noise, times).action[:, :, : batch.action_dim]
        expected = torch.cat([error[0].mean(dim=1), error[1, 7:].mean(dim=1)]).mean()
        plain = losses(trainer.model, batch, noise, time, OPTIONS.lambda_gen, latents)[1]
    assert action.item() == pytest.approx(expected.item(), rel=1e-6)
    assert action.item() != pytest.approx(plain.item(), rel=1e-3)  # the prefix's steps change the loss

    # a run with --rtc-max-delay says so in its checkpoint; one out of range is refused before anything runs
    out = tmp_path / "rtc"
    options = replace(OPTIONS, steps=1, rtc_max_delay=8)
    assert train_cli.command(dataset, TINY_MODEL, out, options, progress=False) == 0
    assert json.loads((out / "config.json").read_text())["rtc_training_max_delay"] == 8
    assert load_checkpoint(out).config.rtc_training_max_delay == 8
    capsys.readouterr()
    too_long = replace(OPTIONS, rtc_max_delay=cfg.chunk_size)
    assert train_cli.command(dataset, TINY_MODEL, tmp_path / "refused", too_long, progress=False) == 2
    assert f"--rtc-max-delay {cfg.chunk_size} must lie in [0, {cfg.chunk_size - 1}]" in capsys.readouterr().err


def test_a_continuation_counts_its_steps_from_the_random_weights(dataset: Path, tmp_path: Path) -> None:
    first, second = tmp_path / "first", tmp_path / "second"
    assert train_cli.command(dataset, TINY_MODEL, first, replace(OPTIONS, steps=2), progress=False) == 0
    assert train_cli.command(dataset, first, second, replace(OPTIONS, steps=1), progress=False) == 0
    config = json.loads((second / "train_config.json").read_text())
    assert (config["step"], config["init_steps"], config["total_steps"]) == (1, 2, 3)
    assert json.loads((first / "train_config.json").read_text())["init_steps"] == 0  # the fixture was not trained here
    assert model_identity(second)["train_step"] == 3
    (second / "train_config.json").write_text(json.dumps({"step": 7}))  # written before total_steps existed
    assert model_identity(second)["train_step"] == 7 and steps_before(second) == 7


def test_prompt_rows_get_the_gradient_the_whole_table_would(dataset: Path, tmp_path: Path) -> None:
    trainer = Trainer(dataset, TINY_MODEL, tmp_path / "run", replace(OPTIONS, train_embeddings=True))
    rows = trainer.prompt_rows
    assert rows is not None
    table = trainer.model.experts.language_model.embed_tokens.weight
    batch = trainer.samples.batch(EVAL_INDICES)
    generator = torch.Generator().manual_seed(0)
    cfg = trainer.config
    noise = torch.randn(len(EVAL_INDICES), cfg.chunk_size, cfg.max_action_dim, generator=generator)
    time = torch.full((len(EVAL_INDICES),), 0.5)
    with torch.no_grad():
        rows.rows.add_(0.01 * torch.randn(rows.rows.shape, generator=generator))  # trained rows differ from the table
    hooked = losses(trainer.model, batch, noise, time, OPTIONS.lambda_gen)[0]
    hooked.backward()
    assert rows.rows.grad is not None and rows.rows.grad.abs().sum() > 0
    rows.detach()  # the table now holds the trained rows, and trains whole
    table.requires_grad_(True)
    whole = losses(trainer.model, batch, noise, time, OPTIONS.lambda_gen)[0]
    whole.backward()
    assert whole.item() == pytest.approx(hooked.item(), abs=1e-6)
    assert table.grad is not None
    torch.testing.assert_close(table.grad[rows.ids], rows.rows.grad, atol=1e-7, rtol=1e-5)
    unused = torch.ones(len(table), dtype=torch.bool)
    unused[rows.ids] = False
    assert not table.grad[unused].any()


def test_training_prompt_rows_leaves_every_other_row_as_loaded(dataset: Path, tmp_path: Path) -> None:
    key = "model.qwen3_vl_with_expert.und_expert.lm_head.weight"
    trainer = Trainer(dataset, TINY_MODEL, tmp_path / "run", replace(OPTIONS, steps=2, train_embeddings=True))
    trainer.run()
    assert trainer.prompt_rows is not None
    ids = trainer.prompt_rows.ids
    assert set(ids.tolist()) == trainer.samples.prompt_token_ids()
    initial, saved = read_tensors(TINY_MODEL / WEIGHTS_FILE)[key], read_tensors(tmp_path / "run" / WEIGHTS_FILE)[key]
    changed = (saved != initial).any(dim=1)
    assert changed[ids].all()
    changed[ids] = False
    assert not changed.any()
    # a training state whose optimizer holds another shape for the rows (the whole table) is refused by name
    state = torch.load(tmp_path / "run" / STATE_FILE, weights_only=True)
    for moments in state["optimizer"]["state"].values():
        if moments["exp_avg"].shape == trainer.prompt_rows.rows.shape:
            moments["exp_avg"] = torch.zeros(len(initial), initial.shape[1])
    torch.save(state, tmp_path / "run" / STATE_FILE)
    with pytest.raises(ValueError, match="trained the whole token embedding"):
        Trainer(dataset, TINY_MODEL, tmp_path / "run", replace(OPTIONS, steps=4, train_embeddings=True), resume=True)
