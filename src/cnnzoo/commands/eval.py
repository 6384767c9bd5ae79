"""``cnnzoo eval CHECKPOINT``: test accuracy, per-class accuracy, confusion matrix."""

from __future__ import annotations

import argparse
import csv
import io
import json
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from cnnzoo.train.engine import TTA


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("eval", help="evaluate a checkpoint on the test set")
    p.add_argument(
        "checkpoint", nargs="?", help="a .pt file, or a run directory (uses its best.pt)"
    )
    p.add_argument(
        "--pretrained",
        metavar="MODEL",
        help="evaluate the weights shipped for MODEL instead of a checkpoint (e.g. resnet20)",
    )
    p.add_argument("--data", help="dataset location or 'synthetic' (default: as trained)")
    p.add_argument("--format", choices=("table", "json"), default="table")
    p.add_argument(
        "--out",
        metavar="FOLDER",
        help="write FOLDER/eval/confusion.csv, .png and .svg (default FOLDER: the checkpoint's "
        "folder; nothing is written for --pretrained without --out)",
    )
    p.add_argument(
        "--tta",
        action=argparse.BooleanOptionalAction,
        help="average with the mirror image (default: as the run was evaluated)",
    )
    p.add_argument(
        "--tta-shift",
        type=int,
        metavar="PX",
        help="also views translated by ±PX (default: as the run was evaluated)",
    )
    p.add_argument(
        "--tta-grid",
        action=argparse.BooleanOptionalAction,
        help="with --tta-shift: all 9 translations, equal weights (default: as the run was "
        "evaluated)",
    )
    p.add_argument(
        "--tta-fraction",
        type=float,
        metavar="F",
        help="TTA only for the fraction F of each batch the plain pass is least sure of "
        "(default: as the run was evaluated)",
    )
    p.add_argument("--device", default="auto")
    p.add_argument("--batch-size", type=int, default=1000)
    p.set_defaults(func=run)


def evaluate_checkpoint(
    checkpoint: str | dict[str, Any],
    data: str | None = None,
    device: str = "auto",
    tta: TTA | None = None,
    batch_size: int = 1000,
) -> dict[str, Any]:
    """Evaluate a checkpoint (a path, or an already loaded checkpoint dict) on its dataset's test
    split, averaging the views of ``tta`` (default: the image alone); returns accuracy,
    per-class accuracy and the confusion matrix."""
    import torch

    from cnnzoo.data import TensorLoader, load_dataset
    from cnnzoo.errors import UserError
    from cnnzoo.inference.predict import checkpoint_image_size
    from cnnzoo.train import load_checkpoint, model_from_checkpoint
    from cnnzoo.train.checkpoint import check_classes
    from cnnzoo.train.config import check_tta
    from cnnzoo.train.engine import TTA, evaluate
    from cnnzoo.train.runtime import autocast, resolve_device, resolve_precision

    if batch_size < 1:
        raise UserError("--batch-size must be at least 1")
    tta = tta or TTA()
    check_tta(tta.shift, tta.grid, tta.fraction)
    ckpt = load_checkpoint(checkpoint)
    cfg = ckpt.get("config", {})
    ds = load_dataset(
        cfg.get("dataset", "cifar10"),
        data if data else cfg.get("data"),
        quiet=True,
        saved=not data,
        image_size=checkpoint_image_size(ckpt),  # an image folder's, as trained
    )
    check_classes(ckpt, ds.classes)
    dev = resolve_device(device)
    asked = cfg.get("precision", "auto")  # as the run evaluated (fp16 needs CUDA: else auto)
    precision = resolve_precision("auto" if asked == "fp16" and dev.type != "cuda" else asked, dev)
    model = model_from_checkpoint(ckpt).to(dev, memory_format=torch.channels_last)
    loader = TensorLoader(ds.test_x, ds.test_y, batch_size, ds.mean, ds.std, device=dev)
    res = evaluate(
        model,
        loader,
        ds.num_classes,
        lambda: autocast(dev, precision),
        tta,
    )
    conf = res.confusion
    # None for a class with no test images (a small class of a held-out split): not 0% right
    per_class = [
        hits / total if total else None
        for hits, total in zip(conf.diag().tolist(), conf.sum(1).tolist(), strict=True)
    ]
    return {
        "checkpoint": None if isinstance(checkpoint, dict) else str(checkpoint),  # caller names it
        "model": ckpt["model_name"],
        "dataset": ds.name,
        "accuracy": res.acc,
        "loss": res.loss,
        "count": res.count,
        "classes": ds.classes,
        "per_class": dict(zip(ds.classes, per_class, strict=True)),
        "confusion": conf.tolist(),
    }


