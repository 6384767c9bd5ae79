"""Where a training step's seconds go, and whether ``torch.compile`` pays (issue #13, part 3).

Builds a recipe's run exactly as ``cnnzoo train`` does (the loaders with their augmentation, the
model with its data-dependent init, the optimizer, the precision), then

1. profiles ``--steps`` training steps with ``torch.profiler`` and prints the time by category
   (convolution forward / backward by shape, batch norm, GELU, pooling, the optimizer, the loss,
   the data path, the rest), as a share of the profiled wall time;
2. times the evaluation pass of the recipe (its TTA views) over ``--eval-images`` test images;
3. with ``--compile``, times ``--steps`` eager steps and ``--steps`` steps of the same run with the
   model under ``torch.compile`` (inductor), alternating blocks of steps in this one process so
   that a busy machine slows both alike, and reports the compile time separately.

    python benchmarks/profile_step.py --model fastnet --recipe fast \
        --data ../shared/data/cifar10/cifar-10-python.tar.gz --compile
"""

from __future__ import annotations

import argparse
import collections
import itertools
import platform
import time

import torch
from torch import nn
from torch.profiler import ProfilerActivity, profile

from cnnzoo.data import load_dataset
from cnnzoo.train.engine import TTA, evaluate
from cnnzoo.train.precision import cpu_key
from cnnzoo.train.recipes import recipe_config
from cnnzoo.train.runtime import autocast
from cnnzoo.train.setup import build_loaders, build_model, build_optim, setup_runtime

# profiler op name → category; the first matching substring wins
CATEGORIES = (
    ("convolution_backward", "conv backward"),
    ("mkldnn_convolution", "conv forward"),
    ("convolution", "conv forward"),
    ("batch_norm", "batch norm"),
    ("gelu", "GELU"),
    ("max_pool", "pooling"),
    ("adaptive_max", "pooling"),
    ("cross_entropy", "loss"),
    ("log_softmax", "loss"),
    ("nll_loss", "loss"),
    ("_foreach", "optimizer"),
    ("sgd", "optimizer"),
    ("Optimizer.step", "optimizer"),
)


def category(name: str) -> str | None:
    low = name.lower()
    for key, cat in CATEGORIES:
        if key.lower() in low:
            return cat
    return None


def build(args: argparse.Namespace):
    cfg = recipe_config(args.recipe, args.model, data=args.data, seed=0, quiet=True, out=None)
    if args.threads:
        cfg.threads = args.threads
    if args.batch_size:
        cfg.batch_size = args.batch_size
    rt = setup_runtime(cfg)
    data = load_dataset(cfg.dataset, data=cfg.data, quiet=True)
    loaders = build_loaders(cfg, data, rt)
    model = build_model(cfg, data, loaders, rt, fresh=True)
    optim = build_optim(cfg, model, rt)
    criterion = nn.CrossEntropyLoss(label_smoothing=cfg.label_smoothing)
    return cfg, rt, data.num_classes, loaders, model, optim.optimizer, criterion


def batches_forever(loader):
    for epoch in itertools.count():
        loader.set_epoch(epoch)
        yield from loader


def step(model, x, y, optimizer, criterion, amp) -> None:
    with amp():
        loss = criterion(model(x), y)
    optimizer.zero_grad(set_to_none=True)
    loss.backward()
    optimizer.step()


