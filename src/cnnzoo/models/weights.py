"""Trained weights as safetensors files: the ones shipped in the package, and your own.

A weights file holds the model's tensors and, in its safetensors header, a ``cnnzoo`` JSON
entry: model name and kwargs, classes, the dataset's mean/std and, for shipped weights, the
recipe, data version and measured accuracy. Shipped files are listed in ``weights/manifest.json``
beside their sha256, checked on every load, so a damaged or swapped file is refused.

    create_model("resnet20", pretrained=True)          # the shipped CIFAR-10 weights
    create_model("resnet20", weights="my.safetensors")  # a file from ``cnnzoo export``
"""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError, safe_open
from safetensors.torch import save

from cnnzoo.atomic import atomic_open
from cnnzoo.errors import UserError, one_line

WEIGHTS_DIR = Path(__file__).resolve().parent.parent / "weights"
MANIFEST = WEIGHTS_DIR / "manifest.json"
DEFAULT_TAG = "cifar10"


def sha256_file(path: str | os.PathLike) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def manifest() -> dict[str, dict[str, dict[str, str]]]:
    """``{model: {tag: {"file": ..., "sha256": ...}}}`` for the weights shipped in the package."""
    try:
        return json.loads(MANIFEST.read_text())
    except FileNotFoundError:
        return {}


def save_weights(
    state: dict[str, torch.Tensor],
    path: str | os.PathLike,
    meta: dict[str, Any],
    half: bool = False,
) -> str:
    """Write ``state`` (fp16 floats with ``half``) and ``meta`` to ``path`` atomically; returns
    the file's sha256."""
    tensors = {
        k: (v.half() if half and v.is_floating_point() else v).detach().cpu().contiguous()
        for k, v in state.items()
    }
    blob = save(tensors, metadata={"cnnzoo": json.dumps(meta, sort_keys=True)})
    with atomic_open(path, "wb") as f:
        f.write(blob)
    return hashlib.sha256(blob).hexdigest()


def read_weights(
    path: str | os.PathLike, sha256: str | None = None
) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    """Tensors (as float32 where floating) and the ``cnnzoo`` metadata of a weights file;
    with ``sha256`` the file must have exactly that digest."""
    path = Path(path)
    if not path.is_file():
        raise UserError(f"no weights file at {path}")
    if sha256 is not None and (got := sha256_file(path)) != sha256:
        raise UserError(
            f"refused {path}: its sha256 is {got[:16]}..., expected {sha256[:16]}... "
            "(a damaged or replaced file; reinstall cnnzoo)"
        )
    try:
        with safe_open(str(path), framework="pt") as f:
            meta = json.loads((f.metadata() or {}).get("cnnzoo", "{}"))
            state = {k: f.get_tensor(k) for k in f.keys()}  # noqa: SIM118 (not a dict)
    except (SafetensorError, OSError, ValueError) as err:
        raise UserError(f"cannot read weights {path}: {one_line(err, first_line=True)}") from None
    if not isinstance(meta, dict) or "model_name" not in meta:
        raise UserError(f"{path} has no cnnzoo metadata (write it with `cnnzoo export`)")
    return {k: v.float() if v.is_floating_point() else v for k, v in state.items()}, meta


def resolve_weights(name: str, weights: str | os.PathLike) -> tuple[dict, dict[str, Any]]:
    """``weights`` is a shipped tag (``"cifar10"``) or a path to a .safetensors file."""
    shipped = manifest().get(name, {})
    if isinstance(weights, str) and weights in shipped:
        entry = shipped[weights]
        return read_weights(WEIGHTS_DIR / entry["file"], sha256=entry["sha256"])
    if isinstance(weights, str) and not weights.endswith(".safetensors") and os.sep not in weights:
        tags = ", ".join(sorted(shipped)) or "none"
        raise UserError(f"no pretrained weights {weights!r} for {name} (shipped: {tags})")
    state, meta = read_weights(weights)
    if meta["model_name"] != name:
        raise UserError(f"{weights} holds weights for {meta['model_name']}, not {name}")
    return state, meta
