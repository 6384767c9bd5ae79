"""The in-memory dataset every loader reads: uint8 images, int64 labels, names, statistics."""

from __future__ import annotations

from dataclasses import dataclass

from torch import Tensor


@dataclass
class Dataset:
    """Images as uint8 NHWC tensors (N, H, W, 3), 32×32 for CIFAR; labels as int64 (N,).

    ``val_x``/``val_y`` are set only when the data comes with its own validation images (an
    image folder's ``val/``); otherwise training holds a stratified part of ``train_x`` out.
    """

    name: str
    train_x: Tensor
    train_y: Tensor
    test_x: Tensor
    test_y: Tensor
    classes: list[str]
    mean: tuple[float, float, float]
    std: tuple[float, float, float]
    source: str = ""  # where it came from: the archive or folder, or "synthetic:N" (generated)
    val_x: Tensor | None = None
    val_y: Tensor | None = None
    md5: str | None = None  # of the archive read; None for a folder or generated data

    @property
    def num_classes(self) -> int:
        return len(self.classes)

    @property
    def image_size(self) -> int:
        return int(self.train_x.shape[1])
