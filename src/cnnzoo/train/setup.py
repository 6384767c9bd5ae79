"""Everything a run needs before its first step: the resolved configuration, the runtime
(device, ranks, precision), the data loaders, the model and the optimizer."""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

from cnnzoo.data import Augment, TensorLoader, stratified_split
from cnnzoo.data.cifar import absolute_data
from cnnzoo.data.dataset import Dataset
from cnnzoo.data.loader import normalize
from cnnzoo.data.mix import Mix
from cnnzoo.errors import UserError, one_line
from cnnzoo.models import create_model, model_info
from cnnzoo.train import checkpoint as ckpt_io
from cnnzoo.train.config import RESUME_OPTIONS, RESUME_WHEN_GIVEN, TrainConfig
from cnnzoo.train.ema import EMA
from cnnzoo.train.lookahead import Lookahead
from cnnzoo.train.muon import Muon
from cnnzoo.train.rundir import RunDir, requested_part
from cnnzoo.train.runtime import (
    DistInfo,
    PrecisionChoice,
    broadcast_object,
    choose_precision,
    init_distributed,
    resolve_device,
)

# create_model's own arguments, which the trainer passes itself (num_classes) or never does
# (pretrained, weights: a run trains from its seed; stored in the checkpoints' model_kwargs
# they would make every later load fetch those weights first).
RESERVED_MODEL_KWARGS = frozenset({"num_classes", "pretrained", "weights"})


@dataclass(frozen=True)
class Resumed:
    """What ``--resume`` found in a run directory: ``state``, last.pt (None for a run killed
    before its first checkpoint, which starts over); ``recorded``, its config.json as written
    (the values used, ``data_md5`` among them; empty where there is none); ``from_run``, the
    ``RESUME_WHEN_GIVEN`` fields this command left out, which keep the run's own values."""

    path: Path
    state: dict | None
    recorded: dict[str, Any]
    from_run: frozenset[str]


def resolve_run(cfg: TrainConfig, resume: Path | None) -> tuple[TrainConfig, Resumed | None]:
    """The run's configuration (a copy: the caller's stays as given) and, when resuming, what
    the run directory holds. A resumed run keeps the configuration it was asked for (last.pt's,
    or config.json's for a run killed before its first checkpoint); ``RESUME_OPTIONS`` belong to
    this invocation, and ``RESUME_WHEN_GIVEN`` to it where given."""
    cfg, resumed = dataclasses.replace(cfg), None
    if resume is not None:
        cfg, resumed = _resumed_config(cfg, resume)
    cfg.data = absolute_data(cfg.data)  # as the run records it: eval and resume find it anywhere
    cfg.validate()
    done = int(resumed.state["epoch"]) if resumed is not None and resumed.state else 0
    if cfg.stop_after is not None and cfg.stop_after <= done:  # it would train nothing
        raise UserError(
            f"--stop-after {cfg.stop_after}: {resume} has already finished epoch {done}; "
            "give a later epoch, or none to finish the run"
        )
    reserved = sorted(RESERVED_MODEL_KWARGS & set(cfg.model_kwargs))
    if reserved:
        raise UserError(
            f"--model-kwargs cannot set {', '.join(reserved)}: the run builds the model with the "
            "data's class count and initialises it from --seed"
        )
    model_info(cfg.model)  # unknown names fail here, before any data is read
    try:  # and so do bad --model-kwargs: a build on the meta device allocates nothing
        with torch.device("meta"):
            net = create_model(cfg.model, **cfg.model_kwargs)
    except ValueError as err:
        raise UserError(f"--model-kwargs: {err}") from None
    _check_image_size(net, cfg)
    return cfg, resumed


