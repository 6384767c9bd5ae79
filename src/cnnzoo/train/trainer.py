"""``train(TrainConfig) -> RunResult``: the one training loop every command uses."""

from __future__ import annotations

import dataclasses
import json
import math
import os
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from cnnzoo.data import Augment, TensorLoader, load_dataset, stratified_split
from cnnzoo.data.loader import normalize
from cnnzoo.errors import TrainingDiverged, UserError
from cnnzoo.models import create_model, model_info
from cnnzoo.models.gradnorms import conv_grad_norms
from cnnzoo.train import checkpoint as ckpt_io
from cnnzoo.train.config import TrainConfig, lr_at
from cnnzoo.train.ema import EMA
from cnnzoo.train.engine import EvalResult, evaluate, train_epoch
from cnnzoo.train.lookahead import Lookahead
from cnnzoo.train.progress import Progress
from cnnzoo.train.rundir import (
    append_jsonl,
    read_metrics,
    write_json,
    write_metrics,
    write_text_atomic,
)
from cnnzoo.train.runtime import (
    DistInfo,
    autocast,
    barrier,
    broadcast_object,
    choose_precision,
    init_distributed,
    resolve_device,
)


@dataclass
class RunResult:
    out_dir: Path
    best_val_acc: float | None
    best_epoch: int
    test_acc: float | None  # of the checkpoint chosen by validation accuracy (best.pt)
    test_acc_last: float | None  # of the final weights; both None when stopped early
    seconds: float
    history: list[dict[str, Any]] = field(default_factory=list)


def train(cfg: TrainConfig, resume: str | os.PathLike | None = None) -> RunResult:
    """Train ``cfg.model``; with ``resume`` continue the run in that directory exactly where its
    last checkpoint stopped (model, optimizer, schedule position, RNG state, epoch counter)."""
    closers: list[Any] = []  # what the run opened (the TensorBoard writer), closed however it ends
    try:
        return _train(cfg, resume, closers)
    finally:
        for close in reversed(closers):
            close()


