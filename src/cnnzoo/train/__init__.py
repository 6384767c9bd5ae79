"""Training: config, loop, checkpoints."""

from cnnzoo.train.checkpoint import load_checkpoint, model_from_checkpoint
from cnnzoo.train.config import TrainConfig
from cnnzoo.train.trainer import RunResult, train

__all__ = ["RunResult", "TrainConfig", "load_checkpoint", "model_from_checkpoint", "train"]
