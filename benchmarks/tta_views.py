"""Held-out accuracy of trained runs by test-time-augmentation views, paired on the same weights
and images: which views, and which ``--tta-fraction``, a recipe should evaluate with.

Each RUN directory must hold a run trained with ``--val N`` (``config.json`` and ``last.pt``,
the final weights). Its N held-out images (the same seeded split the run held out) are scored
once per view: the image shifted by (dy, dx) in [-2, 2] (reflection padding) and its mirror
image. The view sets below then average those logits without further forward passes:

- ``plain``: the image alone; ``flip``: image and mirror, ½ each;
- ``recipe``: airbench94's (``--tta --tta-shift 1``): ½ flip pair + ¼ each for the pairs
  shifted by (-1, -1) and (+1, +1);
- ``corners``: as ``recipe`` with all four diagonal shifts (⅛ each);
- ``grid``: the 9 shifts of {-1, 0, 1}², flip pairs, equal weights;
- ``recipe+2``: as ``recipe`` with the (±2, ±2) pairs added to the shifted half.

``set@F`` gives ``set`` only to the share F of each evaluation batch (the run's
``eval_batch_size``) with the lowest top softmax probability under ``plain``, as
``--tta-fraction F`` does; the rest keep ``plain``. The table lists each run's accuracy, the mean
and the paired difference to ``recipe`` per run.

    python benchmarks/tta_views.py runs/v5k/fastnet_small-fast-cpu-seed{0,1,2,3,4}
"""

from __future__ import annotations

import argparse
import functools
import json
import statistics
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import Tensor

from cnnzoo.data import load_dataset, stratified_split
from cnnzoo.data.dataset import Dataset
from cnnzoo.data.loader import normalize
from cnnzoo.errors import UserError
from cnnzoo.train import load_checkpoint, model_from_checkpoint
from cnnzoo.train.engine import tta_count
from cnnzoo.train.runtime import autocast, resolve_precision

DIAG = [(-1, -1), (1, 1)]
CORNERS = [*DIAG, (-1, 1), (1, -1)]
GRID = [(dy, dx) for dy in (-1, 0, 1) for dx in (-1, 0, 1)]
SHIFTS = sorted({*GRID, (-2, -2), (2, 2)})
FRACTIONS = (0.1, 0.2, 0.3, 0.4)


@torch.no_grad()
def view_logits(model: torch.nn.Module, x: Tensor, precision: str, batch: int) -> dict:
    """{(dy, dx, mirrored): (N, classes) float32 logits} for every shift in SHIFTS."""
    pad = 2
    padded = F.pad(x, (pad,) * 4, mode="reflect")  # (N, 3, H+4, W+4)
    h, w = x.shape[2:]
    out = {}
    for dy, dx in SHIFTS:
        view = padded[:, :, pad + dy : pad + dy + h, pad + dx : pad + dx + w]
        for mirrored in (False, True):
            v = (view.flip(3) if mirrored else view).contiguous(memory_format=torch.channels_last)
            with autocast(torch.device("cpu"), precision):
                parts = [model(v[i : i + batch]).float() for i in range(0, len(v), batch)]
            out[(dy, dx, mirrored)] = torch.cat(parts)
    return out


def view_sets(logits: dict) -> dict[str, Tensor]:
    """The named view sets (module docstring), each (N, classes)."""
    pair = {s: 0.5 * (logits[(*s, False)] + logits[(*s, True)]) for s in SHIFTS}

    def mean(shifts: list) -> Tensor:
        return sum(pair[s] for s in shifts) / len(shifts)

    centre = pair[(0, 0)]
    return {
        "plain": logits[(0, 0, False)],
        "flip": centre,
        "recipe": 0.5 * centre + 0.5 * mean(DIAG),
        "corners": 0.5 * centre + 0.5 * mean(CORNERS),
        "grid": mean(GRID),
        "recipe+2": 0.5 * centre + 0.5 * mean([*DIAG, (-2, -2), (2, 2)]),
    }


def gated(plain: Tensor, full: Tensor, fraction: float, batch: int) -> Tensor:
    """``full`` for the least sure images of each batch (as many as the trainer's evaluation
    gives TTA), else ``plain``."""
    out = plain.clone()
    sure = plain.softmax(1).amax(1)
    for start in range(0, len(plain), batch):
        chunk = sure[start : start + batch]
        idx = start + chunk.topk(tta_count(fraction, len(chunk)), largest=False).indices
        out[idx] = full[idx]
    return out


@functools.cache
def _dataset(name: str, source: str) -> Dataset:
    """Each dataset read once, however many runs of it are scored."""
    return load_dataset(name, source, quiet=True)


def score_run(run: Path, fractions: tuple[float, ...]) -> dict[str, float]:
    """Held-out accuracy (%) of ``run``'s final weights under each view set and gate."""
    cfg = json.loads((run / "config.json").read_text())
    if not cfg.get("val"):
        raise UserError(f"{run} held out no images (trained without --val N)")
    data = _dataset(cfg["dataset"], cfg["data"])
    _, val_idx = stratified_split(data.train_y, cfg["val"], seed=cfg["seed"])
    x = normalize(data.train_x[val_idx], data.mean, data.std, channels_last=False)
    y = data.train_y[val_idx]
    model = model_from_checkpoint(load_checkpoint(run / "last.pt"))
    model = model.to(memory_format=torch.channels_last)
    precision = resolve_precision(cfg.get("precision", "auto"), torch.device("cpu"))
    batch = int(cfg.get("eval_batch_size") or 1000)
    sets = view_sets(view_logits(model, x, precision, batch))
    acc = {name: 100 * (lo.argmax(1) == y).double().mean().item() for name, lo in sets.items()}
    for name, lo in sets.items():
        if name != "plain":
            for f in fractions:
                g = gated(sets["plain"], lo, f, batch)
                acc[f"{name}@{f:g}"] = 100 * (g.argmax(1) == y).double().mean().item()
    return acc


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("runs", nargs="+", type=Path, help="run directories trained with --val N")
    p.add_argument("--fractions", nargs="+", type=float, default=list(FRACTIONS))
    p.add_argument("--json", help="also write {run: {view set: accuracy}} here")
    args = p.parse_args(argv)
    if not all(0 < f <= 1 for f in args.fractions):
        p.error("--fractions must be in (0, 1]")
    scores = {str(run): score_run(run, tuple(args.fractions)) for run in args.runs}
    runs = list(scores.values())
    print(f"held-out accuracy (%) by views, {len(runs)} run(s); 'vs recipe' paired per run")
    names = [f"{r.parent.name}/{r.name}" for r in args.runs]  # seed dirs of several variants
    print("| views | " + " | ".join(names) + " | mean | vs recipe |")
    print("|---|" + "---:|" * len(runs) + "---:|---|")
    for name in runs[0]:
        accs = [r[name] for r in runs]
        diff = [r[name] - r["recipe"] for r in runs]
        per_run = ", ".join(f"{d:+.2f}" for d in diff)
        cells = " | ".join(f"{a:.2f}" for a in accs)
        print(
            f"| {name} | {cells} | {statistics.fmean(accs):.3f} | "
            f"{statistics.fmean(diff):+.3f} ({per_run}) |"
        )
    if args.json:
        Path(args.json).write_text(json.dumps(scores, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
