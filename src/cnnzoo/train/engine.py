"""One training epoch and one evaluation pass; the trainer composes them."""

from __future__ import annotations

import contextlib
import math
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from cnnzoo.errors import TrainingDiverged
from cnnzoo.train.runtime import DistInfo, all_reduce_sum

CHECK_EVERY = 20  # steps between checks that the loss is finite (each check syncs the device)
# A mean cross-entropy this large means the logits have exploded (an untrained network scores
# ln(classes) < 5): training has diverged even while the numbers are still finite (``--lr 100``).
MAX_LOSS = 1e3


@dataclass
class EpochStats:
    loss: float
    acc: float
    seconds: float
    images: int  # over all ranks

    @property
    def img_per_s(self) -> float:
        return self.images / self.seconds if self.seconds > 0 else 0.0


@dataclass
class EvalResult:
    loss: float
    acc: float
    count: int
    confusion: Tensor | None  # (classes, classes): rows true, columns predicted


@dataclass
class EpochPosition:
    """How far an epoch has got: where a mid-epoch checkpoint stopped and a resumed epoch goes
    on. ``totals`` are the running sums over the steps done (loss × images, correct, images:
    (3,) float64), so that the epoch's metrics row comes out the same after a resume;
    ``seconds`` the training time those steps took."""

    step: int = 0  # optimizer steps done in this epoch
    totals: Tensor | None = None
    seconds: float = 0.0


def train_epoch(
    model: nn.Module,
    batches: Iterable[tuple[Tensor, Tensor]],
    optimizer: torch.optim.Optimizer,
    criterion: nn.Module,
    amp: Callable[[], contextlib.AbstractContextManager],
    set_lr: Callable[[], None],
    scaler: torch.amp.GradScaler | None = None,
    after_step: Callable[[], None] | None = None,
    dist_info: DistInfo | None = None,
    on_batch: Callable[[Callable[[], tuple[float, float, int]]], None] | None = None,
    start: EpochPosition | None = None,
    on_step: Callable[[EpochPosition], None] | None = None,
    micro_batch: int | None = None,
) -> EpochStats:
    """Train over ``batches`` once. ``set_lr`` sets the step's learning rate before it;
    ``after_step`` runs after each optimizer step (the weight average, say); ``on_batch`` gets,
    after every step, a function that returns (mean loss, accuracy, images) so far.

    A resumed epoch passes ``start`` (its checkpoint's position) and ``batches`` from that step
    on. ``on_step`` gets the position after every step: the trainer's checkpoint and stop check
    (it may write a checkpoint, or raise to stop); the loop itself writes nothing.
    ``micro_batch`` splits each batch for the forward and backward passes (``forward_backward``)."""
    model.train()
    info = dist_info or DistInfo()
    device = next(model.parameters()).device
    start = start or EpochPosition()
    totals = torch.zeros(3, device=device, dtype=torch.float64)  # loss sum, correct, count
    if start.totals is not None:
        totals.copy_(start.totals)
    began = time.perf_counter() - start.seconds
    for step, (x, y) in enumerate(batches, start=start.step):
        set_lr()
        optimizer.zero_grad(set_to_none=True)
        loss, logits = forward_backward(model, x, y, criterion, amp, scaler, micro_batch)
        if scaler is not None:
            scaler.step(optimizer)
            scaler.update()
        else:
            optimizer.step()
        if after_step is not None:
            after_step()
        _accumulate(totals, loss, logits, y)
        if (step + 1) % CHECK_EVERY == 0:  # a device sync (and a collective): not every step
            check_finite(all_reduce_sum(totals.clone(), info), step)
        if on_batch is not None:  # the bar reads the running means (a sync) only to redraw
            on_batch(lambda t=totals: _running_means(t))
        if on_step is not None:
            on_step(EpochPosition(step + 1, totals, time.perf_counter() - began))
    seconds = time.perf_counter() - began
    check_finite(all_reduce_sum(totals, info), -1)
    loss_sum, correct, count = totals.tolist()
    return EpochStats(loss_sum / max(count, 1), correct / max(count, 1), seconds, int(count))


