"""``cnnzoo summary MODEL [--depth N] [--format table|json]``: one model, layer by layer."""

from __future__ import annotations

import argparse
import dataclasses
import json
import sys
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from cnnzoo.models import ModelSummary

NOTES = (
    "FLOPs: forward pass, 2 x multiply-accumulates (convolutions and linear layers, counted by "
    "torch FlopCounterMode)",
    "RF: receptive field of the layer's output in input pixels (through its widest path); "
    "jump: input pixels between neighbouring outputs",
)


def _count(minimum: int):
    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected an integer, got {text!r}") from None
        if value < minimum:
            raise argparse.ArgumentTypeError(f"must be at least {minimum}, got {value}")
        return value

    return parse


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "summary",
        help="per-layer table of one model: output shapes, parameters, FLOPs, receptive field",
        description="Every module of MODEL for one input: output shape, parameters, forward "
        "FLOPs, and the receptive field and jump of its output. The totals are those of "
        "`cnnzoo models`.",
    )
    p.add_argument("model", help="a registered name (`cnnzoo models` lists them)")
    p.add_argument(
        "--depth",
        type=_count(0),
        metavar="N",
        help="fold modules deeper than N into their ancestor's row (the model is depth 0)",
    )
    p.add_argument(
        "--input-size",
        type=_count(1),
        default=32,
        metavar="PIXELS",
        help="side of the square RGB input (default: 32, CIFAR)",
    )
    p.add_argument("--num-classes", type=_count(1), default=10, help="default: 10")
    p.add_argument("--format", choices=("table", "json"), default="table")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from cnnzoo.errors import UserError, one_line
    from cnnzoo.models import create_model, summarize

    model = create_model(args.model, num_classes=args.num_classes)
    size = (1, 3, args.input_size, args.input_size)
    try:
        summary = summarize(model, size, depth=args.depth)
    except RuntimeError as err:  # e.g. five 2x2 pools cannot run on an 8x8 image
        first = one_line(err, first_line=True)
        raise UserError(
            f"{args.model} cannot run on a {args.input_size}x{args.input_size} input: {first}"
        ) from None
    if args.format == "json":
        json.dump(summary_json(args.model, args.num_classes, args.depth, summary), sys.stdout)
        print()
    else:
        print("\n".join(summary_table(args.model, summary)))
    return 0


def summary_json(
    name: str, num_classes: int, depth: int | None, summary: ModelSummary
) -> dict[str, Any]:
    return {
        "model": name,
        "input_size": list(summary.input_size),
        "num_classes": num_classes,
        "depth": depth,
        "rows": [dataclasses.asdict(r) for r in summary.rows],
        "totals": {"params": summary.params, "flops": summary.flops},
    }


def summary_table(name: str, summary: ModelSummary) -> list[str]:
    """Aligned columns, one row per module indented by depth, then a totals row."""
    head = ("layer", "type", "output shape", "params", "FLOPs", "RF", "jump")
    right = (False, False, False, True, True, True, True)
    cells = [
        (
            "  " * r.depth + (r.path or name),
            r.type,
            "x".join(map(str, r.output_shape)) if r.output_shape else "-",
            f"{r.params:,}" if r.params else "-",
            f"{r.flops:,}" if r.flops else "-",
            _pair(r.rf),
            _pair(r.jump),
        )
        for r in summary.rows
    ]
    total = ("total", "", "", f"{summary.params:,}", f"{summary.flops:,}", "", "")
    widths = [max(len(row[i]) for row in [head, *cells, total]) for i in range(len(head))]

    def line(row: tuple[str, ...]) -> str:
        cols = zip(row, widths, right, strict=True)
        parts = [c.rjust(w) if r else c.ljust(w) for c, w, r in cols]
        return "  ".join(parts).rstrip()

    size = "x".join(map(str, summary.input_size))
    rule = "-" * len(line(head))
    body = [line(c) for c in cells]
    return [f"{name} on a {size} input", *NOTES, "", line(head), rule, *body, rule, line(total)]


def _pair(v: tuple[int, int] | None) -> str:
    if v is None:
        return "-"
    return str(v[0]) if v[0] == v[1] else f"{v[0]}x{v[1]}"
