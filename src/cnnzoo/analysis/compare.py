"""Side-by-side comparison of trained runs: curves (mean ± std over seeds), a summary table in
Markdown/CSV/JSON, and the difference between the first two models in words.

Every model is trained with the same ``TrainConfig`` apart from the model name, and with the same
seeds, so each seed gives every model the same validation split, data order and augmentation
draws: the differences left are the architecture's (and the weight initialisation's).
"""

from __future__ import annotations

import csv
import dataclasses
import io
import json
import math
import shutil
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from cnnzoo.data.cifar import absolute_data, data_md5
from cnnzoo.errors import UserError
from cnnzoo.models.registry import split_depth
from cnnzoo.train.rundir import (
    REQUESTED_KEY,
    RunDir,
    requested_part,
    write_json,
    write_text_atomic,
)

if TYPE_CHECKING:
    from cnnzoo.train.config import TrainConfig

CURVES = (
    ("train_loss", "training loss", "cross-entropy loss"),
    ("train_acc", "training accuracy", "accuracy (%)"),
    ("val_acc", "validation accuracy", "accuracy (%)"),
)
TABLE_COLUMNS = (
    "model",
    "seeds",
    "params",
    "flops",
    "best_val_acc",
    "best_val_acc_std",
    "test_acc",
    "test_acc_std",
    "train_seconds",
    "img_per_s",
)


@dataclass
class Run:
    """One finished run directory: its config, per-epoch metrics and summary."""

    path: Path
    model: str
    seed: int
    config: dict[str, Any]
    history: list[dict[str, Any]]
    summary: dict[str, Any] = field(default_factory=dict)


def load_run(path: str | Path) -> Run:
    """Read a finished run; ``UserError`` when the directory is not one."""
    run = RunDir(Path(path))
    if not run.is_finished():
        missing = "summary.json" if run.file("config.json").is_file() else "config.json"
        raise UserError(f"{run.path} is not a finished run directory (no {missing})")
    config, summary, history = run.config(), run.summary() or {}, run.metrics()
    if not history:
        raise UserError(f"{run.path} has no metrics.jsonl rows")
    return Run(run.path, config["model"], int(config.get("seed", 0)), config, history, summary)


def train_runs(
    models: list[str],
    seeds: list[int],
    out: Path,
    make_config: Callable[[str, int, Path], Any],
    log: Callable[[str], None] = print,
) -> list[Run]:
    """Train every (model, seed) into ``out/runs/<model>-s<seed>``; finished runs are reused, so
    an interrupted comparison continues where it stopped (an unfinished one is resumed). A run
    found there with another configuration is a ``UserError`` (``check_same_experiment``)."""
    from cnnzoo.train import train

    runs = []
    for seed in seeds:
        for model in models:
            run_dir = out / "runs" / f"{model}-s{seed}"
            found, cfg = RunDir(run_dir), make_config(model, seed, run_dir)
            if found.is_finished() or found.has_checkpoint():
                # a resumed run keeps its saved config too: either must be the one asked for
                check_same_experiment(found, cfg)
            if found.is_finished():
                log(f"reusing finished run {run_dir}")
            elif found.has_checkpoint():
                log(f"resuming {run_dir}")
                train(cfg, resume=run_dir)
            else:
                if run_dir.exists():
                    # a run of this comparison's that died before its first checkpoint: start it
                    # again from nothing (its folders too, such as tensorboard/)
                    shutil.rmtree(run_dir)
                train(cfg)
            runs.append(load_run(run_dir))
    return runs


# TrainConfig option groups (``cnnzoo.train.config.opt``) that define what a run computes; the
# others (runtime: device, precision, threads...; run: checkpointing, logging) say only how or
# where it ran, so a finished run is reused across them.
EXPERIMENT_GROUPS = ("data", "optimisation")


def experiment_fields(cfg: TrainConfig) -> dict[str, Any]:
    """The fields of ``cfg`` that define its experiment (model, model_kwargs, every data and
    optimisation option), as config.json stores them (JSON values: tuples become lists)."""
    names = ["model", "model_kwargs"] + [
        f.name
        for f in dataclasses.fields(cfg)
        if f.metadata.get("cli", {}).get("group") in EXPERIMENT_GROUPS
    ]
    return {name: json.loads(json.dumps(getattr(cfg, name))) for name in names}


