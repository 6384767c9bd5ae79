"""``cnnzoo gradflow MODEL... [--run RUN_DIR] [--sweep] [--format text|json]``.

Per-layer L2 norms of d(loss)/d(conv weight), input side first, from one training-mode batch
(the first batch of a seeded, augmented training epoch). Models are measured at initialisation
(each built from ``--seed``); ``--run`` reads the norms that ``cnnzoo train --record-gradflow``
stored at initialisation and after every epoch. Figures (PNG + SVG) go to ``--out``.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("gradflow", help="per-layer conv gradient norms (at init, or from runs)")
    p.add_argument("models", nargs="*", metavar="MODEL", help="registered model names")
    p.add_argument(
        "--run",
        action="append",
        default=[],
        metavar="RUN_DIR",
        help="a run trained with --record-gradflow (repeatable): norms per recorded epoch",
    )
    p.add_argument(
        "--sweep",
        action="store_true",
        help="add the depth sweep plain20/56/110 vs resnet20/56/110",
    )
    p.add_argument("--format", choices=("text", "json"), default="text")
    p.add_argument("--out", default="runs/gradflow", help="folder for the figures")
    p.add_argument("--no-plot", dest="plot", action="store_false", help="write no figures")
    p.add_argument("--dataset", choices=("cifar10", "cifar100"), default="cifar10")
    p.add_argument(
        "--data",
        help="where the batch comes from, as for `cnnzoo train` (archive, folder, 'synthetic'; "
        "default: $CNNZOO_DATA, else ~/.cache/cnnzoo)",
    )
    p.add_argument("--batch-size", type=int, default=128)
    p.add_argument("--seed", type=int, default=0, help="weights and batch seed")
    p.add_argument("--threads", type=int, help="torch intra-op threads")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    import torch

    from cnnzoo.analysis import gradflow as gf
    from cnnzoo.errors import UserError
    from cnnzoo.models import model_info

    models = list(dict.fromkeys([*args.models, *(gf.SWEEP_MODELS if args.sweep else ())]))
    if not models and not args.run:
        raise UserError("name models to measure, pass --sweep, or --run RUN_DIR")
    for name in models:
        model_info(name)  # unknown names fail before any data is read
    if args.threads is not None:  # 0 is refused, not ignored
        if args.threads < 1:
            raise UserError("--threads must be at least 1")
        torch.set_num_threads(args.threads)

    results: dict[str, dict] = {}
    if models:
        x, y, num_classes = gf.training_batch(args.dataset, args.data, args.batch_size, args.seed)
        results.update(gf.measure_models(models, x, y, args.seed, num_classes))
    runs = {}
    for run_dir in args.run:
        key, rows = _run_results(gf, run_dir, results)
        runs[key] = rows
    written = _plots(gf, args, results, runs) if args.plot else []
    if args.format == "json":
        json.dump(results, sys.stdout, indent=2)
        print()
    else:
        init = {k: v for k, v in results.items() if k not in runs}
        if init:
            print(gf.describe(init, "at initialisation"))
        for key, rows in runs.items():
            for row in rows:
                when = "at initialisation" if row["epoch"] == 0 else f"after epoch {row['epoch']}"
                print(gf.describe({key: row}, when))
    for path in written:
        print(f"wrote {path}", file=sys.stderr)
    return 0


def _run_results(gf, run_dir: str, results: dict[str, dict]) -> tuple[str, list[dict]]:
    """A training run's recorded rows; its last epoch joins ``results`` under its key."""
    model, rows = gf.read_run_gradflow(run_dir)
    key = f"{model} ({Path(run_dir).name})"
    last = rows[-1]
    keys = ("epoch", "norms", "max_min_ratio", "first_last_ratio")
    results[key] = {
        "layers": last["layers"],
        **{k: last[k] for k in keys},
        "epochs": [{k: r[k] for k in keys} for r in rows],
    }
    return key, rows


def _plots(gf, args: argparse.Namespace, results: dict, runs: dict) -> list[Path]:
    """Bars per model (and per-epoch curves for runs), and the overlay of all of them."""
    out, written = Path(args.out), []
    for key, r in results.items():
        stem = _slug(key)
        written += gf.plot_bars(key, r["layers"], r["norms"], out / f"bars-{stem}.png")
        if key in runs:
            written += gf.plot_run_epochs(key, runs[key], out / f"epochs-{stem}.png")
    title = (
        "conv gradient norm vs depth at initialisation"
        if not runs
        else "conv gradient norm vs depth (runs: last recorded epoch)"
    )
    return written + gf.plot_overlay(results, out / "overlay.png", title=title)


def _slug(text: str) -> str:
    import re

    return re.sub(r"[^A-Za-z0-9_-]+", "_", text).strip("_")
