"""Signals, timed checkpoints, exact mid-epoch resume and a full disk (issue #15).

SIGTERM and SIGINT in the middle of epoch 2 of a 3-epoch fp32 run: exit 143 / 130, one line,
and ``--resume`` ends with the uninterrupted run's last.pt and best.pt weights and metrics rows.
A second Ctrl-C during the save is ignored; a third aborts and leaves the previous last.pt.
SIGKILL right after a timed mid-epoch checkpoint resumes to the same weights. A write refused by
the filesystem keeps the previous checkpoint and ends with one ``error:`` line, exit 1.

The subprocess tests run ``tests/signal_worker.py`` (``python -m cnnzoo`` that pauses at a
chosen training step until the test has sent its signal), so each signal lands at a known step
however busy the machine is.
"""

from __future__ import annotations

import errno
import json
import os
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pytest
import torch

import cnnzoo.atomic
from cnnzoo.data import Augment, TensorLoader
from cnnzoo.data.mix import Mix
from cnnzoo.data.synthetic import make_synthetic
from cnnzoo.errors import Interrupted
from cnnzoo.train import TrainConfig, load_checkpoint, train
from helpers import TINY_TRAIN, assert_one_error_line, cnnzoo_env, run_cli, run_main

WORKER = Path(__file__).with_name("signal_worker.py")
TIMING = {"seconds", "img_per_s"}  # wall-clock fields: the only ones a resume may change


def _rows(run: Path) -> list[dict]:
    rows = [json.loads(ln) for ln in (run / "metrics.jsonl").read_text().splitlines()]
    return [{k: v for k, v in r.items() if k not in TIMING} for r in rows]


def _assert_same_run(got: Path, want: Path) -> None:
    """last.pt and best.pt weights, momentum buffers and metrics rows are equal, bit for bit."""
    for name in ("last.pt", "best.pt"):
        a, b = load_checkpoint(got / name), load_checkpoint(want / name)
        assert a["epoch"] == b["epoch"], name
        assert a["model"].keys() == b["model"].keys()
        for key, tensor in b["model"].items():
            assert torch.equal(a["model"][key], tensor), f"{name}: {key}"
    a, b = load_checkpoint(got / "last.pt"), load_checkpoint(want / "last.pt")
    assert a["step"] == b["step"] and a["in_epoch"] is None
    for idx, st in b["optimizer"]["state"].items():
        assert torch.equal(a["optimizer"]["state"][idx]["momentum_buffer"], st["momentum_buffer"])
    assert _rows(got) == _rows(want) and len(_rows(got)) == 3
    summary = [json.loads((r / "summary.json").read_text()) for r in (got, want)]
    assert summary[0]["test_acc"] == summary[1]["test_acc"]


@pytest.fixture(scope="module")
def reference(tmp_path_factory) -> Path:
    """The tiny 3-epoch run, uninterrupted."""
    out = tmp_path_factory.mktemp("reference") / "run"
    done = run_cli([*TINY_TRAIN, "--out", str(out)])
    assert done.returncode == 0, done.stderr
    return out


class _Paused:
    """``cnnzoo train`` (TINY_TRAIN) paused before training step ``step`` (0-based) of
    ``epoch``; stderr goes to a file that the test can poll."""

    def __init__(self, tmp: Path, out: Path, epoch: int, step: int, slow: float = 0.0, *extra):
        self.hs, self.err = tmp / "handshake", tmp / "stderr.txt"
        self.hs.mkdir()
        args = [str(WORKER), str(self.hs), str(epoch), str(step), str(slow)]
        with open(self.err, "w") as err:
            self.proc = subprocess.Popen(
                [sys.executable, *args, *TINY_TRAIN, "--out", str(out), *extra],
                env=cnnzoo_env(),
                stdout=subprocess.DEVNULL,
                stderr=err,
            )
        self.wait_for(lambda: (self.hs / "paused").exists(), "the pause")

    def wait_for(self, condition, what: str, timeout: float = 120) -> None:
        deadline = time.monotonic() + timeout
        while not condition():
            if self.proc.poll() is not None:
                raise AssertionError(f"the run ended before {what}: {self.stderr()}")
            if time.monotonic() > deadline:
                self.proc.kill()
                raise AssertionError(f"timed out waiting for {what}")
            time.sleep(0.01)

    def signal(self, sig: int) -> None:
        self.proc.send_signal(sig)

    def go(self) -> None:
        (self.hs / "go").touch()

    def stderr(self) -> str:
        return self.err.read_text()

    def exit_code(self) -> int:
        return self.proc.wait(timeout=120)


