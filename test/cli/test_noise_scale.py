"""``--noise-scale`` means one thing on every verb that loads the InternVLA policy: the node's
``noise_scale``, refused outside 0-1 before anything starts, and passed on to the policy it loads."""

from __future__ import annotations

from pathlib import Path

import pytest

from internvla_ros.cli.main import build_parser
from internvla_ros.paths import default_model_dir
from internvla_ros.runtime.policy_registry import load_policy_factory
from internvla_ros.serve.server import ServerSettings, policy_kwargs

VERBS = {  # each verb's required arguments
    "eval": ["eval"],
    "replay": ["replay", "some.bag", "--config", "conveyor_sorting.yaml", "--model", "m"],
    "serve": ["serve"],
    "regress": ["regress", "bags", "--config", "conveyor_sorting.yaml", "--model", "m"],
    "check-chunks": ["model", "check-chunks", "m", "--dataset", "d"],
}


@pytest.mark.parametrize("verb", VERBS)
@pytest.mark.parametrize("value", ["1.5", "-0.1", "nan"])
def test_a_noise_scale_outside_0_to_1_is_refused_by_every_verb(verb: str, value: str,
                                                                capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as stopped:
        build_parser().parse_args([*VERBS[verb], "--noise-scale", value])
    assert stopped.value.code == 2
    assert f"--noise-scale: {value}: use 0 (every chunk from the noise's mean) to 1" in capsys.readouterr().err


@pytest.mark.parametrize("verb", VERBS)
def test_every_verb_reads_the_noise_scale(verb: str) -> None:
    assert build_parser().parse_args([*VERBS[verb], "--noise-scale", "0.25"]).noise_scale == 0.25


def test_the_server_loads_its_policy_with_the_noise_scale_it_was_given(tmp_path: Path) -> None:
    """The server builds each replica's policy from policy_kwargs, as the node's worker builds its own."""
    args = build_parser().parse_args(["serve", "--noise-scale", "0"])
    settings = ServerSettings(model=default_model_dir(), noise_scale=args.noise_scale)
    policy = load_policy_factory("internvla")(**policy_kwargs(settings))
    assert policy.noise_scale == 0.0
