"""airbench94's lookahead (Jordan 2024, after hlb-CIFAR10): an EMA of the weights that is copied
back into them, so training itself continues from the average.

From the first step of epoch ``start_epoch + 1`` (1-based; airbench94's epoch index 3), every
``every`` optimizer steps: ``avg ← avg + (1 - ρ)(w - avg)`` then ``w ← avg``, with
``ρ = decay × (step / total)^power``, so the average barely holds early and holds hard at the
end. airbench94 (batch 1024): every 5 steps, decay 0.95^5. The average's memory is about
``every / (1 - decay)`` steps, so at a quarter of the batch, every 20 steps with the same decay
keeps both the cadence and the memory in images. The first such step only starts the average
(a copy of the weights). At the end of every epoch the weights are set to the average once
more. Floating-point state (weights and BatchNorm running statistics) is averaged; integer
buffers are left alone.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn


class Lookahead:
    def __init__(
        self,
        model: nn.Module,
        start_epoch: int = 3,
        every: int = 5,
        decay: float = 0.95**5,
        power: float = 3.0,
    ) -> None:
        self.model, self.start_epoch, self.every = model, start_epoch, every
        self.decay, self.power = decay, power
        self.avg: dict[str, Tensor] | None = None

    def _floats(self) -> dict[str, Tensor]:
        return {k: v for k, v in self.model.state_dict().items() if v.is_floating_point()}

    @torch.no_grad()
    def after_step(self, epoch: int, step: int, total_steps: int) -> None:
        """Call after optimizer step number ``step`` (1-based) of 1-based ``epoch``."""
        if epoch <= self.start_epoch or step % self.every:
            return
        current = self._floats()
        if self.avg is None:
            self.avg = {k: v.detach().clone() for k, v in current.items()}
            return
        rho = self.decay * (step / total_steps) ** self.power
        for k, w in current.items():
            self.avg[k].lerp_(w, 1.0 - rho)
            w.copy_(self.avg[k])

    @torch.no_grad()
    def end_epoch(self) -> None:
        if self.avg is not None:
            for k, w in self._floats().items():
                w.copy_(self.avg[k])

    def state_dict(self) -> dict:
        return {"avg": self.avg}

    def load_state_dict(self, state: dict) -> None:
        avg, current = state.get("avg"), self._floats()
        self.avg = (
            None if avg is None else {k: v.to(current[k].device, copy=True) for k, v in avg.items()}
        )