def _train(cfg: TrainConfig, resume, closers: list[Any]) -> RunResult:
    cfg = dataclasses.replace(cfg)  # a copy: the run resolves it, the caller's stays as given
    state: dict[str, Any] | None = None
    if resume is not None:
        stop_after, quiet = cfg.stop_after, cfg.quiet  # these belong to this invocation
        if _killed_before_first_checkpoint(Path(resume)):
            # Stopped (killed) during epoch 1: start the run over with its own configuration.
            cfg = TrainConfig.from_dict(_read_config(Path(resume) / "config.json"))
        else:
            state = ckpt_io.load_checkpoint(Path(resume) / "last.pt")
            cfg = TrainConfig.from_dict(state["config"])
        cfg.out, cfg.stop_after, cfg.quiet = str(resume), stop_after, quiet
    cfg.validate()
    model_info(cfg.model)  # unknown names fail here, before any data is read
    try:  # and so do bad --model-kwargs: a build on the meta device allocates nothing
        with torch.device("meta"):
            create_model(cfg.model, **cfg.model_kwargs)
    except ValueError as err:
        raise UserError(f"--model-kwargs: {err}") from None

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
    precision = choice.precision
    if cfg.batch_size % dist.world_size:
        raise UserError(f"--batch-size {cfg.batch_size} must divide by {dist.world_size} ranks")
    if cfg.sync_bn and dist.enabled and device.type != "cuda":
        raise UserError(
            "--sync-bn needs CUDA devices: PyTorch's SyncBatchNorm does not run on the CPU "
            "(without it each rank normalises over its own per-rank batch)"
        )
    out = _prepare_out_dir(cfg, dist, resuming=resume is not None)
    if dist.is_main:
        for stale in _stale_temp_files(out):  # saves cut short by a kill
            stale.unlink(missing_ok=True)

    # ---- data: train / val / test as uint8 tensors ------------------------------------------
    data = load_dataset(cfg.dataset, cfg.data, quiet=cfg.quiet or not dist.is_main)
    n_total = data.train_x.shape[0]
    n_val = cfg.val if cfg.val is not None else n_total // 10
    if n_val >= n_total:
        raise UserError(f"--val {n_val} leaves no training images (the set has {n_total})")
    train_idx, val_idx = stratified_split(data.train_y, n_val, seed=cfg.seed)
    if cfg.subset is not None:
        train_idx = train_idx[: cfg.subset]
    if cfg.batch_size > train_idx.numel():
        raise UserError(
            f"--batch-size {cfg.batch_size} is larger than the training set "
            f"({train_idx.numel()} images)"
        )
    per_rank = cfg.batch_size // dist.world_size
    aug = (
        Augment(
            pad=cfg.crop_pad,
            cutout=cfg.cutout,
            alternate_flip=cfg.alternate_flip,
            reflect=cfg.crop_reflect,
        )
        if cfg.augment
        else None
    )
    common = dict(
        mean=data.mean,
        std=data.std,
        device=device,
        channels_last=cfg.channels_last,
        rank=dist.rank,
        world_size=dist.world_size,
    )
    train_loader = TensorLoader(
        data.train_x[train_idx],
        data.train_y[train_idx],
        per_rank,
        train=True,
        augment=aug,
        seed=cfg.seed,
        **common,
    )
    val_loader = (
        TensorLoader(data.train_x[val_idx], data.train_y[val_idx], cfg.eval_batch_size, **common)
        if n_val
        else None
    )
    test_loader = TensorLoader(data.test_x, data.test_y, cfg.eval_batch_size, **common)

    # ---- model, optimizer ---------------------------------------------------------------------
    torch.manual_seed(cfg.seed)
    model = create_model(cfg.model, num_classes=data.num_classes, **cfg.model_kwargs)
    if hasattr(model, "init_from_data") and state is None:
        # data-dependent initialisation (FastNet's whitening stem) from up to 5000 training
        # images, un-augmented, normalised as the loader does: (n, 3, H, W) float32
        sample = data.train_x[train_idx[:5000]]
        model.init_from_data(normalize(sample, data.mean, data.std, channels_last=False))
    if cfg.sync_bn and dist.enabled:
        model = nn.SyncBatchNorm.convert_sync_batchnorm(model)
    model = model.to(device, memory_format=_memory_format(cfg))
    optimizer = torch.optim.SGD(
        _param_groups(model, cfg), lr=cfg.lr, momentum=cfg.momentum, nesterov=cfg.nesterov
    )
    scaler = torch.amp.GradScaler(device.type) if precision == "fp16" else None
    ema = EMA(model, cfg.ema) if cfg.ema else None
    lookahead = Lookahead(model) if cfg.lookahead else None
    if cfg.whiten_bias_epochs is not None and not isinstance(
        getattr(model, "stem_bias", None), nn.Parameter
    ):
        raise UserError(f"--whiten-bias-epochs: {cfg.model} has no whitening stem bias")
    steps_per_epoch = len(train_loader)
    total_steps = steps_per_epoch * cfg.epochs
    start_epoch, step, best_acc, best_epoch = 0, 0, -1.0, 0
    history: list[dict[str, Any]] = []
    if state is not None:
        model.load_state_dict(state["model"])
        optimizer.load_state_dict(state["optimizer"])
        if scaler is not None and state.get("scaler"):
            scaler.load_state_dict(state["scaler"])
        if ema is not None and state.get("ema"):
            ema.load_state_dict(state["ema"])
        if lookahead is not None and state.get("lookahead"):
            lookahead.load_state_dict(state["lookahead"])
        start_epoch, step = int(state["epoch"]), int(state["step"])
        best_acc, best_epoch = float(state["best_val_acc"]), int(state["best_epoch"])
        _set_rng_state(state["rng"])
        history = [r for r in read_metrics(out) if r["epoch"] <= start_epoch]
    if dist.is_main:  # rows written after the resume point by a killed run are redone (a run
        # killed before its first checkpoint starts over: all of them, its epoch-0 row too)
        _truncate_jsonl(out / "gradflow.jsonl", start_epoch if state is not None else -1)

    def wrap(m: nn.Module) -> nn.Module:
        """DDP (which fixes the set of trainable parameters) and compile around the model."""
        if dist.enabled:
            ids = [device.index] if device.type == "cuda" else None
            m = nn.parallel.DistributedDataParallel(m, device_ids=ids)
        return torch.compile(m) if cfg.compile else m

    net = wrap(model)

    def amp():
        return autocast(device, precision)

    def evaluate_on(m: nn.Module, loader: TensorLoader) -> EvalResult:
        """The run's evaluation: its TTA settings, summed over ranks."""
        return evaluate(m, loader, data.num_classes, amp, cfg.tta, dist, cfg.tta_shift)

    def set_lr() -> float:
        nonlocal step
        lr = lr_at(cfg, step, total_steps, steps_per_epoch)
        for group in optimizer.param_groups:
            group["lr"] = lr
        step += 1
        return lr

    criterion = nn.CrossEntropyLoss(label_smoothing=cfg.label_smoothing)
    resolved = {
        **cfg.to_dict(),
        "out": str(out),
        "device": str(device),
        "precision": precision,
        "precision_reason": choice.reason,
        "precision_measured": choice.measured,
        "val": n_val,
        "num_classes": data.num_classes,
        "world_size": dist.world_size,
        "train_images": train_idx.numel(),
        "steps_per_epoch": steps_per_epoch,
        "torch": torch.__version__,
    }
    progress = Progress(cfg.epochs, quiet=cfg.quiet, enabled=dist.is_main)
    writer = _tensorboard(out, cfg, progress) if dist.is_main else None
    if writer is not None:
        closers.append(writer.close)
    if dist.is_main:
        write_json(out / "config.json", resolved)
        if cfg.record_gradflow and start_epoch == 0:
            _record_gradflow(model, train_loader, criterion, amp, out, epoch=0)
        progress.log(f"precision {precision}: {choice.reason}")
        progress.log(
            f"training {cfg.model} on {data.name} ({train_idx.numel()} train / {n_val} val) "
            f"for {cfg.epochs} epochs on {device} ({precision}, {dist.world_size} rank(s)) -> {out}"
        )

    meta = {
        "model_name": cfg.model,
        "model_kwargs": dict(cfg.model_kwargs),
        "num_classes": data.num_classes,
        "classes": list(data.classes),
        "mean": list(data.mean),
        "std": list(data.std),
        "config": cfg.to_dict(),
        "format": ckpt_io.FORMAT,
    }
    run_start = time.perf_counter()
    last_epoch = min(cfg.epochs, cfg.stop_after or cfg.epochs)
    for epoch in range(start_epoch + 1, last_epoch + 1):
        train_loader.set_epoch(epoch)
        if cfg.whiten_bias_epochs is not None:  # airbench94: the stem bias trains, then freezes
            trains = epoch <= cfg.whiten_bias_epochs
            if model.stem_bias.requires_grad != trains:
                model.stem_bias.requires_grad_(trains)
                net = wrap(model) if dist.enabled else net  # DDP must see the change
        progress.start_epoch(epoch, steps_per_epoch)
        stats = train_epoch(
            net,
            train_loader,
            optimizer,
            criterion,
            amp,
            set_lr,
            scaler,
            after_step=_after_step(model, ema, lookahead, epoch, lambda: step, total_steps),
            dist_info=dist,
            on_batch=progress.batch if progress.wants_batches else None,
        )
        if lookahead is not None:
            lookahead.end_epoch()
        eval_model = ema.module if ema else model
        val = evaluate_on(eval_model, val_loader) if val_loader else None
        row = {
            "epoch": epoch,
            "lr": optimizer.param_groups[0]["lr"],
            "train_loss": stats.loss,
            "train_acc": stats.acc,
            "val_loss": val.loss if val else None,
            "val_acc": val.acc if val else None,
            "seconds": stats.seconds,
            "img_per_s": stats.img_per_s,
        }
        if val is not None and not math.isfinite(val.loss):
            raise TrainingDiverged(
                f"the validation loss became {val.loss} in epoch {epoch}; lower --lr "
                "(the last good checkpoint is kept)"
            )
        history.append(row)
        # Without a validation set the latest epoch counts as the best (no test-set selection).
        score = val.acc if val else float(epoch)
        improved = score > best_acc
        if improved:
            best_acc, best_epoch = score, epoch
        if dist.is_main:
            weights = (ema.module if ema else model).state_dict()
            full = {
                **meta,
                "epoch": epoch,
                "step": step,
                "model": model.state_dict(),
                "optimizer": optimizer.state_dict(),
                "scaler": scaler.state_dict() if scaler else None,
                "ema": ema.state_dict() if ema else None,
                "lookahead": lookahead.state_dict() if lookahead else None,
                "rng": _get_rng_state(),
                "best_val_acc": best_acc,
                "best_epoch": best_epoch,
            }
            # Metrics first: a kill before last.pt lands leaves an extra row that --resume drops
            # (it keeps rows up to last.pt's epoch); the other order would lose a row.
            write_metrics(out, history)
            if improved:  # best.pt holds the weights that are evaluated (EMA when enabled)
                ckpt_io.save_atomic(
                    {**meta, "epoch": epoch, "model": weights, "val_acc": row["val_acc"]},
                    out / "best.pt",
                )
            ckpt_io.save_atomic(full, out / "last.pt")  # last: the resume point
            if writer is not None:
                for k, v in row.items():
                    if k != "epoch" and v is not None:
                        writer.add_scalar(k, v, epoch)
            if cfg.record_gradflow:
                _record_gradflow(model, train_loader, criterion, amp, out, epoch=epoch)
            progress.end_epoch(row)
        barrier(dist)
    if last_epoch < cfg.epochs:
        progress.log(f"stopped after epoch {last_epoch}; continue with --resume {out}")
        seconds = sum(r["seconds"] for r in history)
        return RunResult(
            out, best_acc if val_loader else None, best_epoch, None, None, seconds, history
        )

    # ---- test: the checkpoint chosen on validation, and the final weights --------------------
    final_model = ema.module if ema else model
    test_last = evaluate_on(final_model, test_loader)
    if best_epoch == cfg.epochs:  # best.pt holds exactly the final weights: skip a second pass
        test_best = test_last
    else:
        # rank 0 reads best.pt and sends it: other machines need not share the run directory
        best_state = broadcast_object(
            ckpt_io.load_checkpoint(out / "best.pt")["model"] if dist.is_main else None, dist
        )
        best_model = create_model(cfg.model, num_classes=data.num_classes, **cfg.model_kwargs)
        best_model = best_model.to(device, memory_format=_memory_format(cfg))
        best_model.load_state_dict(best_state)
        test_best = evaluate_on(best_model, test_loader)
    seconds = time.perf_counter() - run_start + sum(r["seconds"] for r in history[:start_epoch])
    result = RunResult(
        out,
        best_acc if val_loader else None,
        best_epoch,
        test_best.acc,
        test_last.acc,
        seconds,
        history,
    )
    if dist.is_main:
        write_json(
            out / "summary.json",
            {
                "model": cfg.model,
                "dataset": data.name,
                "epochs": cfg.epochs,
                "best_epoch": best_epoch,
                "best_val_acc": result.best_val_acc,
                "test_acc": test_best.acc,
                "test_acc_last": test_last.acc,
                "test_loss": test_best.loss,
                "train_seconds": sum(r["seconds"] for r in history),
                "mean_img_per_s": float(np.mean([r["img_per_s"] for r in history])),
                "params": sum(p.numel() for p in model.parameters()),
            },
        )
        progress.log(
            f"done: best val acc {result.best_val_acc if val_loader else float('nan'):.4f} "
            f"(epoch {best_epoch}), test acc {test_best.acc:.4f} (best.pt), "
            f"{test_last.acc:.4f} (final) -> {out}"
        )
    barrier(dist)  # no rank leaves while rank 0 still writes the summary
    return result


