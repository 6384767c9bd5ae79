"""FastNet: a small, wide, shallow network built for speed runs, after Keller Jordan's airbench94
("94% on CIFAR-10 in 3.29 seconds on a single GPU", 2024), itself descended from David Page's
ResNet-9 (2018) and hlb-CIFAR10.

Why this shape trains to ~94% in ~10 epochs:
- a frozen 2×2 "whitening" stem conv without padding (3→24, 32×32 → 31×31): its filters are
  the ± eigenvectors of the 2×2-patch covariance of the training images, scaled to unit
  variance (``init_from_data``; the trainer calls it), so the first layer decorrelates pixels
  at no training cost — and, frozen, needs no weight gradient (which oneDNN computes slowly
  for 3-channel inputs); only its bias learns;
- three conv groups ``conv3×3 → maxpool2 → BN → GELU → conv3×3 → BN → GELU`` at widths
  64 / 256 / 256: pooling right after the first conv of a group makes the second conv 4× cheaper,
  and almost all FLOPs sit in wide convs, which bf16 AMX/oneDNN (or a GPU) run near peak;
- BatchNorm with a frozen unit scale (the nets are then scale-invariant in their conv weights)
  and a fast-moving running average (momentum 0.4), so statistics track the quickly changing
  weights of a short run;
- the BN shifts learn 64× faster than the weights, as in airbench (``bias_scale``: the shift is
  stored as ``bias / bias_scale`` so plain SGD sees an effective learning rate × bias_scale²);
- partially identity ("dirac") initialised convs, so the untrained net passes its input through;
- a global 3×3 max-pool, a bias-free linear head and a fixed 1/9 output scale (calm logits at
  the start, which label smoothing then keeps calm).

Shapes (CIFAR, N images): (N,3,32,32) → stem (N,24,31,31) → group1 (N,64,15,15)
→ group2 (N,256,7,7) → group3 (N,256,3,3) → pool (N,256,1,1) → logits (N,classes).
"""

from __future__ import annotations

import functools

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from cnnzoo.models.registry import register_model


class ShiftBN(nn.BatchNorm2d):
    """BatchNorm without a scale (it stays 1) and with a learnable shift stored divided by
    ``bias_scale``.

    Storing ``b / s`` and multiplying by ``s`` in the forward pass makes SGD move ``b`` with an
    effective learning rate ``s²`` times the global one (and momentum and weight decay act on the
    stored value exactly as on any other parameter), so no optimizer parameter groups are needed.
    """

    def __init__(
        self, channels: int, bias_scale: float = 8.0, momentum: float = 0.4, eps: float = 1e-12
    ) -> None:
        super().__init__(channels, momentum=momentum, eps=eps, affine=False)
        self.bias = nn.Parameter(torch.zeros(channels))  # no scale: the next conv absorbs it
        self.bias_scale = bias_scale
        # cuDNN's batch norm returns no gradient for the shift when the scale is None (seen on an
        # H100, torch 2.11): pass a constant unit scale instead. Not saved in the state dict.
        self.register_buffer("unit_scale", torch.ones(channels), persistent=False)

    def forward(self, x: Tensor) -> Tensor:
        use_batch = self.training or not self.track_running_stats
        return F.batch_norm(
            x,
            self.running_mean,
            self.running_var,
            self.unit_scale,
            self.bias * self.bias_scale,
            use_batch,
            self.momentum or 0.0,
            self.eps,
        )


def _conv(c_in: int, c_out: int, kernel: int = 3, padding: int = 1) -> nn.Conv2d:
    """A bias-free conv whose first ``c_in`` filters start as the identity (dirac) map."""
    conv = nn.Conv2d(c_in, c_out, kernel, padding=padding, bias=False)
    if kernel % 2 == 1:
        nn.init.dirac_(conv.weight.data[: min(c_in, c_out)])
    return conv


class ConvGroup(nn.Sequential):
    """conv → maxpool 2 → BN → GELU → conv → BN → GELU: (N,c_in,H,W) → (N,c_out,H/2,W/2)."""

    def __init__(self, c_in: int, c_out: int, bias_scale: float, eps: float = 1e-12) -> None:
        super().__init__(
            _conv(c_in, c_out),
            nn.MaxPool2d(2),
            ShiftBN(c_out, bias_scale, eps=eps),
            nn.GELU(),
            _conv(c_out, c_out),
            ShiftBN(c_out, bias_scale, eps=eps),
            nn.GELU(),
        )


