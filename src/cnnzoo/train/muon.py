"""Muon (Jordan et al. 2024, "Muon: an optimizer for hidden layers"): SGD momentum whose update
for each weight matrix is orthogonalised, as airbench94_muon trains FastNet's conv filters.

For a conv weight W of shape (out, in, k, k) and its Nesterov momentum update U, Muon steps
``W ← W - lr · O(U.reshape(out, in·k·k))``, where O(U) ≈ U'Vᵀ for U = U'SVᵀ: every singular
direction of the update moves by about the same amount, so the rarely-used directions of a
filter bank learn as fast as the dominant one. O is a quintic Newton–Schulz iteration (no
SVD, only matrix products); its coefficients (3.4445, -4.7750, 2.0315) push singular values
towards ~1 fast rather than exactly: after 3 steps a Gaussian 192×1728 matrix's land in
[0.74, 1.20], while directions ~100× weaker than the strongest are lifted only ~10× (measured).

``torch.optim.Muon`` (torch ≥ 2.9) takes 2-D parameters only and runs the iteration in bf16,
which on a CPU without bf16 units is slow (a 192×1728 Gram product ran 8× slower than in
fp32 on two AVX2 Zen 3 cores); this one flattens conv filters and iterates in fp32 on the CPU.

As airbench94_muon, a Muon group may rescale each weight to Frobenius norm √out before its
step (``normalize``): with BatchNorm after every conv the net does not depend on the weights'
scale, so this only fixes the step size relative to the weights (0.24 ≈ 0.24 rad at the peak
learning rate). Parameters that are not matrices (biases, BN shifts) and the classifier go to
groups with ``muon=False``, which step exactly as ``torch.optim.SGD`` does (momentum, Nesterov,
coupled weight decay): one optimizer, one state dict, one learning-rate schedule.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

import torch
from torch import Tensor

NS_COEFFICIENTS = (3.4445, -4.7750, 2.0315)


def orthogonalize(g: Tensor, steps: int = 3, eps: float = 1e-7) -> Tensor:
    """≈ U Vᵀ of the 2-D ``g`` = U S Vᵀ by ``steps`` quintic Newton–Schulz iterations.

    Divided by its Frobenius norm first, so every singular value is ≤ 1; each iteration maps a
    singular value σ to aσ + bσ³ + cσ⁵. Iterated on the wide orientation (rows ≤ columns), so
    the Gram matrix X Xᵀ is the small one. fp32 on a CPU, bf16 on a GPU (as airbench94_muon).
    """
    if g.ndim != 2:
        raise ValueError(f"orthogonalize takes a matrix, got shape {tuple(g.shape)}")
    a, b, c = NS_COEFFICIENTS
    x = g.to(torch.bfloat16 if g.is_cuda else torch.float32)
    x = x / (x.norm() + eps)
    tall = x.shape[0] > x.shape[1]
    if tall:
        x = x.T
    for _ in range(steps):
        gram = x @ x.T  # (rows, rows)
        x = a * x + (b * gram + c * gram @ gram) @ x
    return (x.T if tall else x).to(g.dtype)


class Muon(torch.optim.Optimizer):
    """Muon for the param groups with ``muon=True`` (any parameter of ≥ 2 dims, flattened to
    (shape[0], -1)); plain SGD for the rest.

    Group options: ``lr``, ``momentum``, ``nesterov``, ``weight_decay`` (SGD groups only: a
    Muon group's weights are normalised instead), ``muon``, ``normalize`` (Muon groups) and
    ``ns_steps``. Momentum is the SGD form, ``buf ← momentum · buf + grad``; Nesterov steps
    along ``grad + momentum · buf``.
    """

    def __init__(
        self,
        params: Iterable[Tensor] | Iterable[dict[str, Any]],
        lr: float = 0.02,
        momentum: float = 0.6,
        nesterov: bool = True,
        weight_decay: float = 0.0,
        muon: bool = True,
        normalize: bool = True,
        ns_steps: int = 3,
    ) -> None:
        if lr < 0 or not 0 <= momentum < 1 or weight_decay < 0 or ns_steps < 1:
            raise ValueError(f"bad Muon options: {lr=}, {momentum=}, {weight_decay=}, {ns_steps=}")
        defaults = dict(
            lr=lr, momentum=momentum, nesterov=nesterov, weight_decay=weight_decay,
            muon=muon, normalize=normalize, ns_steps=ns_steps,
        )  # fmt: skip
        super().__init__(params, defaults)
        for group in self.param_groups:
            if group["muon"] and group["weight_decay"]:
                raise ValueError("a Muon group takes no weight decay (its weights are normalised)")
            if group["muon"] and any(p.ndim < 2 for p in group["params"]):
                raise ValueError("Muon groups take matrices and conv filters (>= 2 dims) only")

    @torch.no_grad()
    def step(self, closure: Any = None) -> Tensor | None:
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        for group in self.param_groups:
            for p in group["params"]:
                if p.grad is not None:
                    self._step_param(p, group)
        return loss

    def _step_param(self, p: Tensor, group: dict[str, Any]) -> None:
        grad, momentum, state = p.grad, group["momentum"], self.state[p]
        if not group["muon"] and group["weight_decay"]:
            grad = grad.add(p, alpha=group["weight_decay"])
        buf = state.get("momentum_buffer")
        if buf is None:
            buf = state["momentum_buffer"] = grad.detach().clone()
        else:
            buf.mul_(momentum).add_(grad)
        update = grad.add(buf, alpha=momentum) if group["nesterov"] else buf
        if group["muon"]:
            if group["normalize"]:  # ‖W‖_F = √out: the scale BN makes irrelevant, held fixed
                p.mul_(p.shape[0] ** 0.5 / p.norm().clamp_min(1e-12))
            update = orthogonalize(update.reshape(p.shape[0], -1), group["ns_steps"])
            update = update.view_as(p)
        p.add_(update, alpha=-group["lr"])
