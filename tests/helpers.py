"""Shared helpers for the tests (imported as ``helpers``)."""

from __future__ import annotations

import importlib.util
import io
import os
import pickle
import subprocess
import sys
import tarfile
from pathlib import Path

import numpy as np
import torch

from cnnzoo import cli

ROOT = Path(__file__).resolve().parents[1]


def load_benchmark(name: str):
    """The script ``benchmarks/<name>.py`` as a module (benchmarks/ is not a package)."""
    spec = importlib.util.spec_from_file_location(name, ROOT / "benchmarks" / f"{name}.py")
    assert spec is not None and spec.loader is not None
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


# A FastNet a few thousand parameters large, and a run of it on generated data (the airbench
# and Muon tests): TrainConfig keywords.
TINY_FASTNET = {"widths": [8, 16, 16], "stem": 6}
TINY_FASTNET_RUN = dict(
    model="fastnet",
    model_kwargs=TINY_FASTNET,
    data="synthetic",
    subset=256,
    val=64,
    batch_size=64,
    lr=0.2,
    precision="fp32",
    quiet=True,
)

# A tiny synthetic run: a couple of seconds per epoch on one CPU thread.
TINY_TRAIN = [
    "train",
    "resnet20",
    "--data",
    "synthetic",
    "--subset",
    "256",
    "--batch-size",
    "64",
    "--val",
    "64",
    "--epochs",
    "3",
    "--precision",
    "fp32",
    "--threads",
    "1",
    "--quiet",
]


def run_main(argv: list[str], capsys) -> tuple[int, str, str]:
    """``cnnzoo.cli.main(argv)`` in this process: (exit code, stdout, stderr)."""
    capsys.readouterr()
    try:
        code = cli.main(argv)
    except SystemExit as exc:  # argparse errors
        code = exc.code if isinstance(exc.code, int) else 1
    out, err = capsys.readouterr()
    return code, out, err


def cnnzoo_env(extra: dict[str, str] | None = None) -> dict[str, str]:
    env = dict(os.environ)
    src = str(ROOT / "src")
    env["PYTHONPATH"] = src + os.pathsep + env.get("PYTHONPATH", "")
    env["CNNZOO_OFFLINE"] = "1"
    env.update(extra or {})
    return env


def run_cli(
    argv: list[str], env: dict[str, str] | None = None, **kw
) -> subprocess.CompletedProcess:
    """``python -m cnnzoo ARGV`` in a subprocess (a list: no shell involved)."""
    return subprocess.run(
        [sys.executable, "-m", "cnnzoo", *argv],
        env=cnnzoo_env(env),
        capture_output=True,
        text=True,
        timeout=300,
        **kw,
    )


def assert_one_error_line(err: str) -> str:
    """stderr is exactly one line, starting ``error:``; returns it."""
    lines = [ln for ln in err.strip().splitlines() if ln.strip()]
    assert len(lines) == 1, f"expected one error line, got:\n{err}"
    assert lines[0].startswith("error: "), lines[0]
    return lines[0]


def make_checkpoint(path: Path, model: str = "resnet20", seed: int = 0) -> Path:
    """A cnnzoo checkpoint of an untrained model, trained-on-'synthetic' metadata."""
    from cnnzoo.data.synthetic import make_synthetic
    from cnnzoo.models import create_model
    from cnnzoo.train.checkpoint import FORMAT, save_atomic
    from cnnzoo.train.config import TrainConfig

    ds = make_synthetic()
    torch.manual_seed(seed)
    net = create_model(model, num_classes=ds.num_classes).eval()
    # Non-trivial BN statistics, so that normalisation mistakes change the outputs.
    for m in net.modules():
        if isinstance(m, torch.nn.BatchNorm2d):
            m.running_mean.uniform_(-0.2, 0.2)
            m.running_var.uniform_(0.5, 1.5)
    cfg = TrainConfig(model=model, data="synthetic")
    save_atomic(
        {
            "model_name": model,
            "model_kwargs": {},
            "num_classes": ds.num_classes,
            "classes": list(ds.classes),
            "mean": list(ds.mean),
            "std": list(ds.std),
            "config": cfg.to_dict(),
            "format": FORMAT,
            "epoch": 1,
            "model": net.state_dict(),
        },
        path,
    )
    return path


