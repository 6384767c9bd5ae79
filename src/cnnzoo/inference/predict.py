"""Classify image files with a trained checkpoint.

Image policy (``load_image``), applied to every file whatever its size and mode:

1. Decode with Pillow (PNG, JPEG, GIF, BMP, WebP, TIFF: ``FORMATS``; the first frame of an
   animation) and apply the EXIF orientation, so a photo is classified the way it is displayed.
2. Convert to RGB. Grayscale is repeated over the three channels; a palette is expanded;
   **transparency is composited onto white** (RGBA, LA and palette images with a transparent
   colour), so a transparent background does not turn into black; CMYK/YCbCr are converted.
3. Resize so that the **shorter side is 32 pixels** (bicubic, with Pillow's antialiasing when
   shrinking), keeping the aspect ratio, then **crop the central 32×32**. A 32×32 image is
   used as it is, pixel for pixel. (A side more than ``MAX_ASPECT`` times the other is first
   cut to that ratio around the centre, which the crop keeps.)
4. Normalise exactly as in training: ``(pixel / 255 - mean) / std`` per channel with the mean
   and std stored in the checkpoint (``cnnzoo.data.normalize``, the function the training loader
   uses).
"""

from __future__ import annotations

import os
import warnings
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from cnnzoo.errors import UserError

SIZE = 32
# The formats predict opens (Pillow's names; "JPEG" includes the MPO JPEGs of many cameras).
# Pillow knows more, but each is more decoder code facing the file, and EPS runs Ghostscript.
FORMATS = ("PNG", "JPEG", "GIF", "BMP", "WEBP", "TIFF")
# A side longer than this many times the other is first cut around the centre (the crop keeps
# only the centre anyway): resizing a 1 x 1,000,000 strip whole would build a 32 x 32,000,000
# image (3 GB, many seconds) to keep 32 x 32 of it.
MAX_ASPECT = 64


def load_image(path: str | os.PathLike, size: int = SIZE) -> torch.Tensor:
    """Read one image file as a uint8 (size, size, 3) RGB tensor, following the module's policy.

    Raises ``UserError`` with a one-line reason when the file is missing, is not an image, or
    cannot be decoded (truncated, corrupt, too large).
    """
    from PIL import Image, ImageOps, UnidentifiedImageError

    path = Path(path)
    if not path.exists():
        raise UserError("no such file")
    if path.is_dir():
        raise UserError("is a directory, not an image")
    if not path.is_file():  # opening a pipe or a device would wait for data forever
        raise UserError("not a regular file (a pipe, a device or a socket)")
    try:
        with warnings.catch_warnings():
            # Pillow warns about damaged metadata it skips (EXIF, TIFF tags): the pixels still
            # decode, so the warning would only be a second stderr line. Between
            # MAX_IMAGE_PIXELS and twice that it only warns of a decompression bomb: refuse
            # there too, rather than spend seconds and gigabytes on it.
            warnings.simplefilter("ignore")
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            with Image.open(path, formats=FORMATS) as im:
                im.seek(0)
                im.load()  # decode now: truncated or corrupt data fails here, not later
                im = ImageOps.exif_transpose(im)
                rgb = _to_rgb(im)
    except UnidentifiedImageError:
        raise UserError(f"not an image in a format cnnzoo reads ({', '.join(FORMATS)})") from None
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as err:
        raise UserError(f"image too large: {err}") from None
    except (OSError, ValueError, SyntaxError, EOFError) as err:  # Pillow's decoders use these
        raise UserError(f"cannot decode image: {err}") from None
    w, h = rgb.size
    if w < 1 or h < 1:
        raise UserError("empty image")
    if max(w, h) > MAX_ASPECT * min(w, h):  # only the centre is kept: cut the long side first
        rgb = _centre(rgb, min(w, h), MAX_ASPECT * min(w, h))
        w, h = rgb.size
    scale = size / min(w, h)
    new_w, new_h = max(size, round(w * scale)), max(size, round(h * scale))
    if (new_w, new_h) != (w, h):
        rgb = rgb.resize((new_w, new_h), Image.Resampling.BICUBIC)
    left, top = (new_w - size) // 2, (new_h - size) // 2
    rgb = rgb.crop((left, top, left + size, top + size))
    return torch.from_numpy(np.asarray(rgb, dtype=np.uint8).copy())


def _centre(im, short: int, long: int):
    """The central ``long`` x ``short`` (or ``short`` x ``long``) part of a very long image."""
    w, h = im.size
    if w > h:
        left = (w - long) // 2
        return im.crop((left, 0, left + long, h))
    top = (h - long) // 2
    return im.crop((0, top, w, top + long))


