"""What rank 0 does after an epoch besides saving a checkpoint: TensorBoard scalars and the
gradient flow of ``--record-gradflow`` (Lightning's callbacks, in miniature)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from cnnzoo.models.gradnorms import conv_grad_norms
from cnnzoo.train.config import TrainConfig
from cnnzoo.train.progress import Progress
from cnnzoo.train.rundir import GRADFLOW_FILE, append_jsonl


class Callbacks:
    """What rank 0 does after an epoch besides saving: TensorBoard scalars and the gradient
    flow of ``--record-gradflow``. The loop itself writes no other file."""

    def __init__(self, cfg: TrainConfig, out: Path, progress: Progress, main: bool) -> None:
        self.cfg, self.out = cfg, out
        self.writer = _tensorboard(out, cfg, progress) if main else None
        self.closers = [self.writer.close] if self.writer is not None else []

    def gradflow(self, run: Any, epoch: int) -> None:
        """Per-conv gradient norms on the first batch of the current epoch's order."""
        if not self.cfg.record_gradflow:
            return
        x, y = next(iter(run.loaders.train))
        layers, norms = conv_grad_norms(run.model, x, y, criterion=run.criterion, amp=run.amp)
        append_jsonl(self.out / GRADFLOW_FILE, {"epoch": epoch, "layers": layers, "norms": norms})

    def end_epoch(self, run: Any, row: dict[str, Any]) -> None:
        if self.writer is not None:
            for k, v in row.items():
                if k != "epoch" and v is not None:
                    self.writer.add_scalar(k, v, row["epoch"])
        self.gradflow(run, epoch=row["epoch"])


def _tensorboard(out: Path, cfg: TrainConfig, progress: Progress):
    if not cfg.tensorboard:
        return None
    try:
        from torch.utils.tensorboard import SummaryWriter
    except ImportError:
        progress.log("warning: --tensorboard needs `pip install tensorboard`; not logging")
        return None
    return SummaryWriter(str(out / "tensorboard"))
