"""Your own images: a folder in the ImageFolder layout, decoded once and cached as uint8 like CIFAR.

Layout (torchvision's ``ImageFolder``, one such tree per split)::

    PATH/train/<class>/*.png|jpg|...   required; the class names are these folder names, sorted
    PATH/val/<class>/...               optional: the validation images (else --val holds out
                                       a stratified part of train/, as for CIFAR)
    PATH/test/<class>/...              optional: else a stratified 10% of train/ is held out as
                                       the test set, the same for every run, and a note says so

Every file is read by ``cnnzoo.data.images.load_image`` (``predict``'s RGB, transparency and
EXIF policy) at ``--image-size``. A file that cannot be decoded is skipped and counted; no class
folders, a class folder without images, or a class in val/ or test/ that train/ lacks is an
error. The decoded arrays are cached (``cnnzoo.data.cache``) under a key made of the folder's
listing (paths, sizes, modification times) and the image size: adding, removing or touching a
file decodes again. The mean and std are those of the training images.
"""

from __future__ import annotations

import functools
import hashlib
import os
import re
import sys
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from cnnzoo.data.cache import load_or_build
from cnnzoo.data.dataset import Dataset
from cnnzoo.data.images import IMAGE_SUFFIXES, load_image
from cnnzoo.data.split import stratified_split
from cnnzoo.errors import UserError

SPLITS = ("train", "val", "test")
TEST_PERCENT = 10  # of train/, held out as the test set when there is no test/
# fixed, not --seed: every run on the folder, and `eval` of its checkpoints, see one test set
HOLDOUT_SEED = 0

Files = dict[str, list[tuple[Path, int]]]  # split -> (file, class index), in a fixed order


def is_image_folder(path: str | os.PathLike) -> bool:
    """Whether ``--data path`` names an image folder (it has ``train/``)."""
    p = Path(path)
    return p.is_dir() and (p / "train").is_dir()


def layout_hint(path: Path) -> str | None:
    """Why a folder without ``train/`` is not an image folder, when it looks meant as one."""
    if any((path / s).is_dir() for s in ("val", "test")):
        return f"{path} has no train/ folder; an image folder is {path}/train/<class>/*.png|jpg"
    try:
        subdirs = [d for d in path.iterdir() if d.is_dir()]
        holds_images = any(_images_in(d) for d in subdirs)
    except (OSError, UserError):
        return None
    if holds_images:
        return f"{path} holds class folders directly; move them to {path}/train/<class>/"
    return None


def load_image_folder(root: Path, size: int, quiet: bool = False) -> Dataset:
    classes, files = _list_files(root)
    key = _listing_key(root, size, files)
    name = re.sub(r"[^A-Za-z0-9_.-]", "_", root.resolve().name)[:40] or "images"

    build = functools.partial(_decode, root, size, classes, files)
    arrays, meta = load_or_build(f"folder-{name}", key, build, quiet)
    skipped = meta["skipped"]
    if skipped and not quiet:  # said on every start, cached or not
        more = f" and {len(skipped) - 1} more" if len(skipped) > 1 else ""
        print(
            f"warning: skipped {len(skipped)} unreadable image file(s) in {root}: "
            f"{skipped[0]}{more}",
            file=sys.stderr,
        )
    train_x, train_y = arrays["train_x"], arrays["train_y"]
    if "test_x" in arrays:
        test_x, test_y = arrays["test_x"], arrays["test_y"]
    else:
        train_x, train_y, test_x, test_y = _hold_out_test(root, train_x, train_y, quiet)
    mean, std = channel_stats(train_x)
    return Dataset(
        name=root.resolve().name,
        train_x=train_x,
        train_y=train_y,
        test_x=test_x,
        test_y=test_y,
        classes=list(classes),
        mean=mean,
        std=std,
        source=f"{root} (image folder, {size}x{size})",
        val_x=arrays.get("val_x"),
        val_y=arrays.get("val_y"),
    )


def channel_stats(x: Tensor) -> tuple[tuple[float, ...], tuple[float, ...]]:
    """Per-channel mean and population std of uint8 NHWC images, in [0, 1] units. From a
    256-bin histogram per channel: exact, and no wider copy of the images."""
    levels = torch.arange(256, dtype=torch.float64) / 255.0
    means, stds = [], []
    for c in range(x.shape[-1]):
        counts = torch.bincount(x[..., c].reshape(-1), minlength=256).double()  # uint8 in
        m = float((counts * levels).sum() / counts.sum())
        var = float((counts * (levels - m) ** 2).sum() / counts.sum())
        means.append(m)
        stds.append(max(var**0.5, 1.0 / 255))  # a constant channel must not divide by zero
    return tuple(means), tuple(stds)


