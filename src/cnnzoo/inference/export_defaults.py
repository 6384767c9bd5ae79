"""The ONNX export's option defaults and limits, in one place: the exporter uses them, and
``cnnzoo export``'s parser shows them without importing the exporter itself (nor onnx)."""

from __future__ import annotations

DEFAULT_OPSET = 17
MIN_OPSET = 9
MAX_OPSET = 20  # the TorchScript-based exporter's newest opset
DEFAULT_ATOL = 1e-3
