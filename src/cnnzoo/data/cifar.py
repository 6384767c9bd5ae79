"""CIFAR-10/100 from the official python archives, decoded once and cached as uint8 arrays.

Where the data comes from, in order: ``--data PATH`` (an archive, the extracted folder, or a
folder holding either), else ``$CNNZOO_DATA``, else ``~/.cache/cnnzoo``. When nothing is in the
last two, the official archive is downloaded there (progress bar, md5 checked); a ``--data PATH``
that holds no data is an error, never a download. A copy whose md5 differs from
the official one is used with a warning (the project's JPEG-rebuilt copy is such a copy).
``--data PATH`` may also name a folder of your own images (``cnnzoo.data.folder``).
"""

from __future__ import annotations

import functools
import os
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from cnnzoo.data import safe_pickle
from cnnzoo.data.archive import MAX_MEMBER_BYTES, download, md5sum, read_tar_members
from cnnzoo.data.cache import load_or_build
from cnnzoo.data.dataset import Dataset
from cnnzoo.data.folder import is_image_folder, layout_hint, load_image_folder
from cnnzoo.data.images import SIZE
from cnnzoo.data.synthetic import DEFAULT_TRAIN_IMAGES, make_synthetic
from cnnzoo.errors import UserError, one_line


@dataclass(frozen=True)
class Spec:
    archive: str
    url: str
    md5: str
    folder: str
    train_files: tuple[str, ...]
    test_file: str
    meta_file: str
    label_key: str
    names_key: str
    num_classes: int
    mean: tuple[float, float, float]
    std: tuple[float, float, float]
    train_images: int = 50000
    test_images: int = 10000


DATASETS: dict[str, Spec] = {
    "cifar10": Spec(
        "cifar-10-python.tar.gz",
        "https://www.cs.toronto.edu/~kriz/cifar-10-python.tar.gz",
        "c58f30108f718f92721af3b95e74349a",
        "cifar-10-batches-py",
        tuple(f"data_batch_{i}" for i in range(1, 6)),
        "test_batch",
        "batches.meta",
        "labels",
        "label_names",
        10,
        # True statistics of the training set (population std over all pixels). The reference
        # notebook's std (0.2023, 0.1994, 0.2010) is a known mistake.
        (0.4914, 0.4822, 0.4465),
        (0.2470, 0.2435, 0.2616),
    ),
    "cifar100": Spec(
        "cifar-100-python.tar.gz",
        "https://www.cs.toronto.edu/~kriz/cifar-100-python.tar.gz",
        "eb9058c3a382ffc7106e4002c42a8d85",
        "cifar-100-python",
        ("train",),
        "test",
        "meta",
        "fine_labels",
        "fine_label_names",
        100,
        (0.5071, 0.4865, 0.4409),
        (0.2673, 0.2564, 0.2762),
    ),
}


def default_root() -> Path:
    env = os.environ.get("CNNZOO_DATA")
    return Path(env) if env else Path.home() / ".cache" / "cnnzoo"


def is_synthetic(data: str | os.PathLike | None) -> bool:
    return data is not None and (str(data) == "synthetic" or str(data).startswith("synthetic:"))


def absolute_data(data: str | os.PathLike | None) -> str | None:
    """``data`` as a run records it: a path made absolute (``~`` expanded, not resolved, so a
    symlink the user chose stays named), so that ``eval`` and ``--resume`` find it from any
    folder and two spellings of one path compare equal; None and generated data unchanged."""
    if data is None or is_synthetic(data):
        return None if data is None else str(data)
    return os.path.abspath(os.path.expanduser(data))


def synthetic_size(data: str | os.PathLike | None) -> int | None:
    """Training images asked for by ``'synthetic'`` (the generator's default) or
    ``'synthetic:N'``; None for real data. A malformed size is a user error, not a path."""
    if not is_synthetic(data):
        return None
    _, _, n = str(data).partition(":")
    if not n:
        return DEFAULT_TRAIN_IMAGES
    if not n.isdigit() or int(n) < 10:
        raise UserError(f"--data {data}: expected synthetic:N with N >= 10 training images")
    return int(n)


