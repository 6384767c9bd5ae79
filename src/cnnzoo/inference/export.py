"""ONNX export of a checkpoint, checked against PyTorch with onnxruntime.

The exported graph has one input ``input`` (float32, NCHW, shape ``(batch, 3, S, S)``, the batch
dimension dynamic; S is 32, or the run's ``--image-size``) and one output ``logits``
(``(batch, classes)``, before softmax).

- By default the input is **normalised** as in training: ``(pixel / 255 - mean) / std`` per RGB
  channel, with the checkpoint's mean and std.
- With ``include_normalization=True`` (``--include-normalization``) the graph takes RGB in
  ``[0, 1]`` (``pixel / 255``) and normalises inside.

Either way the mean, std, class names and input convention are stored in the model's metadata
(``metadata_props``: ``cnnzoo.mean``, ``cnnzoo.std``, ``cnnzoo.classes``, ``cnnzoo.input``,
``cnnzoo.image_size``).
Resize images as ``cnnzoo predict`` does (``cnnzoo.inference.predict``) before feeding them.

Needs the optional extra: ``pip install 'cnnzoo[onnx]'`` (onnx and onnxruntime). The exporter is
PyTorch's TorchScript-based one (``dynamo=False``), which needs nothing else.
"""

from __future__ import annotations

import json
import os
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from cnnzoo.atomic import atomic_path, require_writable
from cnnzoo.data import normalize
from cnnzoo.errors import UserError, one_line
from cnnzoo.inference.export_defaults import DEFAULT_ATOL, DEFAULT_OPSET, MAX_OPSET, MIN_OPSET
from cnnzoo.train.rundir import reported_write

INPUT_NORMALISED = {  # metadata: what the graph's input is, by --include-normalization
    True: "float32 NCHW RGB in [0, 1] (pixel / 255); normalised inside the graph",
    False: "float32 NCHW RGB, normalised: (pixel / 255 - mean) / std",
}
REAL_IMAGES = 64  # test-split images used for the check


class ExportMismatch(RuntimeError):
    """onnxruntime's outputs differ from PyTorch's by more than the tolerance; nothing written."""


