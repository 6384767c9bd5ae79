"""The model zoo. Importing this package registers every model (and builds none)."""

from cnnzoo.models import fastnet, inception, resnet, vgg  # noqa: F401  (registration side effects)
from cnnzoo.models.registry import (
    ModelInfo,
    create_model,
    list_models,
    model_info,
    register_model,
)
from cnnzoo.models.summary import count_flops, count_params

__all__ = [
    "ModelInfo",
    "count_flops",
    "count_params",
    "create_model",
    "list_models",
    "model_info",
    "register_model",
]