def _after_step(model, ema, lookahead, epoch: int, step, total_steps: int):
    """What runs after each optimizer step: the weight averages, if any. ``step()`` gives the
    number of steps taken so far in the run."""
    if ema is None and lookahead is None:
        return None

    def after() -> None:
        if ema is not None:
            ema.update(model)
        if lookahead is not None:
            lookahead.after_step(epoch, step(), total_steps)

    return after


def _killed_before_first_checkpoint(run: Path) -> bool:
    """A run directory with its config.json but no last.pt yet (stopped during epoch 1)."""
    return not (run / "last.pt").exists() and (run / "config.json").is_file()


def _read_config(path: Path) -> dict[str, Any]:
    try:
        cfg = json.loads(path.read_text())
    except (OSError, ValueError) as err:
        raise UserError(f"cannot read {path}: {err}") from None
    if not isinstance(cfg, dict):
        raise UserError(f"{path} is not a cnnzoo run configuration")
    return cfg


def _memory_format(cfg: TrainConfig) -> torch.memory_format:
    return torch.channels_last if cfg.channels_last else torch.contiguous_format


def _param_groups(model: nn.Module, cfg: TrainConfig) -> list[dict[str, Any]]:
    if not cfg.no_bn_weight_decay:
        return [{"params": list(model.parameters()), "weight_decay": cfg.weight_decay}]
    decay, no_decay = [], []
    for p in model.parameters():
        (no_decay if p.ndim <= 1 else decay).append(p)  # BN weights/biases and all biases
    return [
        {"params": decay, "weight_decay": cfg.weight_decay},
        {"params": no_decay, "weight_decay": 0.0},
    ]


