"""Training configuration: one dataclass, validated up front, saved fully resolved."""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field, fields
from typing import Any

from cnnzoo.errors import UserError

PRECISIONS = ("auto", "fp32", "bf16", "fp16")
MAX_TTA_SHIFT = 8  # translate-TTA pixels; reflection padding needs fewer than the image side
OPTIMIZERS = ("sgd", "muon")  # muon: cnnzoo.train.muon, for conv filters; SGD for the rest
SCHEDULES = ("cosine", "linear", "constant", "step")  # step: ÷10 at 50% and 75% (He et al.)
DATASETS = ("cifar10", "cifar100")
MIN_IMAGE_SIZE, MAX_IMAGE_SIZE = 8, 512  # --image-size; each model also checks it takes it
# --seed: numpy's generators (the mixup draws) refuse negative seeds, and the loader and pruner
# seed torch with seed × 1,000,003 + epoch, which must stay within 64 bits.
MAX_SEED = 2**32
# The fields a resumed run takes from its command line (--stop-after, --checkpoint-every,
# --quiet); every other one comes from the run it continues.
RESUME_OPTIONS = ("stop_after", "checkpoint_every", "quiet")
# The fields a resumed run takes from its command line only when given there: --data points it
# to its data moved elsewhere (checked to be the same data); left out, the saved path stands.
RESUME_WHEN_GIVEN = ("data",)

# --checkpoint-every's default, in minutes. Its clock restarts at every checkpoint, the
# end-of-epoch ones included, so epochs shorter than this never write a timed checkpoint (short
# runs pay nothing, and the choice needs no estimate of an epoch's length), while a longer epoch
# (ResNet-18 on a 2-core CPU: 15+ minutes) loses at most this much work to a SIGKILL or a power
# cut. Writing a ResNet-18 last.pt (weights and momentum, 89 MB) took 0.2-0.6 s on the 2-core
# development machine: 0.2% of the period at most.
CHECKPOINT_MINUTES = 5.0


def check_tta(shift: int, grid: bool, fraction: float) -> None:
    """Raise ``UserError`` for TTA settings no evaluation can use (training and ``cnnzoo eval``
    both check here)."""
    if not 0 <= shift <= MAX_TTA_SHIFT:
        raise UserError(f"--tta-shift must be in [0, {MAX_TTA_SHIFT}], got {shift}")
    if grid and shift < 1:
        raise UserError("--tta-grid needs --tta-shift PX (PX >= 1)")
    if not 0 < fraction <= 1:
        raise UserError(f"--tta-fraction must be in (0, 1], got {fraction}")


def opt(default: Any, group: str, help: str, **cli: Any) -> Any:
    """A field with its command-line option: ``--name-with-dashes`` in ``group``. ``cli`` goes
    to ``argparse.add_argument`` (``type`` is the default's unless given; a bool is an
    ``--x/--no-x`` switch unless ``action`` says otherwise); ``flag`` renames the option;
    ``train_only`` keeps it off the commands that train many runs (compare, degradation)."""
    return field(default=default, metadata={"cli": {"group": group, "help": help, **cli}})


