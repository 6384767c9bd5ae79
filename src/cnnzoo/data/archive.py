"""Safe reading of tar archives and checked downloads."""

from __future__ import annotations

import contextlib
import hashlib
import lzma
import os
import posixpath
import sys
import tarfile
import urllib.request
import zlib
from collections.abc import Iterator
from pathlib import Path

from cnnzoo.atomic import atomic_open, require_writable
from cnnzoo.errors import UserError, WriteFailed, one_line


def md5sum(path: Path, chunk: int = 1 << 20) -> str:
    h = hashlib.md5(usedforsecurity=False)
    with open(path, "rb") as f:
        while block := f.read(chunk):
            h.update(block)
    return h.hexdigest()


# CIFAR's largest file (CIFAR-100's ``train``) is 155 MB. A larger member is refused before it
# is read: a few compressed kilobytes can declare gigabytes (a decompression bomb).
MAX_MEMBER_BYTES = 256 << 20


# A CIFAR archive holds 8 or 5 files and a folder. tarfile keeps every header it has read, so
# millions of empty members (a few bytes each, compressed) would be a memory and time bomb.
MAX_MEMBERS = 10_000

# pax and GNU long-name headers carry a few hundred bytes of names and attributes.
MAX_HEADER_BYTES = 1 << 20
_EXTENDED = (
    tarfile.XHDTYPE,
    tarfile.XGLTYPE,
    tarfile.SOLARIS_XHDTYPE,
    tarfile.GNUTYPE_LONGNAME,
    tarfile.GNUTYPE_LONGLINK,
)


class _BoundedTarInfo(tarfile.TarInfo):
    """A TarInfo whose size is checked as soon as its header is parsed. tarfile reads the data
    of a pax or GNU long-name header into memory whole, inside ``tarfile.open``, before any
    member is returned: a forged size of 2**60 would be a MemoryError there, or gigabytes.
    (``_proc_member`` is the hook tarfile calls for every header; ``tarinfo=`` is public.)"""

    def _proc_member(self, tarfile: tarfile.TarFile) -> tarfile.TarInfo:
        _check_size(self, MAX_HEADER_BYTES if self.type in _EXTENDED else MAX_MEMBER_BYTES)
        return super()._proc_member(tarfile)


def _check_size(member: tarfile.TarInfo, limit: int) -> None:
    if member.size > limit:
        raise UserError(
            f"archive member {member.name!r} declares {member.size} bytes, more than any CIFAR "
            f"file or tar header ({limit} bytes at most)"
        )


def _checked_members(tar: tarfile.TarFile) -> list[tarfile.TarInfo]:
    """Every member, header by header to the end (truncation shows up here), each checked
    (``check_member``) as it is read, so a bad member is refused before anything after its
    header is decompressed; more than ``MAX_MEMBERS`` is refused as it is reached."""
    members = []
    for m in tar:
        if len(members) >= MAX_MEMBERS:
            raise UserError(
                f"archive {tar.name} holds more than {MAX_MEMBERS} members; "
                "a CIFAR archive holds a few"
            )
        check_member(m)
        members.append(m)
    return members


def check_member(member: tarfile.TarInfo) -> None:
    """Refuse absolute paths, ``..`` components, links or special files, and members larger
    than ``MAX_MEMBER_BYTES``.

    CIFAR archives hold only regular files and folders, so anything else is refused outright.
    """
    name = member.name
    norm = posixpath.normpath(name)
    if name.startswith(("/", "\\")) or os.path.isabs(name) or (len(name) > 1 and name[1] == ":"):
        raise UserError(f"unsafe archive member {name!r}: absolute path")
    if norm == ".." or norm.startswith("../") or "/../" in f"/{name}/":
        raise UserError(f"unsafe archive member {name!r}: path leaves the target folder")
    if not (member.isfile() or member.isdir()):
        raise UserError(f"unsafe archive member {name!r}: links and special files are refused")
    _check_size(member, MAX_MEMBER_BYTES)  # again: a sparse member's size is known only now


