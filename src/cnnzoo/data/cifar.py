"""CIFAR-10/100 from the official python archives, decoded once and cached as uint8 arrays.

Where the data comes from, in order: ``--data PATH`` (an archive, the extracted folder, or a
folder holding either), else ``$CNNZOO_DATA``, else ``~/.cache/cnnzoo``. When nothing is there,
the official archive is downloaded (progress bar, md5 checked). A copy whose md5 differs from
the official one is used with a warning (the project's JPEG-rebuilt copy is such a copy).
``--data PATH`` may also name a folder of your own images (``cnnzoo.data.folder``).
"""

from __future__ import annotations

import functools
import os
import pickle
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from cnnzoo.data.archive import download, md5sum, read_tar_members
from cnnzoo.data.cache import load_or_build
from cnnzoo.data.dataset import Dataset
from cnnzoo.data.folder import is_image_folder, layout_hint, load_image_folder
from cnnzoo.data.images import SIZE
from cnnzoo.data.synthetic import DEFAULT_TRAIN_IMAGES, make_synthetic
from cnnzoo.errors import UserError


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
) -> Dataset:
    """Load ``name`` ('cifar10', 'cifar100') from ``data``; ``data='synthetic'`` (or
    ``'synthetic:N'`` for N training images) for generated test data. ``data`` may also be an
    image folder (``data/train/<class>/*.png``, see ``cnnzoo.data.folder``), whatever ``name``
    says; its images are resized to ``image_size`` (CIFAR's and the generated data's are 32)."""
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
    source = _find_source(spec, Path(data) if data is not None else None, quiet)
    return _load_cached(spec, name, source, quiet)


def _find_source(spec: Spec, data: Path | None, quiet: bool) -> Path:
    """An archive file or an extracted folder holding the batch files."""
    explicit = data is not None
    root = data if data is not None else default_root()
    if root.is_file():
        return root
    candidates = [root / spec.archive, root / spec.folder, root]
    for c in candidates:
        if c.is_file() or (c.is_dir() and (c / spec.test_file).is_file()):
            return c
    if explicit and not root.exists() and root.suffix in (".gz", ".tar", ".tgz"):
        raise UserError(f"no such file: {root}")
    hint = layout_hint(root) if explicit and root.is_dir() else None
    if hint:  # meant as an image folder: say how, rather than download CIFAR into it
        raise UserError(hint)
    if os.environ.get("CNNZOO_OFFLINE"):
        raise UserError(
            f"{spec.archive} not found in {root} and CNNZOO_OFFLINE is set; "
            f"pass --data PATH to the archive or its extracted folder"
        )
    if not quiet:
        print(f"{spec.archive} not found in {root}; downloading {spec.url}", file=sys.stderr)
    download(spec.url, root / spec.archive, spec.md5, quiet=quiet)
    return root / spec.archive


def _load_cached(spec: Spec, name: str, source: Path, quiet: bool) -> Dataset:
    st = source.stat()
    key = f"{source.resolve()}|{st.st_size}|{st.st_mtime_ns}"

    def build() -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
        arrays = _decode(spec, source, quiet)
        _validate(spec, arrays, source)
        classes = [str(c) for c in arrays.pop("classes")]
        return {k: torch.from_numpy(v) for k, v in arrays.items()}, {"classes": classes}

    arrays, meta = load_or_build(name, key, build, quiet)
    return _to_dataset(name, spec, arrays, meta["classes"], source)


def _decode(spec: Spec, source: Path, quiet: bool) -> dict[str, np.ndarray]:
    wanted = {*spec.train_files, spec.test_file, spec.meta_file}
    if source.is_file():
        blobs = read_tar_members(source, wanted)  # a corrupt or unsafe archive fails here
    else:
        blobs = {f: (source / f).read_bytes() for f in wanted if (source / f).is_file()}
    missing = sorted(wanted - set(blobs))
    if missing:
        raise UserError(f"{source} lacks {', '.join(missing)}; is it the {spec.archive} layout?")
    if source.is_file():  # warned only once the archive has read: a bad one gets one error line
        digest = archive_md5(source)
        if digest != spec.md5 and not quiet:
            print(
                f"warning: {source.name} has md5 {digest}, not the official {spec.md5} "
                "(a rebuilt or modified copy); using it anyway",
                file=sys.stderr,
            )

    def unpickle(blob: bytes) -> dict:
        try:
            # The official files are Python-2 pickles of numpy arrays; they come from the dataset
            # authors (or the user's own copy), as with torchvision's loader.
            return pickle.loads(blob, encoding="latin1")
        except Exception as err:
            raise UserError(f"corrupt batch file in {source}: {err}") from None

    def images(d: dict) -> np.ndarray:  # rows are R(1024) G(1024) B(1024) -> (N, 32, 32, 3)
        return np.asarray(d["data"], dtype=np.uint8).reshape(-1, 3, 32, 32).transpose(0, 2, 3, 1)

    train = [unpickle(blobs[f]) for f in spec.train_files]
    test = unpickle(blobs[spec.test_file])
    meta = unpickle(blobs[spec.meta_file])
    return {
        "train_x": np.ascontiguousarray(np.concatenate([images(d) for d in train])),
        "train_y": np.concatenate([np.asarray(d[spec.label_key]) for d in train]).astype(np.int64),
        "test_x": np.ascontiguousarray(images(test)),
        "test_y": np.asarray(test[spec.label_key]).astype(np.int64),
        "classes": np.asarray(meta[spec.names_key], dtype=str),
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


def _validate(spec: Spec, a: dict[str, np.ndarray], source: Path) -> None:
    expected = {"train_x": (50000, 32, 32, 3), "test_x": (10000, 32, 32, 3)}
    for key, shape in expected.items():
        if a[key].shape != shape or a[key].dtype != np.uint8:
            raise UserError(f"{source}: {key} has shape {a[key].shape}, expected {shape} uint8")
    for key, n in (("train_y", 50000), ("test_y", 10000)):
        y = a[key]
        if y.shape != (n,) or y.min() < 0 or y.max() >= spec.num_classes:
            raise UserError(f"{source}: {key} must hold {n} labels in [0, {spec.num_classes})")
    if len(a["classes"]) != spec.num_classes:
        raise UserError(f"{source}: expected {spec.num_classes} class names")


def _to_dataset(
    name: str, spec: Spec, a: dict[str, torch.Tensor], classes: list[str], source: Path
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
        md5=archive_md5(source),
    )