class Normalized(nn.Module):
    """``model((x - mean) / std)`` for ``x`` RGB in [0, 1], NCHW."""

    def __init__(self, model: nn.Module, mean, std) -> None:
        super().__init__()
        self.model = model
        self.register_buffer("mean", torch.tensor(mean, dtype=torch.float32).view(1, 3, 1, 1))
        self.register_buffer("std", torch.tensor(std, dtype=torch.float32).view(1, 3, 1, 1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.model((x - self.mean) / self.std)


@dataclass
class ExportReport:
    path: Path
    model: str
    opset: int
    include_normalization: bool
    random_diff: float
    real_diff: float | None  # None when no real images were available
    real_count: int
    real_note: str  # why the real check was skipped, or where the images came from
    atol: float
    mean: tuple[float, ...]
    std: tuple[float, ...]
    classes: list[str]
    image_size: int = 32  # the input's height and width


def _require_onnx():
    try:
        import onnx
        import onnxruntime
    except ImportError as err:
        raise UserError(
            f"export needs onnx and onnxruntime ({err.name} is missing): pip install 'cnnzoo[onnx]'"
        ) from None
    return onnx, onnxruntime


def export_onnx(
    checkpoint: str | os.PathLike | dict[str, Any],
    out: str | os.PathLike,
    opset: int = DEFAULT_OPSET,
    include_normalization: bool = False,
    atol: float = DEFAULT_ATOL,
    data: str | None = None,
) -> ExportReport:
    """Export ``checkpoint`` to ``out`` and check it with onnxruntime against PyTorch on random
    inputs (batches of 1 and 8) and on real test images when the dataset is available.

    The file is written to a temporary name and renamed into place only when the check passes;
    otherwise ``ExportMismatch`` is raised and ``out`` is left as it was.
    """
    onnx, ort = _require_onnx()
    from cnnzoo.inference.predict import checkpoint_image_size, checkpoint_normalization
    from cnnzoo.inference.weights import output_file
    from cnnzoo.train import load_checkpoint, model_from_checkpoint

    if not MIN_OPSET <= opset <= MAX_OPSET:
        raise UserError(f"--opset must be between {MIN_OPSET} and {MAX_OPSET}, got {opset}")
    if not atol > 0:
        raise UserError(f"--atol must be positive, got {atol}")
    out = output_file(out, ".onnx")
    ckpt = load_checkpoint(checkpoint)
    mean, std = checkpoint_normalization(ckpt)
    model = model_from_checkpoint(ckpt).float().eval()
    module = Normalized(model, mean, std).eval() if include_normalization else model
    classes = [str(c) for c in ckpt.get("classes") or range(int(ckpt["num_classes"]))]
    size = checkpoint_image_size(ckpt)

    require_writable(out.parent)
    # the folder takes files: a failed write now (a full disk, the rename) is a WriteFailed
    # naming the file (exit code 1), the user's old file kept
    with reported_write(out), atomic_path(out) as tmp:
        _export(module, tmp, opset, size)
        meta = {
            "cnnzoo.model": str(ckpt["model_name"]),
            "cnnzoo.classes": json.dumps(classes),
            "cnnzoo.mean": json.dumps(list(mean)),
            "cnnzoo.std": json.dumps(list(std)),
            "cnnzoo.input": INPUT_NORMALISED[include_normalization],
            "cnnzoo.image_size": str(size),
        }
        _check_and_label(onnx, tmp, meta)
        session = ort.InferenceSession(str(tmp), providers=["CPUExecutionProvider"])
        random_diff, real_diff, real, real_note = _compare(
            session, module, ckpt, data, include_normalization, mean, std
        )
        _require_close(random_diff, atol, out)
        if real_diff is not None:  # apart: max(random_diff, nan) would drop the NaN
            _require_close(real_diff, atol, out)
    return ExportReport(
        path=out,
        model=str(ckpt["model_name"]),
        opset=opset,
        include_normalization=include_normalization,
        random_diff=random_diff,
        real_diff=real_diff,
        real_count=0 if real is None else int(real.shape[0]),
        real_note=real_note,
        atol=atol,
        mean=mean,
        std=std,
        classes=classes,
        image_size=size,
    )


def _require_close(worst: float, atol: float, out: Path) -> None:
    """``ExportMismatch`` (so that ``out`` is not written) unless ``worst`` <= ``atol``."""
    if not np.isfinite(worst) or worst > atol:
        raise ExportMismatch(
            f"onnxruntime and PyTorch differ by {worst:.3g} (tolerance {atol:g}); {out} not written"
        )


def _check_and_label(onnx, path: Path, meta: dict[str, str]) -> None:
    """Run the ONNX checker on ``path`` and store ``meta`` in its metadata_props."""
    proto = onnx.load(str(path))
    onnx.checker.check_model(proto)
    for key, value in meta.items():
        prop = proto.metadata_props.add()
        prop.key, prop.value = key, value
    onnx.save(proto, str(path))


def _compare(session, module: nn.Module, ckpt, data, include_normalization: bool, mean, std):
    """Max |onnxruntime - PyTorch| on random inputs (batches of 1 and 8) and on real test images
    when a local copy of the dataset is found: (random diff, real diff or None, the real
    images or None, where they came from or why not)."""

    def max_diff(x: torch.Tensor) -> float:
        with torch.no_grad():
            want = module(x).numpy()
        (got,) = session.run(["logits"], {"input": x.numpy()})
        if got.shape != want.shape:
            raise ExportMismatch(f"onnxruntime output shape {got.shape}, PyTorch {want.shape}")
        return float(np.max(np.abs(got.astype(np.float64) - want.astype(np.float64))))

    g = torch.Generator().manual_seed(0)
    make = torch.rand if include_normalization else torch.randn
    from cnnzoo.inference.predict import checkpoint_image_size

    s = checkpoint_image_size(ckpt)
    random_diff = max(max_diff(make(n, 3, s, s, generator=g)) for n in (1, 8))
    real, real_note = _real_images(ckpt, data)
    if real is None:
        return random_diff, None, None, real_note
    x = (
        real.permute(0, 3, 1, 2).float().div(255.0).contiguous()
        if include_normalization
        else normalize(real, mean, std, channels_last=False).contiguous()
    )
    return random_diff, max_diff(x), real, real_note


def _export(module: nn.Module, path: Path, opset: int, size: int) -> None:
    """The TorchScript-based exporter with a dynamic batch dimension; a failure is one line."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        try:
            torch.onnx.export(
                module,
                (torch.zeros(2, 3, size, size),),
                str(path),
                dynamo=False,
                opset_version=opset,
                input_names=["input"],
                output_names=["logits"],
                dynamic_axes={"input": {0: "batch"}, "logits": {0: "batch"}},
                do_constant_folding=True,
            )
        except OSError:
            raise  # writing the file failed, not the export: reported as a write failure
        except Exception as err:
            first = one_line(err, first_line=True)
            raise UserError(f"ONNX export failed (opset {opset}): {first}") from None


def _real_images(ckpt: dict[str, Any], data: str | None) -> tuple[torch.Tensor | None, str]:
    """Up to ``REAL_IMAGES`` uint8 NHWC test images of the checkpoint's dataset, or None and why.

    Only local data is used: the check never downloads. ``data`` given explicitly (``--data``)
    must load; the location stored in the checkpoint is used only if it is still there.
    """
    from cnnzoo.data import DATASETS, load_dataset
    from cnnzoo.data.cifar import default_root, is_synthetic, local_source
    from cnnzoo.data.folder import is_image_folder
    from cnnzoo.inference.predict import checkpoint_image_size

    cfg = ckpt.get("config", {}) or {}
    dataset = str(cfg.get("dataset", "cifar10"))
    explicit = data is not None
    source = data if explicit else cfg.get("data")
    if not is_synthetic(source):
        spec = DATASETS.get(dataset)
        root = Path(source) if source is not None else default_root()
        if not is_image_folder(root) and (spec is None or local_source(spec, root) is None):
            if explicit:
                raise UserError(f"no {dataset} data at {root}")
            return None, f"skipped: no local copy of {dataset} (pass --data PATH)"
    try:
        ds = load_dataset(dataset, source, quiet=True, image_size=checkpoint_image_size(ckpt))
    except UserError as err:
        if explicit:
            raise
        return None, f"skipped: {err}"
    if ds.num_classes != int(ckpt["num_classes"]):
        msg = f"{ds.name} has {ds.num_classes} classes, the checkpoint {ckpt['num_classes']}"
        if explicit:
            raise UserError(msg)
        return None, f"skipped: {msg}"
    return ds.test_x[:REAL_IMAGES].contiguous(), f"{ds.name} test split"
