"""Regression tests for what the fuzzers (tests/test_fuzz.py) found. Each input here once ended
in a traceback, a hang, a warning on stderr or silently wrong data instead of a result or one
error line; each is now a one-line ``UserError`` (or, for valid data, a result)."""

from __future__ import annotations

import copyreg
import gzip
import io
import lzma
import os
import pickle
import struct
import tarfile
import warnings
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from cnnzoo.data import cifar, safe_pickle
from cnnzoo.errors import UserError
from cnnzoo.inference.predict import load_image
from fuzzkit import png_header, time_limit
from hostile import TINY, N, cifar_tar, evil_pickles, patch_header, size_field, valid_blobs


@pytest.fixture(autouse=True)
def _tiny(monkeypatch: pytest.MonkeyPatch) -> None:
    """CIFAR-10 with N images per batch, so that a valid archive is a few kilobytes."""
    monkeypatch.setitem(cifar.DATASETS, "cifar10", TINY)


def _load(tmp_path: Path, blobs: dict[str, bytes], name: str = "c.tar.gz"):
    path = tmp_path / name
    path.write_bytes(gzip.compress(cifar_tar(blobs)))
    return cifar.load_dataset("cifar10", path, quiet=True)


def _with(**files) -> dict[str, bytes]:
    """Valid blobs, some replaced by ``name=object`` (pickled) or ``name=bytes``."""
    blobs = valid_blobs()
    for name, obj in files.items():
        blobs[name] = obj if isinstance(obj, bytes) else pickle.dumps(obj, 2)
    return blobs


def test_valid_tiny_archive_reads(tmp_path):
    ds = _load(tmp_path, valid_blobs())
    assert ds.train_x.shape == (5 * N, 32, 32, 3) and ds.test_y.shape == (N,)
    assert ds.classes == [f"class{i}" for i in range(10)]


def test_python3_copy_keyed_by_bytes_reads(tmp_path):
    """Was KeyError: 'data' (a copy re-pickled by Python 3 keeps bytes keys)."""
    blobs = {}
    for name, blob in valid_blobs().items():
        d = pickle.loads(blob)
        blobs[name] = pickle.dumps({k.encode(): v for k, v in d.items()}, 5)
    ds = _load(tmp_path, blobs)
    assert ds.train_x.shape == (5 * N, 32, 32, 3) and len(ds.classes) == 10


def test_the_payloads_are_real(tmp_path):
    """An unrestricted unpickler runs them (so the refusals below mean something)."""
    marker = tmp_path / "PWNED"
    pickle.loads(evil_pickles(marker)[1])
    assert marker.read_text() == "pwned"


@pytest.mark.parametrize("index", range(len(evil_pickles(Path("m")))))
def test_pickles_that_run_code_or_import_classes_are_refused(tmp_path, index):
    """Was ``pickle.loads``: a batch file could run any code (it now resolves only numpy's
    array constructors)."""
    marker = tmp_path / "PWNED"
    blobs = _with(test_batch=evil_pickles(marker)[index])
    with pytest.raises(UserError) as err:
        _load(tmp_path, blobs)
    assert "\n" not in str(err.value)
    assert not marker.exists() and not marker.with_suffix(".npy").exists()


@pytest.mark.parametrize(
    ("test_batch", "message"),
    [
        ([1, 2, 3], "holds a list"),  # was TypeError
        ({"labels": [0] * N}, "'data' must be"),  # was KeyError
        ({"data": [[0] * 3072] * N, "labels": [0] * N}, "'data' must be"),  # lists: was accepted
        ({"data": np.full((N, 3072), 0.5), "labels": [0] * N}, "'data' must be"),  # was cast
        ({"data": np.full((N, 3072), 256), "labels": [0] * N}, "outside 0..255"),  # was wrapped
        ({"data": np.zeros((N, 3071), np.uint8), "labels": [0] * N}, "3072"),  # was ValueError
        ({"data": np.zeros((N, 3072), np.uint8), "labels": ["a"] * N}, "integer labels"),
        ({"data": np.zeros((N, 3072), np.uint8), "labels": [True] * N}, "integer labels"),
        ({"data": np.zeros((N, 3072), np.uint8), "labels": [2**70] * N}, "out of range"),
        ({"data": np.zeros((N, 3072), np.uint8)}, "integer labels"),  # was KeyError
    ],
)
def test_wrong_contents_are_one_error_line(tmp_path, test_batch, message):
    with pytest.raises(UserError, match=message):
        _load(tmp_path, _with(test_batch=test_batch))