class FastNet(nn.Module):
    """Stem, three conv groups, global max-pool, scaled linear head (see the module docstring).

    Needs a data-dependent initialisation: the trainer calls ``init_from_data`` with the first
    ``INIT_IMAGES`` training images before the first step (airbench94 uses 5,000)."""

    INIT_IMAGES = 5000

    def __init__(
        self,
        num_classes: int = 10,
        widths: tuple[int, int, int] = (64, 256, 256),
        stem: int = 24,
        bias_scale: float = 8.0,
        scale: float = 1 / 9,
        stem_pad: int = 0,
        stem_bias_scale: float = 1.0,
        bn_eps: float = 1e-12,
    ) -> None:
        super().__init__()
        if len(widths) != 3 or min(widths) < 1 or stem < 1:
            raise ValueError(f"widths must be three positive ints and stem positive: {widths}")
        if stem % 2:
            raise ValueError(f"stem must be even (± filter pairs), got {stem}")
        # fixed filters, so a buffer: (stem, 3, 2, 2); (N,3,32,32) → (N,stem,31,31)
        self.register_buffer("stem_weight", torch.empty(stem, 3, 2, 2))
        nn.init.kaiming_uniform_(self.stem_weight, a=5**0.5)  # until init_from_data replaces it
        self.stem_pad = stem_pad
        # stored / stem_bias_scale like ShiftBN's shift; 1 (airbench94): the plain learning rate
        self.stem_bias = nn.Parameter(torch.zeros(stem))
        self.stem_bias_scale = stem_bias_scale
        self.act = nn.GELU()
        self.layers = nn.Sequential(
            ConvGroup(stem, widths[0], bias_scale, bn_eps),
            ConvGroup(widths[0], widths[1], bias_scale, bn_eps),
            ConvGroup(widths[1], widths[2], bias_scale, bn_eps),
        )
        self.pool = nn.AdaptiveMaxPool2d(1)  # (N,C,3,3) → (N,C,1,1) on 32×32 inputs
        self.fc = nn.Linear(widths[2], num_classes, bias=False)
        self.scale = scale
        for m in self.modules():
            if isinstance(m, ShiftBN):
                nn.init.zeros_(m.bias)

    @torch.no_grad()
    def init_from_data(self, images: Tensor, eps: float = 5e-4) -> None:
        """Set the stem to whiten 2×2 patches of ``images`` (n,3,H,W), normalised as in training.

        With C = E[p pᵀ] over the n·(H-1)·(W-1) patches p (12-vectors) and C = V diag(λ) Vᵀ,
        the filters are ±vᵢ / sqrt(λᵢ + eps), largest λ first: outputs are decorrelated, unit
        variance, and the ± pair keeps both signs through the GELU.
        """
        w = self.stem_weight  # (stem, 3, 2, 2)
        k = w[0].numel()  # 12 for 3 channels
        if images.ndim != 4 or images.shape[1] != w.shape[1]:
            raise ValueError(f"expected (n,{w.shape[1]},H,W) images, got {tuple(images.shape)}")
        patches = F.unfold(images.float(), kernel_size=w.shape[2:])  # (n, 12, L)
        flat = patches.transpose(1, 2).reshape(-1, k).double()  # (n·L, 12)
        cov = flat.T @ flat / flat.shape[0]
        eigvals, eigvecs = torch.linalg.eigh(cov)  # ascending
        eigvals, eigvecs = eigvals.flip(0), eigvecs.T.flip(0)  # (12,), (12, 12) rows = vectors
        filters = (eigvecs / torch.sqrt(eigvals.clamp_min(0) + eps)[:, None]).view(-1, *w.shape[1:])
        half = w.shape[0] // 2
        reps = -(-half // k)  # more than 2·12 filters: repeat the basis
        filters = filters.repeat(reps, 1, 1, 1)[:half]
        w.copy_(torch.cat([filters, -filters]).to(w.dtype))

    def forward(self, x: Tensor) -> Tensor:
        x = F.conv2d(x, self.stem_weight, padding=self.stem_pad)
        x = x + (self.stem_bias * self.stem_bias_scale).view(1, -1, 1, 1).to(x.dtype)
        x = self.layers(self.act(x))
        return self.fc(self.pool(x).flatten(1)) * self.scale


@register_model(
    "fastnet",
    family="FastNet",
    paper="Jordan 2024 (airbench94)",
    year=2024,
    key_feature="speed-run net: whitening stem, 3 wide conv-pool-BN groups",
    depth=8,
)
def fastnet(
    *,
    num_classes: int = 10,
    widths: tuple[int, int, int] | list[int] = (64, 256, 256),
    stem: int = 24,
    bias_scale: float = 8.0,
    stem_pad: int = 0,
    stem_bias_scale: float = 1.0,
    bn_eps: float = 1e-12,
) -> nn.Module:
    """The airbench94-shaped net; ``widths`` (64, 256, 256) are the three groups' channels.
    As airbench94: BN eps 1e-12, and the stem bias at the plain learning rate
    (``stem_bias_scale`` 1; the BN shifts at 64×, ``bias_scale`` 8)."""
    return FastNet(
        num_classes,
        tuple(widths),
        stem,
        bias_scale,
        stem_pad=stem_pad,
        stem_bias_scale=stem_bias_scale,
        bn_eps=bn_eps,
    )


# FastNet narrowed for CPUs without AMX: the first group's 24→64 conv runs at 31×31 and is cheap
# in FLOPs but slow in oneDNN, so it shrinks most (114 vs 236 MFLOP forward; 2.1× the training
# images per second on two AVX-512 cores at batch 128, 748 vs 357, measured by
# benchmarks/fastnet_widths.py). A partial of ``fastnet``: the same keywords, other widths.
fastnet_small = register_model(
    "fastnet_small",
    family="FastNet",
    paper="Jordan 2024 (airbench94), narrowed",
    year=2024,
    key_feature="FastNet at widths 32/192/192: half the FLOPs, for a 10-minute CPU run",
    depth=8,
)(functools.partial(fastnet, widths=(32, 192, 192)))
