"""Fuzzing the readers of user files: the CIFAR archive/folder reader, predict's image loader
and the image-folder reader.

Every input must end as a result or as the product's one-line ``UserError``, within the per-input
time limit, writing nothing outside its target folder (``fuzzkit.check_contract``). Each target
runs for ``CNNZOO_FUZZ_SECONDS`` (default 60; e.g. ``CNNZOO_FUZZ_SECONDS=600 pytest -m fuzz``
by hand) and prints how many inputs it tried. ``pytest -m fuzz`` runs only these tests.
"""

from __future__ import annotations

import bz2
import gzip
import io
import json
import lzma
import os
import pickle
import random
import shutil
import struct
import tarfile
from pathlib import Path

import numpy as np
import pytest
import torch
from hypothesis import reject
from hypothesis import strategies as st
from hypothesis.extra import numpy as npst
from PIL import Image

from cnnzoo.data import cifar
from cnnzoo.inference.predict import load_image
from fuzzkit import (
    ERROR,
    RESULT,
    Blob,
    check_contract,
    fuzz,
    mutate,
    mutations,
    outcome,
    png_header,
    random_mutations,
)
from helpers import assert_one_error_line, make_checkpoint, run_cli
from hostile import (
    FILES,
    TINY,
    N,
    cifar_tar,
    evil_pickles,
    patch_header,
    size_field,
    valid_blobs,
    valid_file,
)

pytestmark = pytest.mark.fuzz

# ---------------------------------------------------------------------------------------------
# (a) The CIFAR reader: mutated archives (.tar, .tar.gz, .tar.bz2, .tar.xz) and folders.

PREFIXES = ("cifar-10-batches-py/", "", "deep/er/cifar-10-batches-py/")
HOSTILE_NAMES = (
    "../escape",
    "cifar-10-batches-py/../../escape",
    "/tmp/escape",
    "C:\\escape",
    "\\escape",
    "..",
    ".",
    "",
    "a/" * 60 + "test_batch",
    "cifar-10-batches-py/test_batch\x00hidden",
    "cifar-10-batches-py/tést_batch",
)
MEMBER_TYPES = (
    tarfile.REGTYPE,
    tarfile.DIRTYPE,
    tarfile.SYMTYPE,
    tarfile.LNKTYPE,
    tarfile.FIFOTYPE,
    tarfile.CHRTYPE,
    tarfile.BLKTYPE,
    tarfile.CONTTYPE,
)


_scalars = (
    st.none()
    | st.booleans()
    | st.integers()
    | st.floats()
    | st.text(max_size=6)
    | st.binary(max_size=6)
)
_arrays = npst.arrays(
    npst.scalar_dtypes() | st.just(np.dtype(np.uint8)),
    npst.array_shapes(min_dims=0, max_dims=3, min_side=0, max_side=5),
)
VALUES = st.recursive(
    _scalars | _arrays,
    lambda c: st.lists(c, max_size=4) | st.dictionaries(st.text(max_size=6), c, max_size=3),
    max_leaves=8,
)
PIXELS = npst.arrays(  # near misses of the (N, 3072) uint8 pixel array
    st.sampled_from([np.uint8, np.int64, np.int8, np.uint16, np.float32, np.float64, np.bool_]),
    st.sampled_from([(N, 3072), (N * 3072,), (N, 3, 32, 32), (N, 3071), (N + 1, 3072), (0, 3072)]),
)
LABELS = (
    st.lists(st.integers(-2, 12), min_size=N - 1, max_size=N + 1)
    | st.lists(st.integers(), min_size=N, max_size=N)
    | npst.arrays(st.sampled_from([np.int64, np.uint8, np.float32, np.bool_]), (N,))
    | st.lists(st.text(max_size=3) | st.floats(), min_size=N, max_size=N)
)
NAMES = st.lists(st.text(max_size=12) | st.binary(max_size=12), min_size=9, max_size=11)
FIELDS = {"data": PIXELS, "labels": LABELS, "label_names": NAMES}
PLANS = ("valid", "field", "field", "field", "whole", "evil", "bytes", "mutated", "mutated")


