"""Receptive field and effective stride of every activation of a 2-D image network.

Tracked op by op through one forward pass (a ``TorchDispatchMode`` sees every aten op), so skips,
branches and functional convolutions count, not only ``nn.Conv2d`` modules in a sequence.

Per spatial axis, ``r`` is the receptive field (how many input pixels one output value can see)
and ``j`` the jump, or effective stride (input pixels between two neighbouring outputs). The input
image has r = j = 1. A window of kernel ``k``, dilation ``d`` and stride ``s`` maps

    r <- r + d·(k-1)·j,    j <- j·s

(Araujo et al. 2019, "Computing Receptive Fields of Convolutional Neural Networks"); padding moves
the field but does not change its size. So two stacked 3×3 convs see 5×5 pixels, like one 5×5.

The rules, per op:
- convolutions, max- and average-pools: the window formula;
- a global or adaptive pool, or a mean/max/sum over a spatial axis, from length ``n`` to ``o``
  (``o`` dividing ``n``; 1 for a reduction): a window with k = s = n/o;
- strided slicing ``x[..., ::s]`` along H or W (the option-A ResNet shortcut): k = 1, stride s;
- every other op (addition, concatenation, BatchNorm, activations, padding, views): per axis, the
  largest r and j over its tracked inputs. So a block's output has the receptive field of its
  widest path: a ResNet block max(residual branch, shortcut), an Inception module its widest
  branch.

The field becomes unknown (``None``) from a transposed conv, an adaptive pool whose output length
does not divide its input's, or another op that changes H or W (e.g. upsampling), and stays unknown
downstream. Sizes are theoretical: they may exceed the image, whose border is padding.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
from torch import Tensor
from torch.fx.operator_schemas import normalize_function
from torch.utils import _pytree as pytree
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils.weak import WeakTensorKeyDictionary

Axis = tuple[int, int]  # (receptive field, jump) along one spatial axis
Field = tuple[Axis, Axis]  # (H axis, W axis) of an (N, C, H, W) activation

INPUT: Field = ((1, 1), (1, 1))  # each input pixel sees itself

aten = torch.ops.aten
_KEEPS_FIELD_SIZE = {aten.constant_pad_nd}  # changes H, W by padding only


def window(
    field: Field, kernel: Sequence[int], stride: Sequence[int], dilation: Sequence[int] = (1, 1)
) -> Field:
    """The field after a window op (the formula in the module docstring); one value = both axes."""
    k, s, d = _pair(kernel), _pair(stride), _pair(dilation)
    (rh, jh), (rw, jw) = field
    return (
        (rh + d[0] * (k[0] - 1) * jh, jh * s[0]),
        (rw + d[1] * (k[1] - 1) * jw, jw * s[1]),
    )


def _pair(v: Sequence[int] | int) -> tuple[int, int]:
    if isinstance(v, int):
        return v, v
    return (v[0], v[0]) if len(v) == 1 else (v[0], v[1])


class ReceptiveFieldMode(TorchDispatchMode):
    """Within ``with ReceptiveFieldMode() as rf:``, after ``rf.track(x)`` on the input,
    ``rf.field(t)`` is the :data:`Field` of any tensor computed from it (``None`` if unknown or
    not computed from the input). Fields live as long as their tensors (weak keys)."""

    def __init__(self) -> None:
        super().__init__()
        self._fields = WeakTensorKeyDictionary()

    def track(self, x: Tensor) -> None:
        self._fields[x] = INPUT

    def field(self, t: Any) -> Field | None:
        return self._fields.get(t) if isinstance(t, Tensor) else None

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        out = func(*args, **kwargs)
        tracked = [
            t
            for t in pytree.tree_leaves((args, kwargs))
            if isinstance(t, Tensor) and t in self._fields
        ]
        if tracked:  # weights, buffers and constants are not activations: they carry no field
            field = _rule(func, args, kwargs, [self._fields[t] for t in tracked], tracked[0], out)
            for t in pytree.tree_leaves(out):
                if isinstance(t, Tensor):
                    self._fields[t] = field
        return out


def _rule(func, args, kwargs, fields, x: Tensor, out) -> Field | None:
    """The output field of ``func``; ``x`` is its first tracked input, ``fields`` all of theirs."""
    if any(f is None for f in fields):
        return None
    handler = _HANDLERS.get(func.overloadpacket)
    if handler is not None:
        if x.ndim != 4:  # a window or reduction over something that is not an (N,C,H,W) map
            return None
        bound = normalize_function(func, args, kwargs, normalize_to_only_use_kwargs=True)
        return None if bound is None else handler(bound.kwargs, fields[0], tuple(x.shape[2:]))
    if func.overloadpacket not in _KEEPS_FIELD_SIZE and _resizes(x, out):
        return None  # the map is resized by rules not known here (e.g. upsampling)
    return _widest(fields)


def _resizes(x: Tensor, out: Any) -> bool:
    y = next((t for t in pytree.tree_leaves(out) if isinstance(t, Tensor)), None)
    return x.ndim == 4 and y is not None and y.ndim == 4 and y.shape[2:] != x.shape[2:]


def _widest(fields: list[Field]) -> Field:
    """Per axis, the largest receptive field and jump over the inputs (the widest path)."""
    h = (max(f[0][0] for f in fields), max(f[0][1] for f in fields))
    w = (max(f[1][0] for f in fields), max(f[1][1] for f in fields))
    return h, w


# Handlers take the op's arguments by name (defaults filled in), the input's field and its (H, W).
def _conv(a: dict[str, Any], field: Field, hw: tuple[int, ...]) -> Field | None:
    if a["transposed"] or a["weight"].ndim != 4:
        return None
    return window(field, a["weight"].shape[2:], a["stride"], a["dilation"])


def _pool(a: dict[str, Any], field: Field, hw: tuple[int, ...]) -> Field:
    k = a["kernel_size"]  # an empty stride means stride = kernel
    return window(field, k, a["stride"] or k, a.get("dilation", (1, 1)))


def _adaptive(a: dict[str, Any], field: Field, hw: tuple[int, ...]) -> Field | None:
    # windows are uniform (k = s = n/o) only when o divides n
    out = _pair(a["output_size"])
    if any(o < 1 or n % o for n, o in zip(hw, out, strict=True)):
        return None
    k = [n // o for n, o in zip(hw, out, strict=True)]
    return window(field, k, k)


def _reduce(a: dict[str, Any], field: Field, hw: tuple[int, ...]) -> Field:
    # a reduction over a whole spatial axis is a window of its full length; dims index (N,C,H,W)
    dims = {d % 4 for d in a["dim"]} if a.get("dim") else {0, 1, 2, 3}
    k = [hw[i] if 2 + i in dims else 1 for i in range(2)]
    return window(field, k, k)


def _slice(a: dict[str, Any], field: Field, hw: tuple[int, ...]) -> Field:
    stride = [1, 1]
    if a["dim"] % 4 >= 2:  # x[..., ::s] along H or W keeps every s-th pixel
        stride[a["dim"] % 4 - 2] = a["step"]
    return window(field, (1, 1), stride)


_HANDLERS = {
    aten.convolution: _conv,
    aten.max_pool2d_with_indices: _pool,
    aten.max_pool2d: _pool,
    aten.avg_pool2d: _pool,
    aten.adaptive_max_pool2d: _adaptive,
    aten._adaptive_avg_pool2d: _adaptive,
    aten.adaptive_avg_pool2d: _adaptive,
    aten.mean: _reduce,
    aten.amax: _reduce,
    aten.amin: _reduce,
    aten.sum: _reduce,
    aten.slice: _slice,
}
