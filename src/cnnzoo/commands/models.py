"""``cnnzoo models [PATTERN] [--pretrained] [--format table|csv|json]``: the registered models."""

from __future__ import annotations

import argparse
import csv
import json
import sys
from typing import Any

FIELDS = ("name", "params", "flops", "depth", "year", "paper", "key_feature")


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("models", help="list registered models with parameters and FLOPs")
    p.add_argument("pattern", nargs="?", help="glob filter, e.g. 'resnet*'")
    p.add_argument(
        "--pretrained", action="store_true", help="only the models whose weights ship in cnnzoo"
    )
    p.add_argument("--format", choices=("table", "csv", "json"), default="table")
    p.add_argument("--plot", metavar="PNG", help="also draw a parameters/FLOPs bar chart")
    p.set_defaults(func=run)


def model_rows(
    pattern: str | None = None, num_classes: int = 10, pretrained: bool = False
) -> list[dict[str, Any]]:
    """One row per model matching ``pattern`` (``cnnzoo.analysis.zoo.architecture_rows``);
    ``pretrained``: only those with shipped weights."""
    from cnnzoo.analysis.zoo import architecture_rows
    from cnnzoo.errors import UserError
    from cnnzoo.models import list_models

    names = list_models(pattern, pretrained=pretrained)
    if not names:
        which = "no model with shipped weights" if pretrained else "no model"
        raise UserError(f"{which} matches {pattern or '*'!r}")
    return architecture_rows(names, num_classes)


def run(args: argparse.Namespace) -> int:
    rows = model_rows(args.pattern, pretrained=args.pretrained)
    if args.format == "json":
        json.dump(rows, sys.stdout, indent=2)
        print()
    elif args.format == "csv":
        w = csv.DictWriter(sys.stdout, fieldnames=FIELDS)
        w.writeheader()
        w.writerows(rows)
    else:
        print(
            "FLOPs: forward pass of one 3x32x32 image, 2 x multiply-accumulates "
            "(convolutions and linear layers, counted by torch FlopCounterMode)"
        )
        nw = max([4, *(len(r["name"]) for r in rows)])  # the longest name sets the column
        head = (
            f"{'name':<{nw}} {'params':>12} {'GFLOPs':>8} {'depth':>5} {'year':>4}  "
            "paper / key feature"
        )
        print(head)
        print("-" * len(head))
        for r in rows:
            print(
                f"{r['name']:<{nw}} {r['params']:>12,} {r['flops'] / 1e9:>8.3f} {r['depth']:>5} "
                f"{r['year']:>4}  {r['paper']}: {r['key_feature']}"
            )
    if getattr(args, "plot", None):
        from cnnzoo.analysis.zoo import plot_zoo

        for path in plot_zoo(rows, args.plot):
            print(f"wrote {path}", file=sys.stderr)
    return 0
