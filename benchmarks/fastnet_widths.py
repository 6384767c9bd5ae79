"""FastNet training-step throughput by width and batch size, as ratios to recipe ``fast``'s
shape (``fastnet`` at batch 1024) measured in the same run: the measurement behind
``fastnet_small`` and the ``fast-cpu`` recipe's batch of 256.

Each variant times whole SGD steps (forward, label-smoothed loss, backward, Nesterov update) on
random inputs, channels_last, in the precision ``--precision auto`` picks for this CPU, for
``--seconds`` after two untimed steps. Variants run one after another, so run it alone.

    python benchmarks/fastnet_widths.py
    python benchmarks/fastnet_widths.py --variants fastnet:1024 fastnet:128 fastnet_small:128
"""

from __future__ import annotations

import argparse
import time

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


def step_rate(model: torch.nn.Module, batch: int, precision: str, seconds: float) -> float:
    """Training images per second of whole SGD steps of ``model`` (trained in place)."""
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

    step()
    step()
    done, start = 0, time.perf_counter()
    while time.perf_counter() - start < seconds or done < 2:
        step()
        done += 1
    return done * batch / (time.perf_counter() - start)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--variants", nargs="+", type=parse_variant, default=None)
    p.add_argument("--seconds", type=float, default=12.0, help="timed seconds per variant")
    args = p.parse_args(argv)
    variants = args.variants or [parse_variant(v) for v in DEFAULT_VARIANTS]
    torch.manual_seed(0)
    precision = resolve_precision("auto", torch.device("cpu"))
    print(f"{torch.get_num_threads()} threads, {precision}, torch {torch.__version__}")
    print("| model | widths | batch | fwd MFLOP/img | img/s | TFLOP/s | vs first |")
    print("|---|---|---|---|---|---|---|")
    base = None
    for name, batch, widths in variants:
        model = create_model(name, **({"widths": widths} if widths else {}))
        flops = count_flops(model)
        shown = [group[0].out_channels for group in model.layers]  # each group's first conv
        rate = step_rate(model, batch, precision, args.seconds)
        base = base or rate
        print(
            f"| {name} | {'/'.join(map(str, shown))} | {batch} | {flops / 1e6:.0f} | {rate:.0f} "
            f"| {3 * flops * rate / 1e12:.3f} | {rate / base:.2f}x |",
            flush=True,
        )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
