"""Parameter and FLOP counts, whole-model (``cnnzoo models``) and per layer (``cnnzoo summary``).

Both come from the same forward pass helper and the same ``FlopCounterMode``, so a per-layer
table's totals are the model's counts by construction.
"""

from __future__ import annotations

import contextlib
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn
from torch.utils.flop_counter import FlopCounterMode

from cnnzoo.models.receptive_field import ReceptiveFieldMode

CIFAR_INPUT = (1, 3, 32, 32)


def count_params(model: nn.Module, trainable_only: bool = False) -> int:
    """Parameter elements of ``model`` (each shared tensor once); ``trainable_only``: only
    those with ``requires_grad``."""
    return sum(p.numel() for p in model.parameters() if p.requires_grad or not trainable_only)


def count_flops(model: nn.Module, input_size: tuple[int, ...] = CIFAR_INPUT) -> int:
    """Forward FLOPs for one input of ``input_size`` (FLOPs = 2 × multiply-accumulates).

    Counted by ``torch.utils.flop_counter.FlopCounterMode``, which counts convolutions and
    matrix products only (BatchNorm, ReLU, pooling and additions are not counted).
    The model is run in eval mode and restored to its previous mode.
    """
    counter = FlopCounterMode(display=False)
    _forward(model, input_size, [counter])
    return int(counter.get_total_flops())


@torch.no_grad()
def _forward(model: nn.Module, input_size: tuple[int, ...], modes: Sequence[Any]) -> None:
    """One forward pass of a zero batch of ``input_size`` in eval mode (the model's mode is
    restored afterwards), inside the context managers ``modes``."""
    was_training = model.training
    model.eval()
    try:
        with contextlib.ExitStack() as stack:
            for mode in modes:
                stack.enter_context(mode)
            model(torch.zeros(input_size))
    finally:
        model.train(was_training)


@dataclass(frozen=True)
class LayerRow:
    """One module of a summary.

    ``params`` and ``flops`` are what this row adds to the totals: the module's own parameters
    and FLOPs (those not inside a child module, e.g. a functional conv in ``forward``) plus those
    of every descendant folded into it by ``depth``. So the rows sum to the totals, and an
    unfolded container usually shows 0. ``rf`` and ``jump`` (height, width) are the receptive
    field and effective stride of the module's output in input pixels (see
    ``cnnzoo.models.receptive_field``); ``None`` when the output is not an (N, C, H, W) map or
    the field is unknown. A module called more than once shows its last output and the sum of
    its FLOPs.
    """

    path: str  # "features.0"; "" for the model itself
    type: str  # class name, e.g. "Conv2d"
    depth: int  # 0 for the model, 1 for its children, ...
    output_shape: tuple[int, ...] | None  # None: never called, or its output is not a tensor
    params: int
    flops: int
    rf: tuple[int, int] | None
    jump: tuple[int, int] | None


@dataclass(frozen=True)
class ModelSummary:
    input_size: tuple[int, ...]
    rows: tuple[LayerRow, ...]
    params: int  # count_params(model)
    flops: int  # the FlopCounterMode total, as count_flops(model, input_size)


def summarize(
    model: nn.Module, input_size: tuple[int, ...] = CIFAR_INPUT, depth: int | None = None
) -> ModelSummary:
    """Per-module output shape, parameters, forward FLOPs and receptive field for one forward
    pass of a zero input of ``input_size``, in ``model.named_modules()`` order.

    ``depth`` folds modules deeper than ``depth`` (the model is 0, its children 1, ...) into
    their ancestor at that depth; ``None`` keeps every module.
    """
    if depth is not None and depth < 0:
        raise ValueError(f"depth must be >= 0, got {depth}")
    outputs: dict[str, Any] = {}
    counter, tracker = FlopCounterMode(display=False), ReceptiveFieldMode()

    def record(path: str):
        def hook(module: nn.Module, args: Any, output: Any) -> None:
            # kept: (shape, field) of the output, so no activation outlives the pass
            if isinstance(output, torch.Tensor):
                outputs[path] = (tuple(output.shape), tracker.field(output))

        return hook

    modules = dict(model.named_modules())
    handles = [m.register_forward_hook(record(path)) for path, m in modules.items()]
    handles.append(model.register_forward_pre_hook(lambda _m, args: tracker.track(args[0])))
    try:
        _forward(model, input_size, [counter, tracker])
    finally:
        for h in handles:
            h.remove()
    own_flops = _own_flops(model, counter)
    rows = _fold(modules, outputs, own_flops, depth)
    return ModelSummary(
        tuple(input_size), rows, count_params(model), int(counter.get_total_flops())
    )


def _depth(path: str) -> int:
    return 0 if not path else path.count(".") + 1


def _own_flops(model: nn.Module, counter: FlopCounterMode) -> dict[str, int]:
    """FLOPs of each module outside its children. FlopCounterMode counts inclusively, under the
    name ``<root class>.<path>`` (its module tracker's naming), so subtract the children."""
    counts = counter.get_flop_counts()
    root = type(model).__name__

    def inclusive(path: str) -> int:
        return sum(counts.get(f"{root}.{path}" if path else root, {}).values())

    own = {}
    for path, module in model.named_modules():
        prefix = f"{path}." if path else ""
        children = sum(inclusive(prefix + name) for name, _ in module.named_children())
        own[path] = inclusive(path) - children
    return own


def _fold(
    modules: dict[str, nn.Module],
    outputs: dict[str, Any],
    own_flops: dict[str, int],
    depth: int | None,
) -> tuple[LayerRow, ...]:
    """One row per module at most ``depth`` deep; a deeper module adds its own parameters and
    FLOPs to its ancestor at ``depth`` (the first ``depth`` components of its path)."""
    params = dict.fromkeys(modules, 0)
    flops = dict.fromkeys(modules, 0)
    for path, module in modules.items():
        owner = path if depth is None or _depth(path) <= depth else _ancestor(path, depth)
        params[owner] += sum(p.numel() for p in module.parameters(recurse=False))
        flops[owner] += own_flops[path]
    rows = []
    for path, module in modules.items():
        if depth is not None and _depth(path) > depth:
            continue
        shape, field = outputs.get(path, (None, None))
        spatial = field is not None and shape is not None and len(shape) == 4
        rows.append(
            LayerRow(
                path=path,
                type=type(module).__name__,
                depth=_depth(path),
                output_shape=shape,
                params=params[path],
                flops=flops[path],
                rf=(field[0][0], field[1][0]) if spatial else None,
                jump=(field[0][1], field[1][1]) if spatial else None,
            )
        )
    return tuple(rows)


def _ancestor(path: str, depth: int) -> str:
    return ".".join(path.split(".")[:depth])
