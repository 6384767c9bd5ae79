"""``train(TrainConfig) -> RunResult``: the one training loop every command uses.

``train`` composes the pieces: the resolved configuration and runtime, data loaders, model and
optimizer (``cnnzoo.train.setup``), the run's state and its checkpoint saver
(``cnnzoo.train.state``), and the loop (``_Run``: start, one epoch at a time, the final test).

While it trains, SIGINT, SIGTERM and SIGUSR1 stop the run after the current optimizer step with
a checkpoint of that exact position (``cnnzoo.train.interrupt``), as does the checkpoint clock
(``--checkpoint-every``) without stopping; ``--resume`` continues from the next step.
"""

from __future__ import annotations

import math
import os
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from cnnzoo.data import load_dataset
from cnnzoo.errors import Interrupted, TrainingDiverged
from cnnzoo.models import count_params, create_model
from cnnzoo.train import checkpoint as ckpt_io
from cnnzoo.train.callbacks import Callbacks
from cnnzoo.train.config import TrainConfig, lr_at, whiten_bias_lr_at
from cnnzoo.train.engine import (
    TTA,
    EpochPosition,
    EvalResult,
    check_finite,
    evaluate,
    train_epoch,
)
from cnnzoo.train.interrupt import CheckpointClock, StopSignals
from cnnzoo.train.progress import Progress
from cnnzoo.train.prune import LossPruner, PrunedLoss, build_pruner
from cnnzoo.train.rundir import (
    GRADFLOW_FILE,
    prepare_out_dir,
    read_metrics,
    truncate_jsonl,
    write_config,
    write_json,
)
from cnnzoo.train.runtime import (
    all_reduce_max,
    all_reduce_sum,
    autocast,
    barrier,
    broadcast_object,
)
from cnnzoo.train.setup import (
    build_loaders,
    build_model,
    build_optim,
    check_resumed_data,
    memory_format,
    resolve_run,
    setup_runtime,
)
from cnnzoo.train.state import CheckpointSaver, RunResult, TrainState


def train(cfg: TrainConfig, resume: str | os.PathLike | None = None) -> RunResult:
    """Train ``cfg.model``; with ``resume`` continue the run in that directory exactly where its
    last checkpoint stopped (model, optimizer, schedule position, RNG state, epoch counter)."""
    closers: list[Any] = []  # what the run opened (the TensorBoard writer), closed however it ends
    try:
        return _train(cfg, Path(resume) if resume is not None else None, closers)
    finally:
        for close in reversed(closers):
            close()


def _train(cfg: TrainConfig, resume: Path | None, closers: list[Any]) -> RunResult:
    cfg, resumed = resolve_run(cfg, resume)
    saved = resumed.state if resumed is not None else None
    rt = setup_runtime(cfg)
    out = prepare_out_dir(Path(cfg.out), rt.dist, resuming=resumed is not None)
    quiet = cfg.quiet or not rt.dist.is_main
    stored_data = resumed is not None and "data" in resumed.from_run  # no typo to blame
    data = load_dataset(cfg.dataset, cfg.data, quiet, cfg.image_size, saved=stored_data)
    if resumed is not None:
        check_resumed_data(resumed, data)
    loaders = build_loaders(cfg, data, rt)
    model = build_model(cfg, data, loaders, rt, fresh=saved is None)
    optim = build_optim(cfg, model, rt)
    pruner = build_pruner(cfg, loaders.train)
    state = TrainState()
    if saved is not None:
        model.load_state_dict(saved["model"])
        optim.load_state_dict(saved)
        if pruner is not None:
            pruner.load_state_dict(saved["prune"])
        state.load_state_dict(saved, read_metrics(out))
    if rt.dist.is_main:  # rows written after the resume point by a killed run are redone (a run
        # killed before its first checkpoint starts over: all of them, its epoch-0 row too)
        truncate_jsonl(out / GRADFLOW_FILE, state.epoch if saved is not None else -1)
    run = _Run(cfg, rt, data, loaders, model, optim, state, out, pruner)
    closers.extend(run.callbacks.closers)
    last_epoch = min(cfg.epochs, cfg.stop_after or cfg.epochs)
    with run.signals:  # caught while training; the final test ends on Ctrl-C as any command
        run.start()
        for epoch in range(state.epoch + 1, last_epoch + 1):
            run.epoch(epoch)
    if last_epoch < cfg.epochs:
        run.progress.log(f"stopped after epoch {last_epoch}; continue with --resume {out}")
        return run.result(None, None)
    return run.finish()


