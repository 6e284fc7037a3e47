"""``internvla model make-default``: write the package's default (tiny, untrained) model.

Usage examples::

    internvla model make-default --out models/default
    internvla model make-default --out /tmp/model --seed 3
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from internvla_ros.cli.groups import add_verb
from internvla_ros.cli.model_info import model_verbs
from internvla_ros.model.default_model import DEFAULT_SEED, make_default_model
from internvla_ros.paths import default_model_dir


def command(args: argparse.Namespace) -> int:
    try:
        out = make_default_model(args.out, seed=args.seed)
    except OSError as err:
        print(f"ERROR: cannot write the default model to {args.out}: {err}", file=sys.stderr)
        return 2
    print(f"default model written to {out} (seed {args.seed}; untrained, see models/README.md)")
    return 0


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = add_verb(model_verbs(subparsers), "make-default", "write the package's default (tiny, untrained) model",
                      __doc__)
    parser.add_argument("--out", type=Path, default=default_model_dir(), help="output directory")
    parser.add_argument("--seed", type=int, default=DEFAULT_SEED, help="weight initialisation seed")
    parser.set_defaults(func=command)
