"""The model zoo. Importing this package registers every model (and builds none)."""

from cnnzoo.models import fastnet, inception, resnet, vgg  # noqa: F401  (registration side effects)
from cnnzoo.models.registry import (
    ModelInfo,
    create_model,
    list_models,
    model_info,
    register_model,
    split_depth,
)
from cnnzoo.models.summary import LayerRow, ModelSummary, count_flops, count_params, summarize

__all__ = [
    "LayerRow",
    "ModelInfo",
    "ModelSummary",
    "count_flops",
    "count_params",
    "create_model",
    "list_models",
    "model_info",
    "register_model",
    "split_depth",
    "summarize",
]
