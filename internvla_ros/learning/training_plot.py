"""The loss curve of a fine-tuning run as a PNG (matplotlib, no display needed)."""

from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # after choosing the headless backend


def plot_losses(losses: list[dict[str, float]], path: Path) -> Path:
    """Total, action and foresight loss per step (log scale) and the learning rate."""
    steps = [row["step"] for row in losses]
    figure, (top, bottom) = plt.subplots(2, 1, figsize=(8, 6), sharex=True, height_ratios=(3, 1))
    curves = (("loss", "total"), ("action", "action (flow matching)"), ("foresight", "foresight (latent MSE)"))
    for key, label in curves:
        top.plot(steps, [row[key] for row in losses], label=label, linewidth=1)
    top.set_yscale("log")
    top.set_ylabel("loss")
    top.legend()
    top.grid(alpha=0.3)
    bottom.plot(steps, [row["lr"] for row in losses], color="black", linewidth=1)
    bottom.set_ylabel("learning rate")
    bottom.set_xlabel("step")
    bottom.grid(alpha=0.3)
    figure.tight_layout()
    figure.savefig(path, dpi=100)
    plt.close(figure)
    return path
