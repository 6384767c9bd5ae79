"""``--precision auto`` on a CPU: measure whether bf16 or fp32 convolutions run faster here.

No CPU flag tells it. Measured with the same 2-thread 3×3 conv forward + backward
(shared/notes/cpu-performance.md): a Xeon exposing AMX ran bf16 1.8-4× faster than fp32; the same
Xeon model without AMX exposed, ``avx512_bf16`` only, ran bf16 at half the fp32 speed; an AMD EPYC
Zen 5 (``avx512_bf16``, no AMX) ran bf16 ~1.8× faster. So ``auto`` times a short conv in both
precisions (~0.3 s) and keeps the faster, caching the figures per CPU model, flags, torch
version and thread count in ``<cache>/precision.json``; any change of these measures again.
"""

from __future__ import annotations

import hashlib
import json
import platform
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import torch
from torch import nn

from cnnzoo.atomic import atomic_open

# bf16 must beat fp32 by this factor to be chosen: it also rounds activations, so a tie or a
# within-noise gain is not worth it.
BF16_MIN_SPEEDUP = 1.1
# The probe: a 3×3 conv at a width and size typical of the zoo's middle stages,
# input (BATCH, CHANNELS, SIZE, SIZE) channels_last; forward + both gradients = 3 × forward FLOPs.
BATCH, CHANNELS, SIZE, REPEATS = 32, 128, 16, 3
PROBE_FLOPS = 3 * 2 * BATCH * CHANNELS * CHANNELS * 9 * SIZE * SIZE


@dataclass(frozen=True)
class CpuPrecision:
    """The outcome of ``auto`` on a CPU: the precision, why, and the figures behind it."""

    precision: str
    bf16_tflops: float
    fp32_tflops: float
    cached: bool = False

    @property
    def reason(self) -> str:
        where = "cached measurement" if self.cached else "measured now"
        return (
            f"3x3 conv forward+backward: bf16 {self.bf16_tflops:.3f} vs fp32 "
            f"{self.fp32_tflops:.3f} TFLOP/s on this CPU ({where}; bf16 needs "
            f">= {BF16_MIN_SPEEDUP}x)"
        )


def choose(bf16_tflops: float, fp32_tflops: float) -> str:
    """The decision rule, apart from the measuring: bf16 only where clearly faster."""
    return "bf16" if bf16_tflops >= BF16_MIN_SPEEDUP * fp32_tflops else "fp32"


def conv_tflops(dtype: torch.dtype | None, repeats: int = REPEATS) -> float:
    """TFLOP/s of the probe conv's forward + backward, best of ``repeats`` after two warm-ups;
    ``dtype`` bf16 runs it under autocast as training does, None in fp32."""
    gen = torch.Generator().manual_seed(0)
    conv = nn.Conv2d(CHANNELS, CHANNELS, 3, padding=1, bias=False)
    conv = conv.to(memory_format=torch.channels_last)
    x = torch.randn(BATCH, CHANNELS, SIZE, SIZE, generator=gen)
    x = x.to(memory_format=torch.channels_last).requires_grad_()
    best = float("inf")
    for i in range(repeats + 2):
        start = time.perf_counter()
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=dtype is torch.bfloat16):
            y = conv(x)
        y.float().sum().backward()
        if i > 1:  # the first passes pick and build the kernels
            best = min(best, time.perf_counter() - start)
    return PROBE_FLOPS / best / 1e12


def cpu_key(cpuinfo: str | None = None) -> str:
    """What the measurement depends on: CPU model and flags, torch version, threads."""
    if cpuinfo is None:
        try:
            with open("/proc/cpuinfo") as f:
                cpuinfo = f.read()
        except OSError:
            cpuinfo = ""
    fields: dict[str, str] = {}
    for line in cpuinfo.splitlines():
        name, _, value = line.partition(":")
        fields.setdefault(name.strip(), value.strip())
    model = fields.get("model name") or platform.processor() or platform.machine()
    digest = hashlib.sha256(fields.get("flags", "").encode()).hexdigest()[:12]
    return f"{model} | flags {digest} | torch {torch.__version__} | {torch.get_num_threads()} thr"


def cpu_precision(cache: Path | None) -> CpuPrecision:
    """Measure (or read from ``cache``/precision.json) and choose the CPU training precision."""
    key = cpu_key()
    table = _read(cache)
    if key in table:
        try:
            row = table[key]
            bf16, fp32 = float(row["bf16_tflops"]), float(row["fp32_tflops"])
            return CpuPrecision(choose(bf16, fp32), bf16, fp32, cached=True)
        except (KeyError, TypeError, ValueError):
            pass  # a damaged entry: measure again
    with torch.random.fork_rng(devices=[]):
        fp32 = conv_tflops(None)
        bf16 = conv_tflops(torch.bfloat16)
    result = CpuPrecision(choose(bf16, fp32), bf16, fp32)
    if cache is not None:
        table[key] = {k: v for k, v in asdict(result).items() if k != "cached"}
        _write(cache, table)
    return result


def _read(cache: Path | None) -> dict:
    if cache is None:
        return {}
    try:
        table = json.loads((cache / "precision.json").read_text())
    except (OSError, ValueError):
        return {}
    return table if isinstance(table, dict) else {}


def _write(cache: Path, table: dict) -> None:
    try:
        cache.mkdir(parents=True, exist_ok=True)
        with atomic_open(cache / "precision.json", "w") as f:
            json.dump(table, f, indent=1, sort_keys=True)
    except OSError:
        pass  # an unwritable cache only means measuring again next time
