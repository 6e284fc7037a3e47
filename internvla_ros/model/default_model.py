"""The package's default model: the real InternVLA-A1 architecture at a tiny size, with random weights.

It exists so the node, the demo, the replay tool and the tests run end to end on any machine without
downloading the 3B checkpoint. It is UNTRAINED: its actions are meaningless but well-formed, and it
exercises exactly the code paths a released checkpoint does (same file layout, strict loading, the
real Qwen vocabulary of 151,936 ids, three experts, Cosmos encoder and decoder, flow matching).
Generation is deterministic: the same seed writes byte-identical files.

    internvla model make-default --out models/default
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import save_file

from internvla_ros.model.checkpoint import STATS_FILE, TIED_KEYS, WEIGHTS_FILE
from internvla_ros.model.config import ARCH_FILE, CONFIG_FILE, load_config
from internvla_ros.model.modeling import InternVLAModel

QWEN3_VL_VOCAB_SIZE = 151_936
DEFAULT_SEED = 0
NORM_SCALE_STD = 0.1
BIAS_STD = 0.05


def _text_expert(hidden: int, mlp: int, layers: int, vocab: int | None = None) -> dict[str, Any]:
    expert = {
        "hidden_size": hidden, "intermediate_size": mlp, "num_hidden_layers": layers, "num_attention_heads": 2,
        "num_key_value_heads": 1, "head_dim": 128, "hidden_act": "silu", "rms_norm_eps": 1e-6,
        "rope_theta": 5_000_000.0, "attention_bias": False, "max_position_embeddings": 262_144,
        "rope_scaling": {"mrope_interleaved": True, "mrope_section": [24, 20, 20], "rope_type": "default"},
    }
    if vocab is not None:
        expert.update(vocab_size=vocab, tie_word_embeddings=True)
    return expert


DEFAULT_ARCH: dict[str, Any] = {
    "about": "internvla_ros default model: InternVLA-A1 (qwena1) architecture, tiny sizes, random weights "
             "(untrained). Made by internvla_ros.model.default_model.",
    "und_expert": {
        "text_config": _text_expert(128, 256, 2, vocab=QWEN3_VL_VOCAB_SIZE),
        "vision_config": {
            "depth": 2, "hidden_size": 64, "intermediate_size": 128, "num_heads": 2,
            "hidden_act": "gelu_pytorch_tanh", "in_channels": 3, "patch_size": 16, "temporal_patch_size": 2,
            "spatial_merge_size": 2, "out_hidden_size": 128, "num_position_embeddings": 2304,
            "deepstack_visual_indexes": [0, 1],
        },
        "vision_layernorm_eps": 1e-6,
        "vision_rotary_theta": 10_000.0,
        "image_token_id": 151_655,
        "video_token_id": 151_656,
        "vision_start_token_id": 151_652,
        "vision_end_token_id": 151_653,
        "tie_word_embeddings": True,
    },
    "gen_expert": _text_expert(64, 128, 2),
    "act_expert": _text_expert(64, 128, 2),
    "cosmos_tokenizer": {
        "attn_resolutions": [32], "channels": 32, "channels_mult": [1, 1, 1], "dropout": 0.0, "in_channels": 3,
        "spatial_compression": 8, "num_res_blocks": 2, "out_channels": 3, "resolution": 1024, "patch_size": 4,
        "patch_method": "haar", "latent_channels": 16, "z_channels": 16, "z_factor": 1,
        "groupnorm_num_groups": 32, "groupnorm_eps": 1e-6,
    },
    "policy": {
        "chunk_size": 50, "n_action_steps": 50, "max_state_dim": 32, "max_action_dim": 32,
        "num_inference_steps": 10, "min_period": 0.004, "max_period": 4.0, "image_resolution": [224, 224],
        "cosmos_image_resolution": [256, 256], "n_views": 3, "frames_per_view_at_inference": 2,
        "image_history_interval": 15, "tokenizer_max_length": 48,
    },
    "processor": {
        "patch_size": 16, "temporal_patch_size": 2, "merge_size": 2, "image_mean": [0.5, 0.5, 0.5],
        "image_std": [0.5, 0.5, 0.5], "size": {"shortest_edge": 65_536, "longest_edge": 16_777_216},
        "resize_with_pad": {"height": 224, "width": 224, "pad_value": 0.0},
    },
}

DEFAULT_CONFIG: dict[str, Any] = {
    "type": "qwena1",
    "qwen3_vl_variant": "internvla_ros_default",  # sizes are stated in arch.json
    "action_expert_variant": "internvla_ros_default",
    "chunk_size": 50, "n_action_steps": 50, "max_state_dim": 32, "max_action_dim": 32, "num_inference_steps": 10,
    "tokenizer_max_length": 48, "image_resolution": [224, 224],
}


def _feature(mean: list[float], std: list[float]) -> dict[str, list[float]]:
    return {"mean": mean, "std": std, "min": [m - 3 * s for m, s in zip(mean, std, strict=True)],
            "max": [m + 3 * s for m, s in zip(mean, std, strict=True)]}


def default_stats() -> dict[str, Any]:
    """Made-up statistics for the two shipped robot configs (config/dual_arm.yaml, conveyor_sorting.yaml).

    State: zero mean, unit scale (grippers in metres). Actions: arm deltas of a few centiradians, grippers
    in the model's 0 (open) .. 1 (closed) range, the conveyor speed around 0.15 m/s.
    """
    arm_delta = ([0.0] * 7, [0.03] * 7)
    a2d_state = _feature([0.0] * 14 + [0.04, 0.04], [1.0] * 14 + [0.02, 0.02])
    a2d_action = _feature(arm_delta[0] * 2 + [0.5, 0.5], arm_delta[1] * 2 + [0.3, 0.3])
    franka_state = _feature([0.0] * 7 + [0.02, 0.15], [1.0] * 7 + [0.01, 0.05])
    franka_action = _feature(arm_delta[0] + [0.5, 0.15], arm_delta[1] + [0.3, 0.03])
    return {"a2d": {"observation.state": a2d_state, "action": a2d_action},
            "franka": {"observation.state": franka_state, "action": franka_action}}


def _initialise(model: InternVLAModel, seed: int) -> dict[str, torch.Tensor]:
    """Weights ~ N(0, 1/fan_in), norm scales ~ 1 + 0.1 N, biases ~ 0.05 N, in sorted-name order."""
    generator = torch.Generator().manual_seed(seed)
    state = {}
    for name, tensor in sorted(model.state_dict().items()):
        noise = torch.randn(tensor.shape, generator=generator, dtype=torch.float32)
        if tensor.ndim >= 2:
            value = noise / tensor[0].numel() ** 0.5
        elif "norm" in name:
            value = 1.0 + NORM_SCALE_STD * noise
        else:
            value = BIAS_STD * noise
        if ".cosmos." in name:  # the released Cosmos weights are bf16-representable
            value = value.to(torch.bfloat16).float()
        state[name] = value.contiguous()
    return state


def make_default_model(out: str | Path, seed: int = DEFAULT_SEED) -> Path:
    """Writes arch.json, config.json, stats.json and model.safetensors to ``out``; returns ``out``."""
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    (out / ARCH_FILE).write_text(json.dumps(DEFAULT_ARCH, indent=1) + "\n")
    (out / CONFIG_FILE).write_text(json.dumps(DEFAULT_CONFIG, indent=1) + "\n")
    (out / STATS_FILE).write_text(json.dumps(default_stats(), indent=1) + "\n")
    torch.manual_seed(seed)  # module constructors draw from the global generator; values are replaced below
    model = InternVLAModel(load_config(out))
    state = _initialise(model, seed)
    for tied, twin in TIED_KEYS.items():  # saved once, as the released checkpoints do
        state[twin] = state.pop(tied)
    partial = out / f"{WEIGHTS_FILE}.partial"
    # One metadata key: safetensors writes several in a random order, and the file must be reproducible.
    save_file(state, str(partial), metadata={"format": "pt"})
    partial.replace(out / WEIGHTS_FILE)  # never leave a half-written checkpoint under the real name
    return out