def load_dataset(
    name: str = "cifar10",
    data: str | os.PathLike | None = None,
    quiet: bool = False,
    image_size: int = SIZE,
    *,
    saved: bool = False,
) -> Dataset:
    """Load ``name`` ('cifar10', 'cifar100') from ``data``; ``data='synthetic'`` (or
    ``'synthetic:N'`` for N training images) for generated test data. ``data`` may also be an
    image folder (``data/train/<class>/*.png``, see ``cnnzoo.data.folder``), whatever ``name``
    says; its images are resized to ``image_size`` (CIFAR's and the generated data's are 32).
    ``saved``: ``data`` is the path a run recorded, not one the user typed (the error for a
    missing one says so, and how to point to a copy)."""
    if saved and data is not None and not is_synthetic(data) and not Path(data).exists():
        raise _moved(Path(data), "is gone")  # before the image-size check, which would blame it
    if data is not None and not is_synthetic(data) and is_image_folder(data):
        return load_image_folder(Path(data), image_size, quiet)
    if image_size != SIZE:
        raise UserError(
            f"--image-size {image_size} applies to image folders (--data PATH holding "
            f"PATH/train/<class>/); CIFAR and the generated data are {SIZE}x{SIZE}"
        )
    if is_synthetic(data) or name == "synthetic":
        return make_synthetic(n_train=synthetic_size(data) or DEFAULT_TRAIN_IMAGES)
    if name not in DATASETS:
        raise UserError(f"unknown dataset {name!r}; choose from {', '.join(DATASETS)}")
    spec = DATASETS[name]
    source = _find_source(spec, Path(data) if data is not None else None, quiet, saved)
    return _load_cached(spec, name, source, quiet)


def _moved(path: Path, state: str) -> UserError:
    return UserError(f"the run's data {path} {state}; pass --data PATH to a copy")


def local_source(spec: Spec, root: Path) -> Path | None:
    """What ``root`` holds of ``spec``'s data, without reading it: ``root`` itself if a file (an
    archive), else the archive or the extracted folder in it, or ``root`` as that folder."""
    if root.is_file():
        return root
    for c in (root / spec.archive, root / spec.folder, root):
        if c.is_file() or (c.is_dir() and (c / spec.test_file).is_file()):
            return c
    return None


def data_md5(name: str, data: str | os.PathLike | None) -> str | None:
    """The md5 of the archive that ``data`` (None: the download folder) holds for dataset
    ``name``, found as a load would find it but not decoded; None where it holds no archive (an
    extracted folder, an image folder, generated data, nothing)."""
    if is_synthetic(data) or name not in DATASETS:
        return None
    source = local_source(DATASETS[name], Path(data) if data is not None else default_root())
    return archive_md5(source) if source is not None else None


def _find_source(spec: Spec, data: Path | None, quiet: bool, saved: bool = False) -> Path:
    """An archive file or an extracted folder holding the batch files."""
    explicit = data is not None
    root = data if data is not None else default_root()
    found = local_source(spec, root)
    if found is not None:
        return found
    if saved and explicit:  # the path a run trained on, not one typed now: no typo to fix
        raise _moved(root, f"holds no {spec.archive}")
    if explicit:  # a typo in --data must not become a new folder with a download in it
        if not root.exists():
            raise UserError(f"no such file or folder: {root}")
        hint = layout_hint(root) if root.is_dir() else None
        if hint:  # meant as an image folder: say how
            raise UserError(hint)
        raise UserError(
            f"{spec.archive} not found in {root}; pass --data PATH to the archive or its "
            f"extracted folder, or leave --data out to download it into {default_root()}"
        )
    if os.environ.get("CNNZOO_OFFLINE"):
        raise UserError(
            f"{spec.archive} not found in {root} and CNNZOO_OFFLINE is set; "
            f"pass --data PATH to the archive or its extracted folder"
        )
    if not quiet:
        print(f"{spec.archive} not found in {root}; downloading {spec.url}", file=sys.stderr)
    download(spec.url, root / spec.archive, spec.md5, quiet=quiet)
    return root / spec.archive


def _source_key(spec: Spec, source: Path) -> str:
    """Names the decoded data: the archive's size and mtime, or for an extracted folder each
    batch file's (the folder's own stat does not change when a file is rewritten in place)."""
    st = source.stat()
    key = f"{source.resolve()}|{st.st_size}|{st.st_mtime_ns}"
    if source.is_dir():
        for f in sorted({*spec.train_files, spec.test_file, spec.meta_file}):
            path = source / f
            if path.is_file():  # a missing file is reported by the decode
                fst = path.stat()
                key += f"|{f}|{fst.st_size}|{fst.st_mtime_ns}"
    return key