def _images_in(folder: Path) -> list[Path]:
    try:
        return sorted(
            f for f in folder.iterdir() if f.suffix.lower() in IMAGE_SUFFIXES and f.is_file()
        )
    except OSError as err:
        raise UserError(f"cannot read {folder}: {err.strerror or err}") from None


def _class_folders(folder: Path) -> list[str]:
    try:
        return sorted(d.name for d in folder.iterdir() if d.is_dir() and not d.name.startswith("."))
    except OSError as err:
        raise UserError(f"cannot read {folder}: {err.strerror or err}") from None


def _list_files(root: Path) -> tuple[list[str], Files]:
    """The class names (train/'s folders) and each split's image files, checked."""
    classes = _class_folders(root / "train")
    if not classes:
        raise UserError(
            f"{root / 'train'} holds no class folders; expected {root}/train/<class>/*.png|jpg"
        )
    index = {c: i for i, c in enumerate(classes)}
    files: Files = {}
    for split in SPLITS:
        folder = root / split
        if not folder.is_dir():
            continue
        names = _class_folders(folder)
        unknown = sorted(set(names) - set(index))
        if unknown:
            raise UserError(f"{folder} has classes that train/ lacks: {', '.join(unknown)}")
        if not names:
            raise UserError(f"{folder} holds no class folders")
        files[split] = []
        for name in names:
            images = _images_in(folder / name)
            if not images:
                raise UserError(
                    f"class folder {folder / name} holds no images ({', '.join(IMAGE_SUFFIXES)})"
                )
            files[split] += [(f, index[name]) for f in images]
    return classes, files


def _listing_key(root: Path, size: int, files: Files) -> str:
    """Names the decoded data: any file added, removed, resized or touched changes it."""
    h = hashlib.blake2b(f"{root.resolve()}|{size}".encode(), digest_size=32)
    for items in files.values():
        for f, label in items:
            st = f.stat()
            h.update(f"|{f.relative_to(root)}|{label}|{st.st_size}|{st.st_mtime_ns}".encode())
    return h.hexdigest()


def _decode(
    root: Path, size: int, classes: list[str], files: Files
) -> tuple[dict[str, Tensor], dict[str, Any]]:
    arrays: dict[str, Tensor] = {}
    skipped: list[str] = []
    for split, items in files.items():
        xs, ys = [], []
        for f, label in items:
            try:
                xs.append(load_image(f, size))  # (size, size, 3) uint8
            except UserError as err:
                skipped.append(f"{f.relative_to(root)} ({err})")
                continue
            ys.append(label)
        y = torch.tensor(ys, dtype=torch.int64)
        listed = {label for _, label in items}
        empty = sorted(listed - set(ys))
        if empty:  # every file of a class folder failed
            raise UserError(f"no readable images in {root / split / classes[empty[0]]}")
        arrays[f"{split}_x"] = torch.stack(xs)  # (N, size, size, 3)
        arrays[f"{split}_y"] = y
    return arrays, {"classes": classes, "skipped": skipped}


def _hold_out_test(
    root: Path, x: Tensor, y: Tensor, quiet: bool
) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """(train_x, train_y, test_x, test_y): a stratified TEST_PERCENT of train/ as the test set,
    at least as many images as classes (``stratified_split``'s shares: a class far smaller than
    the others may have none there)."""
    n, n_classes = y.numel(), int(y.unique().numel())
    n_test = max(n_classes, n * TEST_PERCENT // 100)
    if n < 2 * n_classes:
        raise UserError(
            f"{root} has no test/ folder and too few images ({n}) to hold one out; "
            f"add {root}/test/<class>/"
        )
    keep, test = stratified_split(y, n_test, seed=HOLDOUT_SEED)
    if not quiet:
        print(
            f"note: {root} has no test/ folder: {n_test} of its {n} train/ images "
            f"(stratified, {TEST_PERCENT}%) are held out as the test set",
            file=sys.stderr,
        )
    return x[keep], y[keep], x[test], y[test]