def profile_steps(args, model, batches, optimizer, criterion, amp) -> dict[str, float]:
    """Self CPU time of each op, summed by category (the ops' own time, not their children's),
    printed as shares and returned in seconds per step."""
    for _ in range(args.warmup):
        step(model, *next(batches), optimizer, criterion, amp)
    with profile(activities=[ProfilerActivity.CPU], record_shapes=True) as prof:
        start = time.perf_counter()
        for _ in range(args.steps):
            with torch.profiler.record_function("data"):
                x, y = next(batches)
            step(model, x, y, optimizer, criterion, amp)
        wall = time.perf_counter() - start
    by_cat: dict[str, float] = collections.defaultdict(float)
    by_conv: dict[str, float] = collections.defaultdict(float)
    by_other: dict[str, float] = collections.defaultdict(float)  # what "other" is made of
    data_us = 0.0
    for ev in prof.key_averages(group_by_input_shape=True):
        if ev.key == "data":
            data_us = ev.cpu_time_total  # the loader with its children: crop, flip, normalise
            continue
        cat = category(ev.key)
        by_cat[cat or "other"] += ev.self_cpu_time_total
        if cat is None:
            by_other[ev.key] += ev.self_cpu_time_total
        if cat and cat.startswith("conv"):
            shape = str(ev.input_shapes[0]) if ev.input_shapes else "?"
            by_conv[f"{cat} {shape}"] += ev.self_cpu_time_total
    data_self = sum(e.self_cpu_time_total for e in prof.key_averages() if e.key == "data")
    by_cat["other"] -= data_us - data_self  # the loader's children were counted as "other"
    by_cat["data path"] = data_us
    total = sum(by_cat.values())
    print(
        f"\nprofile of {args.steps} steps: {wall:.2f} s wall, {wall / args.steps * 1e3:.0f} ms/step"
    )
    for cat, us in sorted(by_cat.items(), key=lambda kv: -kv[1]):
        print(f"  {cat:<16} {us / total:6.1%}  {us / 1e6 / args.steps * 1e3:7.1f} ms/step")
    print("  convolutions by input shape (share of all op time):")
    for key, us in sorted(by_conv.items(), key=lambda kv: -kv[1])[:12]:
        print(f"    {key:<48} {us / total:6.1%}")
    print("  the largest uncategorised ops (the data path's own among them):")
    for key, us in sorted(by_other.items(), key=lambda kv: -kv[1])[:8]:
        print(f"    {key:<48} {us / total:6.1%}")
    return {cat: us / 1e6 / args.steps for cat, us in by_cat.items()}


def time_eval(args, cfg, num_classes, model, loaders, amp_ctx) -> None:
    test = loaders.test
    n = min(args.eval_images, len(test.x))
    sub = itertools.islice(iter(test), max(1, n // cfg.eval_batch_size))
    start = time.perf_counter()
    res = evaluate(model, sub, num_classes, amp_ctx, TTA.from_config(cfg))
    sec = time.perf_counter() - start
    print(
        f"\nevaluation ({'flip' if cfg.tta else 'no'} TTA, shift {cfg.tta_shift}): "
        f"{res.count} images in {sec:.2f} s = {res.count / sec:.0f} img/s"
    )


def time_compile(args, model, batches, optimizer, criterion, amp) -> None:
    compiled = torch.compile(model)
    start = time.perf_counter()
    step(compiled, *next(batches), optimizer, criterion, amp)  # compiles forward and backward
    step(compiled, *next(batches), optimizer, criterion, amp)
    print(
        f"\ntorch.compile: first two steps (compile included) {time.perf_counter() - start:.1f} s"
    )
    times = {"eager": 0.0, "compiled": 0.0}
    block = max(1, args.steps // 4)
    for _ in range(4):  # alternate blocks: a busy machine slows both alike
        for name, m in (("eager", model), ("compiled", compiled)):
            start = time.perf_counter()
            for _ in range(block):
                step(m, *next(batches), optimizer, criterion, amp)
            times[name] += time.perf_counter() - start
    n = 4 * block
    e, c = times["eager"] / n, times["compiled"] / n
    print(
        f"  eager {e * 1e3:.0f} ms/step, compiled {c * 1e3:.0f} ms/step: "
        f"speed-up (eager/compiled) {e / c:.2f}x"
    )


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--model", default="fastnet")
    p.add_argument("--recipe", default="fast")
    p.add_argument("--data", default=None)
    p.add_argument("--batch-size", type=int, default=None)
    p.add_argument("--threads", type=int, default=None)
    p.add_argument("--steps", type=int, default=8)
    p.add_argument("--warmup", type=int, default=2)
    p.add_argument("--eval-images", type=int, default=2000)
    p.add_argument("--compile", action="store_true", help="also time torch.compile vs eager")
    args = p.parse_args(argv)
    cfg, rt, num_classes, loaders, model, optimizer, criterion = build(args)
    amp = lambda: autocast(rt.device, rt.precision)  # noqa: E731
    print(
        f"{args.model} --recipe {args.recipe}, batch {cfg.batch_size}, {rt.precision} "
        f"({rt.choice.reason}), threads {torch.get_num_threads()}, "
        f"{cpu_key()} {platform.processor()}, torch {torch.__version__}"
    )
    batches = batches_forever(loaders.train)
    profile_steps(args, model, batches, optimizer, criterion, amp)
    time_eval(args, cfg, num_classes, model, loaders, amp)
    if args.compile:
        time_compile(args, model, batches, optimizer, criterion, amp)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