def _resumed_config(given: TrainConfig, resume: Path) -> tuple[TrainConfig, Resumed]:
    run = RunDir(resume)
    path = run.file("config.json")
    recorded = run.config() if path.is_file() else {}
    if run.killed_before_first_checkpoint():
        state, saved = None, TrainConfig.from_dict(requested_part(recorded, path))
    else:
        state = ckpt_io.load_checkpoint(resume / "last.pt")
        saved = TrainConfig.from_dict(state["config"])
    saved.out = str(resume)
    for name in RESUME_OPTIONS:
        setattr(saved, name, getattr(given, name))
    from_run = frozenset(n for n in RESUME_WHEN_GIVEN if getattr(given, n) is None)
    for name in set(RESUME_WHEN_GIVEN) - from_run:
        setattr(saved, name, getattr(given, name))
    return saved, Resumed(resume, state, recorded, from_run)


def check_resumed_data(resumed: Resumed, data: Dataset) -> None:
    """A resumed run continues on the data it trained on: ``--data`` may name a copy moved
    elsewhere, not other data (the archive's md5, where the run recorded one, and the classes
    of its last checkpoint must match; a run killed before that checkpoint starts over)."""
    recorded = resumed.recorded.get("data_md5")
    if recorded and data.md5 and data.md5 != recorded:
        raise UserError(
            f"{data.source} is not the data {resumed.path} trained on (archive md5 {data.md5}, "
            f"the run's {recorded}); pass --data PATH to a copy of that archive"
        )
    if resumed.state is not None:
        ckpt_io.check_classes(resumed.state, data.classes)


def _check_image_size(net: nn.Module, cfg: TrainConfig) -> None:
    """A model whose head assumes 32×32 inputs (VGG's flatten to 512) refuses another
    ``--image-size`` here, in one line, before any data is decoded: a meta-device forward
    computes only shapes."""
    if cfg.image_size == 32:
        return
    s = cfg.image_size
    try:
        with torch.device("meta"):
            net(torch.empty(2, 3, s, s))  # (2, 3, S, S): 2 keeps BatchNorm's training mode happy
    except (RuntimeError, ValueError) as err:
        reason = one_line(err, first_line=True)
        msg = f"--image-size {s}: {cfg.model} does not take {s}x{s} images ({reason})"
        raise UserError(msg) from None


@dataclass
class Runtime:
    device: torch.device
    dist: DistInfo
    choice: PrecisionChoice

    @property
    def precision(self) -> str:
        return self.choice.precision


def setup_runtime(cfg: TrainConfig) -> Runtime:
    """Device, process group (under torchrun), threads and precision, checked together."""
    device = resolve_device(cfg.device)
    dist = init_distributed(device)
    if dist.enabled and device.type == "cuda":
        device = torch.device("cuda", dist.local_rank)
    if cfg.threads:
        torch.set_num_threads(cfg.threads)
    # auto on a CPU times a conv: rank 0 measures and decides for every rank
    measures = cfg.precision == "auto" and device.type == "cpu"
    choice = choose_precision(cfg.precision, device) if dist.is_main or not measures else None
    choice = broadcast_object(choice, dist)
    if cfg.batch_size % dist.world_size:
        raise UserError(f"--batch-size {cfg.batch_size} must divide by {dist.world_size} ranks")
    if cfg.sync_bn and dist.enabled and device.type != "cuda":
        raise UserError(
            "--sync-bn needs CUDA devices: PyTorch's SyncBatchNorm does not run on the CPU "
            "(without it each rank normalises over its own per-rank batch)"
        )
    if cfg.out is None:  # one name for every rank
        stamp = time.strftime("%Y%m%d-%H%M%S")
        cfg.out = str(broadcast_object(f"runs/{cfg.model}-{stamp}", dist))
    return Runtime(device, dist, choice)


@dataclass
class Loaders:
    train: TensorLoader
    val: TensorLoader | None
    test: TensorLoader
    train_idx: torch.Tensor  # positions of the training images in the training set
    n_val: int


