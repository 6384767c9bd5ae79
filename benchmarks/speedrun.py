"""CIFAR-10 speed run on the CPU: ``fastnet_small`` with the ``fast-cpu`` recipe, one full run per
seed; ``--model fastnet --recipe fast`` runs airbench94's full-size net instead, and ``--versus
fastnet:fast`` both. fast-cpu's target is airbench94's accuracy in half its time; measured on two
Zen 5 cores over 5 seeds it reached 93.78% in 0.465x the wall time of fast's 94.60%
(``cnnzoo.train.recipes``).

Each run is ``cnnzoo.train.train`` (the one training engine) with the named recipe; the wall
time is measured around the whole call, so it includes reading the dataset, building the model,
the whitening initialisation, every epoch, checkpoint writes and the final test evaluation
(with flip + translate TTA). No validation split (``val=0``): the model trains on all 50 000
images and the reported accuracy is the final weights' on the 10 000 test images (nothing is
selected on it). To compare variants of a recipe, choose on held-out training images instead:
``--val 5000`` trains on the other 45 000 and adds the final weights' accuracy on the 5 000
(evaluated after every epoch, so the wall time grows; ``--val-every 99`` evaluates them once,
after the last epoch) to each row and summary.

Achieved TFLOP/s = (3 × F × training images + F × evaluated images) / wall seconds, where F is
the forward FLOPs per image from ``cnnzoo.models.count_flops`` (convs and matmuls only; the
backward pass is counted as 2 forwards). It is compared with three peaks:
- measured: the rate of a large 3×3 convolution (256→256 channels, 16×16, batch 64, forward +
  both backward passes, channels_last) on this machine, timed just before the runs, in the
  precision the runs use (``--peak-tflops`` gives a figure instead);
- theoretical bf16 and fp32: cores × base GHz × FLOP/cycle/core of the best unit /proc/cpuinfo
  lists (bf16: 1024 for AMX-BF16, 128 for AVX512-BF16 — an upper bound: on a VM without AMX a
  bf16 conv ran at half the fp32 rate; fp32: 64 for AVX-512, 32 for AVX2;
  base GHz = bogomips / 2; turbo clocks excepted, so a CPU that boosts well can exceed them: the
  Zen 5 VM's measured bf16 conv ceiling, 0.92 TFLOP/s, is above its "peak" of 0.66).
  ``--precision auto`` trains in whichever of bf16 and fp32 measured faster on this CPU.

    python benchmarks/speedrun.py --seeds 1
    python benchmarks/speedrun.py --seeds 1 --model fastnet --recipe fast
    python benchmarks/speedrun.py --seeds 5 --data ../shared/data/cifar10/cifar-10-python.tar.gz
    python benchmarks/speedrun.py --seeds 3 --versus fastnet:fast   # alternate with a baseline

``--versus MODEL:RECIPE`` runs that second configuration too, alternating the two seed by seed
(A0 B0 A1 B1 ...) so that both meet the same machine conditions, and prints each one's summary
and the ratio of their mean wall times (A / B). The other overrides apply to both, except
``--model-kwargs``, ``--micro-batch`` and ``--set``, which are A's only: ``--micro-batch 250``
runs ``fast-muon``'s batch of 2000 in chunks on a CPU, where chunking ``fast``'s batch of 1024
would change its BatchNorm (each chunk normalises over itself); ``--set KEY=VALUE ...`` changes
any TrainConfig field of A alone, so a candidate recipe meets the baseline as it is defined::

    python benchmarks/speedrun.py --seeds 3 --model fastnet --recipe fast-muon \
        --micro-batch 250 --versus fastnet:fast
    python benchmarks/speedrun.py --seeds 5 --versus fastnet:fast \
        --set epochs=11 tta_fraction=0.3
    python benchmarks/speedrun.py --seeds 2 --versus fastnet_small:fast-cpu --set epochs=11

(the last: a candidate against its own recipe as it is, labelled ``fast-cpu+set`` in the lines,
the JSON and its run directories).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import NamedTuple

import torch

from cnnzoo.atomic import atomic_open
from cnnzoo.data.cifar import is_synthetic
from cnnzoo.errors import Interrupted, UserError
from cnnzoo.models import count_flops, create_model
from cnnzoo.train import TrainConfig, train
from cnnzoo.train.engine import TTA
from cnnzoo.train.recipes import recipe_config
from cnnzoo.train.runtime import resolve_precision

DEFAULT_DATA = Path(__file__).resolve().parents[2] / "shared/data/cifar10/cifar-10-python.tar.gz"
# FLOP per cycle per core: 2 FMA ports × lanes × 2 (× 2 for the 2-wide bf16 dot product)
FP32_UNITS = (("avx512f", 64), ("avx2", 32))
BF16_UNITS = (("amx_bf16", 1024), ("avx512_bf16", 128), *FP32_UNITS)


def _cpu_seconds() -> float:
    """CPU time of this process, all threads: wall time × cores only on an otherwise idle CPU."""
    t = os.times()
    return t.user + t.system


def theoretical_peak_tflops(units=BF16_UNITS) -> tuple[float, str]:
    """cores × base GHz × FLOP/cycle/core of the best unit of ``units`` the CPU exposes, with the
    basis spelled out (AMX-BF16's 1024 is Intel's Sapphire Rapids figure)."""
    cores = os.cpu_count() or 1
    ghz, flags = 0.0, set()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("bogomips") and not ghz:
                ghz = float(line.split(":")[1]) / 2000.0  # bogomips = 2 × MHz on x86
            elif line.startswith("flags") and not flags:
                flags = set(line.split(":")[1].split())
    except OSError:
        pass
    unit, per_cycle = next(((u, f) for u, f in units if u in flags), ("unknown", 0))
    if not ghz or not per_cycle:
        return float("nan"), "unknown CPU"
    tflops = cores * ghz * 1e9 * per_cycle / 1e12
    return tflops, f"{cores} cores x {ghz:.2f} GHz x {per_cycle} FLOP/cycle ({unit})"


def measured_conv_tflops(precision: str, seconds: float = 6.0) -> float:
    """TFLOP/s of a large 3×3 conv, forward + input and weight gradients, channels_last: the
    best rate this machine's convolution library reaches, so a ceiling for a conv net."""
    n, c, hw = 64, 256, 16
    x = torch.randn(n, c, hw, hw).to(memory_format=torch.channels_last).requires_grad_()
    conv = torch.nn.Conv2d(c, c, 3, padding=1, bias=False).to(memory_format=torch.channels_last)
    flop = 3 * 2 * n * c * c * 9 * hw * hw  # forward MACs × 2, three passes

    def step() -> None:
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=precision == "bf16"):
            y = conv(x)
        y.backward(torch.ones_like(y))

    step()
    done, start = 0, time.perf_counter()
    while time.perf_counter() - start < seconds or done < 2:
        step()
        done += 1
    return done * flop / (time.perf_counter() - start) / 1e12


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--seeds", type=int, default=5, help="runs, with seeds 0..N-1")
    p.add_argument("--first-seed", type=int, default=0, help="start at this seed (default 0)")
    p.add_argument("--data", default=str(DEFAULT_DATA), help="CIFAR-10 archive ('synthetic' ok)")
    p.add_argument("--model", default="fastnet_small")
    p.add_argument("--recipe", default="fast-cpu")
    p.add_argument(
        "--epochs", type=int, help="override the recipe's epochs (its warm-up keeps its share)"
    )
    p.add_argument("--subset", type=int, help="train on the first N images (smoke tests)")
    p.add_argument(
        "--val", type=int, metavar="N", help="hold out N training images; report their accuracy"
    )
    p.add_argument(
        "--val-every",
        type=int,
        metavar="N",
        help="with --val: evaluate the held-out images every N epochs and after the last",
    )
    p.add_argument("--batch-size", type=int, help="override the recipe's batch size")
    p.add_argument("--lr", type=float, help="override the recipe's learning rate")
    p.add_argument("--tta-shift", type=int, help="override the recipe's translate TTA (px)")
    p.add_argument(
        "--tta-fraction", type=float, help="override the recipe's share of images given TTA"
    )
    p.add_argument(
        "--tta-grid",
        action=argparse.BooleanOptionalAction,
        help="override the recipe's TTA translations (all 9 or airbench94's 2)",
    )
    p.add_argument(
        "--alternate-flip",
        action=argparse.BooleanOptionalAction,
        help="override the recipe's flip mode",
    )
    p.add_argument(
        "--low-res", type=int, metavar="PX", help="train the first --low-res-epochs at PX x PX"
    )
    p.add_argument("--low-res-epochs", type=int, metavar="N", help="epochs 1..N at --low-res")
    p.add_argument(
        "--model-kwargs", type=json.loads, help="JSON, e.g. for widths (replaces the recipe's)"
    )
    p.add_argument(
        "--micro-batch",
        type=int,
        metavar="N",
        help="run the first configuration's batches in chunks of N (not --versus's)",
    )
    p.add_argument(
        "--set",
        nargs="+",
        default=[],
        metavar="KEY=VALUE",
        help="TrainConfig fields for the first configuration only (not --versus's), values "
        "as JSON: a candidate recipe against a fixed baseline, e.g. --set epochs=11 "
        "tta_fraction=0.3 (epochs keeps the warm-up's share, as --epochs does, unless "
        "warmup_epochs is set too)",
    )
    p.add_argument("--threads", type=int, help="torch threads (default: PyTorch's)")
    p.add_argument("--compile", action="store_true", help="torch.compile the model")
    p.add_argument(
        "--precision", choices=("auto", "fp32", "bf16"), help="override the recipe's precision"
    )
    p.add_argument(
        "--peak-tflops", type=float, help="skip measuring the conv ceiling; use this figure"
    )
    p.add_argument(
        "--versus",
        metavar="MODEL:RECIPE",
        help="also run this configuration, alternating seed by seed; print the time ratio",
    )
    p.add_argument("--out", help="keep run directories here (default: a temporary folder)")
    p.add_argument(
        "--json",
        help="also write the per-seed figures to this file, rewritten after every run "
        '("finished": false until the last, so a stopped campaign keeps its seeds)',
    )
    return p