@dataclass
class TrainConfig:
    """Every knob of a training run, and (field metadata) its command-line option: adding an
    option is adding a field here. Defaults are the reference notebook's recipe: SGD lr 0.1,
    momentum 0.9, weight decay 5e-4, cosine over the run, batch 128, 20 epochs."""

    model: str = "resnet20"  # the command's positional MODEL
    model_kwargs: dict[str, Any] = field(default_factory=dict)  # train's --model-kwargs JSON
    # ---- data
    dataset: str = opt("cifar10", "data", "dataset the archive holds", choices=DATASETS)
    data: str | None = opt(
        None,
        "data",
        "archive, extracted folder, or 'synthetic[:N]' (generated, N training images) "
        "(default: $CNNZOO_DATA, else ~/.cache/cnnzoo; downloads if missing); with "
        "train --resume: a moved copy of the run's data",
        type=str,
    )
    image_size: int = opt(
        32,
        "data",
        "image folders (--data PATH with PATH/train/<class>/*.png|jpg): resize each image's "
        "shorter side to PX and centre-crop PX×PX, as predict does (CIFAR is 32)",
        metavar="PX",
    )
    val: int | None = opt(
        None,
        "data",
        "validation images held out (default 10%%; 0: none); an image folder's val/ replaces it",
        type=int,
    )
    val_every: int = opt(
        1,
        "data",
        "evaluate the validation images after every N-th epoch and the last (best.pt is chosen "
        "among those): a held-out comparison of recipes pays for one pass instead of one per epoch",
        metavar="N",
        train_only=True,
    )
    subset: int | None = opt(None, "data", "train on the first N training images", type=int)
    augment: bool = opt(True, "data", "random crop + horizontal flip of the training images")
    cutout: int = opt(0, "data", "cutout square side in pixels (0: off)", metavar="PX")
    crop_pad: int = opt(4, "data", "random-crop padding: shifts of up to ±PX", metavar="PX")
    crop_reflect: bool = opt(False, "data", "pad random crops by reflection, not with zeros")
    alternate_flip: bool = opt(
        False, "data", "flip each image in every other epoch (random in the first), not at random"
    )
    low_res: int = opt(
        0,
        "data",
        "progressive resizing: train the first --low-res-epochs epochs on batches downsampled "
        "to PX x PX (bilinear, antialiased), each step ~(PX/side)^2 as costly (0: off)",
        metavar="PX",
    )
    low_res_epochs: int = opt(0, "data", "epochs 1..N at --low-res", metavar="N")
    mixup: float = opt(0.0, "data", "mixup with λ ~ Beta(A, A) per batch (0: off)", metavar="A")
    cutmix: float = opt(0.0, "data", "cutmix with λ ~ Beta(A, A) per batch (0: off)", metavar="A")
    # ---- optimisation
    epochs: int = opt(20, "optimisation", "training epochs")
    batch_size: int = opt(128, "optimisation", "global batch size (split over torchrun ranks)")
    micro_batch: int | None = opt(
        None,
        "optimisation",
        "forward and backward each batch in chunks of at most N images, their gradients "
        "summed into one step (BatchNorm statistics are per chunk): a large batch at the speed "
        "of a small one where small batches run faster (CPU caches)",
        type=int,
        metavar="N",
    )
    optimizer: str = opt(
        "sgd",
        "optimisation",
        "sgd, or muon: Muon (orthogonalised momentum, --muon-lr) for the conv filters, SGD "
        "(--lr, --momentum, --weight-decay) for the rest",
        choices=OPTIMIZERS,
    )
    muon_lr: float = opt(0.24, "optimisation", "--optimizer muon: peak lr of the conv filters")
    muon_momentum: float = opt(0.6, "optimisation", "--optimizer muon: the filters' momentum")
    lr: float = opt(0.1, "optimisation", "peak learning rate, for the global batch")
    momentum: float = opt(0.9, "optimisation", "SGD momentum")
    nesterov: bool = opt(False, "optimisation", "Nesterov momentum")
    weight_decay: float = opt(5e-4, "optimisation", "SGD weight decay")
    no_bn_weight_decay: bool = opt(
        False, "optimisation", "no weight decay on BN parameters and biases", action="store_true"
    )
    schedule: str = opt(
        "cosine",
        "optimisation",
        "lr per step after the warm-up: cosine or linear decay, constant, or step (÷10 at 50%% "
        "and 75%%, He et al.)",
        choices=SCHEDULES,
    )
    warmup_epochs: float = opt(0.0, "optimisation", "linear warm-up, in (fractional) epochs")
    warmup_start: float = opt(
        0.0, "optimisation", "the warm-up starts at FRAC × lr", metavar="FRAC"
    )
    final_lr: float = opt(
        0.0, "optimisation", "linear/cosine schedules end at FRAC × lr", metavar="FRAC"
    )
    label_smoothing: float = opt(0.0, "optimisation", "label smoothing of the loss")
    ema: float = opt(0.0, "optimisation", "decay of an EMA of the weights, evaluated (0: off)")
    lookahead: bool = opt(
        False,
        "optimisation",
        "airbench94's lookahead: from epoch 4, every --lookahead-every steps, an EMA of the "
        "weights (decay --lookahead-decay × (step/total)^3) copied back into them",
    )
    lookahead_every: int = opt(
        5, "optimisation", "lookahead: average every N optimizer steps", metavar="N"
    )
    lookahead_decay: float = opt(
        0.95**5,
        "optimisation",
        "lookahead: the average's decay per averaging step at the end of the run (airbench94: "
        "0.95^5 = 0.774, at batch 1024)",
    )
    whiten_bias_epochs: int | None = opt(
        None,
        "optimisation",
        "train a whitening stem's bias (fastnet) for N epochs, then freeze it",
        type=int,
        metavar="N",
    )
    whiten_bias_decay: bool = opt(
        False,
        "optimisation",
        "the whitening bias's lr decays linearly from the peak lr to 0 over "
        "--whiten-bias-epochs instead of following the schedule (airbench94_muon)",
    )
    tta: bool = opt(False, "optimisation", "evaluate on each image and its mirror image")
    tta_shift: int = opt(
        0, "optimisation", "TTA also over views shifted by ±PX pixels (0: off)", metavar="PX"
    )
    tta_grid: bool = opt(
        False,
        "optimisation",
        "with --tta-shift PX: average all 9 translations of {-PX, 0, PX}² (equal weights) "
        "instead of airbench94's untranslated ½ + two diagonal ¼",
    )
    tta_fraction: float = opt(
        1.0,
        "optimisation",
        "TTA only for this fraction of each evaluation batch, the images the plain forward pass "
        "is least sure of; the rest keep their plain prediction (1: all)",
        metavar="F",
    )
    prune: float = opt(
        0.0,
        "optimisation",
        "data pruning (InfoBatch): each epoch but the first and the --prune-full-last ones skips "
        "this share of the --prune-pool images with the lowest last loss, their kept peers' loss "
        "weighted up to match (0: off)",
        metavar="F",
    )
    prune_pool: float = opt(
        0.6,
        "optimisation",
        "--prune: the share of images, lowest loss first, it may skip",
        metavar="F",
    )
    prune_full_last: int = opt(
        1, "optimisation", "--prune: the last N epochs train on every image", metavar="N"
    )
    seed: int = opt(0, "optimisation", "seed of the weights, split, order and augmentation")
    # ---- runtime
    device: str = opt("auto", "runtime", "auto, cpu, cuda, cuda:N or mps")
    precision: str = opt(
        "auto",
        "runtime",
        "auto: bf16 on CUDA, and on a CPU where a short conv measures it faster; else fp32",
        choices=PRECISIONS,
    )
    channels_last: bool = opt(True, "runtime", "channels_last memory format")
    compile: bool = opt(False, "runtime", "torch.compile the model")
    sync_bn: bool = opt(False, "runtime", "SyncBatchNorm across torchrun ranks (CUDA)")
    eval_batch_size: int = opt(1000, "runtime", "batch size of evaluation passes")
    threads: int | None = opt(None, "runtime", "torch intra-op threads", type=int)
    quiet: bool = opt(False, "runtime", "print nothing but errors")
    # ---- one run's own
    out: str | None = None  # run directory; None = runs/<model>-<timestamp>
    stop_after: int | None = opt(
        None,
        "run",
        "stop after this epoch; the schedule still spans --epochs (resume later)",
        type=int,
        metavar="EPOCH",
        train_only=True,
    )
    record_gradflow: bool = opt(
        False,
        "run",
        "store per-epoch conv gradient norms in the run directory",
        action="store_true",
        train_only=True,
    )
    checkpoint_every: float = opt(
        CHECKPOINT_MINUTES,
        "run",
        "write a resumable mid-epoch last.pt once MIN minutes have passed since the last "
        "checkpoint (epochs shorter than that never write one; 0: only at epoch ends)",
        metavar="MIN",
    )
    tensorboard: bool = opt(
        False, "run", "log to RUN/tensorboard", action="store_true", train_only=True
    )

    def validate(self) -> TrainConfig:
        """Raise ``UserError`` naming the first bad value."""

        def need(ok: bool, msg: str) -> None:
            if not ok:
                raise UserError(msg)

        need(self.epochs >= 1, f"--epochs must be at least 1, got {self.epochs}")
        need(self.batch_size >= 1, f"--batch-size must be at least 1, got {self.batch_size}")
        need(math.isfinite(self.lr) and self.lr > 0, f"--lr must be positive, got {self.lr}")
        need(0 <= self.momentum < 1, f"--momentum must be in [0, 1), got {self.momentum}")
        need(self.optimizer in OPTIMIZERS, f"--optimizer must be one of {', '.join(OPTIMIZERS)}")
        need(
            math.isfinite(self.muon_lr) and self.muon_lr > 0,
            f"--muon-lr must be positive, got {self.muon_lr}",
        )
        need(0 <= self.muon_momentum < 1, "--muon-momentum must be in [0, 1)")
        need(
            self.micro_batch is None or self.micro_batch >= 1,
            f"--micro-batch must be at least 1, got {self.micro_batch}",
        )
        need(self.weight_decay >= 0, f"--weight-decay must be >= 0, got {self.weight_decay}")
        need(0 <= self.label_smoothing < 1, "--label-smoothing must be in [0, 1)")
        need(self.warmup_epochs >= 0, "--warmup-epochs must be >= 0")
        need(0 <= self.warmup_start <= 1, "--warmup-start must be in [0, 1]")
        need(0 <= self.final_lr <= 1, "--final-lr must be in [0, 1]")
        need(
            self.whiten_bias_epochs is None or self.whiten_bias_epochs >= 0,
            "--whiten-bias-epochs must be >= 0",
        )
        need(
            not self.whiten_bias_decay or bool(self.whiten_bias_epochs),
            "--whiten-bias-decay needs --whiten-bias-epochs N (N >= 1): the epochs it decays over",
        )
        need(not (self.lookahead and self.ema), "--lookahead and --ema are two weight averages")
        need(self.lookahead_every >= 1, "--lookahead-every must be at least 1")
        need(0 <= self.lookahead_decay < 1, "--lookahead-decay must be in [0, 1)")
        need(0 <= self.ema < 1, f"--ema must be in [0, 1), got {self.ema}")
        need(self.cutout >= 0, "--cutout must be >= 0")
        need(self.mixup >= 0 and self.cutmix >= 0, "--mixup and --cutmix must be >= 0")
        need(self.crop_pad >= 0, f"--crop-pad must be >= 0, got {self.crop_pad}")
        need(
            (self.low_res > 0) == (self.low_res_epochs > 0) and self.low_res_epochs >= 0,
            "--low-res PX and --low-res-epochs N go together (both > 0, or both 0)",
        )
        need(
            not self.low_res or MIN_IMAGE_SIZE <= self.low_res < self.image_size,
            f"--low-res must be in [{MIN_IMAGE_SIZE}, {self.image_size}) (below --image-size), "
            f"got {self.low_res}",
        )
        check_tta(self.tta_shift, self.tta_grid, self.tta_fraction)
        need(
            self.tta_shift < self.image_size,
            f"--tta-shift {self.tta_shift} must be below --image-size {self.image_size} "
            "(the shifted views pad by reflection)",
        )
        need(0 <= self.prune < 1, f"--prune must be in [0, 1), got {self.prune}")
        need(0 < self.prune_pool <= 1, f"--prune-pool must be in (0, 1], got {self.prune_pool}")
        need(self.prune_full_last >= 0, "--prune-full-last must be >= 0")
        need(
            not (self.prune and self.micro_batch),
            "--prune weighs each image's loss and does not combine with --micro-batch",
        )
        need(self.val is None or self.val >= 0, f"--val must be >= 0, got {self.val}")
        need(0 <= self.seed < MAX_SEED, f"--seed must be in [0, 2**32), got {self.seed}")
        need(
            MIN_IMAGE_SIZE <= self.image_size <= MAX_IMAGE_SIZE,
            f"--image-size must be in [{MIN_IMAGE_SIZE}, {MAX_IMAGE_SIZE}], got {self.image_size}",
        )
        need(self.val_every >= 1, f"--val-every must be at least 1, got {self.val_every}")
        need(self.subset is None or self.subset >= 1, "--subset must be at least 1")
        need(self.stop_after is None or self.stop_after >= 1, "--stop-after must be >= 1")
        need(
            math.isfinite(self.checkpoint_every) and self.checkpoint_every >= 0,
            f"--checkpoint-every must be >= 0 minutes, got {self.checkpoint_every}",
        )
        need(self.eval_batch_size >= 1, "--eval-batch-size must be at least 1")
        need(self.threads is None or self.threads >= 1, "--threads must be at least 1")
        need(self.precision in PRECISIONS, f"--precision must be one of {', '.join(PRECISIONS)}")
        need(self.schedule in SCHEDULES, f"--schedule must be one of {', '.join(SCHEDULES)}")
        need(self.dataset in DATASETS, f"--dataset must be one of {', '.join(DATASETS)}")
        return self

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> TrainConfig:
        known = {f.name for f in fields(cls)}
        return cls(**{k: v for k, v in d.items() if k in known})


def lr_at(cfg: TrainConfig, step: int, total_steps: int, steps_per_epoch: float) -> float:
    """The learning rate for optimizer step ``step`` (0-based): a pure function of the step, so
    a resumed run continues the schedule exactly where it stopped.

    Warm-up rises linearly from ``warmup_start``·lr to lr over ``warmup_epochs``; then
    ``schedule`` decays to ``final_lr``·lr (linear, cosine), keeps lr (constant) or divides it
    by 10 at 50 % and 75 % of the run (step). airbench94's triangle is linear with warm-up
    0.23 of the run, ``warmup_start`` 0.2 and ``final_lr`` 0.07. ``steps_per_epoch`` is the
    mean epoch's (fractional when ``--prune`` makes some epochs shorter).
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


def whiten_bias_lr_at(cfg: TrainConfig, step: int, steps_per_epoch: float) -> float:
    """``--whiten-bias-decay``: the whitening bias's rate for step ``step`` (0-based), as
    airbench94_muon's: lr × (1 - step / its training steps), 0 from then on (it is frozen)."""
    steps = (cfg.whiten_bias_epochs or 0) * steps_per_epoch
    return cfg.lr * max(0.0, 1.0 - step / steps) if steps else 0.0
