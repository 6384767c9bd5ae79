"""cnnzoo: classic CNN architectures from their papers, trained fast on CIFAR.

>>> from cnnzoo import create_model, list_models
>>> model = create_model("resnet20", num_classes=10)
"""

from cnnzoo.errors import UnknownModelError, UserError
from cnnzoo.models import count_flops, count_params, create_model, list_models, model_info

__version__ = "0.1.0"

__all__ = [
    "UnknownModelError",
    "UserError",
    "__version__",
    "count_flops",
    "count_params",
    "create_model",
    "list_models",
    "model_info",
]
