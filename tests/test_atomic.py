"""Atomic writes keep the old file on failure and give new files the usual permissions."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from cnnzoo.atomic import atomic_open


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
