"""Inference on trained checkpoints: image prediction and ONNX export."""

from cnnzoo.inference.predict import Predictor, load_image, predict_files

__all__ = ["Predictor", "load_image", "predict_files"]
