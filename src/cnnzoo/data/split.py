"""Stratified train/validation split."""

from __future__ import annotations

import torch
from torch import Tensor


def stratified_split(labels: Tensor, n_val: int, seed: int) -> tuple[Tensor, Tensor]:
    """Indices (train, val) with ``n_val`` validation items spread evenly over classes.

    Each class gives ``floor(n_val * class_share)`` items and what flooring leaves over goes one
    each to the largest classes (so a class far smaller than the others may give none), chosen by
    a seeded permutation, so the split is the same for the same seed.
    """
    n = labels.numel()
    if not 0 <= n_val < n:
        raise ValueError(f"validation size must be in [0, {n}), got {n_val}")
    g = torch.Generator().manual_seed(seed)
    classes, counts = labels.unique(return_counts=True)
    quota = (counts.double() * n_val / n).floor().long()
    short = n_val - int(quota.sum())
    quota[counts.argsort(descending=True)[:short]] += 1  # hand out what rounding left over
    val_parts = []
    for c, q in zip(classes.tolist(), quota.tolist(), strict=True):
        idx = (labels == c).nonzero().flatten()
        val_parts.append(idx[torch.randperm(idx.numel(), generator=g)[:q]])
    val = torch.cat(val_parts).sort().values if val_parts else torch.empty(0, dtype=torch.long)
    mask = torch.ones(n, dtype=torch.bool)
    mask[val] = False
    return mask.nonzero().flatten(), val