class _Run:
    """One run's moving parts, and the steps of its loop: start, epoch, finish."""

    def __init__(
        self, cfg, rt, data, loaders, model, optim, state, out: Path, pruner: LossPruner | None
    ) -> None:
        self.cfg, self.rt, self.data, self.loaders = cfg, rt, data, loaders
        self.model, self.optim, self.state, self.out = model, optim, state, out
        self.pruner = pruner
        self.dist = rt.dist
        self.net = self._wrap()
        self.criterion = nn.CrossEntropyLoss(label_smoothing=cfg.label_smoothing)
        self.train_criterion = self.criterion  # per image, weighted and recorded when pruning
        if pruner is not None:
            self.train_criterion = PrunedLoss(pruner, loaders.train, cfg.label_smoothing)
        self.tta = TTA.from_config(cfg)
        self.steps_per_epoch = len(loaders.train)  # a full epoch's; a pruned one takes fewer
        sizes = pruner.plan.sizes() if pruner else [loaders.train.x.shape[0]] * cfg.epochs
        self.total_steps = sum(loaders.train.steps(k) for k in sizes)
        self.per_epoch = self.total_steps / cfg.epochs  # the schedule's epoch: the mean one's
        self.progress = Progress(cfg.epochs, quiet=cfg.quiet, enabled=self.dist.is_main)
        self.callbacks = Callbacks(cfg, out, self.progress, self.dist.is_main)
        self.saver = CheckpointSaver(out, self._meta(), enabled=self.dist.is_main)
        self.signals = StopSignals(
            f"aborted; the last complete checkpoint is kept: resume with: "
            f"cnnzoo train --resume {out}"
        )
        self.clock = CheckpointClock(cfg.checkpoint_every)
        self.resumed_at = state.epoch  # epochs done before this invocation
        self.run_start = time.perf_counter()

    def amp(self):
        return autocast(self.rt.device, self.rt.precision)

    def evaluate(self, model: nn.Module, loader) -> EvalResult:
        """The run's evaluation: its TTA settings, summed over ranks."""
        return evaluate(model, loader, self.data.num_classes, self.amp, self.tta, self.dist)

    @property
    def evaluated(self) -> nn.Module:
        """The weights the run evaluates and selects: the EMA's when enabled."""
        return self.optim.ema.module if self.optim.ema else self.model

    def _wrap(self) -> nn.Module:
        """DDP (which fixes the set of trainable parameters) and compile around the model."""
        m = self.model
        if self.dist.enabled:
            ids = [self.rt.device.index] if self.rt.device.type == "cuda" else None
            m = nn.parallel.DistributedDataParallel(m, device_ids=ids)
        return torch.compile(m) if self.cfg.compile else m

    def _meta(self) -> dict[str, Any]:
        cfg, data = self.cfg, self.data
        return {
            "model_name": cfg.model,
            "model_kwargs": dict(cfg.model_kwargs),
            "num_classes": data.num_classes,
            "classes": list(data.classes),
            "mean": list(data.mean),
            "std": list(data.std),
            "config": cfg.to_dict(),
            "format": ckpt_io.FORMAT,
        }

    def start(self) -> None:
        """config.json (the values used, and the configuration as asked for), the epoch-0
        gradient flow, the first log lines."""
        cfg, rt, n_train = self.cfg, self.rt, self.loaders.train_idx.numel()
        n_val = self.loaders.n_val
        used = {
            "out": str(self.out),
            "device": str(rt.device),
            "precision": rt.precision,
            "precision_reason": rt.choice.reason,
            "precision_measured": rt.choice.measured,
            "val": n_val,
            "num_classes": self.data.num_classes,
            "data_source": self.data.source,  # generated data says so: dataset names the option
            "data_md5": self.data.md5,  # the archive's (None for a folder or generated data)
            "world_size": self.dist.world_size,
            "train_images": n_train,
            "steps_per_epoch": self.steps_per_epoch,
            "total_steps": self.total_steps,
            "torch": torch.__version__,
        }
        self.run_start = time.perf_counter()
        self.clock.reset()
        if not self.dist.is_main:
            return
        write_config(self.out, cfg.to_dict(), used)
        if self.state.epoch == 0 and self.state.position is None:  # not after a resume in epoch 1
            self.callbacks.gradflow(self, epoch=0)
        self.progress.log(f"precision {rt.precision}: {rt.choice.reason}")
        self.progress.log(
            f"training {cfg.model} on {self.data.name} ({n_train} train / {n_val} val) for "
            f"{cfg.epochs} epochs on {rt.device} ({rt.precision}, {self.dist.world_size} "
            f"rank(s)) -> {self.out}"
        )

    def set_lr(self) -> None:
        """Set the schedule's rate for the next step (a pure function of the step count); a group
        with an ``lr_scale`` (Muon's filters) takes that multiple of it, the ``whiten_bias``
        group (``--whiten-bias-decay``) its own decay."""
        step, per_epoch = self.state.step, self.per_epoch
        lr = lr_at(self.cfg, step, self.total_steps, per_epoch)
        for group in self.optim.optimizer.param_groups:
            own = whiten_bias_lr_at(self.cfg, step, per_epoch) if group.get("whiten_bias") else lr
            group["lr"] = own * group.get("lr_scale", 1.0)
        self.state.step += 1

    def _after_step(self, epoch: int):
        """What runs after each optimizer step: the weight averages, if any."""
        ema, lookahead = self.optim.ema, self.optim.lookahead
        if ema is None and lookahead is None:
            return None

        def after() -> None:
            if ema is not None:
                ema.update(self.model)
            if lookahead is not None:
                lookahead.after_step(epoch, self.state.step, self.total_steps)

        return after

    def _freeze_stem_bias(self, epoch: int) -> None:
        """airbench94: a whitening stem's bias trains for its first epochs, then freezes."""
        if self.cfg.whiten_bias_epochs is None:
            return
        trains = epoch <= self.cfg.whiten_bias_epochs
        if self.model.stem_bias.requires_grad != trains:
            self.model.stem_bias.requires_grad_(trains)
            if self.dist.enabled:  # DDP must see the change
                self.net = self._wrap()

    def _start_position(self) -> EpochPosition:
        """Where this epoch starts: step 0, or a mid-epoch checkpoint's position once."""
        start, self.state.position = self.state.position or EpochPosition(), None
        if not self.dist.is_main:  # rank 0 carries the totals the checkpoint summed over ranks
            start = EpochPosition(start.step, None, start.seconds)
        return start

    def _decide(self) -> tuple[int, bool]:
        """(the signal that asks to stop, or 0; whether a timed checkpoint is due): one answer
        for every rank, so that all of them save and stop at the same step. Under torchrun that
        is a 2-number all-reduce per step (a device sync on CUDA): the price of stopping within
        one step of the signal, as a preemption's grace period (often 30 s) needs."""
        signum, due = self.signals.signum, self.clock.due() and self.dist.is_main
        if self.dist.enabled:  # any rank's signal, rank 0's clock
            both = torch.tensor([signum, int(due)], dtype=torch.int64, device=self.rt.device)
            signum, due = all_reduce_max(both, self.dist).tolist()
        return int(signum), bool(due)

    def _on_step(self, epoch: int, pos: EpochPosition) -> None:
        """After each optimizer step: a mid-epoch checkpoint when the clock says so or a signal
        came, and then, for a signal, the stop."""
        signum, due = self._decide()
        if signum or due:
            self._save_position(pos)
        if signum:
            raise self._interrupted(signum, epoch, pos.step)

    def _save_position(self, pos: EpochPosition) -> None:
        """last.pt at ``pos``, with the running totals summed over the ranks; never over a good
        checkpoint when the loss so far or the weights are not finite."""
        totals = all_reduce_sum(pos.totals.clone(), self.dist)
        check_finite(totals, pos.step - 1)
        self._check_weights(f"at step {pos.step} of this epoch")
        position = EpochPosition(pos.step, totals, pos.seconds)
        self._sync_pruner()
        self.saver.save_position(self.state, position, self.model, self._resume_state())
        self.clock.reset()
        barrier(self.dist)  # no rank stops (and ends the job) while rank 0 still writes

    def _check_weights(self, where: str) -> None:
        """Raise ``TrainingDiverged`` when a weight is not finite: before every save, so that
        none goes over a good checkpoint (a step can overflow the weights while its loss, computed
        before the update, was finite; without validation nothing else would notice)."""
        if not all(bool(p.isfinite().all()) for p in self.model.parameters()):
            raise TrainingDiverged(
                f"the weights became non-finite {where}; lower --lr "
                "(the last good checkpoint is kept)"
            )

    def _interrupted(self, signum: int, epoch: int, step: int) -> Interrupted:
        where = f"interrupted at epoch {epoch} step {step}; resume with: cnnzoo train --resume"
        return Interrupted(signum, f"{where} {self.out}" if self.dist.is_main else "")

    def epoch(self, epoch: int) -> None:
        """Train one epoch, evaluate on the validation split, save, report; stop after the
        save when a signal came during the validation or the save."""
        start = self._start_position()
        subset = self.pruner.start_epoch(epoch) if self.pruner is not None else None
        self.loaders.train.set_epoch(epoch, subset)
        self._freeze_stem_bias(epoch)
        self.progress.start_epoch(epoch, len(self.loaders.train), done=start.step)
        stats = train_epoch(
            self.net,
            self.loaders.train.batches(start.step),
            self.optim.optimizer,
            self.train_criterion,
            self.amp,
            self.set_lr,
            self.optim.scaler,
            after_step=self._after_step(epoch),
            dist_info=self.dist,
            on_batch=self.progress.batch if self.progress.wants_batches else None,
            start=start,
            on_step=lambda pos: self._on_step(epoch, pos),
            micro_batch=self.cfg.micro_batch,  # per rank: chunks of each rank's share
        )
        if self.optim.lookahead is not None:
            self.optim.lookahead.end_epoch()
        self._sync_pruner()
        val = self.evaluate(self.evaluated, self.loaders.val) if self._validates(epoch) else None
        if val is not None and not math.isfinite(val.loss):
            raise TrainingDiverged(
                f"the validation loss became {val.loss} in epoch {epoch}; lower --lr "
                "(the last good checkpoint is kept)"
            )
        row = {
            "epoch": epoch,
            "lr": self.optim.optimizer.param_groups[0]["lr"],
            "train_loss": stats.loss,
            "train_acc": stats.acc,
            "val_loss": val.loss if val else None,
            "val_acc": val.acc if val else None,
            "seconds": stats.seconds,
            "img_per_s": stats.img_per_s,
            "images": stats.images,
        }
        self._check_weights(f"in epoch {epoch}")
        self.state.epoch = epoch
        self.state.history.append(row)
        improved = self._improved(epoch, val)
        if self.dist.is_main:  # before last.pt, as the metrics: a kill between the two leaves an
            # extra gradflow row that --resume drops, where the other order would lose one
            self.callbacks.end_epoch(self, row)
        self.saver.save(self.state, improved, self.model, self.evaluated, self._resume_state())
        self.clock.reset()
        if self.dist.is_main:
            self.progress.end_epoch(row)
        barrier(self.dist)
        signum, _ = self._decide()
        if signum:
            raise self._interrupted(signum, epoch, len(self.loaders.train))

    def _sync_pruner(self) -> None:
        """Merge the ranks' per-image losses (a collective: every rank calls it) before a
        checkpoint holds them and before the next epoch chooses from them."""
        if self.pruner is not None:
            self.pruner.sync(self.dist)

    def _resume_state(self) -> dict[str, Any]:
        """What last.pt holds beside the weights and counters: the optimizer's state (scaler,
        EMA, lookahead) and the pruner's (merged) losses."""
        if self.pruner is None:
            return self.optim.state_dict()
        return {**self.optim.state_dict(), "prune": self.pruner.state_dict()}

    def _validates(self, epoch: int) -> bool:
        every = self.cfg.val_every
        return self.loaders.val is not None and (epoch % every == 0 or epoch == self.cfg.epochs)

    def _improved(self, epoch: int, val: EvalResult | None) -> bool:
        if self.loaders.val is None:  # the latest epoch counts as the best: no test-set selection
            return self.state.update_best(float(epoch))
        # an epoch --val-every skipped has no score and cannot be the best
        return val is not None and self.state.update_best(val.acc)

    def result(self, test_best: EvalResult | None, test_last: EvalResult | None) -> RunResult:
        st, has_val = self.state, self.loaders.val is not None
        if test_best is None:  # stopped early: the epochs' own time
            seconds = sum(r["seconds"] for r in st.history)
        else:  # this invocation's wall time, plus the epochs before a resume
            earlier = [r for r in st.history if r["epoch"] <= self.resumed_at]
            seconds = time.perf_counter() - self.run_start + sum(r["seconds"] for r in earlier)
        return RunResult(
            self.out,
            st.best_score if has_val else None,
            st.best_epoch,
            test_best.acc if test_best else None,
            test_last.acc if test_last else None,
            seconds,
            st.history,
        )

    def finish(self) -> RunResult:
        """Test once: the checkpoint chosen on validation (best.pt) and the final weights."""
        test_last = self.evaluate(self.evaluated, self.loaders.test)
        test_best = test_last  # best.pt holds exactly the final weights: no second pass
        if self.state.best_epoch != self.cfg.epochs:
            test_best = self.evaluate(self._best_model(), self.loaders.test)
        result = self.result(test_best, test_last)
        if self.dist.is_main:
            self._write_summary(result, test_best)
        barrier(self.dist)  # no rank leaves while rank 0 still writes the summary
        return result

    def _best_model(self) -> nn.Module:
        # rank 0 reads best.pt and sends it: the final test needs it on rank 0's machine only.
        # (A resume needs the run directory on every node: each rank reads RUN/last.pt, in
        # resolve_run, before the process group exists.)
        best = ckpt_io.load_checkpoint(self.out / "best.pt")["model"] if self.dist.is_main else None
        cfg = self.cfg
        model = create_model(cfg.model, num_classes=self.data.num_classes, **cfg.model_kwargs)
        model = model.to(self.rt.device, memory_format=memory_format(cfg))
        model.load_state_dict(broadcast_object(best, self.dist))
        return model

    def _write_summary(self, result: RunResult, test_best: EvalResult) -> None:
        history = self.state.history
        write_json(
            self.out / "summary.json",
            {
                "model": self.cfg.model,
                "dataset": self.data.name,
                "epochs": self.cfg.epochs,
                "best_epoch": result.best_epoch,
                "best_val_acc": result.best_val_acc,
                "test_acc": result.test_acc,
                "test_acc_last": result.test_acc_last,
                "test_loss": test_best.loss,
                "train_seconds": sum(r["seconds"] for r in history),
                "mean_img_per_s": float(np.mean([r["img_per_s"] for r in history])),
                "params": count_params(self.model),
            },
        )
        val = result.best_val_acc  # None without validation: best.pt is the last epoch's
        chosen = f"best val acc {val:.4f} (epoch {result.best_epoch}), " if val is not None else ""
        self.progress.log(
            f"done: {chosen}test acc {result.test_acc:.4f} (best.pt), "
            f"{result.test_acc_last:.4f} (final) -> {self.out}"
        )
