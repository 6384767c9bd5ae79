"""Checkpoints: written atomically, read with ``weights_only=True``.

best.pt holds the evaluated weights and the run's metadata; last.pt everything a resume needs:
the weights, the optimizer (and scaler, EMA, lookahead), the counters and RNG states
(``TrainState``), and, when the run stopped in the middle of an epoch (a signal, a timed
checkpoint), ``in_epoch``: the steps done in that epoch and its running totals
(``EpochPosition``). Format 2 added ``in_epoch``; format 1 checkpoints load as before.
"""

from __future__ import annotations

import io
import os
import pickle
from pathlib import Path
from typing import Any

import torch
from torch import nn

from cnnzoo.atomic import atomic_open
from cnnzoo.errors import UserError, one_line
from cnnzoo.train.rundir import reported_write

FORMAT = 2


def save_atomic(obj: dict[str, Any], path: Path) -> None:
    """``torch.save`` through a temp file + rename (``cnnzoo.atomic.atomic_open``): a crash at any
    moment leaves either the old checkpoint or the new one, never a torn one; a failed write (a
    full disk) is a ``WriteFailed`` naming the file and the free space, the old file kept."""
    # Serialised in memory first: torch.save reports a write that fails on a full disk as a
    # RuntimeError ("unexpected pos"), without the errno; writing the bytes ourselves gives
    # the OSError (ENOSPC, EIO, EROFS) that says why. (Memory: one checkpoint, 90 MB for
    # ResNet-18 with its momentum.)
    buf = io.BytesIO()
    torch.save(obj, buf)
    with reported_write(path), atomic_open(path, "wb") as f:
        f.write(buf.getbuffer())


def load_checkpoint(path: str | os.PathLike | dict[str, Any]) -> dict[str, Any]:
    """Load a cnnzoo checkpoint safely: tensors and plain containers only, never code. A dict
    is a checkpoint already in memory (shipped weights, ``pretrained_checkpoint``), returned as
    it is, so that eval, predict and export take either."""
    if isinstance(path, dict):
        return path
    path = Path(path)
    if path.is_dir():
        path = path / "best.pt"
    if not path.is_file():
        raise UserError(f"no checkpoint at {path}")
    try:
        ckpt = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as err:
        raise UserError(
            f"refused to load {path}: it holds objects other than tensors and plain data "
            f"({one_line(err, 160, first_line=True)})"
        ) from None
    except (RuntimeError, EOFError, OSError, ValueError) as err:
        raise UserError(
            f"cannot read checkpoint {path}: {one_line(err, first_line=True)}"
        ) from None
    if not isinstance(ckpt, dict) or "model_name" not in ckpt or "model" not in ckpt:
        raise UserError(f"{path} is not a cnnzoo checkpoint")
    return ckpt


def check_classes(ckpt: dict[str, Any], classes: list[str]) -> None:
    """``UserError`` unless the data's ``classes`` are the ones ``ckpt`` was trained on: same
    count, and (where the checkpoint names them) the same names in the same order, or every
    label would be scored against another class."""
    if len(classes) != ckpt["num_classes"]:
        raise UserError(
            f"the checkpoint has {ckpt['num_classes']} classes, the data {len(classes)}"
        )
    trained, names = [str(c) for c in ckpt.get("classes") or []], [str(c) for c in classes]
    if trained and trained != names:
        i = next(i for i, (a, b) in enumerate(zip(trained, names, strict=True)) if a != b)
        raise UserError(
            f"the checkpoint's class {i} is {trained[i]!r}, the data's {names[i]!r}: "
            "not the classes it was trained on"
        )


def model_from_checkpoint(ckpt: dict[str, Any]) -> nn.Module:
    """Rebuild the model a checkpoint was trained as, with its weights, in eval mode."""
    from cnnzoo.models import create_model

    model = create_model(
        ckpt["model_name"], num_classes=ckpt["num_classes"], **ckpt.get("model_kwargs", {})
    )
    model.load_state_dict(ckpt["model"])
    return model.eval()
