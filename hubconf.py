"""torch.hub entry points: every registered cnnzoo model, with its shipped weights.

    model = torch.hub.load("path/to/cnnzoo", "resnet20", source="local", pretrained=True)

``pretrained=True`` loads the CIFAR-10 weights shipped in ``src/cnnzoo/weights`` (checked by
sha256); other keyword arguments go to ``cnnzoo.create_model``.
"""

from __future__ import annotations

import sys
from pathlib import Path

dependencies = ["torch", "safetensors"]

try:
    import cnnzoo
except ImportError:  # a plain checkout: import the package from its source folder
    sys.path.insert(0, str(Path(__file__).resolve().parent / "src"))
    import cnnzoo


def _entry(name: str):
    def load(pretrained: bool = False, **kwargs):
        return cnnzoo.create_model(name, pretrained=pretrained, **kwargs)

    load.__name__ = name
    load.__doc__ = f"cnnzoo's {name} (``pretrained=True``: the shipped CIFAR-10 weights)."
    return load


for _name in cnnzoo.list_models():
    globals()[_name] = _entry(_name)
