"""Training throughput: the reference notebook's recipe vs cnnzoo's defaults, side by side.

(a) reference: fp32, NCHW, per-sample PIL random crop (4 px zero padding) + flip + ToTensor +
    Normalize in a torch DataLoader with 2 workers, as the notebook does with torchvision;
(b) cnnzoo: the trainer's own step (``cnnzoo.train.engine.train_epoch``) with its defaults:
    bf16 autocast where it measures faster than fp32 (``--precision auto``), channels_last,
    uint8 data in memory with batched tensor augmentation in the main process.

Both train on real CIFAR-10 batches (``--data``), or synthetic ones with ``--data synthetic``.
img/s counts training images per second over the timed steps (data loading included);
TFLOP/s = 3 x forward FLOPs per image (forward + backward ~ 3 forwards) x img/s.

    python benchmarks/throughput.py --data ../shared/data/cifar10/cifar-10-python.tar.gz
"""

from __future__ import annotations

import argparse
import itertools
import time

import numpy as np
import torch
from PIL import Image, ImageOps
from torch import nn
from torch.utils.data import DataLoader
from torch.utils.data import Dataset as TorchDataset

from cnnzoo.data import Augment, TensorLoader, load_dataset
from cnnzoo.models import count_flops, create_model
from cnnzoo.train.engine import train_epoch
from cnnzoo.train.precision import cpu_key
from cnnzoo.train.runtime import autocast, choose_precision, resolve_device, resolve_precision

MODELS = ("resnet18", "plain18", "vgg16", "resnet56", "googlenet")
SLOW = {"googlenet": 3}  # timed steps for models whose fp32 step takes half a minute here


class PilCifar(TorchDataset):
    """The notebook's per-sample pipeline: PIL image -> RandomCrop(32, padding=4) ->
    RandomHorizontalFlip -> ToTensor -> Normalize (with the true std)."""

    def __init__(self, x: torch.Tensor, y: torch.Tensor, mean, std) -> None:
        self.x, self.y = x.numpy(), y.numpy()
        self.mean = torch.tensor(mean).view(3, 1, 1)
        self.std = torch.tensor(std).view(3, 1, 1)

    def __len__(self) -> int:
        return len(self.y)

    def __getitem__(self, i: int):
        img = ImageOps.expand(Image.fromarray(self.x[i]), border=4, fill=0)
        dx, dy = np.random.randint(0, 9, size=2)
        img = img.crop((dx, dy, dx + 32, dy + 32))
        if np.random.rand() < 0.5:
            img = img.transpose(Image.Transpose.FLIP_LEFT_RIGHT)
        t = torch.from_numpy(np.asarray(img, dtype=np.uint8).copy()).permute(2, 0, 1)
        return (t.float() / 255 - self.mean) / self.std, int(self.y[i])


def time_reference(name, data, batch, warmup, steps, device) -> float:
    torch.manual_seed(0)
    model = create_model(name, num_classes=data.num_classes).to(device).train()
    opt = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9, weight_decay=5e-4)
    crit = nn.CrossEntropyLoss()
    ds = PilCifar(data.train_x, data.train_y, data.mean, data.std)
    loader = DataLoader(ds, batch_size=batch, shuffle=True, num_workers=2, drop_last=True)
    it = iter(loader)
    start = 0.0
    for i in range(warmup + steps):
        if i == warmup:
            if device.type == "cuda":
                torch.cuda.synchronize()
            start = time.perf_counter()
        x, y = next(it)
        x, y = x.to(device), y.to(device)
        loss = crit(model(x), y)
        opt.zero_grad()
        loss.backward()
        opt.step()
    if device.type == "cuda":
        torch.cuda.synchronize()
    return steps * batch / (time.perf_counter() - start)


