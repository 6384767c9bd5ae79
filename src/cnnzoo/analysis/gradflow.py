"""Per-layer gradient norms of every conv weight, ordered by depth.

The reference notebook reads ``param.grad.norm()`` for every parameter whose name holds "conv",
at initialisation only. Here: every ``nn.Conv2d`` weight in forward order (shortcut projections
included, named as such), from one training-mode batch, on a copy of the model so that neither
the model's BatchNorm statistics nor the global RNG are touched.
"""

from __future__ import annotations

import contextlib
import copy
from collections.abc import Callable

import torch
from torch import Tensor, nn


def conv_layers_in_order(model: nn.Module, x: Tensor) -> list[str]:
    """Names of the Conv2d modules in the order the forward pass calls them."""
    order: list[str] = []
    names = {m: n for n, m in model.named_modules() if isinstance(m, nn.Conv2d)}
    hooks = [m.register_forward_pre_hook(lambda mod, _i: order.append(names[mod])) for m in names]
    try:
        with torch.no_grad():
            model(x[:2])
    finally:
        for h in hooks:
            h.remove()
    seen: set[str] = set()
    return [n for n in order if not (n in seen or seen.add(n))]


def conv_grad_norms(
    model: nn.Module,
    x: Tensor,
    y: Tensor,
    criterion: nn.Module | None = None,
    amp: Callable[[], contextlib.AbstractContextManager] | None = None,
) -> tuple[list[str], list[float]]:
    """(layer names, L2 norms of d loss / d weight) for every conv, input side first."""
    work = copy.deepcopy(model).train()
    criterion = criterion or nn.CrossEntropyLoss()
    with torch.random.fork_rng(devices=[]):
        order = conv_layers_in_order(work, x)
        # the ordering pass above updated BN statistics of the copy only; restore them anyway
        work.load_state_dict(model.state_dict())
        work.zero_grad(set_to_none=True)
        with amp() if amp else contextlib.nullcontext():
            loss = criterion(work(x), y)
        loss.backward()
    modules = dict(work.named_modules())
    norms = [modules[n].weight.grad.float().norm().item() for n in order]
    return order, norms


def summarize(norms: list[float]) -> dict[str, float]:
    """max/min ratio and first/last ratio (first = nearest the input)."""
    lo = min(norms)
    return {
        "max_min_ratio": max(norms) / lo if lo > 0 else float("inf"),
        "first_last_ratio": norms[0] / norms[-1] if norms[-1] > 0 else float("inf"),
    }
