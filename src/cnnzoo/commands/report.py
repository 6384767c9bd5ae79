"""``cnnzoo report RUN_OR_EXPERIMENT_DIR... -o report.html|report.md``."""

from __future__ import annotations

import argparse
import sys


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("report", help="one self-contained HTML (or Markdown) report of runs")
    p.add_argument("dirs", nargs="+", metavar="DIR", help="run or experiment directories")
    p.add_argument("-o", "--out", default="report.html", help="report.html or report.md")
    p.add_argument("--title", default="cnnzoo report")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from cnnzoo.analysis.report import build_report

    path = build_report(args.dirs, args.out, args.title)
    print(f"wrote {path}", file=sys.stderr)
    return 0
