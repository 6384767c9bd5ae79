"""Shared matplotlib helpers: a headless backend, PNG + SVG output, plain styles."""

from __future__ import annotations

from pathlib import Path
from types import ModuleType
from typing import Any


def pyplot() -> ModuleType:
    """matplotlib.pyplot on the non-interactive Agg backend (works without a display)."""
    import matplotlib

    matplotlib.use("Agg", force=True)
    import matplotlib.pyplot as plt

    return plt


def save_figure(fig: Any, path: str | Path, svg: bool = True) -> list[Path]:
    """Save ``fig`` as PNG at ``path`` and, with ``svg``, beside it as SVG; close it."""
    plt = pyplot()
    path = Path(path).with_suffix(".png")
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=120, bbox_inches="tight")
    out = [path]
    if svg:
        fig.savefig(path.with_suffix(".svg"), bbox_inches="tight")
        out.append(path.with_suffix(".svg"))
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