# the flags that override both configurations' TrainConfig when given
SHARED_FLAGS = (
    "epochs",
    "subset",
    "val",
    "val_every",
    "threads",
    "batch_size",
    "lr",
    "precision",
    "tta_shift",
    "tta_fraction",
    "tta_grid",
    "alternate_flip",
    "low_res",
    "low_res_epochs",
)


def shared_overrides(args: argparse.Namespace) -> dict:
    """The TrainConfig overrides both configurations get."""
    overrides: dict = {"data": args.data, "quiet": True}
    for key in SHARED_FLAGS:
        if getattr(args, key) is not None:
            overrides[key] = getattr(args, key)
    if args.compile:
        overrides["compile"] = True
    return overrides


# fields --set may not touch: each run's own, or set by this script's other flags
NOT_SETTABLE = {"model", "seed", "out", "resume", "model_kwargs", "data", "quiet"}


def parse_sets(pairs: list[str]) -> dict:
    """``["epochs=11", "tta_fraction=0.3"]`` -> {"epochs": 11, "tta_fraction": 0.3}: each value
    read as JSON, else kept as a string; keys must be TrainConfig fields."""
    fields = TrainConfig.__dataclass_fields__.keys() - NOT_SETTABLE
    out = {}
    for pair in pairs:
        key, sep, text = pair.partition("=")
        if not sep or key not in fields:
            raise UserError(f"--set {pair!r}: expected KEY=VALUE with KEY a TrainConfig field")
        try:
            out[key] = json.loads(text)
        except json.JSONDecodeError:
            out[key] = text
    return out


