"""Classify image files with a trained checkpoint.

Every file is decoded, converted to RGB and resized as ``cnnzoo.data.images.load_image`` says
(EXIF orientation, transparency on white, shorter side resized to the checkpoint's image size,
32 for CIFAR, then centre-cropped), the same function that reads image folders for training.
It is then normalised exactly as in training: ``(pixel / 255 - mean) / std`` per channel with
the mean and std stored in the checkpoint (``cnnzoo.data.normalize``, the function the training
loader uses).
"""

from __future__ import annotations

import os
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import Any

import torch

from cnnzoo.data.images import SIZE, load_image
from cnnzoo.errors import UserError


@dataclass
class Prediction:
    file: str
    top_k: list[tuple[str, float]] | None = None  # (class, probability), most likely first
    error: str | None = None

    def to_dict(self) -> dict[str, Any]:
        if self.error is not None:
            return {"file": self.file, "error": self.error}
        assert self.top_k is not None
        return {"file": self.file, "top_k": [{"class": c, "prob": p} for c, p in self.top_k]}


class Predictor:
    """A checkpoint ready for inference: model in eval mode, its normalisation and class names."""

    def __init__(self, checkpoint: str | os.PathLike | dict, device: str = "cpu") -> None:
        from cnnzoo.train import load_checkpoint, model_from_checkpoint
        from cnnzoo.train.runtime import resolve_device

        ckpt = load_checkpoint(checkpoint)
        self.device = resolve_device(device)
        self.model = model_from_checkpoint(ckpt).to(self.device)
        self.num_classes = int(ckpt["num_classes"])
        self.mean, self.std = checkpoint_normalization(ckpt)
        classes = ckpt.get("classes")
        if not classes or len(classes) != self.num_classes:
            classes = [f"class{i}" for i in range(self.num_classes)]
        self.classes = [str(c) for c in classes]
        self.model_name = str(ckpt["model_name"])
        self.image_size = checkpoint_image_size(ckpt)

    @torch.no_grad()
    def probabilities(self, images: torch.Tensor) -> torch.Tensor:
        """uint8 NHWC (N, S, S, 3), S = ``image_size`` -> float32 (N, classes) softmax
        probabilities (CPU)."""
        from cnnzoo.data import normalize

        x = normalize(images.to(self.device), self.mean, self.std, channels_last=False)
        return torch.softmax(self.model(x).float(), dim=1).cpu()

    def top_k(self, probs: torch.Tensor, k: int) -> list[list[tuple[str, float]]]:
        k = min(k, self.num_classes)
        values, indices = probs.topk(k, dim=1)
        return [
            [(self.classes[i], float(p)) for p, i in zip(vs.tolist(), ix.tolist(), strict=True)]
            for vs, ix in zip(values, indices, strict=True)
        ]


def checkpoint_normalization(
    ckpt: dict[str, Any],
) -> tuple[tuple[float, ...], tuple[float, ...]]:
    """The per-channel mean and std the checkpoint was trained with."""
    if ckpt.get("mean") is not None and ckpt.get("std") is not None:
        return tuple(float(v) for v in ckpt["mean"]), tuple(float(v) for v in ckpt["std"])
    from cnnzoo.data import DATASETS

    name = ckpt.get("config", {}).get("dataset", "cifar10")
    if name in DATASETS:  # older checkpoints without stored statistics
        return DATASETS[name].mean, DATASETS[name].std
    raise UserError("the checkpoint stores no normalisation (mean/std)")


def checkpoint_image_size(ckpt: dict[str, Any]) -> int:
    """The side of the images the checkpoint was trained on (``--image-size``; checkpoints from
    before that option, and every CIFAR run, are 32)."""
    return int((ckpt.get("config") or {}).get("image_size") or SIZE)


def _chunks(items: Sequence[str], n: int) -> Iterator[Sequence[str]]:
    for i in range(0, len(items), n):
        yield items[i : i + n]


def check_options(top_k: int, batch_size: int) -> None:
    """``UserError`` for a ``--top-k`` or ``--batch-size`` below 1."""
    if top_k < 1:
        raise UserError(f"--top-k must be at least 1, got {top_k}")
    if batch_size < 1:
        raise UserError(f"--batch-size must be at least 1, got {batch_size}")


def predict_files(
    predictor: Predictor, files: Sequence[str], top_k: int = 5, batch_size: int = 256
) -> Iterator[Prediction]:
    """Yield one ``Prediction`` per file, in order; a file that cannot be read gets ``error``
    set instead of stopping the others. Images are decoded and classified ``batch_size`` at a
    time, so memory stays bounded however many files there are."""
    check_options(top_k, batch_size)  # (a generator's body runs at the first next(): the
    # command line calls it itself, before it loads the model)
    for chunk in _chunks(list(files), batch_size):
        results: list[Prediction] = []
        good: list[torch.Tensor] = []
        slots: list[int] = []
        for f in chunk:
            try:
                img = load_image(f, predictor.image_size)
            except UserError as err:
                results.append(Prediction(str(f), error=str(err)))
                continue
            slots.append(len(results))
            results.append(Prediction(str(f)))
            good.append(img)
        if good:
            ranked = predictor.top_k(predictor.probabilities(torch.stack(good)), top_k)
            for slot, tk in zip(slots, ranked, strict=True):
                results[slot].top_k = tk
        yield from results
