"""``internvla eval-table``: `internvla eval` reports side by side, as a table and a success-against-delay PNG.

Usage examples::

    internvla eval-table out/rtc/*.json
    internvla eval-table out/rtc/*.json --png docs/rtc_success.png --markdown out/rtc/table.md

One row per report: the execution mode (real-time chunking labelled as the model runs it: guidance, or
the prefix given clean to a model trained with training-time RTC), the model, the added delay, parcels
sorted right with the 95 % interval of the rate (Wilson, over parcels), grasps, the executed motion's
smoothness and the node's clamped commands and inference latency. Exit codes: 0 written, 2 refused.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from internvla_ros.cli.groups import add_verb
from internvla_ros.learning.eval_table import load_reports, markdown, plot_success, table_rows


def command(args: argparse.Namespace) -> int:
    try:
        rows = table_rows(load_reports(args.reports))
    except (OSError, ValueError, KeyError, json.JSONDecodeError) as err:
        print(f"ERROR: {err}", file=sys.stderr)
        return 2
    table = markdown(rows)
    print(table)
    if args.markdown:
        args.markdown.write_text(table + "\n")
    if args.png:
        print(f"plot: {plot_success(rows, args.png)}")
    return 0


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = add_verb(subparsers, "eval-table", "eval reports side by side (table, success against delay)", __doc__)
    parser.add_argument("reports", nargs="+", type=Path, metavar="REPORT", help="`internvla eval --json` files")
    parser.add_argument("--png", type=Path, default=None, help="write the success-against-delay plot here")
    parser.add_argument("--markdown", type=Path, default=None, help="write the table here too")
    parser.set_defaults(func=command)
