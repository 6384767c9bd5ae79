"""Training configuration: one dataclass, validated up front, saved fully resolved."""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field, fields
from typing import Any

from cnnzoo.errors import UserError

PRECISIONS = ("auto", "fp32", "bf16", "fp16")
MAX_TTA_SHIFT = 8  # translate-TTA pixels; reflection padding needs fewer than the image side
SCHEDULES = ("cosine", "linear", "constant", "step")  # step: ÷10 at 50% and 75% (He et al.)


@dataclass
class TrainConfig:
    """Every knob of a training run. Defaults are the reference notebook's recipe:
    SGD lr 0.1, momentum 0.9, weight decay 5e-4, cosine over the run, batch 128, 20 epochs."""

    model: str = "resnet20"
    model_kwargs: dict[str, Any] = field(default_factory=dict)
    dataset: str = "cifar10"  # cifar10 | cifar100
    data: str | None = None  # archive, folder, or "synthetic"; None: $CNNZOO_DATA or the cache
    epochs: int = 20
    batch_size: int = 128  # global: per-rank batch = batch_size / world size
    lr: float = 0.1  # for the global batch; scale it yourself when you change batch_size
    momentum: float = 0.9
    nesterov: bool = False
    weight_decay: float = 5e-4
    no_bn_weight_decay: bool = False  # no weight decay on BN parameters and biases
    schedule: str = "cosine"  # per step: cosine to 0, linear to 0, or constant
    warmup_epochs: float = 0.0  # linear warm-up, in (fractional) epochs
    warmup_start: float = 0.0  # the warm-up starts at this fraction of lr (airbench94: 0.2)
    final_lr: float = 0.0  # linear/cosine decay ends at this fraction of lr (airbench94: 0.07)
    label_smoothing: float = 0.0
    augment: bool = True  # random crop (4 px zero padding) + horizontal flip
    cutout: int = 0  # cutout square side in pixels, 0 = off
    crop_pad: int = 4  # random-crop padding: translations of up to ±crop_pad pixels
    crop_reflect: bool = False  # pad by reflection (airbench94) instead of with zeros
    alternate_flip: bool = False  # flip each image in every other epoch (random in epoch 0)
    ema: float = 0.0  # decay of an exponential moving average of the weights, 0 = off
    lookahead: bool = False  # airbench94's lookahead: an EMA copied back into the weights
    whiten_bias_epochs: int | None = None  # train a whitening stem's bias this long, then freeze
    tta: bool = False  # evaluate on image + its mirror image
    tta_shift: int = 0  # also average over views translated by ±tta_shift pixels; 0 = off
    val: int | None = None  # held-out validation images; None = 10% of the training set
    subset: int | None = None  # train on the first N training images (after the val split)
    seed: int = 0
    device: str = "auto"  # auto | cpu | cuda | cuda:N | mps
    precision: str = "auto"  # auto: bf16 where the hardware has it, else fp32
    channels_last: bool = True
    compile: bool = False
    sync_bn: bool = False
    eval_batch_size: int = 1000
    threads: int | None = None  # torch intra-op threads; None = PyTorch's default
    out: str | None = None  # run directory; None = runs/<model>-<timestamp>
    stop_after: int | None = None  # stop after this epoch (the schedule still spans `epochs`)
    record_gradflow: bool = False  # per-epoch conv-gradient norms into gradflow.jsonl
    tensorboard: bool = False
    quiet: bool = False

    def validate(self) -> TrainConfig:
        """Raise ``UserError`` naming the first bad value."""

        def need(ok: bool, msg: str) -> None:
            if not ok:
                raise UserError(msg)

        need(self.epochs >= 1, f"--epochs must be at least 1, got {self.epochs}")
        need(self.batch_size >= 1, f"--batch-size must be at least 1, got {self.batch_size}")
        need(math.isfinite(self.lr) and self.lr > 0, f"--lr must be positive, got {self.lr}")
        need(0 <= self.momentum < 1, f"--momentum must be in [0, 1), got {self.momentum}")
        need(self.weight_decay >= 0, f"--weight-decay must be >= 0, got {self.weight_decay}")
        need(0 <= self.label_smoothing < 1, "--label-smoothing must be in [0, 1)")
        need(self.warmup_epochs >= 0, "--warmup-epochs must be >= 0")
        need(0 <= self.warmup_start <= 1, "--warmup-start must be in [0, 1]")
        need(0 <= self.final_lr <= 1, "--final-lr must be in [0, 1]")
        need(
            self.whiten_bias_epochs is None or self.whiten_bias_epochs >= 0,
            "--whiten-bias-epochs must be >= 0",
        )
        need(not (self.lookahead and self.ema), "--lookahead and --ema are two weight averages")
        need(0 <= self.ema < 1, f"--ema must be in [0, 1), got {self.ema}")
        need(self.cutout >= 0, "--cutout must be >= 0")
        need(self.crop_pad >= 0, f"--crop-pad must be >= 0, got {self.crop_pad}")
        need(
            0 <= self.tta_shift <= MAX_TTA_SHIFT,
            f"--tta-shift must be in [0, {MAX_TTA_SHIFT}], got {self.tta_shift}",
        )
        need(self.val is None or self.val >= 0, f"--val must be >= 0, got {self.val}")
        need(self.subset is None or self.subset >= 1, "--subset must be at least 1")
        need(self.stop_after is None or self.stop_after >= 1, "--stop-after must be >= 1")
        need(self.eval_batch_size >= 1, "--eval-batch-size must be at least 1")
        need(self.threads is None or self.threads >= 1, "--threads must be at least 1")
        need(self.precision in PRECISIONS, f"--precision must be one of {', '.join(PRECISIONS)}")
        need(self.schedule in SCHEDULES, f"--schedule must be one of {', '.join(SCHEDULES)}")
        need(self.dataset in ("cifar10", "cifar100"), "--dataset must be cifar10 or cifar100")
        return self

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> TrainConfig:
        known = {f.name for f in fields(cls)}
        return cls(**{k: v for k, v in d.items() if k in known})


def lr_at(cfg: TrainConfig, step: int, total_steps: int, steps_per_epoch: int) -> float:
    """The learning rate for optimizer step ``step`` (0-based): a pure function of the step, so
    a resumed run continues the schedule exactly where it stopped.

    Warm-up rises linearly from ``warmup_start``·lr to lr over ``warmup_epochs``; then
    ``schedule`` decays to ``final_lr``·lr (linear, cosine), keeps lr (constant) or divides it
    by 10 at 50 % and 75 % of the run (step). airbench94's triangle is linear with warm-up
    0.23 of the run, ``warmup_start`` 0.2 and ``final_lr`` 0.07.
    """
    warm = cfg.warmup_epochs * steps_per_epoch
    if warm > 0 and step < warm:
        rise = min(1.0, (step + 1) / warm)  # a fractional warm-up ends at the peak, not above
        return cfg.lr * (cfg.warmup_start + (1 - cfg.warmup_start) * rise)
    if cfg.schedule == "constant":
        return cfg.lr
    progress = (step - warm) / max(1.0, total_steps - warm)
    if cfg.schedule == "step":  # He et al. 2015 CIFAR: 0.1, ÷10 at 32k and 48k of 64k iterations
        return cfg.lr * 0.1 ** ((progress >= 0.5) + (progress >= 0.75))
    if cfg.schedule == "linear":
        shape = 1.0 - progress
    else:
        shape = 0.5 * (1.0 + math.cos(math.pi * progress))
    return cfg.lr * (cfg.final_lr + (1 - cfg.final_lr) * shape)
