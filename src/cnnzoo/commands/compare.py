"""``cnnzoo compare MODEL MODEL... [--seeds K] [--runs RUN_DIR...] [training options]``.

Trains every model with one configuration and the same seeds (so the same validation split,
data order and augmentation), or reuses finished run directories, and writes curves.png/.svg,
summary.md/.csv/.json to ``--out``.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path


def add_parser(sub: argparse._SubParsersAction) -> None:
    from cnnzoo.commands.train import add_train_options

    p = sub.add_parser("compare", help="train models side by side and compare them")
    p.add_argument(
        "models",
        nargs="*",
        metavar="MODEL",
        help="models to train (first two are compared in words, e.g. resnet20 plain20)",
    )
    p.add_argument("--seeds", type=int, default=1, help="seeds per model: --seed, --seed+1, ...")
    p.add_argument(
        "--runs", nargs="+", default=[], metavar="RUN_DIR", help="finished runs to include as is"
    )
    p.add_argument("--out", help="output folder (default runs/compare-<timestamp>)")
    add_train_options(p)
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from cnnzoo.analysis.compare import load_run, train_runs, write_comparison
    from cnnzoo.commands.train import seeded_config_factory
    from cnnzoo.errors import UserError
    from cnnzoo.models import model_info
    from cnnzoo.train.runtime import is_main_process

    if args.seeds < 1:
        raise UserError(f"--seeds must be at least 1, got {args.seeds}")
    if len(args.models) + len(args.runs) < 2 and not (args.models and args.seeds > 1):
        raise UserError("compare needs at least two models or runs (or one model with --seeds)")
    if len(set(args.models)) != len(args.models):
        raise UserError("each model may be named once")
    for name in args.models:
        model_info(name)
    reused = [load_run(r) for r in args.runs]  # bad run directories fail before any training
    if args.out is None and int(os.environ.get("WORLD_SIZE", "1")) > 1:
        raise UserError("under torchrun, give --out (each rank would name its own folder)")
    out = Path(args.out or f"runs/compare-{time.strftime('%Y%m%d-%H%M%S')}")
    if out.exists() and not out.is_dir():
        raise UserError(f"--out {out} is a file")

    make_config = seeded_config_factory(args)

    def log(msg: str) -> None:
        print(msg, file=sys.stderr)

    seeds = list(range(args.seed, args.seed + args.seeds))
    trained = train_runs(args.models, seeds, out, make_config, log) if args.models else []
    if not is_main_process():  # under torchrun: rank 0 alone writes the figures
        return 0
    result = write_comparison(out, trained + reused)
    print((out / "summary.md").read_text())
    for path in result["files"]:
        log(f"wrote {path}")
    return 0
