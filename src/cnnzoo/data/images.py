"""Image files to uint8 RGB arrays: the one decode policy of ``predict`` and of image folders.

Applied to every file whatever its size and mode (``load_image``):

1. Decode with Pillow (PNG, JPEG, GIF, BMP, WebP, TIFF: ``FORMATS``; the first frame of an
   animation) and apply the EXIF orientation, so a photo is used the way it is displayed.
2. Convert to RGB. Grayscale is repeated over the three channels; a palette is expanded;
   **transparency is composited onto white** (RGBA, LA and palette images with a transparent
   colour), so a transparent background does not turn into black; CMYK/YCbCr are converted.
3. Resize so that the **shorter side is ``size`` pixels** (32 unless a run was trained at another
   ``--image-size``; bicubic, with Pillow's antialiasing when shrinking), keeping the aspect
   ratio, then **crop the central size×size**. An image already that size is used pixel for
   pixel. (A side more than ``MAX_ASPECT`` times the other is first cut to that ratio around the
   centre, which the crop keeps.)
"""

from __future__ import annotations

import os
import warnings
from pathlib import Path

import numpy as np
import torch

from cnnzoo.errors import UserError

SIZE = 32  # CIFAR's side, and the default --image-size
# the suffixes read from image folders (as torchvision's ImageFolder, plus .gif)
IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".gif", ".webp", ".tif", ".tiff", ".ppm",
                  ".pgm")  # fmt: skip
# The formats opened (Pillow's names; "JPEG" includes the MPO JPEGs of many cameras; PPM covers
# .ppm/.pgm). Pillow knows more, but each is more decoder code facing the file, and EPS runs
# Ghostscript.
FORMATS = ("PNG", "JPEG", "GIF", "BMP", "WEBP", "TIFF", "PPM")
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