def fake_cifar10(path: Path, n_train: int = 50000, n_test: int = 10000) -> Path:
    """An archive in the official layout whose pixels encode (label, channel) so that decoding
    can be checked: R = label, G = 100 + label, B = 200 + label."""
    rng = np.random.default_rng(0)

    def batch(n: int) -> bytes:
        labels = rng.integers(0, 10, n)
        planes = np.stack([labels, 100 + labels, 200 + labels], 1).astype(np.uint8)  # (n, 3)
        data = np.repeat(planes, 1024, axis=1)  # rows R(1024) G(1024) B(1024)
        return pickle.dumps({"data": data, "labels": labels.tolist(), "batch_label": "x"}, 2)

    files = {f"data_batch_{i}": batch(n_train // 5) for i in range(1, 6)}
    files["test_batch"] = batch(n_test)
    names = ["airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship",
             "truck"]  # fmt: skip
    files["batches.meta"] = pickle.dumps({"label_names": names}, 2)
    with tarfile.open(path, "w:gz", compresslevel=1) as tar:
        for name, blob in files.items():
            info = tarfile.TarInfo(f"cifar-10-batches-py/{name}")
            info.size = len(blob)
            tar.addfile(info, io.BytesIO(blob))
    return path


def _batch(n: int, seed: int) -> bytes:
    rng = np.random.default_rng(seed)
    d = {
        b"data": rng.integers(0, 256, (n, 3072), dtype=np.uint8),
        b"labels": [int(v) for v in rng.integers(0, 10, n)],
    }
    # The official files' keys are bytes in Python 2 pickles; cnnzoo reads with latin1 keys as str
    return pickle.dumps({k.decode(): v for k, v in d.items()}, protocol=2)


def make_fake_cifar_tar(path: Path, images_per_batch: int = 10) -> Path:
    """A CIFAR-10-layout .tar.gz with tiny batches (too few images to pass validation)."""
    members = {f"data_batch_{i}": _batch(images_per_batch, i) for i in range(1, 6)}
    members["test_batch"] = _batch(images_per_batch, 99)
    members["batches.meta"] = pickle.dumps(
        {"label_names": [f"c{i}" for i in range(10)]}, protocol=2
    )
    with tarfile.open(path, "w:gz") as tar:
        for name, blob in members.items():
            info = tarfile.TarInfo(f"cifar-10-batches-py/{name}")
            info.size = len(blob)
            tar.addfile(info, io.BytesIO(blob))
    return path


def make_bad_tar(path: Path, kind: str, target: str = "/etc/passwd") -> Path:
    """A tar.gz holding one normal file plus one unsafe member of the given ``kind``:
    'dotdot' (../escape.txt), 'absolute' (/tmp/...), 'symlink' or 'hardlink' (to ``target``)."""
    with tarfile.open(path, "w:gz") as tar:
        ok = b"fine"
        info = tarfile.TarInfo("cifar-10-batches-py/readme.txt")
        info.size = len(ok)
        tar.addfile(info, io.BytesIO(ok))
        payload = b"escaped"
        if kind == "dotdot":
            info = tarfile.TarInfo("cifar-10-batches-py/../../escape.txt")
            info.size = len(payload)
            tar.addfile(info, io.BytesIO(payload))
        elif kind == "absolute":
            info = tarfile.TarInfo(target)
            info.size = len(payload)
            tar.addfile(info, io.BytesIO(payload))
        elif kind == "symlink":
            info = tarfile.TarInfo("cifar-10-batches-py/test_batch")
            info.type = tarfile.SYMTYPE
            info.linkname = target
            tar.addfile(info)
        elif kind == "hardlink":
            info = tarfile.TarInfo("cifar-10-batches-py/test_batch")
            info.type = tarfile.LNKTYPE
            info.linkname = target
            tar.addfile(info)
        else:
            raise ValueError(kind)
    return path