@st.composite
def member_blob(draw, name: str, evil: list[bytes], harm: bool) -> bytes:
    """The bytes of one batch or meta file: valid, or (``harm``) perturbed in one way."""
    obj = valid_file(name, seed=FILES.index(name))
    plan = draw(st.sampled_from(PLANS)) if harm else "valid"
    if plan == "evil":
        return draw(st.sampled_from(evil))
    if plan == "bytes":
        return draw(st.binary(max_size=64))
    if plan == "whole":
        obj = draw(VALUES)
    elif plan == "field":
        key = draw(st.sampled_from(sorted(obj)))
        if draw(st.booleans()):
            obj[key] = draw(FIELDS.get(key, VALUES))
        else:
            del obj[key]
    if isinstance(obj, dict) and draw(st.booleans()):  # a Python 3 copy keyed by bytes
        obj = {k.encode() if isinstance(k, str) else k: v for k, v in obj.items()}
    blob = pickle.dumps(obj, protocol=draw(st.integers(0, 5)))
    return mutate(blob, draw(mutations())) if plan == "mutated" else blob


@st.composite
def tar_bytes(draw, evil: list[bytes]) -> bytes:
    """An uncompressed tar: the CIFAR members (some perturbed, dropped or doubled), hostile
    extra members, then optional header patches (size, type) with correct checksums."""
    prefix = draw(st.sampled_from(PREFIXES))
    harmed = draw(st.sets(st.sampled_from(FILES), max_size=2))
    keep = [f for f in FILES if draw(st.integers(0, 19)) > 0]
    members = [(prefix + f, tarfile.REGTYPE, draw(member_blob(f, evil, f in harmed))) for f in keep]
    for _ in range(draw(st.sampled_from([0, 0, 0, 1, 2]))):
        name = draw(st.sampled_from(HOSTILE_NAMES) | st.sampled_from(FILES) | st.text(max_size=20))
        kind = draw(st.sampled_from(MEMBER_TYPES))
        members.insert(
            draw(st.integers(0, len(members))), (name, kind, draw(st.binary(max_size=8)))
        )
    buf = io.BytesIO()
    fmt = draw(st.sampled_from([tarfile.GNU_FORMAT, tarfile.PAX_FORMAT, tarfile.USTAR_FORMAT]))
    try:
        with tarfile.open(fileobj=buf, mode="w", format=fmt) as tar:
            for name, kind, blob in members:
                info = tarfile.TarInfo(name)
                info.type = kind
                if kind in (tarfile.SYMTYPE, tarfile.LNKTYPE):
                    info.linkname = draw(st.sampled_from(["/etc/passwd", "../x", "test_batch"]))
                info.size = len(blob) if kind in (tarfile.REGTYPE, tarfile.CONTTYPE) else 0
                tar.addfile(info, io.BytesIO(blob) if info.size else None)
    except (ValueError, UnicodeError):
        reject()  # a name the chosen tar format cannot hold: not an input at all
    data = bytearray(buf.getvalue())
    with tarfile.open(fileobj=io.BytesIO(bytes(data))) as tar:
        headers = [m.offset_data - 512 for m in tar.getmembers()]
    for _ in range(draw(st.sampled_from([0, 0, 0, 1, 2])) if headers else 0):
        at = draw(st.sampled_from(headers))
        if draw(st.booleans()):
            size = draw(st.integers(0, 2**12) | st.sampled_from([300 << 20, 1 << 33, 1 << 60]))
            patch_header(data, at, slice(124, 136), size_field(size))
        else:
            kind = draw(st.sampled_from([bytes([t]) for t in b"0125679SLKxgV"]))
            patch_header(data, at, slice(156, 157), kind)
    return bytes(data)


FOLDER_KINDS = ("file",) * 6 + ("missing", "dir", "fifo", "link-out", "link-loop", "link-dir")
COMPRESS = {
    ".tar": lambda b: b,
    ".tar.gz": lambda b: gzip.compress(b, compresslevel=1),
    ".tar.bz2": lambda b: bz2.compress(b, 1),
    ".tar.xz": lambda b: lzma.compress(b, preset=0),
}


