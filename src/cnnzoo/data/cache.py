"""The decoded-data cache: uint8 images and labels decoded once, verified on every read.

One safetensors file per decoded source, ``<cache_dir>/<name>-<key digest>.safetensors``. Its
header lists each array's name, dtype, shape and byte range; its metadata holds this module's
format name and version, the caller's key (which source, which size, ...), the caller's metadata
as JSON (class names, ...) and a blake2b checksum over that metadata and every array's name,
dtype, shape and bytes. A file that fails any check (truncated, garbage, a flipped byte, another
version or key) gets one warning line naming it and is rebuilt; it never stops a run.

Writes go through a temp file and a rename (``atomic_open``), under an exclusive ``flock`` on a
lock file next to the cache, so that processes starting together (torchrun ranks, runs launched
side by side) decode once: the first builds, the others wait for the lock and read its file.
"""

from __future__ import annotations

import hashlib
import json
import os
import sys
from collections.abc import Callable
from pathlib import Path
from typing import IO, Any

import torch
from safetensors import SafetensorError, safe_open
from safetensors.torch import save as safetensors_bytes
from torch import Tensor

from cnnzoo.atomic import atomic_open
from cnnzoo.errors import one_line

try:  # POSIX; elsewhere no lock: the rename alone still leaves one whole file, built twice
    import fcntl
except ImportError:  # pragma: no cover - Windows
    fcntl = None  # type: ignore[assignment]

FORMAT = "cnnzoo-decoded"
VERSION = 2  # 1 was the unverified .npz cache

Arrays = dict[str, Tensor]
Builder = Callable[[], tuple[Arrays, dict[str, Any]]]


class CacheError(Exception):
    """Why a cache file cannot be used, in a few words."""


def cache_dir() -> Path:
    env = os.environ.get("CNNZOO_CACHE")
    return Path(env) if env else Path.home() / ".cache" / "cnnzoo" / "decoded"


def cache_path(name: str, key: str) -> Path:
    """The file for ``key`` (any string naming the source and how it was decoded)."""
    digest = hashlib.blake2b(f"{VERSION}|{key}".encode(), digest_size=8).hexdigest()
    return cache_dir() / f"{name}-{digest}.safetensors"


def load_or_build(
    name: str, key: str, build: Builder, quiet: bool = False
) -> tuple[Arrays, dict[str, Any]]:
    """The arrays and metadata cached under (``name``, ``key``); on a miss or a damaged file,
    ``build()`` them and cache the result. ``build`` runs at most once per process, and once
    across processes that ask for the same key at the same time. The cache is an optimisation:
    a folder that cannot be written costs a warning, not the run."""
    path = cache_path(name, key)
    seen = _signature(path)
    if seen is not None and (hit := _read_or_warn(path, key, quiet)) is not None:
        return hit
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        lock = open(path.with_suffix(".lock"), "a+b")  # noqa: SIM115 - closed by the with below
    except OSError as err:
        _warn(f"could not cache decoded data in {path.parent}: {err}", quiet)
        return build()
    with lock:
        _flock(lock)  # released when the file closes, or when the process dies
        # another process may have written the file while this one waited for the lock
        now = _signature(path)
        if now is not None and now != seen and (hit := _read_or_warn(path, key, quiet)):
            return hit
        arrays, meta = build()
        try:
            write(path, key, arrays, meta)
        except OSError as err:
            _warn(f"could not cache decoded data in {path.parent}: {err}", quiet)
    return arrays, meta


def read(path: Path, key: str) -> tuple[Arrays, dict[str, Any]]:
    """The arrays and metadata of a cache file written for ``key``; ``CacheError`` if it is
    anything else."""
    try:
        with safe_open(path, framework="pt") as f:
            header = f.metadata() or {}
            # copied out of the file's memory map: a file truncated in place while a run holds
            # the arrays must not crash that run (SIGBUS); CIFAR-10 copies in about 0.15 s
            arrays = {k: f.get_tensor(k).clone() for k in f.keys()}  # noqa: SIM118 - not a dict
    except (SafetensorError, OSError, ValueError, RuntimeError) as err:
        raise CacheError(f"unreadable: {one_line(err)}") from None
    if header.get("format") != FORMAT or header.get("version") != str(VERSION):
        raise CacheError(f"not a version-{VERSION} {FORMAT} file")
    if header.get("key") != key:
        raise CacheError("written for another source")
    meta_json = header.get("meta", "")
    if header.get("checksum") != _checksum(arrays, meta_json):
        raise CacheError("checksum mismatch")
    return arrays, json.loads(meta_json)


def write(path: Path, key: str, arrays: Arrays, meta: dict[str, Any]) -> None:
    """Write a cache file atomically: readers see the old file or the whole new one."""
    arrays = {k: v.contiguous() for k, v in arrays.items()}
    meta_json = json.dumps(meta, sort_keys=True)
    header = {
        "format": FORMAT,
        "version": str(VERSION),
        "key": key,
        "meta": meta_json,
        "checksum": _checksum(arrays, meta_json),
    }
    blob = safetensors_bytes(arrays, metadata=header)
    with atomic_open(path, "wb") as f:
        f.write(blob)


def _checksum(arrays: Arrays, meta_json: str) -> str:
    # blake2b runs at over 1 GB/s: CIFAR-10's 185 MB add about 0.15 s to a read
    h = hashlib.blake2b(meta_json.encode(), digest_size=32)
    for name in sorted(arrays):
        t = arrays[name].contiguous()
        h.update(f"|{name}|{t.dtype}|{tuple(t.shape)}|".encode())
        h.update(t.reshape(-1).view(torch.uint8).numpy().data)
    return h.hexdigest()


def _read_or_warn(path: Path, key: str, quiet: bool) -> tuple[Arrays, dict[str, Any]] | None:
    try:
        return read(path, key)
    except CacheError as err:
        _warn(f"decoded-data cache {path} is damaged ({err}); decoding again", quiet)
        return None


def _signature(path: Path) -> tuple[int, int, int] | None:
    """Which file is at ``path`` (a rename replaces the inode), or None when there is none."""
    try:
        st = path.stat()
    except OSError:
        return None
    return st.st_ino, st.st_size, st.st_mtime_ns


def _flock(f: IO) -> None:
    if fcntl is not None:
        fcntl.flock(f.fileno(), fcntl.LOCK_EX)


def _warn(message: str, quiet: bool) -> None:
    if not quiet:
        print(f"warning: {message}", file=sys.stderr)