class Config(NamedTuple):
    """One configuration of the run: a model, a recipe, and what it changes of them."""

    model: str
    recipe: str
    model_kwargs: dict | None  # --model-kwargs (None: the recipe's)
    own: dict  # TrainConfig overrides of this configuration alone (--micro-batch, --set)
    label: str  # "model:recipe", with "+set" for A when --versus names A's model and recipe

    @property
    def title(self) -> str:
        """How the printed lines name it: "fastnet_small fast-cpu" (or "... fast-cpu+set")."""
        return self.label.replace(":", " ", 1)

    def run_dir(self, root: Path, seed: int) -> Path:
        return root / f"{self.label.replace(':', '-', 1).replace('+', '-')}-seed{seed}"


def configurations(args: argparse.Namespace) -> list[Config]:
    """A, then B when --versus is given. --model-kwargs, --micro-batch and --set are A's only:
    --versus runs its recipe as it is (chunking fast's batch would change its BatchNorm). A
    candidate against its own recipe (``--set epochs=11 --versus fastnet_small:fast-cpu``) is
    labelled "+set"; the two must differ in something."""
    own = {"micro_batch": args.micro_batch} if args.micro_batch is not None else {}
    own.update(parse_sets(args.set))
    label = f"{args.model}:{args.recipe}"
    a = Config(args.model, args.recipe, args.model_kwargs, own, label)
    if not args.versus:
        return [a]
    model_b, _, recipe_b = args.versus.partition(":")
    recipe_b = recipe_b or args.recipe
    b = Config(model_b, recipe_b, None, {}, f"{model_b}:{recipe_b}")
    if b.label == label:
        if not own and args.model_kwargs is None:
            raise UserError(
                f"--versus {args.versus} is the first configuration itself; tell them apart "
                "with --set, --model-kwargs or --micro-batch"
            )
        a = a._replace(label=f"{label}+set")
    return [a, b]


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if args.seeds < 1:
        raise UserError("--seeds must be at least 1")
    overrides, configs = shared_overrides(args), configurations(args)
    base = recipe_config(args.recipe, args.model)
    flops = count_flops(create_model(args.model, **_model_kwargs(base, args.model_kwargs)))
    if args.threads:
        torch.set_num_threads(args.threads)
    precision = resolve_precision(args.precision or base.precision, torch.device("cpu"))
    measured = args.peak_tflops or measured_conv_tflops(precision)
    theo, theo_basis = theoretical_peak_tflops(BF16_UNITS)
    theo32, theo32_basis = theoretical_peak_tflops(FP32_UNITS)
    peaks = {"measured": measured, "bf16": theo, "fp32": theo32}
    peak_note = "given" if args.peak_tflops else f"measured, {precision} 3x3 conv fwd+bwd"
    tmp = None if args.out else tempfile.TemporaryDirectory(prefix="speedrun-")
    root = Path(args.out or tmp.name)  # type: ignore[union-attr]
    own = configs[0].own
    print(
        f"speed run: {args.model} --recipe {args.recipe} {overrides | own}, "
        f"{torch.get_num_threads()} threads, torch {torch.__version__}; "
        f"forward {flops / 1e6:.1f} MFLOP/image; {precision}; conv ceiling {measured:.3f} "
        f"TFLOP/s ({peak_note})",
        flush=True,
    )
    rows: dict[str, list[dict]] = {c.label: [] for c in configs}
    facts = {
        "flops_per_image": flops,
        "overrides": overrides,
        "first_only": own,  # --micro-batch, --set: not applied to --versus
        "precision": precision,
        "peaks_tflops": peaks,
    }
    for seed in range(args.first_seed, args.first_seed + args.seeds):  # A0 B0 A1 B1 ...
        for c in configs:
            out = c.run_dir(root, seed)
            rows[c.label].append(run_one(c, seed, out, {**overrides, **c.own}, measured))
            if args.json:  # after every run: a campaign stopped at seed 3 keeps seeds 0-2
                write_json(args.json, rows, facts, finished=False)
    print_report(configs, rows, precision, peaks)
    print(
        f"peaks: conv ceiling {measured:.3f} TFLOP/s ({peak_note}, "
        f"{torch.get_num_threads()} threads); theoretical bf16 {theo:.2f} TFLOP/s = {theo_basis}; "
        f"theoretical fp32 {theo32:.2f} TFLOP/s = {theo32_basis}"
    )
    if args.json:
        write_json(args.json, rows, facts, finished=True)
    if tmp is not None:
        tmp.cleanup()
    return 0