def _resume(out: Path) -> None:
    done = run_cli(["train", "--resume", str(out), "--quiet"])
    assert done.returncode == 0, done.stderr


def _temp_files(out: Path) -> list[Path]:
    return list(out.glob(".*.tmp"))


# ---- signals ---------------------------------------------------------------------------------


@pytest.mark.slow
def test_sigterm_mid_epoch_then_resume_equals_uninterrupted(tmp_path, reference):
    out = tmp_path / "run"
    run = _Paused(tmp_path, out, epoch=2, step=1)
    run.signal(signal.SIGTERM)
    run.go()
    assert run.exit_code() == 143
    assert run.stderr().strip().splitlines() == [
        f"interrupted at epoch 2 step 2; resume with: cnnzoo train --resume {out}"
    ]
    last = load_checkpoint(out / "last.pt")
    assert last["epoch"] == 1 and last["in_epoch"]["step"] == 2 and last["step"] == 4 + 2
    assert last["in_epoch"]["totals"][2].item() == 2 * 64  # images seen in epoch 2 so far
    assert len(_rows(out)) == 1 and not _temp_files(out)
    _resume(out)
    _assert_same_run(out, reference)


@pytest.mark.slow
def test_sigint_twice_saves_then_stops_and_resumes_exactly(tmp_path, reference):
    """Ctrl-C mid-epoch, and again during the checkpoint save: the second is acknowledged but
    does not cut the save short."""
    out = tmp_path / "run"
    run = _Paused(tmp_path, out, epoch=2, step=1, slow=1.0)
    run.signal(signal.SIGINT)
    run.go()
    run.wait_for(lambda: _temp_files(out), "the mid-epoch save")
    run.signal(signal.SIGINT)
    assert run.exit_code() == 130
    lines = run.stderr().strip().splitlines()
    assert lines[0].startswith("stopping after this step's checkpoint")
    assert lines[1:] == [f"interrupted at epoch 2 step 2; resume with: cnnzoo train --resume {out}"]
    assert load_checkpoint(out / "last.pt")["in_epoch"]["step"] == 2 and not _temp_files(out)
    _resume(out)
    _assert_same_run(out, reference)


@pytest.mark.slow
def test_third_sigint_aborts_the_save_and_keeps_the_previous_checkpoint(tmp_path):
    out = tmp_path / "run"
    run = _Paused(tmp_path, out, epoch=2, step=1, slow=30.0)
    before = (out / "last.pt").read_bytes()  # epoch 1's
    run.signal(signal.SIGINT)
    run.go()
    run.wait_for(lambda: _temp_files(out), "the mid-epoch save")
    run.signal(signal.SIGINT)
    run.wait_for(lambda: "one more signal" in run.stderr(), "the second signal's note")
    started = time.monotonic()
    run.signal(signal.SIGINT)
    assert run.exit_code() == 130
    assert time.monotonic() - started < 20  # not after the 30 s save
    assert run.stderr().strip().splitlines()[-1] == (
        f"aborted; the last complete checkpoint is kept: resume with: cnnzoo train --resume {out}"
    )
    assert (out / "last.pt").read_bytes() == before and not _temp_files(out)
    assert load_checkpoint(out / "last.pt")["epoch"] == 1


@pytest.mark.slow
def test_sigkill_after_a_timed_checkpoint_then_resume_equals_uninterrupted(tmp_path, reference):
    """--checkpoint-every 0.0001 (6 ms): a checkpoint after every step; SIGKILL in epoch 2."""
    out = tmp_path / "run"
    run = _Paused(tmp_path, out, 2, 3, 0.0, "--checkpoint-every", "0.0001")
    last = load_checkpoint(out / "last.pt")
    assert last["epoch"] == 1 and last["in_epoch"]["step"] == 3  # written after step 3
    run.proc.send_signal(signal.SIGKILL)
    assert run.exit_code() == -signal.SIGKILL
    _resume(out)
    _assert_same_run(out, reference)


# ---- exact mid-epoch resume, in process: every piece of state that a step changes -------------

SMALL = dict(
    model="resnet20", data="synthetic", subset=128, val=64, batch_size=32, precision="fp32",
    threads=1, quiet=True,
)  # fmt: skip