def _to_rgb(im):
    from PIL import Image

    if im.mode == "P" and "transparency" in im.info:
        im = im.convert("RGBA")
    if im.mode in ("RGBA", "LA", "PA", "RGBa", "La"):
        im = im.convert("RGBA")
        background = Image.new("RGBA", im.size, (255, 255, 255, 255))
        return Image.alpha_composite(background, im).convert("RGB")
    if im.mode in ("I", "I;16", "I;16B", "I;16L", "F"):  # 16-bit / float grayscale: rescale
        a = np.asarray(im, dtype=np.float64)
        lo, hi = float(a.min()), float(a.max())
        a = np.zeros_like(a) if hi <= lo else (a - lo) / (hi - lo) * 255.0
        im = Image.fromarray(a.round().astype(np.uint8), mode="L")
    return im.convert("RGB")


@dataclass
class Prediction:
    file: str
    top_k: list[tuple[str, float]] | None = None  # (class, probability), most likely first
    error: str | None = None

    def to_dict(self) -> dict[str, Any]:
        if self.error is not None:
            return {"file": self.file, "error": self.error}
        assert self.top_k is not None
        return {"file": self.file, "top_k": [{"class": c, "prob": p} for c, p in self.top_k]}


class Predictor:
    """A checkpoint ready for inference: model in eval mode, its normalisation and class names."""

    def __init__(self, checkpoint: str | os.PathLike | dict, device: str = "cpu") -> None:
        from cnnzoo.train import load_checkpoint, model_from_checkpoint
        from cnnzoo.train.runtime import resolve_device

        ckpt = checkpoint if isinstance(checkpoint, dict) else load_checkpoint(checkpoint)
        self.device = resolve_device(device)
        self.model = model_from_checkpoint(ckpt).to(self.device)
        self.num_classes = int(ckpt["num_classes"])
        self.mean, self.std = checkpoint_normalization(ckpt)
        classes = ckpt.get("classes")
        if not classes or len(classes) != self.num_classes:
            classes = [f"class{i}" for i in range(self.num_classes)]
        self.classes = [str(c) for c in classes]
        self.model_name = str(ckpt["model_name"])

    @torch.no_grad()
    def probabilities(self, images: torch.Tensor) -> torch.Tensor:
        """uint8 NHWC (N, 32, 32, 3) -> float32 (N, classes) softmax probabilities (CPU)."""
        from cnnzoo.data import normalize

        x = normalize(images.to(self.device), self.mean, self.std, channels_last=False)
        return torch.softmax(self.model(x).float(), dim=1).cpu()

    def top_k(self, probs: torch.Tensor, k: int) -> list[list[tuple[str, float]]]:
        k = min(k, self.num_classes)
        values, indices = probs.topk(k, dim=1)
        return [
            [(self.classes[i], float(p)) for p, i in zip(vs.tolist(), ix.tolist(), strict=True)]
            for vs, ix in zip(values, indices, strict=True)
        ]


def checkpoint_normalization(
    ckpt: dict[str, Any],
) -> tuple[tuple[float, ...], tuple[float, ...]]:
    """The per-channel mean and std the checkpoint was trained with."""
    if ckpt.get("mean") is not None and ckpt.get("std") is not None:
        return tuple(float(v) for v in ckpt["mean"]), tuple(float(v) for v in ckpt["std"])
    from cnnzoo.data import DATASETS

    name = ckpt.get("config", {}).get("dataset", "cifar10")
    if name in DATASETS:  # older checkpoints without stored statistics
        return DATASETS[name].mean, DATASETS[name].std
    raise UserError("the checkpoint stores no normalisation (mean/std)")


def _chunks(items: Sequence[str], n: int) -> Iterator[Sequence[str]]:
    for i in range(0, len(items), n):
        yield items[i : i + n]


def predict_files(
    predictor: Predictor, files: Sequence[str], top_k: int = 5, batch_size: int = 256
) -> Iterator[Prediction]:
    """Yield one ``Prediction`` per file, in order; a file that cannot be read gets ``error``
    set instead of stopping the others. Images are decoded and classified ``batch_size`` at a
    time, so memory stays bounded however many files there are."""
    if top_k < 1:
        raise UserError(f"--top-k must be at least 1, got {top_k}")
    if batch_size < 1:
        raise UserError(f"--batch-size must be at least 1, got {batch_size}")
    for chunk in _chunks(list(files), batch_size):
        results: list[Prediction] = []
        good: list[torch.Tensor] = []
        slots: list[int] = []
        for f in chunk:
            try:
                img = load_image(f)
            except UserError as err:
                results.append(Prediction(str(f), error=str(err)))
                continue
            slots.append(len(results))
            results.append(Prediction(str(f)))
            good.append(img)
        if good:
            ranked = predictor.top_k(predictor.probabilities(torch.stack(good)), top_k)
            for slot, tk in zip(slots, ranked, strict=True):
                results[slot].top_k = tk
        yield from results
