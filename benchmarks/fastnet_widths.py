"""FastNet training-step throughput by width and batch size, as ratios to recipe ``fast``'s
shape (``fastnet`` at batch 1024) measured in the same run: the measurement behind
``fastnet_small`` and the ``fast-cpu`` recipe's batch of 256.

Each variant times whole SGD steps (forward, label-smoothed loss, backward, Nesterov update) on
random inputs, channels_last, in the precision ``--precision auto`` picks for this CPU, for
``--seconds`` in all after two untimed steps, split into ``--rounds`` rounds that visit every
variant in turn (reversed every other round). "vs first" is the median over rounds of the
variant's rate over the first variant's in the same round, with its range: a paired ratio that a
machine whose speed drifts slows alike. Still run it alone: two jobs on two cores slow each
other unevenly.

    python benchmarks/fastnet_widths.py
    python benchmarks/fastnet_widths.py --variants fastnet:1024 fastnet:128 fastnet_small:128
"""

from __future__ import annotations

import argparse
import statistics
import time
from collections.abc import Callable

import torch

from cnnzoo.models import count_flops, create_model
from cnnzoo.train.runtime import autocast, resolve_precision

DEFAULT_VARIANTS = (
    "fastnet:1024",  # the baseline: recipe "fast"
    "fastnet:256",
    "fastnet:128",
    "fastnet_small:256",  # recipe "fast-cpu"
    "fastnet_small:128",
    "fastnet_small:128:32,128,128",
)


def parse_variant(text: str) -> tuple[str, int, list[int] | None]:
    """``model:batch[:w1,w2,w3]`` -> (model, batch, widths or None)."""
    parts = text.split(":")
    if len(parts) not in (2, 3):
        raise argparse.ArgumentTypeError(f"expected model:batch[:w1,w2,w3], got {text!r}")
    try:
        widths = [int(w) for w in parts[2].split(",")] if len(parts) == 3 else None
        return parts[0], int(parts[1]), widths
    except ValueError:
        raise argparse.ArgumentTypeError(f"batch and widths must be integers: {text!r}") from None


def make_step(model: torch.nn.Module, batch: int, precision: str) -> Callable[[], None]:
    """One whole SGD step of ``model`` (trained in place) on a fixed random batch."""
    model = model.to(memory_format=torch.channels_last)
    opt = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.85, nesterov=True)
    loss_fn = torch.nn.CrossEntropyLoss(label_smoothing=0.2)
    x = torch.randn(batch, 3, 32, 32).to(memory_format=torch.channels_last)
    y = torch.randint(0, 10, (batch,))

    def step() -> None:
        with autocast(torch.device("cpu"), precision):
            loss = loss_fn(model(x).float(), y)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()

    return step


def timed_rate(step: Callable[[], None], batch: int, seconds: float) -> float:
    """Images per second of ``step`` run for ``seconds`` (at least one step)."""
    done, start = 0, time.perf_counter()
    while done < 1 or time.perf_counter() - start < seconds:
        step()
        done += 1
    return done * batch / (time.perf_counter() - start)


def interleaved_rates(
    steps: list[tuple[Callable[[], None], int]], seconds: float, rounds: int
) -> list[list[float]]:
    """img/s of each (step, batch) in each round: every round times each variant for
    ``seconds / rounds``, in reverse order every other round, so that a machine that speeds up
    or slows down meets all variants alike."""
    for step, _ in steps:  # untimed: oneDNN picks and caches its kernels on first use
        step()
        step()
    rates: list[list[float]] = [[] for _ in steps]
    for r in range(rounds):
        order = range(len(steps)) if r % 2 == 0 else reversed(range(len(steps)))
        for i in order:
            rates[i].append(timed_rate(*steps[i], seconds / rounds))
    return rates


def print_table(variants: list, models: list, rates: list[list[float]]) -> None:
    """One row per variant: median img/s, achieved TFLOP/s, and the paired ratio to the first."""
    print(
        "| model | widths | batch | fwd MFLOP/img | img/s | TFLOP/s | vs first, range | vs first |"
    )
    print("|---|---|---|---|---|---|---|---|")
    for (name, batch, _), model, r in zip(variants, models, rates, strict=True):
        flops = count_flops(model)
        shown = [group[0].out_channels for group in model.layers]  # each group's first conv
        # each round's rate over the first variant's in the same round (same machine conditions)
        ratios = [a / b for a, b in zip(r, rates[0], strict=True)]
        rate = statistics.median(r)
        print(
            f"| {name} | {'/'.join(map(str, shown))} | {batch} | {flops / 1e6:.0f} | {rate:.0f} "
            f"| {3 * flops * rate / 1e12:.3f} | {min(ratios):.2f}–{max(ratios):.2f} "
            f"| {statistics.median(ratios):.2f}x |",
            flush=True,
        )


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--variants", nargs="+", type=parse_variant, default=None)
    p.add_argument("--seconds", type=float, default=12.0, help="timed seconds per variant")
    p.add_argument("--rounds", type=int, default=4, help="alternated rounds the seconds split into")
    args = p.parse_args(argv)
    if args.rounds < 1:
        p.error("--rounds must be at least 1")
    variants = args.variants or [parse_variant(v) for v in DEFAULT_VARIANTS]
    torch.manual_seed(0)
    precision = resolve_precision("auto", torch.device("cpu"))
    models = [create_model(name, **({"widths": w} if w else {})) for name, _, w in variants]
    steps = [(make_step(m, v[1], precision), v[1]) for m, v in zip(models, variants, strict=True)]
    rates = interleaved_rates(steps, args.seconds, args.rounds)
    threads = torch.get_num_threads()
    print(f"{threads} threads, {precision}, torch {torch.__version__}, {args.rounds} rounds")
    print_table(variants, models, rates)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
