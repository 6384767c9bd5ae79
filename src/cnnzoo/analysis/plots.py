"""Shared matplotlib helpers: a headless backend, PNG + SVG output, plain styles."""

from __future__ import annotations

from pathlib import Path
from types import ModuleType
from typing import Any

from cnnzoo.atomic import atomic_open
from cnnzoo.train.rundir import reported_write


def pyplot() -> ModuleType:
    """matplotlib.pyplot on the non-interactive Agg backend (works without a display)."""
    import matplotlib

    matplotlib.use("Agg", force=True)
    import matplotlib.pyplot as plt

    return plt


def save_figure(fig: Any, path: str | Path, svg: bool = True) -> list[Path]:
    """Save ``fig`` as PNG at ``path`` and, with ``svg``, beside it as SVG, each through a temp
    file and a rename (a crash or a full disk never leaves a torn figure over the last one);
    close it either way."""
    plt = pyplot()
    path = Path(path).with_suffix(".png")
    out = [path, path.with_suffix(".svg")] if svg else [path]
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        for file in out:  # a failed write: WriteFailed naming that file, the old one kept
            with reported_write(file), atomic_open(file, "wb") as f:
                extra = {"dpi": 120} if file.suffix == ".png" else {}
                fig.savefig(f, format=file.suffix[1:], bbox_inches="tight", **extra)
    finally:
        plt.close(fig)
    return out


def plot_confusion(
    confusion: list[list[int]], classes: list[str], path: str | Path, title: str = ""
) -> list[Path]:
    plt = pyplot()
    import numpy as np

    m = np.asarray(confusion, dtype=float)
    n = len(classes)
    size = max(5.0, 0.5 * n)
    fig, ax = plt.subplots(figsize=(size, size))
    im = ax.imshow(m, cmap="Blues")
    fig.colorbar(im, ax=ax, fraction=0.046, pad=0.04, label="images")
    if n <= 20:
        ax.set_xticks(range(n), classes, rotation=45, ha="right")
        ax.set_yticks(range(n), classes)
        for i in range(n):
            for j in range(n):
                color = "white" if m[i, j] > m.max() / 2 else "black"
                ax.text(j, i, f"{int(m[i, j])}", ha="center", va="center", fontsize=7, color=color)
    ax.set_xlabel("predicted class")
    ax.set_ylabel("true class")
    ax.set_title(title or "confusion matrix")
    return save_figure(fig, path)
