"""Evaluation throughput by batch size and TTA fraction, as paired ratios to the first variant
measured in the same run: the cost of a recipe's test pass (and of each held-out pass).

Each variant runs ``cnnzoo.train.engine.evaluate`` (the trainer's own evaluation) over the same
``--images`` random 32x32 inputs with the recipe's TTA views (``fast-cpu``: flip + shifts of
±1 px, 6 forward passes per image), in batches of B, giving the extra views only to the fraction
F of each batch the plain pass is least sure of (``--tta-fraction``; 1: every image); a third
field ``grid`` averages all 9 translations instead (``--tta-grid``: 18 passes per image). The cost
does not depend on the weights (the gate picks ceil(F x B) images whatever they are), so an
untrained model serves. Rounds alternate as in ``fastnet_widths.py``; run it alone.

    python benchmarks/eval_speed.py
    python benchmarks/eval_speed.py --variants 1000:0.3 1000:0.3:grid 1000:1
    python benchmarks/eval_speed.py --model fastnet --recipe fast --variants 1000:1 250:1
"""

from __future__ import annotations

import argparse
import contextlib
import statistics
import sys
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from cnnzoo.models import create_model
from cnnzoo.train.engine import TTA, evaluate
from cnnzoo.train.recipes import recipe_config
from cnnzoo.train.runtime import autocast, resolve_precision
from fastnet_widths import interleaved_rates

DEFAULT_VARIANTS = ("1000:1", "1000:0.3", "500:1", "500:0.3", "250:1", "250:0.3")


def parse_variant(text: str) -> tuple[int, float, bool]:
    """``batch:fraction[:grid]`` -> (batch, fraction, grid)."""
    parts = text.split(":")
    try:
        if len(parts) not in (2, 3) or parts[2:] not in ([], ["grid"]):
            raise ValueError
        out = int(parts[0]), float(parts[1]), len(parts) == 3
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected batch:fraction[:grid], got {text!r}") from None
    if out[0] < 1 or not 0 < out[1] <= 1:
        raise argparse.ArgumentTypeError(f"batch >= 1 and fraction in (0, 1]: {text!r}")
    return out


def make_pass(
    model: torch.nn.Module, x: torch.Tensor, batch: int, tta: TTA, amp: Callable
) -> Callable[[], None]:
    """One evaluation pass over ``x`` (N, 3, 32, 32) in batches of ``batch``."""
    y = torch.zeros(x.shape[0], dtype=torch.long)
    batches = list(zip(x.split(batch), y.split(batch), strict=True))

    def run() -> None:
        evaluate(model, batches, 10, amp, tta)

    return run


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--model", default="fastnet_small")
    p.add_argument("--recipe", default="fast-cpu", help="its TTA settings are used")
    p.add_argument("--variants", nargs="+", type=parse_variant, default=None)
    p.add_argument("--images", type=int, default=2000, help="images per timed pass")
    p.add_argument("--seconds", type=float, default=12.0, help="timed seconds per variant")
    p.add_argument("--rounds", type=int, default=4, help="alternated rounds the seconds split into")
    args = p.parse_args(argv)
    if args.rounds < 1 or args.images < 1:
        p.error("--rounds and --images must be at least 1")
    variants = args.variants or [parse_variant(v) for v in DEFAULT_VARIANTS]
    cfg = recipe_config(args.recipe, args.model)
    tta = TTA.from_config(cfg)
    torch.manual_seed(0)
    precision = resolve_precision(cfg.precision, torch.device("cpu"))
    model = create_model(args.model).to(memory_format=torch.channels_last).eval()
    x = torch.randn(args.images, 3, 32, 32).to(memory_format=torch.channels_last)

    def amp() -> contextlib.AbstractContextManager:
        return autocast(torch.device("cpu"), precision)

    passes = [
        (make_pass(model, x, b, replace(tta, fraction=f, grid=g or tta.grid), amp), args.images)
        for b, f, g in variants
    ]
    rates = interleaved_rates(passes, args.seconds, args.rounds)
    views = ("flip" if tta.flip else "") + (f" + shifts ±{tta.shift}" if tta.shift else "")
    print(
        f"{args.model}, TTA of --recipe {args.recipe}: {views or 'none'}; "
        f"{torch.get_num_threads()} threads, {precision}, torch {torch.__version__}, "
        f"{args.rounds} rounds"
    )
    print("| batch | TTA fraction | views | img/s | vs first, range | vs first |")
    print("|---|---|---|---|---|---|")
    for (batch, fraction, grid), r in zip(variants, rates, strict=True):
        ratios = [a / b for a, b in zip(r, rates[0], strict=True)]
        print(
            f"| {batch} | {fraction:g} | {'grid' if grid else 'recipe'} | "
            f"{statistics.median(r):.0f} | "
            f"{min(ratios):.2f}–{max(ratios):.2f} | {statistics.median(ratios):.2f}x |",
            flush=True,
        )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
