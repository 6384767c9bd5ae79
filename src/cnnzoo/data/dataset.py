"""The in-memory dataset every loader reads: uint8 images, int64 labels, names, statistics."""

from __future__ import annotations

from dataclasses import dataclass

from torch import Tensor


@dataclass
class Dataset:
    """Images as uint8 NHWC tensors (N, 32, 32, 3), labels as int64 (N,)."""

    name: str
    train_x: Tensor
    train_y: Tensor
    test_x: Tensor
    test_y: Tensor
    classes: list[str]
    mean: tuple[float, float, float]
    std: tuple[float, float, float]
    source: str = ""  # where it came from: the archive or folder, or "synthetic:N" (generated)
    md5: str | None = None  # of the archive read; None for a folder or generated data

    @property
    def num_classes(self) -> int:
        return len(self.classes)