def check_same_experiment(found: RunDir, cfg: TrainConfig) -> None:
    """``UserError`` naming every field where the run in ``found`` differs from ``cfg`` (the
    configuration asked for now): reusing it would report another experiment's numbers."""
    recorded = found.config()  # read once: the values used, and the asked-for part in it
    stored = requested_part(recorded, found.file("config.json"))
    defaults, old_format = experiment_fields(type(cfg)()), REQUESTED_KEY not in recorded
    diffs = []
    for name, want in experiment_fields(cfg).items():
        # a config.json older than its "requested" part holds the validation images actually
        # held out: the default (None, 10% of whatever the data holds) cannot be compared
        if name == "val" and want is None and old_format:
            continue
        # a run older than a field ran with its default
        have = stored.get(name, defaults[name])
        if name == "data":  # recorded absolute (an older run as typed, read from this folder)
            have, want = absolute_data(have), absolute_data(want)
            md5 = recorded.get("data_md5")  # the archive moved or copied: the same data
            if have != want and md5 and data_md5(cfg.dataset, want) == md5:
                continue
        if have != want:
            diffs.append(f"{name} {have!r} there, {want!r} asked")
    if diffs:
        raise UserError(
            f"{found.path} was trained with another configuration ({'; '.join(diffs)}); "
            "give another --out, or remove that run to train it again"
        )


def group_runs(runs: Iterable[Run]) -> dict[str, list[Run]]:
    """Runs by model name, in first-seen order. A model given twice with one seed is a
    ``UserError``: its numbers would be counted as two seeds."""
    groups: dict[str, list[Run]] = {}
    for run in runs:
        groups.setdefault(run.model, []).append(run)
    for model, rs in groups.items():
        seeds = [r.seed for r in rs]
        if len(set(seeds)) != len(seeds):
            raise UserError(f"{model} appears twice with the same seed; give each run once")
    return groups


def _mean_std(values: list[float]) -> tuple[float, float]:
    vals = [v for v in values if v is not None and math.isfinite(v)]
    if not vals:
        return float("nan"), float("nan")
    m = sum(vals) / len(vals)
    if len(vals) < 2:
        return m, 0.0
    return m, math.sqrt(sum((v - m) ** 2 for v in vals) / (len(vals) - 1))


def summary_rows(groups: dict[str, list[Run]]) -> list[dict[str, Any]]:
    """One row per model: params and FLOPs of the architecture (FLOPs at the run's image size),
    accuracies as mean and sample std over seeds, training time and throughput as means."""
    from cnnzoo.models import count_flops, count_params, create_model

    rows = []
    for model, runs in groups.items():
        cfg = runs[0].config
        # recorded by the trainer; older runs: from the dataset name (not for generated data)
        num_classes = cfg.get("num_classes") or (100 if cfg.get("dataset") == "cifar100" else 10)
        net = create_model(model, num_classes=num_classes, **cfg.get("model_kwargs", {}))
        side = cfg.get("image_size", 32)  # runs older than --image-size trained on CIFAR's 32
        val_m, val_s = _mean_std([r.summary.get("best_val_acc") for r in runs])
        test_m, test_s = _mean_std([r.summary.get("test_acc") for r in runs])
        rows.append(
            {
                "model": model,
                "seeds": len(runs),
                "params": count_params(net),
                "flops": count_flops(net, (1, 3, side, side)),
                "best_val_acc": val_m,
                "best_val_acc_std": val_s,
                "test_acc": test_m,
                "test_acc_std": test_s,
                "train_seconds": _mean_std([r.summary.get("train_seconds") for r in runs])[0],
                "img_per_s": _mean_std([r.summary.get("mean_img_per_s") for r in runs])[0],
                "runs": [str(r.path) for r in runs],
            }
        )
    return rows


def difference_sentence(rows: list[dict[str, Any]]) -> str:
    """The first model minus the second, in words. A resnetN/plainN pair differs only in its
    skip connections, and is named so (as resnet minus plain, whichever came first)."""
    if len(rows) < 2:
        return ""
    a, b = rows[0], rows[1]
    (stem_a, depth_a), (stem_b, depth_b) = split_depth(a["model"]), split_depth(b["model"])
    if {stem_a, stem_b} == {"resnet", "plain"} and depth_a == depth_b:
        if a["model"].startswith("plain"):
            a, b = b, a
        label = "skip connections"
    else:
        label = f"{a['model']} instead of {b['model']}"
    diff = 100 * (a["test_acc"] - b["test_acc"])
    text = f"{label}: {diff:+.2f}% test accuracy ({a['model']} vs {b['model']}"
    if a["seeds"] > 1 or b["seeds"] > 1:
        se = 100 * math.sqrt(
            a["test_acc_std"] ** 2 / a["seeds"] + b["test_acc_std"] ** 2 / b["seeds"]
        )
        text += f", ± {se:.2f} standard error over {a['seeds']} and {b['seeds']} seeds"
    return text + ")"


