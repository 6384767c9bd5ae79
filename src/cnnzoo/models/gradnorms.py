"""Per-layer gradient norms of every conv weight, ordered by depth: the measurement itself.

The reference notebook reads ``param.grad.norm()`` for every parameter whose name holds "conv",
at initialisation only. Here: every ``nn.Conv2d`` weight in forward order (shortcut projections
included, named as such), from one training-mode batch, on a copy of the model so that neither
the model's BatchNorm statistics nor the random streams are touched. It lives with the models
(it inspects one) so that the trainer can record it per epoch (``--record-gradflow``) without
importing the experiments of ``cnnzoo.analysis.gradflow``, which build on it.
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


def _local_batch_norm(module: nn.Module) -> nn.Module:
    """SyncBatchNorm layers as plain BatchNorm2d with the same state: the measurement runs on
    one rank, and a training-mode SyncBatchNorm forward is a collective the other ranks never
    join (they would hang)."""
    for name, child in module.named_children():
        if isinstance(child, nn.SyncBatchNorm):
            bn = nn.BatchNorm2d(
                child.num_features,
                child.eps,
                child.momentum,
                child.affine,
                child.track_running_stats,
            ).to(next(child.buffers()).device)
            bn.load_state_dict(child.state_dict())
            setattr(module, name, bn)
        else:
            _local_batch_norm(child)
    return module


def rng_devices(x: Tensor) -> list[torch.device]:
    """The accelerators whose random streams the measurement must fork besides the CPU's:
    dropout in the measured copy draws on the device of ``x``, so that a run with
    --record-gradflow keeps the same random streams as one without (CPU and CUDA alike)."""
    return [x.device] if x.device.type == "cuda" else []


def conv_grad_norms(
    model: nn.Module,
    x: Tensor,
    y: Tensor,
    criterion: nn.Module | None = None,
    amp: Callable[[], contextlib.AbstractContextManager] | None = None,
) -> tuple[list[str], list[float]]:
    """(layer names, L2 norms of d loss / d weight) for every conv, input side first."""
    work = _local_batch_norm(copy.deepcopy(model)).train()
    criterion = criterion or nn.CrossEntropyLoss()
    with torch.random.fork_rng(devices=rng_devices(x)):
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
