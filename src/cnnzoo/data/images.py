"""Image files to uint8 RGB arrays: the one decode policy of ``predict`` and of image folders.

Applied to every file whatever its size and mode (``load_image``):

1. Decode with Pillow (PNG, JPEG, GIF, BMP, WebP, TIFF, ...; the first frame of an animation) and
   apply the EXIF orientation, so a photo is used the way it is displayed.
2. Convert to RGB. Grayscale is repeated over the three channels; a palette is expanded;
   **transparency is composited onto white** (RGBA, LA and palette images with a transparent
   colour), so a transparent background does not turn into black; CMYK/YCbCr are converted.
3. Resize so that the **shorter side is ``size`` pixels** (32 unless a run was trained at another
   ``--image-size``; bicubic, with Pillow's antialiasing when shrinking), keeping the aspect
   ratio, then **crop the central size×size**. An image already that size is used pixel for
   pixel.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import torch

from cnnzoo.errors import UserError

SIZE = 32  # CIFAR's side, and the default --image-size
# the suffixes read from image folders (as torchvision's ImageFolder, plus .gif)
IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".gif", ".webp", ".tif", ".tiff", ".ppm",
                  ".pgm")  # fmt: skip


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
    try:
        with Image.open(path) as im:
            im.seek(0)
            im.load()  # decode now: truncated or corrupt data fails here, not later
            im = ImageOps.exif_transpose(im)
            rgb = _to_rgb(im)
    except UnidentifiedImageError:
        raise UserError("not an image Pillow can read") from None
    except Image.DecompressionBombError as err:
        raise UserError(f"image too large: {err}") from None
    except (OSError, ValueError, SyntaxError, EOFError) as err:  # Pillow's decoders use these
        raise UserError(f"cannot decode image: {err}") from None
    w, h = rgb.size
    if w < 1 or h < 1:
        raise UserError("empty image")
    scale = size / min(w, h)
    new_w, new_h = max(size, round(w * scale)), max(size, round(h * scale))
    if (new_w, new_h) != (w, h):
        rgb = rgb.resize((new_w, new_h), Image.Resampling.BICUBIC)
    left, top = (new_w - size) // 2, (new_h - size) // 2
    rgb = rgb.crop((left, top, left + size, top + size))
    return torch.from_numpy(np.asarray(rgb, dtype=np.uint8).copy())


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
