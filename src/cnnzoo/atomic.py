"""Atomic file writes: nothing the user had is half-overwritten by a crash or an error."""

from __future__ import annotations

import contextlib
import os
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import IO

from cnnzoo.errors import UserError


def current_umask() -> int:
    """The process's umask (reading it means setting it: set it straight back)."""
    mask = os.umask(0)
    os.umask(mask)
    return mask


def require_writable(folder: str | os.PathLike, create: bool = False) -> None:
    """``UserError`` (bad input, exit code 2) when ``folder`` cannot take a new file, checked
    before any work: a read-only or missing folder is the user's to fix (``create``: make it
    first, with its parents). A write that fails later (a full disk) is a ``WriteFailed``
    instead (exit code 1)."""
    try:
        if create:
            Path(folder).mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=folder, prefix=".write-test.", suffix=".tmp")
    except OSError as err:
        raise UserError(f"cannot write to {folder}: {err.strerror}") from None
    os.close(fd)
    os.unlink(tmp)


@contextlib.contextmanager
def _temp_beside(path: Path) -> Iterator[tuple[int, Path]]:
    """(descriptor, name) of a new temp file in ``path``'s folder (so the rename stays on one
    filesystem). A clean exit gives it the usual permissions (0666 less the umask, not
    ``mkstemp``'s private 0600) and renames it onto ``path``; an exception removes it."""
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        yield fd, Path(tmp)
        os.chmod(tmp, 0o666 & ~current_umask())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


@contextlib.contextmanager
def atomic_open(path: str | os.PathLike, mode: str = "wb") -> Iterator[IO]:
    """Write ``path`` through a temp file in the same folder, then fsync and rename it into place.

    A crash or an exception at any moment leaves either the old file or the new one, never a torn
    one; on an exception the temp file is removed and ``path`` is untouched.
    """
    with _temp_beside(Path(path)) as (fd, _), os.fdopen(fd, mode) as f:
        yield f
        f.flush()
        os.fsync(f.fileno())


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike) -> Iterator[Path]:
    """``atomic_open`` for writers that want a file name (``torch.onnx.export``, ``onnx.save``):
    yields the temp file's path, to be written (and rewritten) by name; a clean exit fsyncs it
    and renames it onto ``path``, an exception removes it and leaves ``path`` as it was."""
    with _temp_beside(Path(path)) as (fd, tmp):
        os.close(fd)
        yield tmp
        with open(tmp, "rb") as f:
            os.fsync(f.fileno())