@st.composite
def archive_case(draw, evil: list[bytes]) -> tuple[str, dict]:
    """('archive', {suffix, bytes}) or ('folder', {name: (kind, bytes)})."""
    if draw(st.integers(0, 3)) == 0:
        files = {}
        harmed = draw(st.sets(st.sampled_from(FILES), max_size=2))
        for f in FILES:
            kind = draw(st.sampled_from(FOLDER_KINDS)) if f in harmed else "file"
            files[f] = (kind, Blob(draw(member_blob(f, evil, f in harmed))))
        return "folder", files
    suffix = draw(st.sampled_from(sorted(COMPRESS)))
    blob = COMPRESS[suffix](draw(tar_bytes(evil)))
    where = draw(st.sampled_from(["none", "none", "none", "raw", "raw", "tail"]))
    if where == "raw":
        blob = mutate(blob, draw(mutations()))
    elif where == "tail":  # a truncated download
        blob = blob[: draw(st.integers(0, max(0, len(blob) - 1)))]
    return "archive", {"suffix": suffix, "bytes": Blob(blob)}


def _write_folder(folder: Path, files: dict[str, tuple[str, bytes]]) -> None:
    folder.mkdir()
    for name, (kind, blob) in files.items():
        p = folder / name
        if kind == "file":
            p.write_bytes(blob)
        elif kind == "dir":
            p.mkdir()
        elif kind == "fifo":
            os.mkfifo(p)
        elif kind == "link-out":  # a link to a file outside: reading it is allowed, writing not
            p.symlink_to("/etc/hostname")
        elif kind == "link-loop":
            p.symlink_to(p.name)
        elif kind == "link-dir":
            p.symlink_to(folder)


def _check_dataset(ds) -> None:
    assert ds.train_x.shape == (5 * N, 32, 32, 3) and ds.train_x.dtype == torch.uint8
    assert ds.test_x.shape == (N, 32, 32, 3) and ds.test_y.shape == (N,)
    assert int(ds.train_y.min()) >= 0 and int(ds.train_y.max()) < 10
    assert len(ds.classes) == 10


def _report(tally, capsys) -> None:
    """Record and print how many inputs a target tried; both ends of the contract were reached."""
    tally.record()
    with capsys.disabled():
        print("\n" + tally.line())
    assert tally.counts[RESULT] > 0 and tally.counts[ERROR] > 0


def test_fuzz_cifar_reader(tmp_path: Path, monkeypatch, capsys) -> None:
    """Mutated CIFAR archives and folders: a Dataset of the right shapes, or one error line."""
    target = tmp_path / "target"
    target.mkdir()
    cache = target / "cache"
    monkeypatch.setenv("CNNZOO_CACHE", str(cache))
    monkeypatch.setitem(cifar.DATASETS, "cifar10", TINY)
    marker = tmp_path / "PWNED"
    evil = evil_pickles(marker)
    counter = iter(range(1 << 62))

    def body(case: tuple[str, dict]) -> str:
        kind, spec = case
        here = target / f"case{next(counter)}"  # a fresh path: the decoded cache is keyed by it
        if kind == "folder":
            _write_folder(here, spec)
            path = here
        else:
            here.mkdir()
            path = here / f"cifar-10-python{spec['suffix']}"
            path.write_bytes(spec["bytes"])
        try:
            out = check_contract(lambda: cifar.load_dataset("cifar10", path, quiet=True), target)
        finally:
            shutil.rmtree(here)
            shutil.rmtree(cache, ignore_errors=True)
        assert not marker.exists() and not marker.with_suffix(".npy").exists()
        if outcome(out) == RESULT:
            _check_dataset(out)
        return outcome(out)

    tally = fuzz("CIFAR reader", archive_case(evil), body, keep=tmp_path)
    _report(tally, capsys)


# ---------------------------------------------------------------------------------------------
# (b) predict's image loader: mutated PNG/JPEG/GIF/BMP/WebP/TIFF/..., bombs, special files.