@pytest.mark.parametrize(
    "meta",
    [
        {"label_names": "airplane"},  # was TypeError: len() of a 0-d array
        {"label_names": [1] * 10},
        {},  # was KeyError
        {"label_names": ["x" * 100_000] * 10},  # a name bomb: numpy pads every name to the longest
    ],
)
def test_bad_class_names_are_one_error_line(tmp_path, meta):
    with pytest.raises(UserError, match="class names"):
        _load(tmp_path, _with(**{"batches.meta": meta}))


def test_labels_must_match_images_in_each_batch(tmp_path):
    """Was silently accepted: one batch short of a label and the next one over shifted every
    label after it, while the totals still matched."""
    blobs = _with(
        data_batch_1={"data": np.zeros((N, 3072), np.uint8), "labels": [0] * (N - 1)},
        data_batch_2={"data": np.zeros((N, 3072), np.uint8), "labels": [0] * (N + 1)},
    )
    with pytest.raises(UserError, match=f"data_batch_1 .*{N} images but {N - 1} labels"):
        _load(tmp_path, blobs)


@pytest.mark.parametrize("kind", [b"x", b"L", b"0"])
def test_forged_member_size_is_refused_before_reading(tmp_path, kind):
    """A pax ('x') or GNU long-name ('L') header declaring 2**60 bytes was a MemoryError inside
    tarfile.open; a file member declaring 300 MiB is refused before its data is read."""
    data = bytearray(cifar_tar(valid_blobs()))
    patch_header(data, 0, slice(156, 157), kind)
    patch_header(data, 0, slice(124, 136), size_field(1 << 60 if kind != b"0" else 300 << 20))
    path = tmp_path / "c.tar"
    path.write_bytes(bytes(data))
    with pytest.raises(UserError, match="declares"):
        cifar.load_dataset("cifar10", path, quiet=True)