def _signal_at(monkeypatch, epoch: int, step: int, sig: int) -> None:
    """This process sends itself ``sig`` as training batch ``step`` of ``epoch`` is handed out."""
    batches = TensorLoader.batches

    def with_signal(self, start=0):
        for i, batch in enumerate(batches(self, start), start=start):
            if self.train and self.epoch == epoch and i == step:
                os.kill(os.getpid(), sig)
            yield batch

    monkeypatch.setattr(TensorLoader, "batches", with_signal)


@pytest.mark.parametrize(
    "options",
    [
        dict(epochs=2, ema=0.9, cutout=8, mixup=0.4, cutmix=1.0, label_smoothing=0.1),
        pytest.param(
            dict(epochs=5, lookahead=True, alternate_flip=True, crop_reflect=True),
            marks=pytest.mark.slow,
        ),
        # 192 training images; epochs 2-3 pruned (the stop is in epoch 3: its choice must be
        # epoch 3's own, made from the losses as they were when it started)
        dict(epochs=3, subset=192, prune=0.5, prune_pool=0.6, prune_full_last=0),
    ],
    ids=["ema-mix-cutout", "lookahead", "prune"],
)
def test_mid_epoch_resume_is_exact(tmp_path, monkeypatch, options):
    epochs = options["epochs"]
    straight = train(TrainConfig(**{**SMALL, **options}, out=str(tmp_path / "a")))
    with monkeypatch.context() as m:
        _signal_at(m, epoch=epochs, step=1, sig=signal.SIGUSR1)  # lookahead acts from epoch 4
        with pytest.raises(Interrupted) as stop:
            train(TrainConfig(**{**SMALL, **options}, out=str(tmp_path / "b")))
    assert stop.value.exit_code == 138 and f"epoch {epochs} step 2" in str(stop.value)
    assert signal.getsignal(signal.SIGUSR1) == signal.SIG_DFL  # the handlers are put back
    resumed = train(TrainConfig(quiet=True), resume=tmp_path / "b")
    for name in ("last.pt", "best.pt"):
        a, b = load_checkpoint(tmp_path / "a" / name), load_checkpoint(tmp_path / "b" / name)
        for key, tensor in a["model"].items():
            assert torch.equal(b["model"][key], tensor), f"{name}: {key}"
        for part in ("ema", "lookahead", "prune"):
            assert (a.get(part) is None) == (b.get(part) is None)
    a, b = load_checkpoint(tmp_path / "a" / "last.pt"), load_checkpoint(tmp_path / "b" / "last.pt")
    if a.get("prune"):
        assert torch.equal(a["prune"]["losses"], b["prune"]["losses"])
        assert a["step"] == b["step"] < epochs * 6  # the pruned epochs took fewer steps
    if a["ema"]:
        assert a["ema"]["updates"] == b["ema"]["updates"]
        for key, tensor in a["ema"]["module"].items():
            assert torch.equal(b["ema"]["module"][key], tensor), key
    strip = [{k: v for k, v in r.items() if k not in TIMING} for r in straight.history]
    assert [{k: v for k, v in r.items() if k not in TIMING} for r in resumed.history] == strip
    assert resumed.test_acc == straight.test_acc


def test_loader_resumes_at_any_batch():
    """``batches(k)`` yields exactly batches k, k+1, ... of the epoch (augmentation and mixing
    included), without drawing the skipped ones."""
    data = make_synthetic(n_train=160, n_test=10)
    loader = TensorLoader(
        data.train_x, data.train_y, 32, data.mean, data.std, train=True, seed=5,
        augment=Augment(pad=4, cutout=8, alternate_flip=True), mix=Mix(0.4, 1.0, 10),
    )  # fmt: skip
    loader.set_epoch(3)
    whole = list(loader)
    for k in range(len(loader) + 1):
        part = list(loader.batches(k))
        assert len(part) == len(whole) - k
        for (xa, ya), (xb, yb) in zip(part, whole[k:], strict=True):
            assert torch.equal(xa, xb) and torch.equal(ya, yb)


def test_checkpoint_every_is_checked_and_may_change_on_resume(tmp_path, capsys):
    out = tmp_path / "r"
    code, _, err = run_main([*TINY_TRAIN, "--out", str(out), "--checkpoint-every", "-1"], capsys)
    assert code == 2 and "--checkpoint-every must be >= 0" in assert_one_error_line(err)
    base = [*TINY_TRAIN, "--epochs", "1", "--subset", "128"]
    assert run_main([*base, "--out", str(out), "--stop-after", "1"], capsys)[0] == 0
    code, _, err = run_main(["train", "--resume", str(out), "--checkpoint-every", "0"], capsys)
    assert code == 0, err


# ---- a full disk -----------------------------------------------------------------------------