SAVE_MODES = {
    "PNG": ("1", "L", "LA", "P", "RGB", "RGBA", "I;16", "I"),
    "JPEG": ("L", "RGB", "CMYK"),
    "GIF": ("L", "P"),
    "BMP": ("1", "L", "P", "RGB", "RGBA"),
    "WEBP": ("RGB", "RGBA"),
    "TIFF": ("1", "L", "LA", "P", "RGB", "RGBA", "CMYK", "I;16", "I", "F"),
    "ICO": ("RGBA",),
    "PPM": ("L", "RGB"),
    "TGA": ("L", "RGB", "RGBA"),
    "PCX": ("L", "RGB"),
    "EPS": ("L", "RGB"),  # loading EPS would run Ghostscript
}
EXTENSIONS = (".png", ".jpg", ".gif", ".bmp", ".webp", ".tif", ".txt", "")
SPECIAL = ("empty", "text", "dir", "fifo", "missing", "link-dir", "link-loop", "dangling",
           "dev-zero", "dev-urandom")  # fmt: skip


@st.composite
def encoded_image(draw) -> bytes:
    """A small image saved by Pillow in some format and mode (maybe animated, maybe with an
    EXIF orientation, maybe transparent)."""
    fmt = draw(st.sampled_from(sorted(SAVE_MODES)))
    mode = draw(st.sampled_from(SAVE_MODES[fmt]))
    w, h = draw(st.integers(1, 40)), draw(st.integers(1, 40))
    rng = np.random.default_rng(draw(st.integers(0, 2**32 - 1)))
    rgb = Image.fromarray(rng.integers(0, 256, (h, w, 3), dtype=np.uint8))
    try:
        im = rgb.convert(mode) if mode not in ("I;16", "F") else rgb.convert("L").convert(mode)
        kw = {}
        if mode == "P" and draw(st.booleans()):
            kw["transparency"] = 0
        if fmt in ("JPEG", "PNG", "WEBP", "TIFF") and draw(st.booleans()):
            exif = Image.Exif()
            exif[0x0112] = draw(st.integers(0, 9))  # orientation; 1..8 are meaningful
            kw["exif"] = exif.tobytes()
        if fmt in ("GIF", "PNG", "WEBP", "TIFF") and draw(st.booleans()):
            kw.update(save_all=True, append_images=[rgb.convert(mode).rotate(90)])
        out = io.BytesIO()
        im.save(out, format=fmt, **kw)
    except (OSError, ValueError, KeyError, TypeError):
        reject()  # a combination Pillow cannot write: not an input
    return out.getvalue()


def gif_header(width: int, height: int) -> bytes:
    """A GIF with a one-colour table whose screen and frame claim ``width`` x ``height``."""
    screen = struct.pack("<HHBBB", width, height, 0x80, 0, 0) + b"\0\0\0\xff\xff\xff"
    frame = b"," + struct.pack("<HHHHB", 0, 0, width, height, 0)
    return b"GIF89a" + screen + frame + b"\x02\x02\x44\x01\x00;"


BIG = st.integers(1, 64) | st.integers(1, 2**16 - 1) | st.sampled_from([10_000, 20_000, 65_535])


@st.composite
def image_case(draw) -> tuple[str, bytes, str]:
    """(kind, bytes, extension): an encoded image, a header claiming any size, or a special
    file; all but the special files then byte-mutated."""
    plan = draw(st.sampled_from(("encoded",) * 6 + ("png-dims", "gif-dims", "special")))
    ext = draw(st.sampled_from(EXTENSIONS))
    if plan == "special":
        return draw(st.sampled_from(SPECIAL)), b"", ext
    if plan == "encoded":
        blob = draw(encoded_image())
    elif plan == "png-dims":
        w = draw(BIG | st.integers(1, 2**31 - 1))
        h = draw(BIG | st.integers(1, 2**31 - 1))
        color = draw(st.sampled_from([0, 2, 3, 4, 6, 1]))
        blob = png_header(w, h, color, b"\0" * draw(st.integers(0, 4096)))
    else:
        blob = gif_header(draw(BIG), draw(BIG))
    return "file", Blob(mutate(blob, draw(mutations()))), ext


