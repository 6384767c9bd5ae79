"""Where a run is (``TrainState``) and how it is saved (``CheckpointSaver``): the whole
best/last policy in one place, written by rank 0 only."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn

from cnnzoo.train import checkpoint as ckpt_io
from cnnzoo.train.engine import EpochPosition
from cnnzoo.train.rundir import write_metrics
from cnnzoo.train.runtime import mps_available


@dataclass
class TrainState:
    """Epoch and step counters, the best validation score so far, and the metric rows."""

    epoch: int = 0  # epochs finished
    step: int = 0  # optimizer steps taken
    best_score: float = -1.0  # validation accuracy (the epoch number without a validation set)
    best_epoch: int = 0
    history: list[dict[str, Any]] = field(default_factory=list)
    # where epoch ``epoch + 1`` resumes: set by a checkpoint written in the middle of it
    position: EpochPosition | None = None

    def update_best(self, score: float) -> bool:
        """Record the epoch's score; True when it is the best so far."""
        if score > self.best_score:
            self.best_score, self.best_epoch = score, self.epoch
            return True
        return False

    def state_dict(self, position: EpochPosition | None = None) -> dict[str, Any]:
        """The counters and RNG states; with ``position``, a checkpoint in the middle of epoch
        ``epoch + 1`` (its totals summed over the ranks)."""
        in_epoch = None
        if position is not None:
            totals = position.totals.detach().cpu() if position.totals is not None else None
            in_epoch = {"step": position.step, "totals": totals, "seconds": position.seconds}
        return {
            "epoch": self.epoch,
            "step": self.step,
            "best_val_acc": self.best_score,
            "best_epoch": self.best_epoch,
            "rng": get_rng_state(),
            "in_epoch": in_epoch,
        }

    def load_state_dict(self, state: dict[str, Any], history: list[dict[str, Any]]) -> None:
        """Counters and RNG from a checkpoint; ``history`` is cut back to its epoch (a run killed
        after writing metrics but before last.pt redoes that epoch)."""
        self.epoch, self.step = int(state["epoch"]), int(state["step"])
        self.best_score, self.best_epoch = float(state["best_val_acc"]), int(state["best_epoch"])
        self.history = [r for r in history if r["epoch"] <= self.epoch]
        set_rng_state(state["rng"])
        pos = state.get("in_epoch")  # absent from format-1 checkpoints: an epoch's end
        self.position = None
        if pos is not None:
            self.position = EpochPosition(int(pos["step"]), pos["totals"], float(pos["seconds"]))


def get_rng_state() -> dict[str, Any]:
    # Only torch's generators drive training (dropout); the data order and augmentation are
    # drawn from generators seeded by (seed, epoch) and need no saved state.
    state = {"torch": torch.get_rng_state()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    if mps_available():  # an Apple GPU keeps its own generator, as CUDA does
        state["mps"] = torch.mps.get_rng_state()
    return state


def set_rng_state(state: dict[str, Any]) -> None:
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])
    if "mps" in state and mps_available():
        torch.mps.set_rng_state(state["mps"])


@dataclass
class RunResult:
    out_dir: Path
    best_val_acc: float | None
    best_epoch: int
    test_acc: float | None  # of the checkpoint chosen by validation accuracy (best.pt)
    test_acc_last: float | None  # of the final weights; both None when stopped early
    seconds: float
    history: list[dict[str, Any]] = field(default_factory=list)


class CheckpointSaver:
    """After each epoch: metrics, then best.pt when the epoch improved, then last.pt; in the
    middle of an epoch (a signal, the checkpoint clock) last.pt alone.

    Metrics first: a kill before last.pt lands leaves an extra row that ``--resume`` drops (it
    keeps rows up to last.pt's epoch); the other order would lose a row. best.pt holds the
    weights that are evaluated (the EMA's when enabled) and metadata only; last.pt everything a
    resume needs."""

    def __init__(self, out: Path, meta: dict[str, Any], enabled: bool = True) -> None:
        self.out, self.meta, self.enabled = out, meta, enabled

    def save(
        self,
        state: TrainState,
        improved: bool,
        model: nn.Module,
        evaluated: nn.Module,
        optim_state: dict[str, Any],
    ) -> None:
        if not self.enabled:
            return
        write_metrics(self.out, state.history)
        if improved:
            best = {**self.meta, "epoch": state.epoch, "model": evaluated.state_dict()}
            best["val_acc"] = state.history[-1]["val_acc"]
            ckpt_io.save_atomic(best, self.out / "best.pt")
        last = {**self.meta, **state.state_dict(), "model": model.state_dict(), **optim_state}
        ckpt_io.save_atomic(last, self.out / "last.pt")

    def save_position(
        self,
        state: TrainState,
        position: EpochPosition,
        model: nn.Module,
        optim_state: dict[str, Any],
    ) -> None:
        """last.pt in the middle of epoch ``state.epoch + 1``, after ``position.step`` steps: the
        metrics and best.pt only change at the epoch's end."""
        if not self.enabled:
            return
        last = {
            **self.meta,
            **state.state_dict(position),
            "model": model.state_dict(),
            **optim_state,
        }
        ckpt_io.save_atomic(last, self.out / "last.pt")
