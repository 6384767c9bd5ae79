"""Faults: SIGKILL at any moment then --resume, bad data, bad options, divergence.

Every user mistake gives exit code 2 and ONE line on stderr starting ``error:``, and leaves
what the user had untouched.
"""

from __future__ import annotations

import hashlib
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from cnnzoo.data.archive import download
from cnnzoo.errors import UserError
from cnnzoo.train import load_checkpoint
from helpers import (
    TINY_TRAIN,
    assert_one_error_line,
    cnnzoo_env,
    make_checkpoint,
    make_fake_cifar_tar,
    run_main,
)


def _snapshot(folder: Path) -> dict[str, str]:
    return {
        str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(folder.rglob("*"))
        if p.is_file()
    }


# ---- bad data --------------------------------------------------------------------------------


def test_truncated_archive(tmp_path, capsys):
    whole = make_fake_cifar_tar(tmp_path / "whole.tar.gz").read_bytes()
    cut = tmp_path / "cifar-10-python.tar.gz"
    cut.write_bytes(whole[: len(whole) // 2])
    code, _, err = run_main([*TINY_TRAIN, "--data", str(cut), "--out", str(tmp_path / "r")], capsys)
    assert code == 2
    line = assert_one_error_line(err)
    assert "cannot read archive" in line and "truncated" in line
    assert cut.read_bytes() == whole[: len(whole) // 2]


def test_not_an_archive(tmp_path, capsys):
    bad = tmp_path / "cifar-10-python.tar.gz"
    bad.write_bytes(b"this is a text file, not an archive\n" * 50)
    code, _, err = run_main([*TINY_TRAIN, "--data", str(bad), "--out", str(tmp_path / "r")], capsys)
    assert code == 2
    assert "cannot read archive" in assert_one_error_line(err)


def test_wrong_layout_archive(tmp_path, capsys):
    """The right member names but 10 images per batch: refused by validation. The md5 differs
    from the official one, which is only a warning (rebuilt copies are allowed)."""
    tar = make_fake_cifar_tar(tmp_path / "cifar-10-python.tar.gz")
    code, _, err = run_main([*TINY_TRAIN, "--data", str(tar), "--out", str(tmp_path / "r")], capsys)
    assert code == 2
    assert "expected (50000, 32, 32, 3)" in assert_one_error_line(err)
    # without --quiet the md5 mismatch is a warning line before the error, not an error
    argv = [a for a in TINY_TRAIN if a != "--quiet"]
    code, _, err = run_main([*argv, "--data", str(tar), "--out", str(tmp_path / "r")], capsys)
    lines = err.strip().splitlines()
    assert code == 2 and len(lines) == 2
    assert lines[0].startswith("warning:") and "md5" in lines[0]
    assert lines[1].startswith("error:")


def test_download_with_wrong_md5(tmp_path):
    src = tmp_path / "served.tar.gz"
    src.write_bytes(b"some bytes that are not the archive")
    dest = tmp_path / "cache" / "cifar-10-python.tar.gz"
    with pytest.raises(UserError, match="md5"):
        download(src.as_uri(), dest, md5="0" * 32, quiet=True)
    assert not dest.exists()
    assert list(dest.parent.iterdir()) == []  # no partial file left behind


def test_download_failure_is_one_clear_error(tmp_path):
    dest = tmp_path / "cifar-10-python.tar.gz"
    with pytest.raises(UserError, match="could not download"):
        download((tmp_path / "missing.tar.gz").as_uri(), dest, md5="0" * 32, quiet=True)
    assert not dest.exists()


# ---- bad options and folders -----------------------------------------------------------------


@pytest.mark.parametrize(
    ("extra", "needle"),
    [
        (["--lr", "-1"], "--lr"),
        (["--epochs", "0"], "--epochs"),
        (["--batch-size", "1000"], "larger than the training set"),
        (["--epochs", "abc"], "invalid int"),
        (["--val", "5000"], "--val"),
    ],
)
def test_bad_options(tmp_path, capsys, extra, needle):
    out = tmp_path / "r"
    code, _, err = run_main([*TINY_TRAIN, "--out", str(out), *extra], capsys)
    assert code == 2
    assert needle in assert_one_error_line(err)
    assert not (out.exists() and any(out.iterdir()))


def test_unknown_model(tmp_path, capsys):
    out = tmp_path / "r"
    argv = ["train", "resnet21", "--data", "synthetic", "--out", str(out)]
    code, _, err = run_main(argv, capsys)
    assert code == 2
    assert "resnet21" in assert_one_error_line(err)
    assert not out.exists()


@pytest.mark.parametrize(
    ("kwargs", "needle"),
    [('{"bogus": 1}', "takes no keyword argument(s) bogus"), ('{"shortcut": "Z"}', "shortcut")],
)
def test_bad_model_kwargs_fail_before_any_data_is_read(tmp_path, capsys, kwargs, needle):
    out = tmp_path / "r"
    missing = tmp_path / "no-such-archive.tar.gz"  # reading it would be a different error
    argv = ["train", "resnet20", "--data", str(missing), "--model-kwargs", kwargs]
    code, _, err = run_main([*argv, "--out", str(out)], capsys)
    assert code == 2
    line = assert_one_error_line(err)
    assert "--model-kwargs" in line and needle in line
    assert not out.exists()


def test_existing_run_folder_is_never_overwritten(tmp_path, capsys):
    out = tmp_path / "r"
    out.mkdir()
    make_checkpoint(out / "last.pt")
    (out / "notes.txt").write_text("mine")
    before = _snapshot(out)
    code, _, err = run_main([*TINY_TRAIN, "--out", str(out)], capsys)
    assert code == 2
    assert "--resume" in assert_one_error_line(err)
    assert _snapshot(out) == before


def test_run_killed_before_its_first_file_can_be_restarted(tmp_path, capsys):
    """A folder holding only the temp file of a save cut short is not a run to protect."""
    out = tmp_path / "r"
    out.mkdir()
    (out / ".config.json.abc123.tmp").write_text("{")
    code, _, err = run_main([*TINY_TRAIN, "--out", str(out), "--epochs", "1"], capsys)
    assert code == 0, err
    assert (out / "last.pt").is_file() and not list(out.glob(".*.tmp"))


def test_out_is_an_existing_file(tmp_path, capsys):
    out = tmp_path / "r"
    out.write_text("precious")
    code, _, err = run_main([*TINY_TRAIN, "--out", str(out)], capsys)
    assert code == 2
    assert_one_error_line(err)
    assert out.read_text() == "precious"


def test_output_folder_not_writable(tmp_path, capsys):
    blocker = tmp_path / "a-file"
    blocker.write_text("precious")
    code, _, err = run_main([*TINY_TRAIN, "--out", str(blocker / "run")], capsys)
    assert code == 2
    assert "cannot write to" in assert_one_error_line(err)
    assert blocker.read_text() == "precious"


@pytest.mark.skipif(
    not hasattr(os, "geteuid") or os.geteuid() == 0, reason="root ignores permissions"
)
def test_output_folder_read_only(tmp_path, capsys):
    parent = tmp_path / "ro"
    parent.mkdir()
    parent.chmod(0o500)
    try:
        code, _, err = run_main([*TINY_TRAIN, "--out", str(parent / "run")], capsys)
    finally:
        parent.chmod(0o700)
    assert code == 2
    assert "cannot write to" in assert_one_error_line(err)


def test_export_without_onnx(tmp_path, capsys, monkeypatch):
    ckpt = make_checkpoint(tmp_path / "best.pt")
    monkeypatch.setitem(sys.modules, "onnxruntime", None)  # as if not installed
    code, _, err = run_main(["export", str(ckpt), "-o", str(tmp_path / "m.onnx")], capsys)
    assert code == 2
    assert "pip install 'cnnzoo[onnx]'" in assert_one_error_line(err)
    assert not (tmp_path / "m.onnx").exists()


def test_resume_missing_or_corrupt_checkpoint(tmp_path, capsys):
    code, _, err = run_main(["train", "--resume", str(tmp_path / "nothing")], capsys)
    assert code == 2
    assert "no checkpoint" in assert_one_error_line(err)
    run = tmp_path / "r"
    run.mkdir()
    (run / "last.pt").write_bytes(b"PK\x03\x04 not really a zip")
    code, _, err = run_main(["train", "--resume", str(run)], capsys)
    assert code == 2
    assert "cannot read checkpoint" in assert_one_error_line(err)


# ---- divergence ------------------------------------------------------------------------------


def test_divergence_from_the_start(tmp_path, capsys):
    out = tmp_path / "r"
    code, _, err = run_main([*TINY_TRAIN, "--lr", "100", "--out", str(out)], capsys)
    assert code == 1
    assert "training diverged" in assert_one_error_line(err)
    assert not (out / "last.pt").exists()  # nothing good to keep: no checkpoint was written


def test_divergence_keeps_last_good_checkpoint(tmp_path, capsys):
    out = tmp_path / "r"
    argv = [*TINY_TRAIN, "--out", str(out)]
    argv[argv.index("--epochs") + 1] = "1"
    code, _, err = run_main(argv, capsys)
    assert code == 0, err
    # Continue the finished 1-epoch run as a 3-epoch run at --lr 100 (edited config): epoch 2
    # diverges.
    state = load_checkpoint(out / "last.pt")
    state["config"] = {**state["config"], "epochs": 3, "lr": 100.0}
    torch.save(state, out / "last.pt")
    before = _snapshot(out)
    code, _, err = run_main(["train", "--resume", str(out), "--quiet"], capsys)
    assert code == 1
    line = assert_one_error_line(err)
    assert "training diverged" in line and "last good checkpoint is kept" in line
    after = _snapshot(out)
    for name in ("last.pt", "best.pt", "metrics.jsonl"):
        assert after[name] == before[name], name
    assert load_checkpoint(out / "last.pt")["epoch"] == 1
    assert load_checkpoint(out)["epoch"] == 1


# ---- SIGKILL and resume ----------------------------------------------------------------------


def _start(out: Path, slow_save: float = 0.0, resume: bool = False) -> subprocess.Popen:
    args = (
        ["train", "--resume", str(out), "--quiet"] if resume else [*TINY_TRAIN, "--out", str(out)]
    )
    worker = [str(Path(__file__).with_name("slow_save_worker.py")), str(slow_save)]
    return subprocess.Popen(
        [sys.executable, *(worker if slow_save else ["-m", "cnnzoo"]), *args],
        env=cnnzoo_env(),
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
    )


def _wait_for(proc: subprocess.Popen, condition, what: str, timeout: float = 120) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        if proc.poll() is not None:
            raise AssertionError(f"the run ended before {what}: {proc.stderr.read()}")
        if time.monotonic() > deadline:
            proc.kill()
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.01)


def _kill(proc: subprocess.Popen) -> None:
    proc.send_signal(signal.SIGKILL)
    proc.wait(timeout=30)
    assert proc.returncode == -signal.SIGKILL


def _temp_files(out: Path) -> set[str]:
    """Temp files of checkpoint saves in progress (or cut short)."""
    return {p.name for p in out.glob(".*.pt.*.tmp")}


def _check_all_load(out: Path) -> None:
    for p in out.glob("*.pt"):
        ckpt = load_checkpoint(p)  # raises on a torn file
        assert ckpt["model_name"] == "resnet20"


@pytest.mark.slow
def test_sigkill_then_resume_equals_uninterrupted(tmp_path):
    ref_dir, out = tmp_path / "reference", tmp_path / "killed"
    reference = _start(ref_dir)  # runs alongside the interrupted sequence

    # 1. Killed during the very first checkpoint save (epoch 1): no checkpoint exists yet.
    p = _start(out, slow_save=1.0)
    _wait_for(p, lambda: _temp_files(out), "the first save")
    _kill(p)
    assert not (out / "last.pt").exists()
    _check_all_load(out)

    # 2. Resumed (starts over from config.json), killed during a save of epoch 2.
    seen = _temp_files(out)
    p = _start(out, slow_save=1.0, resume=True)
    _wait_for(p, lambda: (out / "last.pt").exists(), "epoch 1's last.pt")
    _wait_for(p, lambda: _temp_files(out) - seen, "a save in epoch 2")
    _kill(p)
    _check_all_load(out)
    assert load_checkpoint(out / "last.pt")["epoch"] == 1

    # 3. Resumed, killed right after the next last.pt lands (mid-epoch 3 or its bookkeeping).
    stamp = (out / "last.pt").stat().st_mtime_ns
    p = _start(out, resume=True)
    _wait_for(p, lambda: (out / "last.pt").stat().st_mtime_ns != stamp, "epoch 2's last.pt")
    _kill(p)
    _check_all_load(out)
    assert load_checkpoint(out / "last.pt")["epoch"] == 2

    # 4. Resumed to the end.
    p = _start(out, resume=True)
    assert p.wait(timeout=300) == 0, p.stderr.read()
    assert reference.wait(timeout=300) == 0, reference.stderr.read()
    _check_all_load(out)
    assert not list(out.glob(".*.tmp")), "stale temp files are cleaned up on resume"

    for name in ("last.pt", "best.pt"):
        got, want = load_checkpoint(out / name), load_checkpoint(ref_dir / name)
        assert got["epoch"] == want["epoch"]
        assert got["model"].keys() == want["model"].keys()
        for key, tensor in want["model"].items():
            assert torch.equal(got["model"][key], tensor), f"{name}: {key}"
    got_opt = load_checkpoint(out / "last.pt")["optimizer"]["state"]
    want_opt = load_checkpoint(ref_dir / "last.pt")["optimizer"]["state"]
    for idx, st in want_opt.items():
        assert torch.equal(got_opt[idx]["momentum_buffer"], st["momentum_buffer"])

    def losses(run: Path) -> list[float]:
        rows = [json.loads(ln) for ln in (run / "metrics.jsonl").read_text().splitlines()]
        return [r["train_loss"] for r in rows]

    assert losses(out) == losses(ref_dir) and len(losses(out)) == 3
    assert (out / "summary.json").is_file()
