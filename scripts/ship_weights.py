"""Ship a finished run's weights inside the package: safetensors + a manifest entry.

    python scripts/ship_weights.py runs/accuracy/resnet20-resnet-cpu-s0 --recipe resnet-cpu \
        --command "cnnzoo train resnet20 --recipe resnet-cpu ..." --data ../shared/data/...

The weights are ``best.pt``'s (chosen on the validation split), in fp32, or rounded to fp16 with
``--half`` (half the size: for the larger models, to keep the package small; resnet20's fp16
copy lost 2 of the 1,000 test images). Their test accuracy is measured again as shipped (after
any rounding), with the run's TTA and precision, on ``--data`` and stored in
the file's metadata beside the run's own figures, the recipe, the data version and the command;
the file's sha256 goes into ``src/cnnzoo/weights/manifest.json``, which every load checks
(``--weights-dir`` writes both into another folder instead, e.g. to try the script out).
"""

from __future__ import annotations

import argparse
import json
from collections.abc import Sequence
from pathlib import Path

import torch

from cnnzoo.atomic import atomic_open
from cnnzoo.commands.eval import evaluate_checkpoint
from cnnzoo.data.archive import md5sum
from cnnzoo.inference.weights import export_safetensors
from cnnzoo.models.weights import MANIFEST, WEIGHTS_DIR
from cnnzoo.train import TrainConfig, load_checkpoint
from cnnzoo.train.engine import TTA

# What the shared archive is (shared/data/cifar10/SOURCE.md), by its md5.
DATA_VERSIONS = {
    "80edd8881f010cfc87cc0c413fab2631": "CIFAR-10, project archive of 2026-11-27: exact training "
    "set; test batch = the first 1,000 official test images, exact, each repeated 10 times",
    "c58f30108f718f92721af3b95e74349a": "CIFAR-10, the official archive",
}


def main(argv: Sequence[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("run", type=Path)
    p.add_argument("--tag", default="cifar10")
    p.add_argument("--recipe", required=True)
    p.add_argument("--command", required=True, help="the command that trained the run")
    p.add_argument("--data", required=True, help="the archive the run trained on")
    p.add_argument("--machine", default="", help="CPU/GPU model and threads of the run")
    p.add_argument("--half", action="store_true", help="ship fp16 weights")
    p.add_argument(
        "--weights-dir",
        type=Path,
        default=WEIGHTS_DIR,
        help="where the weights file and manifest.json go (default: the package's)",
    )
    args = p.parse_args(argv)

    ckpt = load_checkpoint(args.run / "best.pt")
    summary = json.loads((args.run / "summary.json").read_text())
    cfg = ckpt["config"]
    rounded = {
        **ckpt,
        "model": {
            k: v.half().float() if args.half and v.is_floating_point() else v
            for k, v in ckpt["model"].items()
        },
    }
    torch.manual_seed(0)
    # all of the run's views (flip, shift, grid, fraction): those its own test_acc was measured
    # with, so the two figures in the metadata compare like with like
    tta = TTA.from_config(TrainConfig.from_dict(cfg))
    shipped = evaluate_checkpoint(rounded, args.data, "cpu", tta, 1000)
    data = Path(args.data)
    md5 = md5sum(data) if data.is_file() else None  # a folder (or 'synthetic') has no md5
    extra = {
        "recipe": args.recipe,
        "command": args.command,
        "machine": args.machine,
        "data": DATA_VERSIONS.get(md5, "unknown archive") if md5 else args.data,
        "data_md5": md5,
        "best_epoch": summary["best_epoch"],
        "epochs": summary["epochs"],
        "run_val_acc": summary["best_val_acc"],
        "run_test_acc": summary["test_acc"],
        "test_acc": shipped["accuracy"],
        "test_images": shipped["count"],
    }
    name = ckpt["model_name"]
    out = args.weights_dir / f"{name}-{args.tag}.safetensors"
    path, sha = export_safetensors(args.run / "best.pt", out, half=args.half, extra=extra)
    listing = args.weights_dir / MANIFEST.name
    table = json.loads(listing.read_text()) if listing.is_file() else {}
    table.setdefault(name, {})[args.tag] = {"file": path.name, "sha256": sha}
    with atomic_open(listing, "w") as f:
        json.dump(table, f, indent=2, sort_keys=True)
        f.write("\n")
    print(
        f"{path} ({path.stat().st_size / 1e6:.2f} MB, sha256 {sha[:16]}...): test acc "
        f"{shipped['accuracy']:.4f} as shipped (run: {summary['test_acc']:.4f})"
    )


if __name__ == "__main__":
    main()