def forward_backward(
    model: nn.Module,
    x: Tensor,
    y: Tensor,
    criterion: nn.Module,
    amp: Callable[[], contextlib.AbstractContextManager],
    scaler: torch.amp.GradScaler | None = None,
    micro_batch: int | None = None,
) -> tuple[Tensor, Tensor]:
    """The batch's mean loss and its logits (B, classes), with the loss's gradient added to
    every ``.grad``: in one pass, or in chunks of ``micro_batch`` images whose mean losses are
    weighted by their share of the batch, which sums to the batch mean (BatchNorm statistics
    are then each chunk's own). Under DDP the gradients are all-reduced once, with the last
    chunk's backward pass."""
    n = y.shape[0]
    if not micro_batch or micro_batch >= n:
        with amp():
            logits = model(x)
            loss = criterion(logits, y)
        (scaler.scale(loss) if scaler is not None else loss).backward()
        return loss, logits
    chunks = list(zip(x.split(micro_batch), y.split(micro_batch), strict=True))
    losses, outputs = [], []
    for i, (xc, yc) in enumerate(chunks):
        defer = i < len(chunks) - 1 and hasattr(model, "no_sync")  # DDP: all-reduce at the end
        with model.no_sync() if defer else contextlib.nullcontext():
            with amp():
                out = model(xc)
                loss = criterion(out, yc) * (yc.shape[0] / n)
            (scaler.scale(loss) if scaler is not None else loss).backward()
        losses.append(loss.detach())
        outputs.append(out.detach())
    return torch.stack(losses).sum(), torch.cat(outputs)


@torch.no_grad()
def _accumulate(totals: Tensor, loss: Tensor, logits: Tensor, y: Tensor) -> None:
    """Add a step's loss × images, correct predictions and images to ``totals`` (in place)."""
    n = y.shape[0]
    labels = y.argmax(1) if y.ndim == 2 else y  # mixed targets: the dominant class
    totals += torch.stack(
        [
            loss.detach().double() * n,
            (logits.argmax(1) == labels).sum().double(),
            torch.tensor(float(n), device=totals.device, dtype=torch.float64),
        ]
    )


def _running_means(totals: Tensor) -> tuple[float, float, int]:
    loss_sum, correct, count = totals.tolist()
    return loss_sum / max(count, 1), correct / max(count, 1), int(count)


def check_finite(totals: Tensor, step: int) -> None:
    """Raise ``TrainingDiverged`` when the epoch's mean loss so far is NaN, infinite or above
    ``MAX_LOSS``. ``totals`` (loss sum, correct, count) are summed over the ranks, so that every
    rank sees the same figure and all of them stop together, none left waiting in a collective."""
    mean_loss = _running_means(totals)[0]
    if not torch.isfinite(torch.tensor(mean_loss)) or mean_loss > MAX_LOSS:
        where = f" at step {step + 1} of this epoch" if step >= 0 else ""
        raise TrainingDiverged(
            f"the training loss became {mean_loss:.4g}{where}; lower --lr "
            "(the last good checkpoint is kept)"
        )


@dataclass(frozen=True)
class TTA:
    """The views an evaluation averages (test-time augmentation).

    ``flip``: each image and its mirror image, ½ each. ``shift`` = s > 0: also the image
    translated by s pixels (reflection padding): by (-s, -s) and (+s, +s), weighted
    ½ (untranslated) + ¼ + ¼, as airbench94; with ``grid`` all 9 translations of {-s, 0, s}²,
    equal weights. ``fraction`` < 1: only that share of each batch, the images the plain forward
    pass is least sure of, gets the extra views; the rest keep their plain logits."""

    flip: bool = False
    shift: int = 0
    grid: bool = False
    fraction: float = 1.0

    @classmethod
    def from_config(cls, cfg: Any) -> TTA:
        """A run's views from its TrainConfig (``tta``, ``tta_shift``, ``tta_grid``,
        ``tta_fraction``)."""
        return cls(cfg.tta, cfg.tta_shift, cfg.tta_grid, cfg.tta_fraction)

    @property
    def views(self) -> int:
        """Forward passes per image given the full set of views."""
        positions = (9 if self.grid else 3) if self.shift else 1
        return (2 if self.flip else 1) * positions

    @property
    def passes_per_image(self) -> float:
        """Forward passes per image on average: the plain one, plus the rest for ``fraction``."""
        return self.views if self.fraction >= 1 else 1 + self.fraction * (self.views - 1)


