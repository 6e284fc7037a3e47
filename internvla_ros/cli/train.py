"""``internvla train``: fine-tune InternVLA-A1 on a LeRobot v3.0 dataset (from ``internvla dataset from-bags``).

Usage examples::

    internvla train --dataset datasets/sort --init models/default --out models/sort --steps 2000
    internvla train --dataset datasets/sort --init models/default --out models/sort --steps 4000 --resume

The checkpoint in --out is in the released format (model.safetensors, config.json, arch.json, stats.json
with the dataset's statistics under its robot type, train_config.json), so the node, `internvla replay`
and `check-parity` load it unchanged; training_state.pt (optimizer, step, random generators) lets
--resume continue exactly; losses.json and loss_curve.png show the run. Objective, optimiser and
schedule: see internvla_ros/learning/training.py. bf16 autocast on a GPU, float32 on the CPU.
Exit codes: 0 trained, 2 unusable input.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn

from internvla_ros.cli.groups import add_verb
from internvla_ros.learning.dataset_layout import DatasetError
from internvla_ros.learning.dataset_stats import StatsError
from internvla_ros.learning.training import StepReport, Trainer, TrainingOptions
from internvla_ros.learning.training_plot import plot_losses
from internvla_ros.model.errors import ModelError

CURVE_FILE = "loss_curve.png"


def command(dataset: Path, init: Path, out: Path, options: TrainingOptions, resume: bool = False,
            progress: bool = True, stop_at: int | None = None) -> int:
    """Trains; without the progress bar, prints the mean losses every 1 % of the steps; returns the exit code."""
    try:
        trainer = Trainer(dataset, init, out, options, resume=resume)
    except (DatasetError, StatsError, ModelError, FileNotFoundError, ValueError, json.JSONDecodeError) as err:
        print(f"ERROR: {err}", file=sys.stderr)
        return 2
    columns = (TextColumn("train"), BarColumn(), MofNCompleteColumn(), TextColumn("{task.fields[info]}"),
               TimeElapsedColumn(), TimeRemainingColumn())
    with Progress(*columns, disable=not progress, transient=False) as bar:
        task = bar.add_task("train", total=options.steps, completed=trainer.state.step, info="")

        every = max(1, options.steps // 100)  # without the bar (logs, CI): a line per 1 % of the run
        window: list[StepReport] = []

        def on_step(report: StepReport) -> None:
            bar.update(task, completed=report.step, info=f"loss {report.loss:.4f} lr {report.lr:.2e} "
                                                         f"{1 / max(report.seconds, 1e-9):.2f} steps/s")
            if progress:
                return
            window.append(report)
            if report.step % every == 0 or report.step == options.steps:
                mean = {name: sum(getattr(r, name) for r in window) / len(window)
                        for name in ("loss", "action", "foresight", "seconds")}
                print(f"step {report.step}/{options.steps}: loss {mean['loss']:.4f} (action {mean['action']:.4f}, "
                      f"foresight {mean['foresight']:.4f}) lr {report.lr:.2e} "
                      f"{1 / mean['seconds'] if mean['seconds'] else 0:.2f} steps/s", flush=True)
                window.clear()

        reports = trainer.run(on_step, stop_at=stop_at)
    plot_losses(trainer.state.losses, out / CURVE_FILE)
    seconds = sum(r.seconds for r in reports)
    parameters = sum(p.numel() for p in trainer.model.parameters() if p.requires_grad)
    print(f"trained {len(reports)} steps to step {trainer.state.step} on {trainer.device} "
          f"({parameters / 1e6:.1f} M trainable parameters, batch {options.batch_size}): "
          f"{len(reports) / seconds if seconds else 0:.3f} steps/s")
    if trainer.state.losses:
        last = trainer.state.losses[-1]
        print(f"final loss {last['loss']:.4f} (action {last['action']:.4f}, foresight {last['foresight']:.4f})")
    print(f"checkpoint: {out} (robot type {trainer.robot_type!r}); loss curve: {out / CURVE_FILE}")
    return 0


def _run(args: argparse.Namespace) -> int:
    options = TrainingOptions(steps=args.steps, batch_size=args.batch_size, lr=args.lr, seed=args.seed,
                              save_every=args.save_every, device=args.device, robot_type=args.robot_type,
                              warmup_steps=args.warmup_steps, decay_steps=args.decay_steps, decay_lr=args.lr / 10,
                              threads=args.threads, train_embeddings=args.train_embeddings,
                              embedding_bf16=args.embedding_bf16, sample_stride=args.sample_stride,
                              rtc_max_delay=args.rtc_max_delay)
    return command(Path(args.dataset), Path(args.init), Path(args.out), options, resume=args.resume,
                   progress=not args.no_progress, stop_at=args.stop_at)


def register(subparsers: argparse._SubParsersAction) -> None:
    defaults = TrainingOptions()
    parser = add_verb(subparsers, "train", "fine-tune InternVLA-A1 on a LeRobot v3.0 dataset", __doc__)
    parser.add_argument("--dataset", required=True, help="LeRobot v3.0 dataset directory")
    parser.add_argument("--init", required=True, help="checkpoint to start from (e.g. models/default)")
    parser.add_argument("--out", required=True, help="checkpoint directory to write")
    parser.add_argument("--steps", type=int, default=defaults.steps, help="total optimiser steps")
    parser.add_argument("--batch-size", type=int, default=defaults.batch_size)
    parser.add_argument("--lr", type=float, default=defaults.lr, help="peak learning rate (decays to lr/10)")
    parser.add_argument("--warmup-steps", type=int, default=defaults.warmup_steps,
                        help="of --decay-steps; both are scaled down when --steps is shorter")
    parser.add_argument("--decay-steps", type=int, default=defaults.decay_steps)
    parser.add_argument("--seed", type=int, default=defaults.seed)
    parser.add_argument("--save-every", type=int, default=defaults.save_every, metavar="STEPS")
    parser.add_argument("--device", default=defaults.device, help="auto (cuda if present), cpu, cuda, cuda:1, ...")
    parser.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's choice)")
    parser.add_argument("--train-embeddings", action="store_true",
                        help="also train the token embedding (tied lm_head; frozen by default)")
    parser.add_argument("--embedding-bf16", action="store_true",
                        help="round the frozen token embedding to bf16 and store it so (about half the file); "
                             "implied when --init stores it in bf16 and the embedding is not trained")
    parser.add_argument("--sample-stride", type=int, default=defaults.sample_stride, metavar="N",
                        help="train on every N-th frame of each episode (N divides 15; default 1: every frame)")
    parser.add_argument("--rtc-max-delay", type=int, default=defaults.rtc_max_delay, metavar="STEPS",
                        help="training-time real-time chunking: each sample's first d ~ U{0..STEPS} actions are "
                             "given clean and left out of the loss; the checkpoint's config says so, and the node "
                             "in execution mode rtc then passes the executed prefix in (default 0: off)")
    parser.add_argument("--robot-type", default=None, help="stats.json key (default: the dataset's robot_type)")
    parser.add_argument("--stop-at", type=int, default=None, metavar="STEP",
                        help="save and stop at this step (the schedule still spans --steps); continue with --resume")
    parser.add_argument("--resume", action="store_true", help="continue the run saved in --out")
    parser.add_argument("--no-progress", action="store_true", help="no progress bar")
    parser.set_defaults(func=_run)
