"""Real-time chunking: the soft mask, the guidance weight, and guided sampling (toy field and the model)."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import Tensor

from internvla_ros.model.checkpoint import load_checkpoint
from internvla_ros.model.pipeline import euler
from internvla_ros.model.rtc import (
    RtcError,
    RtcGuidance,
    RtcPrefix,
    autograd_guidance,
    delay_steps,
    guidance_weight,
    guided_velocity,
    prefix_times,
    prefix_weights,
    sample_delays,
    shift_chunk,
)
from internvla_ros.model.torch_stages import torch_pipeline

torch.set_num_threads(1)
CASE_A = Path(__file__).resolve().parents[1] / "fixtures" / "internvla_a1_reference" / "case_a"


def test_exp_mask_values_for_given_d_and_s() -> None:
    weights = prefix_weights(delay=3, horizon=4, chunk=12, schedule="exp")  # H - s = 8
    assert weights[:3].tolist() == [1.0, 1.0, 1.0]
    for i in range(3, 8):
        c = (8 - i) / (8 - 3 + 1)
        assert weights[i] == pytest.approx(c * math.expm1(c) / (math.e - 1), rel=1e-6)
    assert weights[8:].tolist() == [0.0] * 4
    assert np.all(np.diff(weights) <= 0) and np.all(np.diff(weights[2:9]) < 0)  # strictly decaying in the window


def test_linear_and_hard_masks() -> None:
    linear = prefix_weights(2, 3, 10, "linear")  # end 7: c_i = (7 - i) / 6
    np.testing.assert_allclose(linear, [1, 1, 5 / 6, 4 / 6, 3 / 6, 2 / 6, 1 / 6, 0, 0, 0], rtol=1e-6)
    assert prefix_weights(2, 3, 10, "hard").tolist() == [1, 1, 0, 0, 0, 0, 0, 0, 0, 0]


def test_mask_edge_cases() -> None:
    no_delay = prefix_weights(0, 5, 50, "exp")
    assert 0 < no_delay[0] < 1 and no_delay[45:].sum() == 0 and np.all(np.diff(no_delay) <= 0)
    # s = H - d: the soft window is empty, the mask is hard
    assert prefix_weights(6, 44, 50, "exp").tolist() == [1.0] * 6 + [0.0] * 44
    assert prefix_weights(9, 44, 50, "linear").tolist() == [1.0] * 6 + [0.0] * 44  # d clipped to H - s
    with pytest.raises(RtcError, match="schedule"):
        prefix_weights(1, 1, 10, "cosine")
    with pytest.raises(RtcError, match="horizon"):
        prefix_weights(1, 10, 10)
    with pytest.raises(RtcError, match="negative"):
        prefix_weights(-1, 1, 10)


def test_guidance_weight_is_clipped_and_symmetric() -> None:
    assert guidance_weight(1.0, 5.0) == 5.0 and guidance_weight(0.0, 5.0) == 5.0
    assert guidance_weight(0.5, 5.0) == pytest.approx(2.0)  # (0.25 + 0.25) / 0.25
    assert guidance_weight(0.3, 100.0) == pytest.approx(guidance_weight(0.7, 100.0))
    assert guidance_weight(0.9, 5.0) == 5.0


def test_target_shift_and_delay_estimate() -> None:
    previous = np.arange(10, dtype=np.float32).reshape(5, 2)
    np.testing.assert_array_equal(shift_chunk(previous, 2), [[4, 5], [6, 7], [8, 9], [0, 0], [0, 0]])
    assert delay_steps([], 0.02) == 0
    assert delay_steps([0.05] * 9 + [1.0], 0.02, quantile=0.8) == 3  # one outlier ignored
    assert delay_steps([0.04, 0.041], 0.02) == 3


def gaussian_velocity(x_t: torch.Tensor, time: torch.Tensor) -> torch.Tensor:
    """The exact flow velocity of data N(0, I): x_t = t n + (1 - t) a, v = E[n - a | x_t], linear in x_t."""
    t = time.reshape(-1, 1, 1)
    return (2 * t - 1) / (t * t + (1 - t) ** 2) * x_t


def test_beta_zero_equals_plain_sampling_exactly() -> None:
    noise = torch.randn(1, 8, 3, generator=torch.Generator().manual_seed(1))
    target = np.ones((8, 3), np.float32)
    plain = euler(noise, 10, gaussian_velocity)
    off = euler(noise, 10, guided_velocity(gaussian_velocity, autograd_guidance(gaussian_velocity),
                                           RtcGuidance.build(target, 3, 2, beta=0.0)))
    on = euler(noise, 10, guided_velocity(gaussian_velocity, autograd_guidance(gaussian_velocity),
                                          RtcGuidance.build(target, 3, 2, beta=5.0)))
    assert torch.equal(plain, off)
    assert not torch.allclose(plain, on, atol=1e-2)


def test_linear_field_guided_sample_reproduces_the_target_prefix() -> None:
    horizon, chunk, delay = 4, 16, 5
    target = np.random.default_rng(0).normal(size=(chunk, 2)).astype(np.float32)
    target[chunk - horizon:] = 0
    guidance = RtcGuidance.build(target, delay, horizon, beta=10.0)
    step = autograd_guidance(gaussian_velocity)
    errors, plain_errors = [], []
    for seed in range(5):
        noise = torch.randn(1, chunk, 2, generator=torch.Generator().manual_seed(seed))
        guided = euler(noise, 10, guided_velocity(gaussian_velocity, step, guidance))[0].numpy()
        plain = euler(noise, 10, gaussian_velocity)[0].numpy()
        errors.append(np.abs(guided[:delay] - target[:delay]).max())
        plain_errors.append(np.abs(plain[:delay] - target[:delay]).max())
    assert max(errors) < 0.1, errors
    assert min(plain_errors) > 0.5, plain_errors  # without guidance the prefix is wherever the noise led


@pytest.fixture(scope="module")
def case_a():
    from safetensors.torch import load_file

    from test.model.test_modeling import make_inputs  # the reference fixture's inputs as ModelInputs

    batch = load_file(CASE_A / "inputs.safetensors")
    return load_checkpoint(CASE_A).model, make_inputs(batch), batch["noise"]


def test_model_guided_chunk_follows_the_previous_chunk(case_a) -> None:
    model, inputs, noise = case_a
    pipeline = torch_pipeline(model)
    dim = noise.shape[2]
    with torch.inference_mode():  # as the policy runs it: the guidance leaves inference mode itself
        plain = pipeline.run(inputs, noise).actions
        other = torch.randn(noise.shape, generator=torch.Generator().manual_seed(7))
        previous = pipeline.run(inputs, other).actions[0].numpy()
        target = shift_chunk(previous, 2)
        off = pipeline.run(inputs, noise, rtc=RtcGuidance.build(target, 4, 10, beta=0.0, dim=dim)).actions
        guided = pipeline.run(inputs, noise, rtc=RtcGuidance.build(target, 4, 10, beta=5.0, dim=dim)).actions
    assert torch.equal(off, plain)
    before = np.abs(plain[0, :4].numpy() - target[:4]).mean()
    after = np.abs(guided[0, :4].numpy() - target[:4]).mean()
    assert after < 0.5 * before, (before, after)


def policy_run(model: Path, delay: int):
    """The policy of ``model`` on its warm-up observation with fixed noise: (policy, observation, noise,
    target 0.7 everywhere, an RTC request for it with ``delay``, the plain chunk)."""
    from internvla_ros.runtime.internvla_policy import load_policy, warmup_observation
    from internvla_ros.runtime.observation import RtcRequest

    policy = load_policy(str(model))
    observation = warmup_observation(policy.config.n_views)
    chunk, dim = policy.config.chunk_size, policy.config.max_action_dim
    target = np.full((chunk, dim), 0.7, np.float32)
    noise = torch.randn(1, chunk, dim, generator=torch.Generator().manual_seed(3))
    request = RtcRequest(target=target, delay=delay, horizon=chunk // 5, beta=5.0, schedule="exp")
    return policy, observation, noise, target, request, policy.infer(observation, noise=noise).actions


def test_policy_guides_a_chunk_from_the_observation_request() -> None:
    """Through InternVLAPolicy.infer, as the local worker and the server call it (Observation.rtc)."""
    from dataclasses import replace

    policy, observation, noise, _, request, plain = policy_run(CASE_A, delay=5)
    guided = policy.infer(replace(observation, rtc=request), noise=noise).actions
    assert np.abs(guided[:5] - 0.7).mean() < 0.5 * np.abs(plain[:5] - 0.7).mean()


# ---------------------------------------------------------------- training-time RTC (prefix conditioning)


def test_prefix_times_and_sampled_delays() -> None:
    times = prefix_times(torch.tensor([0.8, 0.4, 0.1]), torch.tensor([0, 3, 6]), 6)
    assert torch.equal(times, torch.tensor([[0.8] * 6, [0.0] * 3 + [0.4] * 3, [0.0] * 6]))
    delays = sample_delays(4000, 7, torch.Generator().manual_seed(0))
    assert delays.min() == 0 and delays.max() == 7
    assert np.bincount(delays.numpy()).min() > 400  # uniform over 0..7: 500 each expected
    with pytest.raises(RtcError, match="negative"):
        sample_delays(2, -1)


def test_prefix_conditioning_feeds_the_prefix_clean_and_returns_it() -> None:
    chunk, dim, delay = 8, 2, 3
    target = np.arange(chunk * dim, dtype=np.float32).reshape(chunk, dim) / 10
    prefix = RtcPrefix.build(target, delay=5, max_delay=delay, dim=4)  # capped at what the model was trained with
    assert prefix.delay == delay and prefix.actions.shape == (1, chunk, 4)
    seen: list[tuple[Tensor, Tensor]] = []

    def velocity(x_t: Tensor, time: Tensor) -> Tensor:
        seen.append((x_t.clone(), time.clone()))
        return gaussian_velocity(x_t, time[:, -1])

    noise = torch.randn(1, chunk, 4, generator=torch.Generator().manual_seed(0))
    actions = prefix.apply(euler(noise, 10, prefix.velocity(velocity)))
    assert len(seen) == 10
    for x_t, time in seen:
        assert torch.equal(x_t[0, :delay, :dim], torch.from_numpy(target[:delay]))
        assert torch.all(time[0, :delay] == 0) and torch.all(time[0, delay:] == time[0, -1]) and time[0, -1] > 0
    assert torch.equal(actions[0, :delay, :dim], torch.from_numpy(target[:delay]))
    plain = euler(noise, 10, lambda x_t, time: gaussian_velocity(x_t, time))
    assert torch.equal(actions[:, delay:], plain[:, delay:])  # this toy field ignores the prefix
    with pytest.raises(RtcError, match="negative"):
        RtcPrefix.build(target, delay=-1, max_delay=3, dim=4)


def test_model_per_step_times_equal_one_time_per_chunk_when_uniform(case_a) -> None:
    model, inputs, noise = case_a
    state = inputs.state
    with torch.no_grad():
        one = model.embed_suffix(state, noise, torch.tensor([0.37]), torch.zeros(3, 1, 1, dtype=torch.long))
        per_step = model.embed_suffix(state, noise, torch.full((1, noise.shape[1]), 0.37),
                                      torch.zeros(3, 1, 1, dtype=torch.long))
        clean = model.embed_suffix(state, noise, prefix_times(torch.tensor([0.37]), torch.tensor([4]), noise.shape[1]),
                                   torch.zeros(3, 1, 1, dtype=torch.long))
    assert torch.equal(one.embeds, per_step.embeds)
    assert not torch.allclose(clean.embeds[:, 1:5], one.embeds[:, 1:5]) and torch.equal(clean.embeds[:, 5:],
                                                                                          one.embeds[:, 5:])


def test_a_model_trained_with_training_time_rtc_is_given_the_prefix(tmp_path: Path) -> None:
    """Through InternVLAPolicy, as the worker and the server call it: the config's rtc_training_max_delay
    selects prefix conditioning; its first d steps are the target's, the rest the model's own."""
    import json
    import shutil
    from dataclasses import replace

    model = tmp_path / "rtc_trained"
    shutil.copytree(CASE_A, model)
    config = json.loads((model / "config.json").read_text())
    (model / "config.json").write_text(json.dumps({**config, "rtc_training_max_delay": 6}))
    policy, observation, noise, target, request, plain = policy_run(model, delay=4)
    conditioned = policy.infer(replace(observation, rtc=request), noise=noise).actions
    assert np.array_equal(conditioned[:4], target[:4])
    assert not np.allclose(conditioned[4:], plain[4:], atol=1e-4)  # the rest sees the prefix through attention
    longer = policy.infer(replace(observation, rtc=replace(request, delay=20)), noise=noise).actions
    assert np.array_equal(longer[:6], target[:6]) and not np.allclose(longer[6:8], 0.7)  # capped at 6


def test_a_batch_runs_each_observation_s_own_rtc() -> None:
    """infer_batch (the server's call) honours each observation's real-time chunking, as infer does."""
    from dataclasses import replace

    from internvla_ros.runtime.internvla_policy import load_policy, warmup_observation
    from internvla_ros.runtime.observation import RtcRequest

    policy = load_policy(str(CASE_A))
    observation = replace(warmup_observation(policy.config.n_views), recompute_foresight=True)
    chunk, dim = policy.config.chunk_size, policy.config.max_action_dim
    request = RtcRequest(target=np.full((chunk, dim), 0.7, np.float32), delay=5, horizon=chunk // 5, beta=5.0,
                         schedule="exp")
    guided = replace(observation, rtc=request)
    noise = torch.randn(2, chunk, dim, generator=torch.Generator().manual_seed(4))
    batch = policy.infer_batch([observation, guided], noise=noise)
    alone = [policy.infer(obs, noise=noise[i:i + 1]).actions for i, obs in enumerate([observation, guided])]
    assert np.allclose(batch[0].actions, alone[0], atol=1e-5) and np.allclose(batch[1].actions, alone[1], atol=1e-5)
    assert not np.allclose(batch[0].actions, batch[1].actions, atol=1e-3)