def _load_cached(spec: Spec, name: str, source: Path, quiet: bool) -> Dataset:
    key = _source_key(spec, source)

    def build() -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
        arrays = _decode(spec, source, quiet)
        _validate(spec, arrays, source)
        classes = [str(c) for c in arrays.pop("classes")]
        # the archive's md5 was just read by _decode (memoised): kept with the arrays, so a warm
        # start names its data without reading 170 MB again
        meta = {"classes": classes, "md5": archive_md5(source)}
        return {k: torch.from_numpy(v) for k, v in arrays.items()}, meta

    arrays, meta = load_or_build(name, key, build, quiet)
    md5 = meta["md5"] if "md5" in meta else archive_md5(source)  # caches written before it
    return _to_dataset(name, spec, arrays, meta["classes"], source, md5)


def _decode(spec: Spec, source: Path, quiet: bool) -> dict[str, np.ndarray]:
    blobs = _read_files(spec, source)
    if source.is_file():  # warned only once the archive has read: a bad one gets one error line
        digest = archive_md5(source)
        if digest != spec.md5 and not quiet:
            print(
                f"warning: {source.name} has md5 {digest}, not the official {spec.md5} "
                "(a rebuilt or modified copy); using it anyway",
                file=sys.stderr,
            )
    files = {name: _unpickle(blob, f"{name} in {source}") for name, blob in blobs.items()}
    train = [_batch(spec, files[f], f"{f} in {source}") for f in spec.train_files]
    test_x, test_y = _batch(spec, files[spec.test_file], f"{spec.test_file} in {source}")
    return {
        "train_x": np.ascontiguousarray(np.concatenate([x for x, _ in train])),
        "train_y": np.concatenate([y for _, y in train]),
        "test_x": np.ascontiguousarray(test_x),
        "test_y": test_y,
        "classes": _class_names(spec, files[spec.meta_file], f"{spec.meta_file} in {source}"),
    }


def archive_md5(source: Path) -> str | None:
    """The md5 of an archive file (None for an extracted folder): what a run records to name its
    data. Reading 170 MB takes a fraction of a second; it is read once per process and file
    version, however often the dataset is loaded (the decode's check and the run's record)."""
    if not source.is_file():
        return None
    st = source.stat()
    return _md5_of(str(source.resolve()), st.st_size, st.st_mtime_ns)


@functools.lru_cache(maxsize=8)
def _md5_of(path: str, size: int, mtime_ns: int) -> str:
    return md5sum(Path(path))  # size and mtime only key the memo: a changed file is read again


def _read_files(spec: Spec, source: Path) -> dict[str, bytes]:
    """The bytes of the batch and meta files, from the archive or the extracted folder."""
    wanted = {*spec.train_files, spec.test_file, spec.meta_file}
    if source.is_file():
        blobs = read_tar_members(source, wanted)  # a corrupt or unsafe archive fails here
    else:
        blobs = {}
        for f in sorted(wanted):
            if (source / f).is_file():  # a regular file (or a link to one): never a pipe
                blobs[f] = _read_file(source / f)
    missing = sorted(wanted - set(blobs))
    if missing:
        raise UserError(f"{source} lacks {', '.join(missing)}; is it the {spec.archive} layout?")
    return blobs


def _read_file(path: Path) -> bytes:
    try:
        size = path.stat().st_size
        if size > MAX_MEMBER_BYTES:
            raise UserError(f"{path} is {size} bytes, larger than any CIFAR file")
        return path.read_bytes()
    except OSError as err:
        raise UserError(f"cannot read {path}: {err.strerror or err}") from None


def _unpickle(blob: bytes, where: str) -> dict:
    try:
        # Python-2 pickles of numpy arrays; safe_pickle resolves no global but numpy's array
        # constructors, so a crafted file cannot run code.
        d = safe_pickle.loads(blob)
    except Exception as err:  # a damaged pickle fails in many ways (ValueError, EOFError, ...)
        raise UserError(f"corrupt batch file {where}: {one_line(err)}") from None
    if not isinstance(d, dict):
        raise UserError(f"{where} holds a {type(d).__name__}, not a dict of arrays")
    # Python-3 copies may key by bytes (b"data"); the official Python-2 files by str
    return {k.decode("latin1") if isinstance(k, bytes) else k: v for k, v in d.items()}