def write_json(path: str, rows: dict, facts: dict, finished: bool) -> None:
    """The per-seed figures so far and the run's facts, replaced whole (temp file, then rename);
    ``finished`` is False until every seed has run. ``rows``: label ("model:recipe") -> runs."""
    with atomic_open(path, "w") as f:
        json.dump({"runs": rows, **facts, "finished": finished}, f, indent=1)


def print_report(
    configs: list[Config], rows: dict[str, list[dict]], precision: str, peaks: dict[str, float]
) -> None:
    """Each configuration's summary row, then the A / B wall-time ratio when there are two."""
    for c in configs:
        rs = rows[c.label]
        print(f"\nsummary over {len(rs)} seed(s), {c.model} --recipe {c.recipe}{_set_note(c)}:")
        print(TABLE_HEAD)
        print(summarize(rs, precision, peaks["measured"], peaks["bf16"], peaks["fp32"]))
    if len(configs) == 2:
        (a, b), (ra, rb) = configs, (rows[c.label] for c in configs)
        ratio = statistics.fmean(r["wall_s"] for r in ra) / statistics.fmean(
            r["wall_s"] for r in rb
        )
        print(f"\nwall time {a.title} / {b.title}: {ratio:.3f}x (same run, alternated)")


TABLE_HEAD = (
    "| seeds | precision | wall time (s) | test acc (%) | held-out acc (%) | train img/s | TFLOP/s "
    "| of measured conv | of bf16 peak | of fp32 peak |\n|---|---|---|---|---|---|---|---|---|---|"
)


