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


def add_verb(table: argparse._SubParsersAction, name: str, help_text: str, doc: str) -> argparse.ArgumentParser:
    """A verb's parser: ``help_text`` in the command list, the module docstring (usage examples) in --help."""
    lines = doc.strip().splitlines()
    return table.add_parser(name, help=help_text, description=lines[0], epilog="\n".join(lines[1:]),
                            formatter_class=argparse.RawDescriptionHelpFormatter)
