"""The model registry: ``@register_model``, ``create_model``, ``list_models``, ``model_info``,
``split_depth``.

Builders are plain functions ``builder(*, num_classes: int, **kwargs) -> nn.Module``.
Registering is a decorator so that importing ``cnnzoo.models`` fills the registry and
does nothing else (no model is built at import time).
"""

from __future__ import annotations

import difflib
import fnmatch
import inspect
import os
from collections.abc import Callable
from dataclasses import dataclass

from torch import nn

from cnnzoo.errors import UnknownModelError
from cnnzoo.models.weights import DEFAULT_TAG, manifest, resolve_weights

Builder = Callable[..., nn.Module]


@dataclass(frozen=True)
class ModelInfo:
    """What the zoo knows about one registered model."""

    name: str
    family: str
    paper: str  # short citation, e.g. "He et al. 2015"
    year: int
    key_feature: str
    depth: int  # weight layers (conv + linear) on the main path, as the papers count them
    builder: Builder


_REGISTRY: dict[str, ModelInfo] = {}


def register_model(
    name: str, *, family: str, paper: str, year: int, key_feature: str, depth: int
) -> Callable[[Builder], Builder]:
    """Register ``builder`` under ``name``. Names are unique."""

    def wrap(builder: Builder) -> Builder:
        if name in _REGISTRY:
            raise ValueError(f"model {name!r} is already registered")
        _REGISTRY[name] = ModelInfo(name, family, paper, year, key_feature, depth, builder)
        return builder

    return wrap


def list_models(pattern: str | None = None, *, pretrained: bool = False) -> list[str]:
    """Registered names, sorted; ``pattern`` is a glob such as ``'resnet*'``; ``pretrained``
    keeps the models whose weights ship in the package (``create_model(name, pretrained=True)``),
    as ``timm.list_models(pretrained=True)``."""
    names = sorted(_REGISTRY, key=_natural_key)
    if pattern:
        names = [n for n in names if fnmatch.fnmatchcase(n, pattern)]
    if pretrained:
        shipped = manifest()
        names = [n for n in names if n in shipped]
    return names


def model_info(name: str) -> ModelInfo:
    """Metadata of a registered model; unknown names raise ``UnknownModelError``."""
    try:
        return _REGISTRY[name]
    except KeyError:
        close = difflib.get_close_matches(name, list(_REGISTRY), n=4, cutoff=0.5)
        hint = f"; did you mean {', '.join(close)}?" if close else ""
        raise UnknownModelError(
            f"unknown model {name!r}{hint} (`cnnzoo models` lists all {len(_REGISTRY)})"
        ) from None


def create_model(
    name: str,
    num_classes: int | None = None,
    *,
    pretrained: bool = False,
    weights: str | os.PathLike | None = None,
    **kwargs: object,
) -> nn.Module:
    """Build a registered model, e.g. ``create_model('resnet20', num_classes=100)``.

    ``pretrained=True`` loads the weights shipped for CIFAR-10 (``weights="cifar10"``, checked
    by sha256); ``weights`` may also be a path to a .safetensors file from ``cnnzoo export``.
    With weights, the class count and builder arguments come from the file, and the file's
    metadata (classes, mean/std, recipe, measured accuracy) is ``model.pretrained_cfg``.
    Extra keyword arguments go to the builder (e.g. ``shortcut='B'`` for the CIFAR ResNets).
    Weights come from the global torch RNG: seed it with ``torch.manual_seed`` for repeatable
    initialisation.
    """
    info = model_info(name)
    if pretrained and weights is None:
        weights = DEFAULT_TAG
    state, meta = resolve_weights(name, weights) if weights is not None else (None, {})
    if meta:
        if num_classes is not None and num_classes != meta["num_classes"]:
            raise ValueError(
                f"{name}: the weights are for {meta['num_classes']} classes, not {num_classes}"
            )
        num_classes, kwargs = meta["num_classes"], {**meta.get("model_kwargs", {}), **kwargs}
    num_classes = 10 if num_classes is None else num_classes
    if not isinstance(num_classes, int) or num_classes < 1:
        raise ValueError(f"num_classes must be a positive integer, got {num_classes!r}")
    _check_kwargs(info, kwargs)
    model = info.builder(num_classes=num_classes, **kwargs)
    if state is not None:
        model.load_state_dict(state)
        model.pretrained_cfg = meta
        model.eval()
    return model


def _check_kwargs(info: ModelInfo, kwargs: dict[str, object]) -> None:
    """Unknown builder keywords are a ``ValueError`` naming the model and what it takes (a
    ``TypeError`` raised inside a builder stays a bug report, not a user error)."""
    params = inspect.signature(info.builder).parameters
    takes = sorted(set(params) - {"num_classes"})
    unknown = sorted(set(kwargs) - set(params))
    if unknown:
        raise ValueError(
            f"{info.name} takes no keyword argument(s) {', '.join(unknown)}; "
            f"it takes: {', '.join(takes) or 'none'}"
        )


def split_depth(name: str) -> tuple[str, int | None]:
    """A model name as (stem, trailing depth): ``"plain20"`` -> ``("plain", 20)``,
    ``"fastnet_small"`` -> ``("fastnet_small", None)``. A resnetN and its plain twin plainN
    share the depth and differ in the stem, which is how the experiments pair them."""
    stem = name.rstrip("0123456789")
    return stem, int(name[len(stem) :]) if len(stem) < len(name) else None


def _natural_key(name: str) -> tuple:
    """Sort resnet20 before resnet110: split digits from letters."""
    import re

    return tuple(int(t) if t.isdigit() else t for t in re.split(r"(\d+)", name))
