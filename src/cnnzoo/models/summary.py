"""Parameter and FLOP counts."""

from __future__ import annotations

import torch
from torch import nn
from torch.utils.flop_counter import FlopCounterMode


def count_params(model: nn.Module, trainable_only: bool = False) -> int:
    return sum(p.numel() for p in model.parameters() if p.requires_grad or not trainable_only)


@torch.no_grad()
def count_flops(model: nn.Module, input_size: tuple[int, ...] = (1, 3, 32, 32)) -> int:
    """Forward FLOPs for one input of ``input_size`` (FLOPs = 2 × multiply-accumulates).

    Counted by ``torch.utils.flop_counter.FlopCounterMode``, which counts convolutions and
    matrix products only (BatchNorm, ReLU, pooling and additions are not counted).
    The model is run in eval mode and restored to its previous mode.
    """
    was_training = model.training
    model.eval()
    try:
        x = torch.zeros(input_size)
        with FlopCounterMode(display=False) as counter:
            model(x)
        return int(counter.get_total_flops())
    finally:
        model.train(was_training)
