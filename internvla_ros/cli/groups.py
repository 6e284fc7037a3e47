"""Command groups (``internvla model ...``, ``internvla bench ...``) that several modules add verbs to."""

from __future__ import annotations

import argparse

VERBS_ATTR = "internvla_verbs"  # attribute of a group's parser holding its verb table


def verb_group(subparsers: argparse._SubParsersAction, name: str, help_text: str) -> argparse._SubParsersAction:
    """The verb table of ``internvla NAME``, created on first use."""
    parser = subparsers.choices.get(name)
    if parser is None:
        parser = subparsers.add_parser(name, help=help_text)
        setattr(parser, VERBS_ATTR, parser.add_subparsers(dest=f"{name}_command", required=True, metavar="VERB"))
    return getattr(parser, VERBS_ATTR)


def add_backend(parser: argparse.ArgumentParser, whose: str = "the policy's") -> None:
    """``--backend NAME`` (the policy node's ``backend`` parameter), default torch."""
    parser.add_argument("--backend", default="torch", help=f"{whose} inference backend: torch, onnxruntime, "
                        "tensorrt, or a comma-separated preference list (default torch)")


def add_noise_scale(parser: argparse.ArgumentParser, default: float | None = 1.0) -> None:
    """``--noise-scale S`` (the node's ``noise_scale``), refused outside 0-1 by argparse (exit 2)."""
    def noise_scale(text: str) -> float:  # argparse names it in "invalid noise_scale value"
        value = float(text)
        if not 0.0 <= value <= 1.0:
            raise argparse.ArgumentTypeError(f"{text}: use 0 (every chunk from the noise's mean) to 1 (as trained)")
        return value

    shown = "the node's, 1" if default is None else f"{default:g}"
    parser.add_argument("--noise-scale", type=noise_scale, default=default, metavar="S",
                        help=f"the flow-matching sampler's starting noise x S, 0-1 (default {shown}: as trained)")


def add_verb(table: argparse._SubParsersAction, name: str, help_text: str, doc: str) -> argparse.ArgumentParser:
    """A verb's parser: ``help_text`` in the command list, the module docstring (usage examples) in --help."""
    lines = doc.strip().splitlines()
    return table.add_parser(name, help=help_text, description=lines[0], epilog="\n".join(lines[1:]),
                            formatter_class=argparse.RawDescriptionHelpFormatter)