def write_image_case(path: Path, kind: str, blob: bytes) -> None:
    if kind == "file":
        path.write_bytes(blob)
    elif kind == "empty":
        path.write_bytes(b"")
    elif kind == "text":
        path.write_text("not an image\n" * 10)
    elif kind == "dir":
        path.mkdir()
    elif kind == "fifo":
        os.mkfifo(path)
    elif kind == "link-dir":
        path.symlink_to(path.parent)
    elif kind == "link-loop":
        path.symlink_to(path.name)
    elif kind == "dangling":
        path.symlink_to(path.parent / "nowhere")
    elif kind.startswith("dev-"):
        path.symlink_to(f"/dev/{kind[4:]}")
    # "missing": nothing is written


def test_fuzz_image_loader(tmp_path: Path, capsys) -> None:
    """Mutated images, bombs and special files: a (32, 32, 3) uint8 image or one error line."""
    target = tmp_path / "target"
    target.mkdir()
    counter = iter(range(1 << 62))

    def body(case: tuple[str, bytes, str]) -> str:
        kind, blob, ext = case
        here = target / f"case{next(counter)}"
        here.mkdir()
        path = here / f"image{ext}"
        write_image_case(path, kind, blob)
        try:
            out = check_contract(lambda: load_image(path), target)
        finally:
            shutil.rmtree(here)
        if outcome(out) == RESULT:
            assert out.shape == (32, 32, 3) and out.dtype == torch.uint8
        return outcome(out)

    tally = fuzz("predict image loader", image_case(), body, keep=tmp_path)
    _report(tally, capsys)


# ---------------------------------------------------------------------------------------------
# (c) image folders (``--data PATH`` in the ImageFolder layout): odd class names, splits that
# disagree, and the image cases above as their files.

EXTENSIONS_OK = st.sampled_from([".png", ".jpg", ".JPEG", ".gif", ".bmp", ".webp", ".tiff"])
CLASS_NAMES = st.sampled_from(["cat", "dog", "a b", "ü", ".hidden", "x" * 120, "1", "-", "é,;"])


@st.composite
def folder_case(draw) -> dict[str, dict[str, list[tuple[str, bytes, str]]]]:
    """{split: {class: [image cases]}}: train/ always (maybe empty), val/ and test/ sometimes."""
    splits = ["train"] + [s for s in ("val", "test") if draw(st.booleans())]
    case = {}
    for split in splits:
        names = draw(st.lists(CLASS_NAMES, max_size=3, unique=True))
        # half the files readable as they are, so that whole datasets are reached too
        files = st.lists(
            image_case() | st.tuples(st.just("file"), encoded_image(), EXTENSIONS_OK), max_size=3
        )
        case[split] = {c: draw(files) for c in names}
    return case


def _write_image_folder(root: Path, case: dict) -> None:
    for split, classes in case.items():
        (root / split).mkdir(parents=True)
        for name, images in classes.items():
            (root / split / name).mkdir()
            for i, (kind, blob, ext) in enumerate(images):
                write_image_case(root / split / name / f"img{i}{ext}", kind, blob)


def test_fuzz_image_folder_reader(tmp_path: Path, monkeypatch, capsys) -> None:
    """Image folders with hostile files and layouts: a Dataset of 32×32 images whose labels
    name its classes, or one error line."""
    target = tmp_path / "target"
    target.mkdir()
    cache = target / "cache"
    monkeypatch.setenv("CNNZOO_CACHE", str(cache))
    counter = iter(range(1 << 62))

    def body(case: dict) -> str:
        root = target / f"case{next(counter)}"
        _write_image_folder(root, case)
        try:
            out = check_contract(lambda: cifar.load_dataset("cifar10", root, quiet=True), target)
        finally:
            shutil.rmtree(root)
            shutil.rmtree(cache, ignore_errors=True)
        if outcome(out) == RESULT:
            assert out.train_x.ndim == 4 and out.train_x.shape[1:] == (32, 32, 3)
            assert out.train_x.dtype == torch.uint8 and len(out.train_y) == len(out.train_x)
            assert int(out.train_y.max()) < len(out.classes) and len(out.test_y) > 0
        return outcome(out)

    tally = fuzz("image folder reader", folder_case(), body, keep=tmp_path)
    _report(tally, capsys)


