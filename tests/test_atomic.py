"""Atomic writes keep the old file on failure and give new files the usual permissions."""

from __future__ import annotations

import errno
import os
from pathlib import Path

import pytest

from cnnzoo.atomic import atomic_open, atomic_path
from cnnzoo.errors import WriteFailed
from helpers import assert_one_error_line, make_checkpoint, run_main


def test_replaces_with_umask_permissions(tmp_path: Path) -> None:
    target = tmp_path / "f.txt"
    old = os.umask(0o022)
    try:
        with atomic_open(target, "w") as f:
            f.write("new")
    finally:
        os.umask(old)
    assert target.read_text() == "new"
    assert target.stat().st_mode & 0o777 == 0o644
    assert [p.name for p in tmp_path.iterdir()] == ["f.txt"]


def test_an_error_leaves_the_old_file(tmp_path: Path) -> None:
    target = tmp_path / "f.txt"
    target.write_text("old")
    with pytest.raises(RuntimeError), atomic_open(target, "w") as f:
        f.write("half")
        raise RuntimeError("crash mid-write")
    assert target.read_text() == "old"
    assert [p.name for p in tmp_path.iterdir()] == ["f.txt"]


def test_atomic_path_is_written_by_name_then_renamed(tmp_path: Path) -> None:
    target = tmp_path / "m.onnx"
    target.write_text("old")
    old = os.umask(0o027)
    try:
        with atomic_path(target) as tmp:
            assert tmp.parent == tmp_path and tmp != target
            tmp.write_text("first")  # a writer may write the file twice (onnx.save after export)
            tmp.write_text("second")
            assert target.read_text() == "old"  # untouched until the end
    finally:
        os.umask(old)
    assert target.read_text() == "second"
    assert target.stat().st_mode & 0o777 == 0o640
    assert [p.name for p in tmp_path.iterdir()] == ["m.onnx"]


def test_atomic_path_error_removes_the_temp_file(tmp_path: Path) -> None:
    target = tmp_path / "m.onnx"
    target.write_text("old")
    with pytest.raises(RuntimeError), atomic_path(target) as tmp:
        tmp.write_text("half")
        raise RuntimeError("check failed")
    assert target.read_text() == "old"
    assert [p.name for p in tmp_path.iterdir()] == ["m.onnx"]


def test_eval_writes_its_table_atomically_and_reports_failures(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture
) -> None:
    """``cnnzoo eval --out``: confusion.csv was written in place (a crash left half a table)
    and a failed write was a traceback. Now: an --out that is a file is refused before the
    evaluation (exit 2); a failed write of the table or the figure is one line, exit 1, and
    the previous table is kept."""
    ckpt = make_checkpoint(tmp_path / "best.pt")
    argv = ["eval", str(ckpt), "--device", "cpu", "--batch-size", "500", "--out"]
    a_file = tmp_path / "afile"
    a_file.write_text("mine")
    code, _, err = run_main([*argv, str(a_file)], capsys)
    assert code == 2 and "is a file" in assert_one_error_line(err)
    assert a_file.read_text() == "mine"

    out = tmp_path / "out"
    table = out / "eval" / "confusion.csv"
    table.parent.mkdir(parents=True)
    table.write_text("the previous table")

    def full_disk(fd: int) -> None:  # the temp file's fsync, before its rename
        raise OSError(errno.ENOSPC, "No space left on device")

    with monkeypatch.context() as m:
        m.setattr(os, "fsync", full_disk)
        code, _, err = run_main([*argv, str(out)], capsys)
    assert code == 1
    assert f"cannot write {table}: No space left on device" in assert_one_error_line(err)
    assert table.read_text() == "the previous table"
    assert sorted(p.name for p in table.parent.iterdir()) == ["confusion.csv"]

    def refused(*args, **kwargs):
        raise PermissionError(errno.EACCES, "Permission denied")

    with monkeypatch.context() as m:
        m.setattr("matplotlib.figure.Figure.savefig", refused)
        code, _, err = run_main([*argv, str(out)], capsys)
    assert code == 1
    line = assert_one_error_line(err)
    assert f"cannot write {out / 'eval' / 'confusion.png'}: Permission denied" in line
    rows = table.read_text().splitlines()
    assert rows[0].startswith("true\\predicted,") and len(rows) == 11  # the new table, whole

    # a folder that takes no file: bad input (exit 2), said before anything is evaluated
    evaluated = []
    with monkeypatch.context() as m:
        m.setattr("cnnzoo.atomic.tempfile.mkstemp", refused)
        m.setattr("cnnzoo.commands.eval.evaluate_checkpoint", lambda *a: evaluated.append(a))
        code, _, err = run_main([*argv, str(out)], capsys)
    assert code == 2 and not evaluated
    assert assert_one_error_line(err) == f"error: cannot write to {out / 'eval'}: Permission denied"


def test_a_figure_that_fails_half_written_keeps_the_old_one(tmp_path):
    """save_figure writes through a temp file: a savefig that dies mid-file is a WriteFailed
    naming the file, and leaves the previous PNG byte for byte, no temp file, the figure
    closed."""
    from cnnzoo.analysis.plots import pyplot, save_figure

    plt = pyplot()
    old = tmp_path / "fig.png"
    old.write_bytes(b"the previous figure")
    fig, _ = plt.subplots()

    def dies_half_way(f, **kwargs):
        f.write(b"\x89PNG half")
        raise OSError(28, "No space left on device")

    fig.savefig = dies_half_way
    with pytest.raises(WriteFailed, match=f"cannot write {old}: No space left on device"):
        save_figure(fig, old)
    assert old.read_bytes() == b"the previous figure"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["fig.png"]
    assert not plt.fignum_exists(fig.number)
    fig2, ax = plt.subplots()
    ax.plot([0, 1])
    assert save_figure(fig2, old) == [old, tmp_path / "fig.svg"]
    assert old.read_bytes().startswith(b"\x89PNG")
    assert (tmp_path / "fig.svg").read_text().lstrip().startswith("<?xml")