def _model_kwargs(base: TrainConfig, given: dict | None) -> dict:
    """--model-kwargs when given, else the recipe's (fast-muon's stem_bias_scale, say)."""
    return base.model_kwargs if given is None else given


def _set_note(c: Config) -> str:
    return f" with {c.own}" if c.label.endswith("+set") else ""


def run_one(config: Config, seed, out, overrides, measured) -> dict:
    """One full training run, timed around the whole ``train`` call."""
    model, recipe = config.model, config.recipe
    base = recipe_config(recipe, model)
    kwargs = _model_kwargs(base, config.model_kwargs)
    flops = count_flops(create_model(model, **kwargs))  # forward FLOPs per 32×32 image
    if "epochs" in overrides and "warmup_epochs" not in overrides:
        # the warm-up keeps its share of the run (fast: 23%, as airbench94) unless it is given
        share = base.warmup_epochs / base.epochs
        overrides = {**overrides, "warmup_epochs": share * overrides["epochs"]}
    cfg = recipe_config(recipe, model, seed=seed, out=str(out), model_kwargs=kwargs, **overrides)
    cpu0 = _cpu_seconds()
    start = time.perf_counter()
    result = train(cfg)
    wall = time.perf_counter() - start
    cpu = _cpu_seconds() - cpu0
    cfg_resolved = json.loads((result.out_dir / "config.json").read_text())
    epoch_images = [r["images"] for r in result.history]  # fewer in a --prune epoch
    train_images = sum(epoch_images)
    held_out_passes = sum(r["val_acc"] is not None for r in result.history)
    total = flop_count(cfg, cfg_resolved, flops, held_out_passes, epoch_images)
    train_seconds = sum(r["seconds"] for r in result.history)
    row = {
        "seed": seed,
        "wall_s": wall,
        "cpu_s": cpu,  # user + system CPU seconds of this process: < 2 x wall when shared
        "train_s": train_seconds,
        "test_acc": result.test_acc_last,
        "val_acc": result.history[-1]["val_acc"],  # the final weights'; None without --val
        "img_per_s": train_images / train_seconds,
        "tflops": total / wall / 1e12,
        "epoch_s": [r["seconds"] for r in result.history],
    }
    print(
        f"{config.title} seed {seed}: wall {wall:7.1f} s (CPU {cpu:.0f} s; training "
        f"{train_seconds:.1f} s, {row['img_per_s']:.0f} img/s), test acc "
        f"{row['test_acc']:.4f}{_val_text(row['val_acc'])}, {row['tflops']:.3f} TFLOP/s = "
        f"{row['tflops'] / measured:.0%} of the measured {measured:.3f}",
        flush=True,
    )
    return row


