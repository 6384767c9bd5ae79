"""mixup (Zhang et al. 2018) and cutmix (Yun et al. 2019) as batched tensor operations.

Each batch is mixed with a permutation of itself: mixup blends whole images,
``x = λ·x + (1-λ)·x[perm]``; cutmix pastes a box of ``x[perm]`` covering a fraction 1-λ of the
image. λ ~ Beta(α, α), one per batch (as timm); with both enabled each batch uses one of the two
at random. The labels become class probabilities ``λ·onehot(y) + (1-λ)·onehot(y[perm])`` (with
λ recomputed from the box actually pasted), which ``nn.CrossEntropyLoss`` takes as targets.
Every draw comes from a generator seeded by (seed, epoch, rank, batch): a fixed seed gives fixed
batches, whether the epoch runs in one go or resumes at any batch (nothing to draw and discard).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor


@dataclass(frozen=True)
class Mix:
    mixup: float = 0.0  # Beta(α, α) for mixup; 0 = off
    cutmix: float = 0.0  # Beta(α, α) for cutmix; 0 = off
    num_classes: int = 10

    @property
    def enabled(self) -> bool:
        return self.mixup > 0 or self.cutmix > 0


def mix_rng(seed: int, epoch: int, rank: int, batch: int) -> np.random.Generator:
    return np.random.default_rng([seed, epoch, rank, batch, 7949])


def mix_batch(x: Tensor, y: Tensor, mix: Mix, rng: np.random.Generator) -> tuple[Tensor, Tensor]:
    """x: (B, C, H, W) float images, y: (B,) class ids -> mixed images, (B, classes) targets."""
    use_cutmix = mix.cutmix > 0 and (mix.mixup <= 0 or rng.random() < 0.5)
    lam = float(rng.beta(*(2 * (mix.cutmix if use_cutmix else mix.mixup,))))
    perm = torch.from_numpy(rng.permutation(x.shape[0])).to(x.device)
    if use_cutmix:
        x, lam = _cutmix(x, perm, lam, rng)
    else:
        x = lam * x + (1.0 - lam) * x[perm]
    onehot = F.one_hot(y, mix.num_classes).to(x.dtype)
    return x, lam * onehot + (1.0 - lam) * onehot[perm]


def _cutmix(x: Tensor, perm: Tensor, lam: float, rng: np.random.Generator) -> tuple[Tensor, float]:
    """Paste a box of side fractions sqrt(1-λ) at a uniform centre (clipped at the border);
    returns the images and λ recomputed as the area left unpasted."""
    h, w = x.shape[2:]
    cut_h, cut_w = int(h * np.sqrt(1.0 - lam)), int(w * np.sqrt(1.0 - lam))
    cy, cx = int(rng.integers(h)), int(rng.integers(w))
    top, bottom = max(cy - cut_h // 2, 0), min(cy + cut_h - cut_h // 2, h)
    left, right = max(cx - cut_w // 2, 0), min(cx + cut_w - cut_w // 2, w)
    x = x.clone()
    x[:, :, top:bottom, left:right] = x[perm, :, top:bottom, left:right]
    return x, 1.0 - (bottom - top) * (right - left) / (h * w)
