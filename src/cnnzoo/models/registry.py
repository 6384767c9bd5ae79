"""The model registry: ``@register_model``, ``create_model``, ``list_models``, ``model_info``.

Builders are plain functions ``builder(*, num_classes: int, **kwargs) -> nn.Module``.
Registering is a decorator so that importing ``cnnzoo.models`` fills the registry and
does nothing else (no model is built at import time).
"""

from __future__ import annotations

import difflib
import fnmatch
from collections.abc import Callable
from dataclasses import dataclass

from torch import nn

from cnnzoo.errors import UnknownModelError

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


def list_models(pattern: str | None = None) -> list[str]:
    """Registered names, sorted; ``pattern`` is a glob such as ``'resnet*'``."""
    names = sorted(_REGISTRY, key=_natural_key)
    if pattern:
        names = [n for n in names if fnmatch.fnmatchcase(n, pattern)]
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


def create_model(name: str, num_classes: int = 10, **kwargs: object) -> nn.Module:
    """Build a registered model, e.g. ``create_model('resnet20', num_classes=100)``.

    Extra keyword arguments go to the builder (e.g. ``shortcut='B'`` for the CIFAR ResNets).
    Weights come from the global torch RNG: seed it with ``torch.manual_seed`` for repeatable
    initialisation.
    """
    info = model_info(name)
    if not isinstance(num_classes, int) or num_classes < 1:
        raise ValueError(f"num_classes must be a positive integer, got {num_classes!r}")
    try:
        return info.builder(num_classes=num_classes, **kwargs)
    except TypeError as err:  # an unknown keyword: say which model rejected it
        raise ValueError(f"{name}: {err}") from None


def _natural_key(name: str) -> tuple:
    """Sort resnet20 before resnet110: split digits from letters."""
    import re

    return tuple(int(t) if t.isdigit() else t for t in re.split(r"(\d+)", name))