def flop_count(
    cfg, resolved: dict, flops: float, held_out_passes: int, epoch_images: list[int]
) -> float:
    """The run's FLOPs: 3× forward per trained image (forward + backward; ``epoch_images``:
    each epoch's, fewer in a --prune epoch), with --low-res epochs at the pixel ratio (a conv's
    cost goes with its output pixels), plus one forward per evaluated view: the test pass and
    each held-out pass (× 2 with mirror images, × 3 with translated views, × 9 with --tta-grid,
    the extra ones for --tta-fraction of the images; ``held_out_passes``: the epochs the
    trainer's history shows scored). The evaluation part is left out for synthetic data or a
    subset."""
    low = (cfg.low_res / cfg.image_size) ** 2 if cfg.low_res else 1.0
    trained = sum(
        n * (low if e <= cfg.low_res_epochs else 1.0) for e, n in enumerate(epoch_images, 1)
    )
    views = TTA.from_config(cfg).passes_per_image
    held_out = 50_000 - resolved["train_images"]  # CIFAR-10's training set, less --val
    eval_images = views * (10_000 + held_out_passes * held_out)
    if is_synthetic(cfg.data) or cfg.subset:
        eval_images = 0
    return 3 * flops * trained + flops * eval_images


def _val_text(acc: float | None) -> str:
    return "" if acc is None else f", held-out acc {acc:.4f}"


def summarize(rows: list[dict], precision: str, measured: float, theo: float, theo32: float):
    """One Markdown table row: means ± sample std over seeds."""

    def mean_std(key: str) -> tuple[float, float]:
        vals = [r[key] for r in rows]
        return statistics.fmean(vals), statistics.stdev(vals) if len(vals) > 1 else 0.0

    acc, acc_sd = mean_std("test_acc")
    held_out = "–"
    if all(r["val_acc"] is not None for r in rows):
        val, val_sd = mean_std("val_acc")
        held_out = f"{100 * val:.2f} ± {100 * val_sd:.2f}"
    wall, wall_sd = mean_std("wall_s")
    tf, _ = mean_std("tflops")
    ips, _ = mean_std("img_per_s")
    return (
        f"| {len(rows)} | {precision} | {wall:.1f} ± {wall_sd:.1f} "
        f"| {100 * acc:.2f} ± {100 * acc_sd:.2f} | {held_out} | {ips:.0f} | {tf:.3f} "
        f"| {tf / measured:.0%} | {tf / theo:.1%} | {tf / theo32:.1%} |"
    )


if __name__ == "__main__":
    try:
        sys.exit(main())
    except UserError as err:
        print(f"error: {err}", file=sys.stderr)
        sys.exit(2)
    except Interrupted as err:  # as the CLI: the run's resume line, exit 128 + signum; --json
        if str(err):  # already holds the seeds finished before the stop
            print(err, file=sys.stderr)
        sys.exit(err.exit_code)
