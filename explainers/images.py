"""Turning whatever a user sends into an RGB PIL image, or one plain sentence saying why not."""
from __future__ import annotations

import io
import os
from pathlib import Path
from typing import Union

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

from .errors import UserError

ImageInput = Union[str, os.PathLike, bytes, Image.Image, np.ndarray]
MAX_PIXELS = 40_000_000  # larger images are refused (decompression bombs); PIL's own limit is ~89 M
WORKING_MAX_SIDE = 2048  # larger images are downscaled once on load; the model sees 224 px anyway
MIN_SIDE = 8


def open_image(source: ImageInput) -> Image.Image:
    """A path, bytes, PIL image or ``[H, W(, C)]`` array -> an RGB PIL image (EXIF-rotated)."""
    if isinstance(source, Image.Image):
        image = source
    elif isinstance(source, np.ndarray):
        image = _from_array(source)
    elif isinstance(source, (bytes, bytearray)):
        image = _open_bytes(bytes(source), "the uploaded data")
    elif isinstance(source, (str, os.PathLike)):
        path = Path(source)
        if not path.is_file():
            raise UserError(f"no image file at {str(source)!r}")
        image = _open_bytes(path.read_bytes(), path.name)
    else:
        raise UserError(f"an image must be a file path, bytes, a PIL image or an array, not {type(source).__name__}")
    return to_rgb(image)


def _open_bytes(data: bytes, name: str) -> Image.Image:
    if not data:
        raise UserError(f"{name} is empty (0 bytes)")
    Image.MAX_IMAGE_PIXELS = MAX_PIXELS
    try:
        image = Image.open(io.BytesIO(data))
        image.seek(0)  # animated GIF/WebP: the first frame
        image.load()
    except Image.DecompressionBombError:
        raise UserError(f"{name} is too large (over {MAX_PIXELS:,} pixels)") from None
    except UnidentifiedImageError:
        raise UserError(f"{name} is not an image format this app can read (PNG, JPEG, GIF, WebP, BMP, TIFF)") from None
    except (OSError, SyntaxError, ValueError) as error:
        raise UserError(f"{name} could not be read as an image ({error})") from None
    return image


def _from_array(array: np.ndarray) -> Image.Image:
    if array.ndim == 3 and array.shape[2] == 1:
        array = array[:, :, 0]
    if array.ndim not in (2, 3) or (array.ndim == 3 and array.shape[2] not in (3, 4)):
        raise UserError(f"an image array must be HxW, HxWx3 or HxWx4, not {tuple(array.shape)}")
    if array.dtype != np.uint8:
        array = np.nan_to_num(array.astype(np.float64))
        if array.max(initial=0) <= 1.0:
            array = array * 255
        array = np.clip(array, 0, 255).astype(np.uint8)
    return Image.fromarray(array)


def to_rgb(image: Image.Image) -> Image.Image:
    """Any PIL mode -> RGB; transparency composited on white; EXIF orientation applied."""
    if image.width * image.height > MAX_PIXELS:
        raise UserError(f"the image is too large ({image.width}x{image.height}; at most {MAX_PIXELS:,} pixels)")
    if min(image.size) < MIN_SIDE:
        raise UserError(f"the image is too small ({image.width}x{image.height}); it needs at least {MIN_SIDE} pixels a side")
    image = ImageOps.exif_transpose(image)
    if image.mode in ("I;16", "I;16B", "I;16L", "I", "F"):
        array = np.asarray(image, dtype=np.float64)
        low, high = float(array.min()), float(array.max())
        array = (array - low) / (high - low) * 255 if high > low else np.zeros_like(array)
        image = Image.fromarray(array.astype(np.uint8))
    if image.mode == "P" and "transparency" in image.info:
        image = image.convert("RGBA")
    if image.mode in ("RGBA", "LA", "PA"):
        image = image.convert("RGBA")
        background = Image.new("RGBA", image.size, (255, 255, 255, 255))
        image = Image.alpha_composite(background, image)
    image = image.convert("RGB")
    if max(image.size) > WORKING_MAX_SIDE:
        image = image.copy()
        image.thumbnail((WORKING_MAX_SIDE, WORKING_MAX_SIDE), Image.BICUBIC)
    return image
