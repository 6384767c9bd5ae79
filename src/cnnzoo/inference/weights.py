"""Between training checkpoints and safetensors weights files (``cnnzoo.models.weights``).

``export_safetensors`` writes a checkpoint's weights with the metadata a user of the file needs
(model name and kwargs, classes, mean/std, dataset, image size, evaluation views, recipe);
``pretrained_checkpoint`` turns shipped weights back into the checkpoint-shaped dict that
``eval`` and ``predict`` read.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from cnnzoo.atomic import require_writable
from cnnzoo.errors import UserError
from cnnzoo.inference.predict import checkpoint_image_size, checkpoint_normalization
from cnnzoo.models import model_info
from cnnzoo.models.weights import resolve_weights, save_weights
from cnnzoo.train.checkpoint import load_checkpoint
from cnnzoo.train.rundir import reported_write


def output_file(out: str | os.PathLike, suffix: str) -> Path:
    """``out`` as a file path whose folder exists, else ``UserError`` (export's outputs)."""
    out = Path(out)
    if out.is_dir():
        raise UserError(f"{out} is a directory; name the {suffix} file to write")
    if not out.parent.is_dir():
        raise UserError(f"no such folder: {out.parent}")
    return out


TTA_KEYS = ("tta", "tta_shift", "tta_grid", "tta_fraction")  # as in TrainConfig


def weights_metadata(ckpt: dict[str, Any]) -> dict[str, Any]:
    """What a weights file says about itself, read from a training checkpoint."""
    cfg = ckpt.get("config") or {}
    mean, std = checkpoint_normalization(ckpt)
    num_classes = int(ckpt["num_classes"])
    return {
        "model_name": ckpt["model_name"],
        "model_kwargs": dict(ckpt.get("model_kwargs") or {}),
        "num_classes": num_classes,
        "classes": [str(c) for c in ckpt.get("classes") or range(num_classes)],
        "mean": list(mean),
        "std": list(std),
        "dataset": cfg.get("dataset", "cifar10"),
        "image_size": checkpoint_image_size(ckpt),  # predict resizes to it
        "epoch": ckpt.get("epoch"),
        "val_acc": ckpt.get("val_acc"),
        "tta": bool(cfg.get("tta", False)),
        "tta_shift": int(cfg.get("tta_shift", 0)),
        "tta_grid": bool(cfg.get("tta_grid", False)),
        "tta_fraction": float(cfg.get("tta_fraction", 1.0)),
    }


def export_safetensors(
    checkpoint: str | os.PathLike | dict[str, Any],
    out: str | os.PathLike,
    half: bool = False,
    extra: dict[str, Any] | None = None,
) -> tuple[Path, str]:
    """Write ``checkpoint``'s weights (fp16 with ``half``) to ``out``; returns path and sha256.
    ``extra`` adds metadata (recipe, data version, measured accuracy, command)."""
    out = output_file(out, ".safetensors")
    ckpt = load_checkpoint(checkpoint)
    meta = {**weights_metadata(ckpt), **(extra or {}), "dtype": "float16" if half else "float32"}
    require_writable(out.parent)  # a read-only folder: bad input, exit code 2, as for ONNX
    with reported_write(out):  # a full disk now: WriteFailed, exit code 1
        sha = save_weights(ckpt["model"], out, meta, half=half)
    return out, sha


def pretrained_checkpoint(name: str, weights: str = "cifar10") -> dict[str, Any]:
    """Shipped (or file) weights in the shape of a training checkpoint, for eval, predict and
    export."""
    model_info(name)  # an unknown name is named as such, not as missing weights
    state, meta = resolve_weights(name, weights)
    return {
        "model_name": name,
        "model_kwargs": meta.get("model_kwargs", {}),
        "num_classes": meta["num_classes"],
        "classes": meta.get("classes"),
        "mean": meta.get("mean"),
        "std": meta.get("std"),
        "model": state,
        # what eval, predict and export read from a run's config (the TTA views its accuracy
        # was measured with among them); files written before image_size was recorded are
        # CIFAR's 32 px (checkpoint_image_size's default)
        "config": {
            "dataset": meta.get("dataset", "cifar10"),
            "image_size": meta.get("image_size"),
            **{k: meta[k] for k in TTA_KEYS if k in meta},
        },
        "pretrained": meta,
    }
