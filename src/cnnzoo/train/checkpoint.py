"""Checkpoints: written atomically, read with ``weights_only=True``."""

from __future__ import annotations

import os
import pickle
from pathlib import Path
from typing import Any

import torch
from torch import nn

from cnnzoo.atomic import atomic_open
from cnnzoo.errors import UserError

FORMAT = 1


def save_atomic(obj: dict[str, Any], path: Path) -> None:
    """``torch.save`` through a temp file + rename (``cnnzoo.atomic.atomic_open``): a crash at any
    moment leaves either the old checkpoint or the new one, never a torn one."""
    with atomic_open(path, "wb") as f:
        torch.save(obj, f)


def load_checkpoint(path: str | os.PathLike) -> dict[str, Any]:
    """Load a cnnzoo checkpoint safely: tensors and plain containers only, never code."""
    path = Path(path)
    if path.is_dir():
        path = path / "best.pt"
    if not path.is_file():
        raise UserError(f"no checkpoint at {path}")
    try:
        ckpt = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as err:
        first = str(err).strip().splitlines()[0] if str(err).strip() else "unsupported object"
        raise UserError(
            f"refused to load {path}: it holds objects other than tensors and plain data "
            f"({first[:160]})"
        ) from None
    except (RuntimeError, EOFError, OSError, ValueError) as err:
        raise UserError(f"cannot read checkpoint {path}: {str(err).splitlines()[0]}") from None
    if not isinstance(ckpt, dict) or "model_name" not in ckpt or "model" not in ckpt:
        raise UserError(f"{path} is not a cnnzoo checkpoint")
    return ckpt


def model_from_checkpoint(ckpt: dict[str, Any]) -> nn.Module:
    """Rebuild the model a checkpoint was trained as, with its weights, in eval mode."""
    from cnnzoo.models import create_model

    model = create_model(
        ckpt["model_name"], num_classes=ckpt["num_classes"], **ckpt.get("model_kwargs", {})
    )
    model.load_state_dict(ckpt["model"])
    return model.eval()


def unwrap(model: nn.Module) -> nn.Module:
    """The plain module behind DDP and torch.compile wrappers."""
    model = getattr(model, "module", model)  # DistributedDataParallel
    return getattr(model, "_orig_mod", model)  # torch.compile