def _flip_tta(model: nn.Module, x: Tensor, flip: bool, plain: Tensor | None = None) -> Tensor:
    """float32 logits of ``x``, averaged with those of its mirror image when ``flip``;
    ``plain`` (the logits of ``x`` alone, already computed) saves one forward pass."""
    logits = model(x).float() if plain is None else plain
    return 0.5 * (logits + model(x.flip(3)).float()) if flip else logits


def _tta(model: nn.Module, x: Tensor, tta: TTA, plain: Tensor | None = None) -> Tensor:
    """The logits of ``x`` averaged over ``tta``'s views. x: (B, C, H, W) -> (B, classes)."""
    logits = _flip_tta(model, x, tta.flip, plain)
    if not tta.shift:
        return logits
    s, (h, w) = tta.shift, x.shape[2:]
    padded = F.pad(x, (s, s, s, s), mode="reflect")  # (B, C, H+2s, W+2s)

    def moved(dy: int, dx: int) -> Tensor:  # the view translated by (dy, dx): (B, C, H, W)
        return _flip_tta(model, padded[:, :, s + dy : s + dy + h, s + dx : s + dx + w], tta.flip)

    if tta.grid:
        around = [(dy, dx) for dy in (-s, 0, s) for dx in (-s, 0, s) if dy or dx]
        return (logits + sum(moved(dy, dx) for dy, dx in around)) / 9
    return 0.5 * logits + 0.25 * (moved(-s, -s) + moved(s, s))


def tta_count(fraction: float, n: int) -> int:
    """How many of a batch of ``n`` get TTA under ``--tta-fraction``: ceil(fraction x n), at
    least one (0.3 x 1000 is 300, not 301, whatever the float rounding)."""
    return max(1, min(n, math.ceil(fraction * n - 1e-9)))


def _gated_tta(model: nn.Module, x: Tensor, tta: TTA) -> Tensor:
    """TTA for the ``tta.fraction`` of the batch the plain forward pass is least sure of
    (lowest top softmax probability), the plain logits for the rest (after the 2025 CIFAR-10
    speed-run record by Hiverge): the confident images rarely change their answer under TTA, so
    most of its forward passes are saved."""
    if tta.fraction >= 1 or tta.views == 1:
        return _tta(model, x, tta)
    plain = model(x).float()  # (B, classes)
    k = tta_count(tta.fraction, x.shape[0])
    unsure = plain.softmax(1).amax(1).topk(k, largest=False).indices  # (k,)
    logits = plain.clone()
    logits[unsure] = _tta(model, x[unsure], tta, plain=plain[unsure])
    return logits


@torch.no_grad()
def evaluate(
    model: nn.Module,
    batches: Iterable[tuple[Tensor, Tensor]],
    num_classes: int,
    amp: Callable[[], contextlib.AbstractContextManager],
    tta: TTA | None = None,
    dist_info: DistInfo | None = None,
) -> EvalResult:
    """Loss, accuracy and confusion matrix over ``batches`` (summed over ranks), each image's
    logits averaged over the views of ``tta`` (default: the image alone)."""
    tta = tta or TTA()
    model.eval()
    device = next(model.parameters()).device
    totals = torch.zeros(2, device=device, dtype=torch.float64)  # loss sum, count
    confusion = torch.zeros(num_classes * num_classes, device=device, dtype=torch.long)
    criterion = nn.CrossEntropyLoss(reduction="sum")
    for x, y in batches:
        with amp():
            logits = _gated_tta(model, x, tta)
        totals[0] += criterion(logits, y).double()
        totals[1] += y.numel()
        confusion += torch.bincount(y * num_classes + logits.argmax(1), minlength=confusion.numel())
    info = dist_info or DistInfo()
    all_reduce_sum(totals, info)
    all_reduce_sum(confusion, info)
    conf = confusion.view(num_classes, num_classes).cpu()
    count = int(totals[1].item())
    acc = conf.diag().sum().item() / max(count, 1)
    return EvalResult(totals[0].item() / max(count, 1), acc, count, conf)