class _FullDisk:
    """A file whose writes fail with ENOSPC after half their bytes have gone out."""

    def __init__(self, f):
        self.f = f

    def __getattr__(self, attr):
        return getattr(self.f, attr)

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        return self.f.__exit__(*exc)

    def write(self, data):
        self.f.write(data[: len(data) // 2])
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))


def _refuse_writes_to(monkeypatch, name: str, after: int) -> None:
    """The temp files of ``cnnzoo.atomic.atomic_open`` for a file called ``name`` refuse their
    writes (``_FullDisk``) from the ``after + 1``-th on, as a filesystem that has filled up."""
    real_mkstemp, real_fdopen = tempfile.mkstemp, os.fdopen
    opened: list[str] = []
    refused: set[int] = set()

    def mkstemp(*args, **kwargs):
        fd, tmp = real_mkstemp(*args, **kwargs)
        if Path(tmp).name.startswith(f".{name}."):
            opened.append(tmp)
            if len(opened) > after:
                refused.add(fd)
        return fd, tmp

    def fdopen(fd, *args, **kwargs):
        f = real_fdopen(fd, *args, **kwargs)
        return _FullDisk(f) if fd in refused else f

    monkeypatch.setattr(cnnzoo.atomic.tempfile, "mkstemp", mkstemp)
    monkeypatch.setattr(cnnzoo.atomic.os, "fdopen", fdopen)


@pytest.mark.parametrize("name", ["last.pt", "metrics.jsonl"])
def test_a_full_disk_keeps_the_previous_checkpoint(tmp_path, monkeypatch, capsys, name):
    out = tmp_path / "run"
    _refuse_writes_to(monkeypatch, name, after=1)  # epoch 1's save works, epoch 2's fails
    code, _, err = run_main([*TINY_TRAIN, "--out", str(out)], capsys)
    assert code == 1
    line = assert_one_error_line(err)
    assert line.startswith(f"error: cannot write {out / name}: No space left on device (")
    assert "MiB free on its filesystem" in line and f"{name} is left as it was" in line
    assert not _temp_files(out)
    monkeypatch.undo()
    assert load_checkpoint(out / "last.pt")["epoch"] == 1  # the previous checkpoint still loads
    assert [r["epoch"] for r in _rows(out)] == ([1] if name == "metrics.jsonl" else [1, 2])
    assert run_main(["train", "--resume", str(out)], capsys)[0] == 0  # the run goes on from it
    assert load_checkpoint(out / "last.pt")["epoch"] == 3


def test_a_full_disk_while_recording_gradflow_is_one_line(tmp_path, monkeypatch, capsys):
    out = tmp_path / "run"
    log = out / "gradflow.jsonl"
    _refuse_writes_to(monkeypatch, log.name, after=2)  # epoch 0's and 1's rows fit, 2's does not
    code, _, err = run_main([*TINY_TRAIN, "--record-gradflow", "--out", str(out)], capsys)
    assert code == 1
    line = assert_one_error_line(err)
    assert line.startswith(f"error: cannot write {log}: No space left on device (")
    assert not _temp_files(out)
    monkeypatch.undo()
    assert [json.loads(r)["epoch"] for r in log.read_text().splitlines()] == [0, 1]
    assert load_checkpoint(out / "last.pt")["epoch"] == 1
    assert run_main(["train", "--resume", str(out)], capsys)[0] == 0
    assert [json.loads(r)["epoch"] for r in log.read_text().splitlines()] == [0, 1, 2, 3]


@pytest.mark.slow
def test_a_real_full_filesystem(tmp_path):
    """The same on a real 4 MiB tmpfs (root only; skipped where mounting is not allowed): epoch
    1's files fit, epoch 2's checkpoint does not."""
    mnt = tmp_path / "small"
    mnt.mkdir()
    mount = ["mount", "-t", "tmpfs", "-o", "size=4m", "tmpfs", str(mnt)]
    if os.geteuid() != 0 or subprocess.run(mount, capture_output=True).returncode != 0:
        pytest.skip("mounting a tmpfs needs root")
    try:
        out = mnt / "run"
        done = run_cli([*TINY_TRAIN, "--out", str(out)])
        assert done.returncode == 1
        line = assert_one_error_line(done.stderr)
        assert "No space left on device" in line and "MiB free on its filesystem" in line
        assert not _temp_files(out)
        assert load_checkpoint(out / "last.pt")["epoch"] == 1
    finally:
        subprocess.run(["umount", str(mnt)], check=True)