def build_loaders(cfg: TrainConfig, data: Dataset, rt: Runtime) -> Loaders:
    """The seeded, stratified validation split, the training subset and the three loaders."""
    train_idx, val_x, val_y = _validation_split(cfg, data)
    n_val = val_y.numel()
    if cfg.subset is not None:
        train_idx = train_idx[: cfg.subset]
    if cfg.batch_size > train_idx.numel():
        raise UserError(
            f"--batch-size {cfg.batch_size} is larger than the training set "
            f"({train_idx.numel()} images)"
        )
    aug = Augment(
        pad=cfg.crop_pad,
        cutout=cfg.cutout,
        alternate_flip=cfg.alternate_flip,
        reflect=cfg.crop_reflect,
        low_res=cfg.low_res,
        low_res_epochs=cfg.low_res_epochs,
    )
    common: dict[str, Any] = dict(
        mean=data.mean,
        std=data.std,
        device=rt.device,
        channels_last=cfg.channels_last,
        rank=rt.dist.rank,
        world_size=rt.dist.world_size,
    )
    train_x, train_y = data.train_x[train_idx], data.train_y[train_idx]
    per_rank = cfg.batch_size // rt.dist.world_size
    mix = Mix(cfg.mixup, cfg.cutmix, data.num_classes)
    train = TensorLoader(
        train_x, train_y, per_rank, train=True, augment=aug if cfg.augment else None,
        seed=cfg.seed, mix=mix, **common,
    )  # fmt: skip
    val = TensorLoader(val_x, val_y, cfg.eval_batch_size, **common) if n_val else None
    test = TensorLoader(data.test_x, data.test_y, cfg.eval_batch_size, **common)
    return Loaders(train, val, test, train_idx, n_val)