# The files a run writes atomically (temp file + rename), whose temp files a kill can leave.
_RUN_FILES = ("last.pt", "best.pt", "config.json", "metrics.jsonl", "metrics.csv", "summary.json")


def _stale_temp_files(out: Path) -> list[Path]:
    return [p for name in _RUN_FILES for p in out.glob(f".{name}.*.tmp")]


def _has_run_files(out: Path) -> bool:
    """Anything in ``out`` besides temp files of a run killed before it wrote a file."""
    stale = set(_stale_temp_files(out))
    return any(p not in stale for p in out.iterdir())


def _prepare_out_dir(cfg: TrainConfig, dist: DistInfo, resuming: bool) -> Path:
    """Create the run directory on rank 0; never reuse a non-empty one unless resuming."""
    if cfg.out is None:
        stamp = time.strftime("%Y%m%d-%H%M%S")
        cfg.out = str(broadcast_object(f"runs/{cfg.model}-{stamp}", dist))
    out = Path(cfg.out)
    if not resuming and out.exists() and (not out.is_dir() or _has_run_files(out)):
        raise UserError(
            f"{out} already exists; pass --resume {out} to continue it, or another --out"
        )
    barrier(dist)  # every rank has checked before rank 0 creates anything
    if dist.is_main:
        try:
            out.mkdir(parents=True, exist_ok=True)
            probe = out / ".write-test"
            probe.write_text("")
            probe.unlink()
        except OSError as err:
            raise UserError(f"cannot write to {out}: {err.strerror}") from None
    barrier(dist)
    return out


