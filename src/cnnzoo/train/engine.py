"""One training epoch and one evaluation pass; the trainer composes them."""

from __future__ import annotations

import contextlib
import math
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass

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
    set_lr: Callable[[], float],
    scaler: torch.amp.GradScaler | None = None,
    after_step: Callable[[], None] | None = None,
    dist_info: DistInfo | None = None,
    on_batch: Callable[[Callable[[], tuple[float, float, int]]], None] | None = None,
    start: EpochPosition | None = None,
    on_step: Callable[[EpochPosition], None] | None = None,
    micro_batch: int | None = None,
) -> EpochStats:
    """Train over ``batches`` once. ``set_lr`` sets and returns the step's learning rate;
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


def _flip_tta(model: nn.Module, x: Tensor, flip: bool, plain: Tensor | None = None) -> Tensor:
    """float32 logits of ``x``, averaged with those of its mirror image when ``flip``;
    ``plain`` (the logits of ``x`` alone, already computed) saves one forward pass."""
    logits = model(x).float() if plain is None else plain
    return 0.5 * (logits + model(x.flip(3)).float()) if flip else logits


def _tta(
    model: nn.Module, x: Tensor, flip: bool, shift: int, plain: Tensor | None = None
) -> Tensor:
    """airbench94's TTA: the (mirror-averaged) logits of ``x``, and with ``shift`` = s > 0 those
    of ``x`` translated by (-s, -s) and (+s, +s) pixels (reflection padding), weighted
    1/2 + 1/4 + 1/4. x: (B, C, H, W) -> (B, classes) float32."""
    logits = _flip_tta(model, x, flip, plain)
    if not shift:
        return logits
    h, w = x.shape[2:]
    padded = F.pad(x, (shift, shift, shift, shift), mode="reflect")  # (B, C, H+2s, W+2s)
    up_left = padded[:, :, :h, :w]
    down_right = padded[:, :, 2 * shift :, 2 * shift :]
    shifted = _flip_tta(model, up_left, flip) + _flip_tta(model, down_right, flip)
    return 0.5 * logits + 0.25 * shifted


def tta_count(fraction: float, n: int) -> int:
    """How many of a batch of ``n`` get TTA under ``--tta-fraction``: ceil(fraction x n), at
    least one (0.3 x 1000 is 300, not 301, whatever the float rounding)."""
    return max(1, min(n, math.ceil(fraction * n - 1e-9)))


def _gated_tta(model: nn.Module, x: Tensor, flip: bool, shift: int, fraction: float) -> Tensor:
    """TTA for the ``fraction`` of the batch the plain forward pass is least sure of (lowest top
    softmax probability), the plain logits for the rest (after the 2025 CIFAR-10 speed-run
    record by Hiverge): the confident images rarely change their answer under TTA, so most of
    its forward passes are saved. ``fraction`` 1: every image."""
    if fraction >= 1 or not (flip or shift):
        return _tta(model, x, flip, shift)
    plain = model(x).float()  # (B, classes)
    k = tta_count(fraction, x.shape[0])
    unsure = plain.softmax(1).amax(1).topk(k, largest=False).indices  # (k,)
    logits = plain.clone()
    logits[unsure] = _tta(model, x[unsure], flip, shift, plain=plain[unsure])
    return logits


@torch.no_grad()
def evaluate(
    model: nn.Module,
    batches: Iterable[tuple[Tensor, Tensor]],
    num_classes: int,
    amp: Callable[[], contextlib.AbstractContextManager],
    tta: bool = False,
    dist_info: DistInfo | None = None,
    tta_shift: int = 0,
    tta_fraction: float = 1.0,
) -> EvalResult:
    """Loss, accuracy and confusion matrix over ``batches`` (summed over ranks).
    With ``tta`` the logits of each image and its mirror image are averaged; with
    ``tta_shift`` = s > 0 also those of the image translated by (-s, -s) and (+s, +s) pixels
    (reflection padding), weighted 1/2 (untranslated) + 1/4 + 1/4, as airbench94's TTA. With
    ``tta_fraction`` < 1 only that fraction of each batch, the images the plain pass is least
    sure of, gets the extra views (``_gated_tta``)."""
    model.eval()
    device = next(model.parameters()).device
    totals = torch.zeros(2, device=device, dtype=torch.float64)  # loss sum, count
    confusion = torch.zeros(num_classes * num_classes, device=device, dtype=torch.long)
    criterion = nn.CrossEntropyLoss(reduction="sum")
    for x, y in batches:
        with amp():
            logits = _gated_tta(model, x, tta, tta_shift, tta_fraction)
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