def read_tar_members(path: Path, wanted: set[str]) -> dict[str, bytes]:
    """Return the bytes of members whose base name is in ``wanted``; check every member first.

    Nothing is written to disk, so extraction cannot escape any folder; members are still checked
    so that a crafted archive is reported rather than half-read.
    """
    out: dict[str, bytes] = {}
    try:
        with tarfile.open(path, "r:*", tarinfo=_BoundedTarInfo) as tar:
            for m in _checked_members(tar):
                base = posixpath.basename(m.name)
                if m.isfile() and base in wanted:
                    f = tar.extractfile(m)
                    assert f is not None
                    out[base] = f.read()
    except _READ_ERRORS as err:
        raise UserError(
            f"cannot read archive {path}: {_one_line(err)} (truncated or corrupt?)"
        ) from None
    return out


# How a damaged archive fails: tarfile's own errors, truncation, and the decompressors' errors
# that tarfile passes through (lzma and zlib raise their own types, not OSError).
_READ_ERRORS = (tarfile.TarError, EOFError, OSError, ValueError, lzma.LZMAError, zlib.error)


def _one_line(err: BaseException) -> str:
    """tarfile's "could not be opened" error lists every method tried, one per line."""
    if isinstance(err, tarfile.ReadError) and "opened successfully" in str(err):
        return "not a tar archive (plain, gzip, bz2 or xz)"
    return one_line(err)


def safe_extract(path: Path, dest: Path) -> None:
    """Extract a tar archive into ``dest`` after checking every member (see ``check_member``)."""
    dest.mkdir(parents=True, exist_ok=True)
    try:
        with tarfile.open(path, "r:*", tarinfo=_BoundedTarInfo) as tar:
            members = _checked_members(tar)
            tar.extractall(dest, members=members, filter="data")
    except _READ_ERRORS as err:
        raise UserError(f"cannot extract archive {path}: {_one_line(err)}") from None


def download(url: str, dest: Path, md5: str, quiet: bool = False) -> None:
    """Download ``url`` to ``dest`` with a progress bar; keep it only if its md5 is ``md5``
    (written through a temp file, so a failed or interrupted download leaves nothing behind).
    A network failure is a ``UserError`` (maybe offline); a local one writing ``dest`` (a full
    disk, a read-only folder) a ``WriteFailed``."""
    from tqdm.auto import tqdm  # a widget in Jupyter, the terminal's bar elsewhere

    digest = hashlib.md5(usedforsecurity=False)
    # a data folder that takes no file is the user's to fix: said before the download
    require_writable(dest.parent, create=True)
    try:
        with atomic_open(dest, "wb") as out:
            with _network(url, dest):
                resp = urllib.request.urlopen(url, timeout=30)
            with resp:
                total = int(resp.headers.get("Content-Length") or 0) or None
                bar = tqdm(
                    total=total,
                    unit="B",
                    unit_scale=True,
                    desc=dest.name,
                    disable=quiet,
                    file=sys.stderr,
                )
                while True:
                    with _network(url, dest):
                        block = resp.read(1 << 20)
                    if not block:
                        break
                    out.write(block)
                    digest.update(block)
                    bar.update(len(block))
                bar.close()
            if digest.hexdigest() != md5:  # raising here discards the temp file
                raise UserError(
                    f"downloaded {url} has md5 {digest.hexdigest()}, expected {md5}; not kept"
                )
    except OSError as err:  # the network's errors are UserErrors by now: this one is local
        raise WriteFailed(f"cannot write {dest}: {err.strerror or err}; nothing kept") from None


@contextlib.contextmanager
def _network(url: str, dest: Path) -> Iterator[None]:
    """Around the calls that talk to the server (opening, each read): their ``OSError`` (a
    ``URLError``, a reset connection, a timeout) is the network's, not the local disk's."""
    try:
        yield
    except OSError as err:
        raise UserError(
            f"could not download {url} ({err}); you may be offline — put the archive at {dest} "
            "or pass --data PATH"
        ) from None