def _validation_split(
    cfg: TrainConfig, data: Dataset
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(training positions in ``data.train_x``, validation images, their labels): the data's
    own validation images when it has them (an image folder's val/; ``--val 0`` still means
    none), else a seeded, stratified ``--val`` images of the training set (default 10%)."""
    n_total = data.train_x.shape[0]
    if data.val_x is not None and data.val_y is not None:
        if cfg.val:
            raise UserError(f"--val {cfg.val}: {data.source} has its own validation images (val/)")
        if cfg.val == 0:
            return torch.arange(n_total), data.val_x[:0], data.val_y[:0]
        return torch.arange(n_total), data.val_x, data.val_y
    n_val = cfg.val if cfg.val is not None else n_total // 10
    if n_val >= n_total:
        raise UserError(f"--val {n_val} leaves no training images (the set has {n_total})")
    train_idx, val_idx = stratified_split(data.train_y, n_val, seed=cfg.seed)
    return train_idx, data.train_x[val_idx], data.train_y[val_idx]


def memory_format(cfg: TrainConfig) -> torch.memory_format:
    return torch.channels_last if cfg.channels_last else torch.contiguous_format


def build_model(
    cfg: TrainConfig, data: Dataset, loaders: Loaders, rt: Runtime, fresh: bool
) -> nn.Module:
    """The seeded model on its device. A model with a data-dependent initialisation declares it
    with ``init_from_data(images)`` and ``INIT_IMAGES`` (FastNet's whitening stem): it gets that
    many un-augmented training images, normalised as the loader does, (n, 3, H, W) float32,
    unless the run resumes (its checkpoint holds the result)."""
    torch.manual_seed(cfg.seed)
    model = create_model(cfg.model, num_classes=data.num_classes, **cfg.model_kwargs)
    if fresh and hasattr(model, "init_from_data"):
        sample = data.train_x[loaders.train_idx[: model.INIT_IMAGES]]
        model.init_from_data(normalize(sample, data.mean, data.std, channels_last=False))
    if cfg.sync_bn and rt.dist.enabled:
        model = nn.SyncBatchNorm.convert_sync_batchnorm(model)
    if cfg.whiten_bias_epochs is not None and not isinstance(
        getattr(model, "stem_bias", None), nn.Parameter
    ):
        raise UserError(f"--whiten-bias-epochs: {cfg.model} has no whitening stem bias")
    return model.to(rt.device, memory_format=memory_format(cfg))


@dataclass
class Optim:
    """The optimizer and what steps with it: loss scaler (fp16), weight EMA, lookahead."""

    optimizer: torch.optim.Optimizer
    scaler: torch.amp.GradScaler | None
    ema: EMA | None
    lookahead: Lookahead | None

    def state_dict(self) -> dict[str, Any]:
        return {
            "optimizer": self.optimizer.state_dict(),
            "scaler": self.scaler.state_dict() if self.scaler else None,
            "ema": self.ema.state_dict() if self.ema else None,
            "lookahead": self.lookahead.state_dict() if self.lookahead else None,
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.optimizer.load_state_dict(state["optimizer"])
        for part in ("scaler", "ema", "lookahead"):
            if getattr(self, part) is not None and state.get(part):
                getattr(self, part).load_state_dict(state[part])


def build_optim(cfg: TrainConfig, model: nn.Module, rt: Runtime) -> Optim:
    muon = cfg.optimizer == "muon"
    groups = muon_param_groups(model, cfg) if muon else param_groups(model.parameters(), cfg)
    if cfg.whiten_bias_decay:
        groups = whiten_bias_apart(groups, model.stem_bias)
    optimizer: torch.optim.Optimizer = (
        Muon(groups)
        if muon
        else torch.optim.SGD(groups, lr=cfg.lr, momentum=cfg.momentum, nesterov=cfg.nesterov)
    )
    scaler = torch.amp.GradScaler(rt.device.type) if rt.precision == "fp16" else None
    ema = EMA(model, cfg.ema) if cfg.ema else None
    lookahead = (
        Lookahead(model, every=cfg.lookahead_every, decay=cfg.lookahead_decay)
        if cfg.lookahead
        else None
    )
    return Optim(optimizer, scaler, ema, lookahead)


def param_groups(params: Iterable[nn.Parameter], cfg: TrainConfig) -> list[dict[str, Any]]:
    """SGD's groups: one, or with ``--no-bn-weight-decay`` the matrices and filters apart."""
    params = list(params)
    if not cfg.no_bn_weight_decay:
        return [{"params": params, "weight_decay": cfg.weight_decay}]
    decay, no_decay = [], []
    for p in params:
        (no_decay if p.ndim <= 1 else decay).append(p)  # BN weights/biases and all biases
    return [
        {"params": decay, "weight_decay": cfg.weight_decay},
        {"params": no_decay, "weight_decay": 0.0},
    ]


def whiten_bias_apart(groups: list[dict[str, Any]], bias: nn.Parameter) -> list[dict[str, Any]]:
    """``--whiten-bias-decay``: the whitening bias in a group of its own, last (group 0 is the
    metrics' "lr"), with the settings of the group it came from, marked ``whiten_bias`` for the
    trainer, which gives it airbench94_muon's decay."""
    home = next(g for g in groups if any(p is bias for p in g["params"]))
    rest = [{**g, "params": [p for p in g["params"] if p is not bias]} for g in groups]
    return [g for g in rest if g["params"]] + [{**home, "params": [bias], "whiten_bias": True}]


def muon_param_groups(model: nn.Module, cfg: TrainConfig) -> list[dict[str, Any]]:
    """``--optimizer muon``, as airbench94_muon: the conv filters (4-D weights) in a Muon group
    at ``muon_lr``, the rest (biases, BN shifts, the classifier) in SGD groups at ``lr``. Each
    group's ``lr_scale`` is its peak over ``cfg.lr``: the schedule sets lr × lr_scale."""
    params = list(model.parameters())
    filters = [p for p in params if p.ndim == 4]
    if not filters:
        raise UserError(f"--optimizer muon: {cfg.model} has no conv filters")
    chosen = {id(p) for p in filters}
    sgd = [
        {**g, "lr": cfg.lr, "momentum": cfg.momentum, "nesterov": cfg.nesterov, "muon": False}
        for g in param_groups((p for p in params if id(p) not in chosen), cfg)
        if g["params"]
    ]
    muon = {
        "params": filters, "muon": True, "lr": cfg.muon_lr, "momentum": cfg.muon_momentum,
        "nesterov": cfg.nesterov, "weight_decay": 0.0, "lr_scale": cfg.muon_lr / cfg.lr,
    }  # fmt: skip
    return [*sgd, muon]  # SGD's first: the metrics' "lr" column reads group 0
