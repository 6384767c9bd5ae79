"""Hostile CIFAR inputs shared by the fuzz targets and their regression tests: a tiny CIFAR-10
spec (so an unharmed input decodes to a real Dataset), valid batch files, pickles that would run
code, and an archive builder."""

from __future__ import annotations

import codecs
import dataclasses
import gzip
import io
import pickle
import tarfile
import warnings
from pathlib import Path

import numpy as np

from cnnzoo.data import cifar
from fuzzkit import Blob

N = 4  # images per batch: a tiny spec, so that an unharmed input decodes to a real Dataset
TINY = dataclasses.replace(cifar.DATASETS["cifar10"], train_images=5 * N, test_images=N)
BATCHES = (*TINY.train_files, TINY.test_file)
FILES = (*BATCHES, TINY.meta_file)


def valid_file(name: str, seed: int) -> dict:
    """One file of a valid TINY archive: a batch of N images, or the class names."""
    if name == TINY.meta_file:
        return {"label_names": [f"class{i}" for i in range(10)], "num_vis": 3072}
    rng = np.random.default_rng(seed)
    return {
        "batch_label": f"batch {seed}",
        "labels": rng.integers(0, 10, N).tolist(),
        "data": rng.integers(0, 256, (N, 3072), dtype=np.uint8),
        "filenames": [f"img{i}.png" for i in range(N)],
    }


class Reduce:
    """Unpickling this calls ``fn(*args)``: how a pickle runs code."""

    def __init__(self, fn, *args) -> None:
        self.fn, self.args = fn, args

    def __reduce__(self):
        return self.fn, self.args


def evil_pickles(marker: Path) -> list[bytes]:
    """Pickles that write ``marker`` (outside the target folder), run code, import arbitrary
    classes or ask for huge allocations when an unrestricted unpickler reads them."""
    from numpy.testing._private.utils import runstring

    m = str(marker)
    code = f"open({m!r}, 'w').write('pwned')"
    reconstruct = np.zeros(1).__reduce__()[0]  # numpy's own array constructor
    out = []
    for proto in (0, 2, 4, 5):
        out.append(pickle.dumps(Reduce(open, m, "w"), proto))
        out.append(pickle.dumps({"data": Reduce(exec, code), "labels": [0]}, proto))
    with warnings.catch_warnings():  # np.matrix's own PendingDeprecationWarning
        warnings.simplefilter("ignore", PendingDeprecationWarning)
        matrix = np.asmatrix(np.zeros((N, 3072), np.uint8))
    out += [
        pickle.dumps(Reduce(eval, code), 2),
        pickle.dumps(Reduce(np.save, m, np.zeros(1)), 2),
        pickle.dumps(Reduce(runstring, code, {}), 2),
        pickle.dumps(Reduce(pickle.loads, pickle.dumps(Reduce(exec, code))), 2),
        pickle.dumps(Reduce(codecs.decode, gzip.compress(b"\0" * 10_000), "zlib"), 2),
        pickle.dumps(Reduce(codecs.encode, "x", "rot13"), 2),
        pickle.dumps(Reduce(reconstruct, np.ndarray, (1 << 40,), b"b"), 2),  # a 1 TB array
        pickle.dumps(Reduce(reconstruct, np.memmap, (1,), b"b"), 2),
        pickle.dumps({"data": np.zeros((N, 3072), np.uint8).view(np.recarray)}, 2),
        pickle.dumps({"data": matrix}, 2),
        pickle.dumps({"data": Reduce(Reduce, print, 1), "labels": [0]}, 2),  # a test class
        b"cos\nsystem\n(S'true'\ntR.",  # the classic protocol-0 payload (a harmless command)
    ]
    return [Blob(b) for b in out]


def cifar_tar(blobs: dict[str, bytes], prefix: str = "cifar-10-batches-py/") -> bytes:
    """An uncompressed tar holding ``blobs`` as ``prefix + name``."""
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=tarfile.GNU_FORMAT) as tar:
        for name, blob in blobs.items():
            info = tarfile.TarInfo(prefix + name)
            info.size = len(blob)
            tar.addfile(info, io.BytesIO(blob))
    return buf.getvalue()


def valid_blobs() -> dict[str, bytes]:
    """The pickled batch and meta files of a valid TINY archive."""
    return {f: pickle.dumps(valid_file(f, i), 2) for i, f in enumerate(FILES)}


def patch_header(tar: bytearray, offset: int, field: slice, value: bytes) -> None:
    """Rewrite one field of the 512-byte tar header at ``offset`` and fix its checksum, so the
    change reaches the reader instead of failing the checksum."""
    header = tar[offset : offset + 512]
    header[field] = value
    header[148:156] = b" " * 8
    header[148:156] = b"%06o\x00 " % sum(header)
    tar[offset : offset + 512] = header


def size_field(size: int) -> bytes:
    """A tar header's size field: octal, or base-256 for sizes octal cannot hold."""
    return b"%011o\x00" % size if size < 8**11 else b"\x80" + size.to_bytes(11, "big")