def test_corrupt_xz_stream_is_one_error_line(tmp_path):
    """Was lzma.LZMAError: tarfile passes the decompressor's own error type through."""
    blob = bytearray(lzma.compress(cifar_tar(valid_blobs())))
    blob[len(blob) // 2] ^= 0xFF
    path = tmp_path / "c.tar.xz"
    path.write_bytes(bytes(blob))
    with pytest.raises(UserError, match="cannot read archive"):
        cifar.load_dataset("cifar10", path, quiet=True)


def test_unreadable_file_in_folder_is_one_error_line(tmp_path, monkeypatch):
    """Was PermissionError (an OSError) from the extracted-folder reader."""
    folder = tmp_path / "cifar-10-batches-py"
    folder.mkdir()
    for name, blob in valid_blobs().items():
        (folder / name).write_bytes(blob)

    def denied(self):
        raise PermissionError(13, "Permission denied")

    monkeypatch.setattr(Path, "read_bytes", denied)  # root reads any file: simulate the denial
    with pytest.raises(UserError, match=r"cannot read .*Permission denied"):
        cifar.load_dataset("cifar10", folder, quiet=True)


# --- predict's image loader ------------------------------------------------------------------


def test_named_pipe_is_refused_not_waited_on(tmp_path):
    """Was a hang: opening a FIFO blocks until a writer appears."""
    fifo = tmp_path / "pipe.png"
    os.mkfifo(fifo)
    with time_limit(5), pytest.raises(UserError, match="not a regular file"):
        load_image(fifo)


def test_damaged_metadata_decodes_without_a_warning(tmp_path):
    """Was a Pillow UserWarning on stderr ('Tag data larger than file') beside the result."""
    exif = b"II*\x00\x08\x00\x00\x00\x01\x00" + struct.pack("<HHII", 0x010E, 2, 100, 1000)
    path = tmp_path / "bad-exif.jpg"
    Image.new("RGB", (8, 8), (10, 20, 30)).save(path, exif=b"Exif\x00\x00" + exif + b"\0" * 4)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        img = load_image(path)
    assert img.shape == (32, 32, 3)


def test_bomb_below_pillows_error_limit_is_refused(tmp_path):
    """10000 x 10000 pixels: between Pillow's warning and error limits Pillow only warned, then
    allocated 300 MB and decoded; now it is refused like a larger bomb."""
    path = tmp_path / "bomb.png"
    path.write_bytes(png_header(10_000, 10_000))
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        with pytest.raises(UserError, match="image too large"):
            load_image(path)


def test_formats_outside_the_list_are_refused(tmp_path):
    """EPS would be handed to Ghostscript; predict reads only PNG/JPEG/GIF/BMP/WebP/TIFF."""
    path = tmp_path / "image.eps"
    buf = io.BytesIO()
    Image.new("RGB", (8, 8)).save(buf, format="EPS")
    path.write_bytes(buf.getvalue())
    with pytest.raises(UserError, match="not an image in a format cnnzoo reads"):
        load_image(path)


def test_tar_members_still_checked_one_by_one(tmp_path):
    """The reader now checks each header as it is read: an unsafe member after a valid one is
    still refused (as tests/test_safety.py checks for the first member)."""
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w") as tar:
        for name, blob in valid_blobs().items():
            info = tarfile.TarInfo(f"cifar-10-batches-py/{name}")
            info.size = len(blob)
            tar.addfile(info, io.BytesIO(blob))
        link = tarfile.TarInfo("cifar-10-batches-py/extra")
        link.type, link.linkname = tarfile.SYMTYPE, "/etc/passwd"
        tar.addfile(link)
    path = tmp_path / "c.tar"
    path.write_bytes(buf.getvalue())
    with pytest.raises(UserError, match="links and special files"):
        cifar.load_dataset("cifar10", path, quiet=True)


def test_thin_strip_is_not_resized_whole(tmp_path):
    """Was 12 s and gigabytes: a 1 x 1,064,566 PNG (67 bytes) was resized to 32 x 34 million
    before the centre crop. The long side is now cut around the centre first."""
    path = tmp_path / "strip.png"
    path.write_bytes(png_header(1, 1_064_566, color_type=0, idat=b"\0" * 2))
    with time_limit(5):
        img = load_image(path)
    assert img.shape == (32, 32, 3)


def test_long_image_keeps_its_centre(tmp_path):
    """The cut keeps the centre: a 16 x 4000 image, dark but for its middle 32 rows."""
    im = np.zeros((4000, 16, 3), np.uint8)
    im[1984:2016] = 250
    Image.fromarray(im).save(tmp_path / "tall.png")
    assert (load_image(tmp_path / "tall.png") > 200).all()


def _batch_made_by_calling_ndarray(opcode: str) -> bytes:
    """A test batch whose 'data' the pickle makes itself: ``numpy.ndarray((N, 3072), 'u1')``
    (REDUCE) or ``numpy.ndarray.__new__`` (NEWOBJ), an array of the file's chosen size."""

    class Pickler(pickle.Pickler):
        def reducer_override(self, obj):
            if type(obj) is not np.ndarray:
                return NotImplemented
            if opcode == "newobj":
                return copyreg.__newobj__, (np.ndarray, obj.shape, "u1")
            return np.ndarray, (obj.shape, "u1")

    buf = io.BytesIO()
    Pickler(buf, 2).dump({"data": np.zeros((N, 3072), np.uint8), "labels": [0] * N})
    return buf.getvalue()


@pytest.mark.parametrize("opcode", ["reduce", "newobj"])
def test_numpy_ndarray_cannot_be_called_by_the_file(tmp_path, opcode):
    """Was an allocation of the file's choosing: a 60-byte batch file could call
    ``numpy.ndarray((12 << 30,), 'u1')``, then filled by ``astype``. Here the size is a
    batch's, so that the old reader took the uninitialised memory as images."""
    blob = _batch_made_by_calling_ndarray(opcode)
    assert b"numpy\nndarray" in blob and len(blob) < 200
    with pytest.raises((pickle.UnpicklingError, TypeError)):
        safe_pickle.loads(blob)
    with pytest.raises(UserError, match="corrupt batch file test_batch"):
        _load(tmp_path, _with(test_batch=blob))


def test_arrays_of_every_protocol_still_read() -> None:
    """``numpy.ndarray`` now names a token, not the class: real array pickles still load."""
    x = np.arange(N * 3072, dtype=np.uint8).reshape(N, 3072)
    for proto in range(2, pickle.HIGHEST_PROTOCOL + 1):
        for a in (x, np.asfortranarray(x), x[:, ::2]):
            assert np.array_equal(safe_pickle.loads(pickle.dumps(a, proto)), a)


def test_data_larger_than_any_cifar_file_is_refused_before_it_is_read(tmp_path, monkeypatch):
    """The second guard: whatever made the array, one bigger than ``MAX_MEMBER_BYTES`` is
    refused before min/max/astype touch it (here the limit is lowered below a batch)."""
    monkeypatch.setattr(cifar, "MAX_MEMBER_BYTES", N * 3072 - 1)
    with pytest.raises(UserError, match="more than any CIFAR file"):
        _load(tmp_path, valid_blobs())