def _get_rng_state() -> dict[str, Any]:
    # Only torch's generators drive training (dropout); the data order and augmentation are
    # drawn from generators seeded by (seed, epoch) and need no saved state.
    state = {"torch": torch.get_rng_state()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def _set_rng_state(state: dict[str, Any]) -> None:
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def _record_gradflow(model, loader, criterion, amp, out: Path, epoch: int) -> None:
    x, y = next(iter(loader))  # the first batch of the current epoch's order
    layers, norms = conv_grad_norms(model, x, y, criterion=criterion, amp=amp)
    append_jsonl(out / "gradflow.jsonl", {"epoch": epoch, "layers": layers, "norms": norms})


def _truncate_jsonl(path: Path, last_epoch: int) -> None:
    """Keep the rows of a per-epoch JSON-lines file up to ``last_epoch`` (the resume point)."""
    if path.is_file():
        rows = [r for r in path.read_text().splitlines() if r.strip()]
        kept = [r for r in rows if json.loads(r)["epoch"] <= last_epoch]
        write_text_atomic(path, "".join(r + "\n" for r in kept))


def _tensorboard(out: Path, cfg: TrainConfig, progress: Progress):
    if not cfg.tensorboard:
        return None
    try:
        from torch.utils.tensorboard import SummaryWriter
    except ImportError:
        progress.log("warning: --tensorboard needs `pip install tensorboard`; not logging")
        return None
    return SummaryWriter(str(out / "tensorboard"))
