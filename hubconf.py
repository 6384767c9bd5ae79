"""torch.hub entry points: every registered cnnzoo model, with its shipped weights.

    model = torch.hub.load("path/to/cnnzoo", "resnet20", source="local", pretrained=True)

``pretrained=True`` loads the CIFAR-10 weights shipped in ``src/cnnzoo/weights`` (checked by
sha256); other keyword arguments go to ``cnnzoo.create_model``.
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from torch import nn

dependencies = ["torch", "safetensors"]

# This checkout's package, before any other installed version: the models and weights loaded
# are those of the folder torch.hub was pointed at.
_SRC = Path(__file__).resolve().parent / "src"
if (_SRC / "cnnzoo").is_dir():
    sys.path.insert(0, str(_SRC))
import cnnzoo  # noqa: E402


def _entry(name: str):
    def load(pretrained: bool = False, **kwargs: Any) -> nn.Module:
        return cnnzoo.create_model(name, pretrained=pretrained, **kwargs)

    load.__name__ = name
    load.__doc__ = f"cnnzoo's {name} (``pretrained=True``: the shipped CIFAR-10 weights)."
    return load


for _name in cnnzoo.list_models():
    globals()[_name] = _entry(_name)