def _fmt_acc(mean: float, std: float, seeds: int) -> str:
    if not math.isfinite(mean):
        return "–"
    return f"{100 * mean:.2f} ± {100 * std:.2f}" if seeds > 1 else f"{100 * mean:.2f}"


def markdown_table(rows: list[dict[str, Any]]) -> str:
    head = (
        "| model | seeds | parameters | GFLOPs | best val acc (%) | test acc (%) "
        "| training time (s) | img/s |\n|---|---:|---:|---:|---:|---:|---:|---:|\n"
    )
    body = "".join(
        f"| {r['model']} | {r['seeds']} | {r['params']:,} | {r['flops'] / 1e9:.3f} "
        f"| {_fmt_acc(r['best_val_acc'], r['best_val_acc_std'], r['seeds'])} "
        f"| {_fmt_acc(r['test_acc'], r['test_acc_std'], r['seeds'])} "
        f"| {r['train_seconds']:.1f} | {r['img_per_s']:.0f} |\n"
        for r in rows
    )
    return head + body


def write_summary(out: Path, rows: list[dict[str, Any]], sentence: str) -> list[Path]:
    """summary.md, summary.csv and summary.json in ``out``."""
    out.mkdir(parents=True, exist_ok=True)
    md = "# Comparison\n\n" + markdown_table(rows)
    md += "\nAccuracies: mean ± sample std over seeds; test accuracy of best.pt (chosen on "
    md += "validation accuracy).\n"
    if sentence:
        md += f"\n**{sentence}**\n"
    write_text_atomic(out / "summary.md", md)
    buf = io.StringIO()
    w = csv.DictWriter(buf, fieldnames=TABLE_COLUMNS, extrasaction="ignore")
    w.writeheader()
    w.writerows(rows)
    write_text_atomic(out / "summary.csv", buf.getvalue())
    write_json(out / "summary.json", {"kind": "compare", "models": rows, "difference": sentence})
    return [out / "summary.md", out / "summary.csv", out / "summary.json"]


def plot_curves(groups: dict[str, list[Run]], path: str | Path, title: str = "") -> list[Path]:
    """The notebook's three panels (training loss, training accuracy, validation accuracy per
    epoch), one line per model; with several seeds the mean with a shaded ±1 std band."""
    import numpy as np

    from cnnzoo.analysis.plots import pyplot, save_figure

    plt = pyplot()
    from matplotlib.ticker import MaxNLocator

    fig, axes = plt.subplots(1, 3, figsize=(16, 4.5))
    for i, (model, runs) in enumerate(groups.items()):
        color = f"C{i % 10}"
        n_epochs = min(len(r.history) for r in runs)
        epochs = np.arange(1, n_epochs + 1)
        for ax, (key, _title, _unit) in zip(axes, CURVES, strict=True):
            vals = [[row.get(key) for row in r.history[:n_epochs]] for r in runs]
            arr = np.array([[np.nan if v is None else v for v in vs] for vs in vals], dtype=float)
            if np.isnan(arr).all():
                continue
            if key.endswith("acc"):
                arr = 100 * arr
            mean = np.nanmean(arr, axis=0)
            label = model if len(runs) == 1 else f"{model} (mean ± std, {len(runs)} seeds)"
            ax.plot(epochs, mean, color=color, label=label, marker="." if n_epochs < 30 else None)
            if len(runs) > 1:
                std = np.nanstd(arr, axis=0, ddof=1)
                ax.fill_between(epochs, mean - std, mean + std, color=color, alpha=0.2)
    for ax, (_key, name, unit) in zip(axes, CURVES, strict=True):
        ax.set_title(name)
        ax.set_xlabel("epoch")
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        ax.set_ylabel(unit)
        ax.grid(alpha=0.3)
        ax.legend(loc="best", fontsize=8)
    if title:
        fig.suptitle(title)
    return save_figure(fig, path)


def write_comparison(out: Path, runs: list[Run]) -> dict[str, Any]:
    """Every artifact of a comparison; returns {"rows", "sentence", "files"}."""
    groups = group_runs(runs)
    rows = summary_rows(groups)
    sentence = difference_sentence(rows)
    files = write_summary(out, rows, sentence)
    files += plot_curves(groups, out / "curves.png", title="training curves")
    return {"rows": rows, "sentence": sentence, "files": files}