def time_cnnzoo(name, data, batch, warmup, steps, device, precision) -> float:
    torch.manual_seed(0)
    model = create_model(name, num_classes=data.num_classes)
    model = model.to(device, memory_format=torch.channels_last)
    opt = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9, weight_decay=5e-4)
    loader = TensorLoader(
        data.train_x,
        data.train_y,
        batch,
        data.mean,
        data.std,
        train=True,
        augment=Augment(),
        device=device,
    )

    def run(n: int) -> float:
        stats = train_epoch(
            model,
            itertools.islice(iter(loader), n),
            opt,
            nn.CrossEntropyLoss(),
            lambda: autocast(device, precision),
            lambda: 0.01,
        )
        if device.type == "cuda":
            torch.cuda.synchronize()
        return stats.images / stats.seconds

    run(warmup)
    return run(steps)


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--data", default=None, help="CIFAR-10 archive/folder, or 'synthetic'")
    p.add_argument("--models", nargs="+", default=list(MODELS))
    p.add_argument("--batch-size", type=int, default=128)
    p.add_argument("--steps", type=int, default=8, help="timed steps per model and recipe")
    p.add_argument("--warmup", type=int, default=2)
    p.add_argument("--device", default="auto")
    p.add_argument("--precision", default="auto", help="cnnzoo side: auto, fp32 or bf16")
    p.add_argument(
        "--precisions",
        action="store_true",
        help="instead of the reference: cnnzoo in bf16, fp32 and auto, and auto / the faster",
    )
    args = p.parse_args(argv)
    if args.precisions:
        return compare_precisions(args)

    device = resolve_device(args.device)
    precision = resolve_precision(args.precision, device)
    data = load_dataset("cifar10", args.data, quiet=True)
    n_threads = torch.get_num_threads()
    where = torch.cuda.get_device_name(device) if device.type == "cuda" else f"{n_threads} threads"
    print(
        f"device {device} ({where}), torch {torch.__version__}, batch {args.batch_size}, "
        f"data {data.name}; cnnzoo precision {precision}, channels_last"
    )
    print(
        f"{'model':<10} {'GFLOP/img':>9} {'ref img/s':>10} {'cnnzoo img/s':>13} {'ratio':>6} "
        f"{'ref TFLOP/s':>11} {'cnnzoo TFLOP/s':>14}"
    )
    for name in args.models:
        steps = min(args.steps, SLOW.get(name, args.steps)) if device.type == "cpu" else args.steps
        warmup = min(args.warmup, 1) if name in SLOW and device.type == "cpu" else args.warmup
        flops = count_flops(create_model(name))
        ref = time_reference(name, data, args.batch_size, warmup, steps, device)
        ours = time_cnnzoo(name, data, args.batch_size, warmup, steps, device, precision)
        print(
            f"{name:<10} {flops / 1e9:>9.3f} {ref:>10.1f} {ours:>13.1f} {ours / ref:>5.2f}x "
            f"{3 * flops * ref / 1e12:>11.3f} {3 * flops * ours / 1e12:>14.3f}",
            flush=True,
        )


def compare_precisions(args: argparse.Namespace) -> None:
    """``--precision auto`` against both explicit precisions, timed in the same run."""
    device = resolve_device(args.device)
    choice = choose_precision("auto", device)
    data = load_dataset("cifar10", args.data, quiet=True)
    print(f"{cpu_label(device)}, torch {torch.__version__}, batch {args.batch_size}")
    print(f"auto -> {choice.precision} ({choice.reason})")
    print(
        f"{'model':<10} {'bf16 img/s':>10} {'fp32 img/s':>10} {'auto img/s':>10} {'auto/best':>9}"
    )
    for name in args.models:
        rate = {  # "auto" runs the chosen precision through the same code, timed on its own
            p: time_cnnzoo(
                name,
                data,
                args.batch_size,
                args.warmup,
                args.steps,
                device,
                choice.precision if p == "auto" else p,
            )
            for p in ("bf16", "fp32", "auto")
        }
        best = max(rate["bf16"], rate["fp32"])
        print(
            f"{name:<10} {rate['bf16']:>10.1f} {rate['fp32']:>10.1f} {rate['auto']:>10.1f} "
            f"{rate['auto'] / best:>8.2f}x",
            flush=True,
        )


def cpu_label(device: torch.device) -> str:
    """The device with its model name and threads, to print beside every figure."""
    if device.type == "cuda":
        return f"device {torch.cuda.get_device_name(device)}"
    return f"device cpu ({cpu_key().split(' | flags')[0]}, {torch.get_num_threads()} threads)"


if __name__ == "__main__":
    main()
