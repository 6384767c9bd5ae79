"""The architecture table (the notebook's Part 9) and a parameters/FLOPs bar chart of the zoo."""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path
from typing import Any

from cnnzoo.train.rundir import write_text_atomic


def architecture_rows(names: Iterable[str], num_classes: int = 10) -> list[dict[str, Any]]:
    """One row per model (name, params, flops, depth, year, paper, key_feature), in the order
    given: each model is built once on the CPU to count its parameters and FLOPs."""
    from cnnzoo.models import count_flops, count_params, create_model, model_info

    rows = []
    for name in names:
        info = model_info(name)
        model = create_model(name, num_classes=num_classes)
        rows.append(
            {
                "name": name,
                "params": count_params(model),
                "flops": count_flops(model),
                "depth": info.depth,
                "year": info.year,
                "paper": info.paper,
                "key_feature": info.key_feature,
            }
        )
    return rows


def zoo_markdown(rows: list[dict[str, Any]]) -> str:
    """Rows of ``architecture_rows`` as a Markdown table."""
    head = (
        "| model | parameters | GFLOPs | depth | year | paper | key feature |\n"
        "|---|---:|---:|---:|---:|---|---|\n"
    )
    return head + "".join(
        f"| {r['name']} | {r['params']:,} | {r['flops'] / 1e9:.3f} | {r['depth']} | {r['year']} "
        f"| {r['paper']} | {r['key_feature']} |\n"
        for r in rows
    )


def _short(n: float) -> str:
    for div, unit in ((1e9, "G"), (1e6, "M"), (1e3, "k")):
        if abs(n) >= div:
            return f"{n / div:.3g}{unit}"
    return f"{n:.3g}"


def plot_zoo(rows: list[dict[str, Any]], path: str | Path) -> list[Path]:
    """Two horizontal bar panels, parameters and FLOPs per model on log axes (the zoo spans four
    orders of magnitude), each bar labelled with its value. Writes PNG + SVG, and the table
    (parameters, depth, key feature, year) beside them as Markdown."""
    from cnnzoo.analysis.plots import pyplot, save_figure

    if not rows:
        from cnnzoo.errors import UserError

        raise UserError("no models to plot")
    plt = pyplot()
    names = [r["name"] for r in rows]
    height = max(3.0, 0.35 * len(rows) + 1.5)
    fig, axes = plt.subplots(1, 2, figsize=(14, height), sharey=True)
    panels = (
        ("params", "parameters", "parameters (count, log scale)", "tab:blue"),
        ("flops", "FLOPs per 32x32 image", "FLOPs per forward pass (log scale)", "tab:orange"),
    )
    for ax, (key, title, xlabel, color) in zip(axes, panels, strict=True):
        vals = [float(r[key]) for r in rows]
        bars = ax.barh(range(len(rows)), vals, color=color, label=title)
        ax.set_xscale("log")
        ax.set_xlim(min(vals) / 2, max(vals) * 8)  # room for the value labels
        for bar, v in zip(bars, vals, strict=True):
            ax.text(v * 1.1, bar.get_y() + bar.get_height() / 2, _short(v), va="center", fontsize=8)
        ax.set_yticks(range(len(rows)), names)
        ax.invert_yaxis()
        ax.set_xlabel(xlabel)
        ax.set_title(title)
        ax.grid(axis="x", alpha=0.3)
        ax.legend(loc="lower right", fontsize=8)
    fig.suptitle("model zoo: size and compute (CIFAR, 10 classes)")
    written = save_figure(fig, path)
    table = Path(path).with_suffix(".md")
    write_text_atomic(table, "# Architectures\n\n" + zoo_markdown(rows))
    return [*written, table]
