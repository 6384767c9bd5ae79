"""Atomic writes keep the old file on failure and give new files the usual permissions."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from cnnzoo.atomic import atomic_open, atomic_path


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