def _batch(spec: Spec, d: dict, where: str) -> tuple[np.ndarray, np.ndarray]:
    """One batch file: its images, uint8 (n, 32, 32, 3), and labels, int64 (n,)."""
    x = d.get("data")
    if not isinstance(x, np.ndarray) or x.dtype.kind not in "ui" or x.size % 3072:
        raise UserError(f"{where}: 'data' must be an integer array of rows of 3072 pixels")
    # Before anything reads it (min, max, astype): an array bigger than any CIFAR file did not
    # come from the file's own bytes, and reading it would touch all of that memory.
    if x.nbytes > MAX_MEMBER_BYTES:
        raise UserError(f"{where}: 'data' holds {x.nbytes} bytes, more than any CIFAR file")
    if x.size and (x.min() < 0 or x.max() > 255):
        raise UserError(f"{where}: pixel values outside 0..255")
    # rows are R(1024) G(1024) B(1024) -> (n, 3, 32, 32) -> (n, 32, 32, 3)
    images = x.astype(np.uint8).reshape(-1, 3, 32, 32).transpose(0, 2, 3, 1)
    labels = _labels(d.get(spec.label_key), f"{where}: '{spec.label_key}'")
    if len(labels) != len(images):  # else the totals could match while labels shift
        raise UserError(f"{where}: {len(images)} images but {len(labels)} labels")
    return images, labels


def _labels(y: object, what: str) -> np.ndarray:
    """A list of ints (the official files) or a 1-D integer array, as int64."""
    if isinstance(y, np.ndarray) and y.ndim == 1 and y.dtype.kind in "ui":
        return y.astype(np.int64)
    if isinstance(y, list) and all(
        isinstance(v, (int, np.integer)) and not isinstance(v, bool) for v in y
    ):
        try:
            return np.array(y, dtype=np.int64)
        except OverflowError:
            raise UserError(f"{what}: a label is out of range") from None
    raise UserError(f"{what} must be a list of integer labels")


MAX_NAME = 200  # characters in a class name: numpy stores every name at the longest one's width


def _class_names(spec: Spec, meta: dict, where: str) -> np.ndarray:
    names = meta.get(spec.names_key)
    if not (
        isinstance(names, list)
        and len(names) == spec.num_classes
        and all(isinstance(n, (str, bytes)) and len(n) <= MAX_NAME for n in names)
    ):
        raise UserError(
            f"{where}: '{spec.names_key}' must list {spec.num_classes} class names "
            f"(text of at most {MAX_NAME} characters)"
        )
    return np.array([n.decode("latin1") if isinstance(n, bytes) else n for n in names], dtype=str)


def _validate(spec: Spec, a: dict[str, np.ndarray], source: Path) -> None:
    n_train, n_test = spec.train_images, spec.test_images
    expected = {"train_x": (n_train, 32, 32, 3), "test_x": (n_test, 32, 32, 3)}
    for key, shape in expected.items():
        if a[key].shape != shape or a[key].dtype != np.uint8:
            raise UserError(f"{source}: {key} has shape {a[key].shape}, expected {shape} uint8")
    for key, n in (("train_y", n_train), ("test_y", n_test)):
        y = a[key]
        if y.shape != (n,) or y.min() < 0 or y.max() >= spec.num_classes:
            raise UserError(f"{source}: {key} must hold {n} labels in [0, {spec.num_classes})")
    if len(a["classes"]) != spec.num_classes:
        raise UserError(f"{source}: expected {spec.num_classes} class names")


def _to_dataset(
    name: str,
    spec: Spec,
    a: dict[str, torch.Tensor],
    classes: list[str],
    source: Path,
    md5: str | None,
) -> Dataset:
    return Dataset(
        name=name,
        train_x=a["train_x"],
        train_y=a["train_y"],
        test_x=a["test_x"],
        test_y=a["test_y"],
        classes=list(classes),
        mean=spec.mean,
        std=spec.std,
        source=str(source),
        md5=md5,
    )