# ---------------------------------------------------------------------------------------------
# End to end: a handful of fuzzed inputs through the CLI, one `error:` line each, exit code 2.


def _fixed_images(folder: Path) -> list[Path]:
    """Hostile images from a fixed seed (mutated encodings, a bomb header, special files) and
    one good image."""
    rng = random.Random(15)
    files = []
    for i, fmt in enumerate(["PNG", "JPEG", "GIF", "BMP", "WEBP"]):
        buf = io.BytesIO()
        Image.new("RGB", (20, 12), (i * 40, 90, 200)).save(buf, format=fmt)
        blob = mutate(buf.getvalue(), [("truncate", len(buf.getvalue()) // 2, b"")])
        files.append((f"cut{i}.{fmt.lower()}", mutate(blob, random_mutations(rng, 2))))
    good = io.BytesIO()
    Image.new("RGB", (40, 30), (200, 30, 90)).save(good, format="PNG")
    files.append(("good.png", good.getvalue()))  # classified, beside the failures
    files.append(("bomb.png", png_header(30_000, 30_000)))
    files.append(("text.jpg", b"hello\n"))
    files.append(("empty.png", b""))
    paths = []
    for name, blob in files:
        (folder / name).write_bytes(blob)
        paths.append(folder / name)
    os.mkfifo(folder / "pipe.png")
    (folder / "folder.png").mkdir()
    return [*paths, folder / "pipe.png", folder / "folder.png"]


def test_cli_predict_fuzzed_files(tmp_path: Path) -> None:
    ckpt = make_checkpoint(tmp_path / "best.pt")
    images = tmp_path / "images"
    images.mkdir()
    files = _fixed_images(images)
    before = sorted(p.name for p in tmp_path.rglob("*"))
    proc = run_cli(["predict", str(ckpt), *map(str, files), "--json"])
    assert proc.returncode == 2, proc.stderr
    assert "Traceback" not in proc.stderr
    lines = proc.stderr.strip().splitlines()
    assert all(ln.startswith("error: ") for ln in lines), proc.stderr
    rows = json.loads(proc.stdout)
    assert [r["file"] for r in rows] == [str(f) for f in files]
    failed = [r["file"] for r in rows if "error" in r]
    assert len(lines) == len(failed) > 0  # one line per failed file, each naming it
    assert all(f in ln for f, ln in zip(failed, lines, strict=True))
    assert any(r["file"].endswith("good.png") and len(r["top_k"]) == 5 for r in rows)
    assert sorted(p.name for p in tmp_path.rglob("*")) == before


def _fixed_archives(folder: Path) -> list[Path]:
    """Hostile archives: code in a pickle, a mutated gzip stream, a batch of the wrong shape."""
    marker = folder.parent / "PWNED"
    rng = random.Random(15)
    valid = valid_blobs()
    cases = {
        "evil.tar.gz": gzip.compress(cifar_tar({**valid, "test_batch": evil_pickles(marker)[1]})),
        "cut.tar.gz": mutate(gzip.compress(cifar_tar(valid)), random_mutations(rng, 3)),
        "shape.tar.gz": gzip.compress(
            cifar_tar({**valid, "test_batch": pickle.dumps({"data": [[1, 2]], "labels": "x"})})
        ),
    }
    for name, blob in cases.items():
        (folder / name).write_bytes(blob)
    return [folder / name for name in cases]


def test_cli_eval_fuzzed_archives(tmp_path: Path) -> None:
    ckpt = make_checkpoint(tmp_path / "best.pt")
    data = tmp_path / "data"
    data.mkdir()
    for archive in _fixed_archives(data):
        before = sorted(p.name for p in tmp_path.rglob("*"))
        proc = run_cli(["eval", str(ckpt), "--data", str(archive), "--device", "cpu"])
        assert proc.returncode == 2, proc.stderr
        assert_one_error_line(proc.stderr)
        assert sorted(p.name for p in tmp_path.rglob("*")) == before
        assert not (tmp_path / "PWNED").exists()