def write_confusion(result: dict[str, Any], out: Path) -> list[Path]:
    """confusion.csv and confusion.png/.svg (rows: true class, columns: predicted). A file that
    cannot be written is a ``WriteFailed`` naming it (the CLI's one line, exit code 1)."""
    from cnnzoo.analysis.plots import plot_confusion
    from cnnzoo.train.rundir import reported_write, write_text_atomic

    with reported_write(out):
        out.mkdir(parents=True, exist_ok=True)
    classes = result["classes"]
    buf = io.StringIO()
    w = csv.writer(buf)
    w.writerow(["true\\predicted", *classes])
    for name, row in zip(classes, result["confusion"], strict=True):
        w.writerow([name, *row])
    path = out / "confusion.csv"
    write_text_atomic(path, buf.getvalue())  # temp file + rename: never a torn table
    figures = plot_confusion(  # each figure file a WriteFailed of its own (save_figure)
        result["confusion"],
        classes,
        out / "confusion.png",
        title=f"{result['model']}: test accuracy {result['accuracy']:.2%}",
    )
    return [path, *figures]


def _output_folder(args: argparse.Namespace) -> Path | None:
    """OUT/eval, shown to be writable (``UserError``, exit code 2, if it is not:
    an unwritable folder is bad input, found before the evaluation); None when nothing is
    written (shipped weights without --out)."""
    from cnnzoo.atomic import require_writable
    from cnnzoo.errors import UserError

    if args.out:
        if Path(args.out).exists() and not Path(args.out).is_dir():
            raise UserError(f"--out {args.out} is a file; name a folder")
        base = Path(args.out)
    elif args.checkpoint:  # beside the checkpoint
        ckpt_path = Path(args.checkpoint)
        base = ckpt_path if ckpt_path.is_dir() else ckpt_path.parent
    else:
        return None
    out = base / "eval"
    # the nearest folder that exists is where the files (or the folders for them) will go;
    # nothing is created yet, so a failed evaluation leaves nothing behind
    probe = out
    while not probe.exists():
        probe = probe.parent
    if not probe.is_dir():
        raise UserError(f"cannot write to {out}: {probe} is a file")
    require_writable(probe)
    return out


def run(args: argparse.Namespace) -> int:
    from cnnzoo.errors import UserError
    from cnnzoo.train.engine import TTA

    if (args.checkpoint is None) == (args.pretrained is None):
        raise UserError("give a checkpoint or --pretrained MODEL (one of the two)")
    if args.pretrained:
        from cnnzoo.inference.weights import pretrained_checkpoint

        source = pretrained_checkpoint(args.pretrained)
    else:
        from cnnzoo.train import load_checkpoint

        source = load_checkpoint(args.checkpoint)
    trained = source.get("config") or {}
    out = _output_folder(args)  # once the checkpoint is known good, before the evaluation
    # by default the views the run's own test accuracy (summary.json) was measured with
    args.tta = bool(trained.get("tta", False)) if args.tta is None else args.tta
    if args.tta_shift is None:
        args.tta_shift = int(trained.get("tta_shift", 0)) if args.tta else 0
    if args.tta_grid is None:
        args.tta_grid = bool(trained.get("tta_grid", False)) and args.tta_shift > 0
    if args.tta_fraction is None:
        args.tta_fraction = float(trained.get("tta_fraction", 1.0))
    tta = TTA(args.tta, args.tta_shift, args.tta_grid, args.tta_fraction)
    result = evaluate_checkpoint(source, args.data, args.device, tta, args.batch_size)
    result["checkpoint"] = args.checkpoint or f"pretrained {args.pretrained}"
    views = (
        "image only"
        if not args.tta
        else "flip TTA"
        + (f" + shifts of ±{args.tta_shift} px" if args.tta_shift else "")
        + (" on a 3x3 grid" if args.tta_grid else "")
        + (f" for the {args.tta_fraction:.0%} least sure" if args.tta_fraction < 1 else "")
    )
    written = write_confusion(result, out) if out else []
    if args.format == "json":
        result["views"] = views
        keys = ("accuracy", "views", "per_class", "confusion", "model", "dataset", "count", "loss")
        json.dump({k: result[k] for k in keys}, sys.stdout, indent=2)
        print()
    else:
        print(
            f"{result['model']} on {result['dataset']} test ({result['count']} images): "
            f"accuracy {result['accuracy']:.4f} ({views})"
        )
        for name, acc in result["per_class"].items():
            print(f"  {name:<12} {'no test images' if acc is None else f'{acc:.4f}'}")
        if written:
            print("wrote " + ", ".join(str(p) for p in written), file=sys.stderr)
    return 0
