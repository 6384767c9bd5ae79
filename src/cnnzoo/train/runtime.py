"""Device, precision and distributed set-up."""

from __future__ import annotations

import contextlib
import os
from dataclasses import dataclass
from datetime import timedelta

import torch
import torch.distributed as dist

from cnnzoo.data.cache import cache_dir
from cnnzoo.errors import UserError, one_line
from cnnzoo.train.precision import cpu_precision


def mps_available() -> bool:
    """Whether an Apple GPU can be used (``torch.backends.mps`` is missing from some builds)."""
    mps = getattr(torch.backends, "mps", None)
    return bool(mps and mps.is_available())


def resolve_device(name: str = "auto") -> torch.device:
    """``auto`` picks CUDA, then Apple MPS, then the CPU."""
    if name == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda", _local_gpu())
        if mps_available():
            return torch.device("mps")
        return torch.device("cpu")
    try:
        dev = torch.device(name)
    except RuntimeError:
        raise UserError(f"unknown device {name!r}; use auto, cpu, cuda, cuda:N or mps") from None
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise UserError("--device cuda asked for, but no CUDA device is available")
    if dev.type == "cuda" and dev.index is None and int(os.environ.get("WORLD_SIZE", 1)) > 1:
        return torch.device("cuda", _local_gpu())
    return dev


def _local_gpu() -> int:
    """This process's GPU under torchrun (one per process: LOCAL_RANK's), else 0."""
    rank, count = int(os.environ.get("LOCAL_RANK", 0)), torch.cuda.device_count()
    if rank >= count:
        raise UserError(
            f"torchrun started local rank {rank}, but this machine has {count} CUDA device(s): "
            f"use --nproc_per_node={count}, or --device cpu to train on the CPU with gloo"
        )
    return rank


@dataclass(frozen=True)
class PrecisionChoice:
    """The precision a run uses, why, and (``auto`` on a CPU) the measured figures."""

    precision: str
    reason: str
    measured: dict[str, float] | None = None


def choose_precision(precision: str, device: torch.device) -> PrecisionChoice:
    """``auto``: bf16 autocast on CUDA with bf16 (else fp16); on a CPU whichever of bf16 and fp32
    a short conv measured faster (``cnnzoo.train.precision``); fp32 elsewhere. Explicit wins."""
    if precision == "fp16" and device.type != "cuda":
        raise UserError("--precision fp16 needs a CUDA device; use bf16 or fp32 on this device")
    if precision != "auto":
        return PrecisionChoice(precision, "asked for with --precision")
    if device.type == "cuda":
        if torch.cuda.is_bf16_supported():
            return PrecisionChoice("bf16", "auto: CUDA device with bf16")
        return PrecisionChoice("fp16", "auto: CUDA device without bf16")
    if device.type == "cpu":
        got = cpu_precision(cache_dir())
        measured = {"bf16_tflops": got.bf16_tflops, "fp32_tflops": got.fp32_tflops}
        return PrecisionChoice(got.precision, f"auto: {got.reason}", measured)
    return PrecisionChoice("fp32", f"auto: fp32 on {device.type}")


def resolve_precision(precision: str, device: torch.device) -> str:
    """The precision ``choose_precision`` picks, without the reasons."""
    return choose_precision(precision, device).precision


def autocast(device: torch.device, precision: str) -> contextlib.AbstractContextManager:
    if precision == "fp32":
        return contextlib.nullcontext()
    dtype = torch.bfloat16 if precision == "bf16" else torch.float16
    return torch.autocast(device_type=device.type, dtype=dtype)


def is_main_process() -> bool:
    """Rank 0 of a torchrun job (from its environment), or a process not started by torchrun."""
    return int(os.environ.get("RANK", "0")) == 0


@dataclass(frozen=True)
class DistInfo:
    rank: int = 0
    world_size: int = 1
    local_rank: int = 0

    @property
    def enabled(self) -> bool:
        return self.world_size > 1

    @property
    def is_main(self) -> bool:
        return self.rank == 0


def init_distributed(device: torch.device) -> DistInfo:
    """Join the process group torchrun describes in the environment (gloo on CPU, nccl on CUDA).

    A collective that waits longer than ``$CNNZOO_DIST_TIMEOUT`` seconds (default 300) fails,
    so a rank that dies makes the others exit instead of hanging.
    """
    world = int(os.environ.get("WORLD_SIZE", 1))
    if world <= 1:
        return DistInfo()
    if not dist.is_initialized():
        backend = "nccl" if device.type == "cuda" else "gloo"
        timeout = timedelta(seconds=float(os.environ.get("CNNZOO_DIST_TIMEOUT", 300)))
        if device.type == "cuda":  # one GPU per process, chosen by resolve_device
            torch.cuda.set_device(device)
        dist.init_process_group(backend=backend, timeout=timeout)
    return DistInfo(dist.get_rank(), dist.get_world_size(), int(os.environ.get("LOCAL_RANK", 0)))


def all_reduce_sum(t: torch.Tensor, info: DistInfo) -> torch.Tensor:
    if info.enabled:
        dist.all_reduce(t, op=dist.ReduceOp.SUM)
    return t


def all_reduce_max(t: torch.Tensor, info: DistInfo) -> torch.Tensor:
    if info.enabled:
        dist.all_reduce(t, op=dist.ReduceOp.MAX)
    return t


def broadcast_object(obj: object, info: DistInfo) -> object:
    if not info.enabled:
        return obj
    box = [obj]
    dist.broadcast_object_list(box, src=0)
    return box[0]


def barrier(info: DistInfo) -> None:
    if info.enabled:
        dist.barrier()


def describe_rank_failure(err: BaseException) -> str | None:
    """One clear line for an error raised because another rank died or stopped responding
    (a collective that timed out or lost its connection); None for any other error."""
    if not (dist.is_available() and dist.is_initialized()) or dist.get_world_size() < 2:
        return None
    text = str(err).strip()
    lowered = text.lower()
    signs = ("timed out", "timeout", "connection closed", "connection reset", "broken pipe")
    if not isinstance(err, dist.DistError) and not any(s in lowered for s in signs):
        return None
    first = one_line(err, first_line=True)
    timeout = os.environ.get("CNNZOO_DIST_TIMEOUT", "300")
    return (
        f"rank {dist.get_rank()} of {dist.get_world_size()} lost contact with another rank: it "
        f"died or stopped responding (collectives time out after $CNNZOO_DIST_TIMEOUT={timeout} "
        f"s); the failed rank's own output says why. ({first})"
    )
