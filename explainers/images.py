"""Turning whatever a user sends into an RGB PIL image, or one plain sentence saying why not.

Limits, checked before any pixel is decoded where the format allows:
- files over ``MAX_FILE_BYTES`` and images over ``MAX_PIXELS`` are refused (decompression bombs);
- images under ``MIN_SIDE`` pixels a side or longer than ``MAX_ASPECT`` times their width are refused;
- anything larger than ``WORKING_MAX_SIDE`` is downscaled once (the models see 224 px anyway).
"""

from __future__ import annotations

import io
import os
import warnings
from pathlib import Path

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

from .errors import UserError

ImageInput = str | os.PathLike | bytes | Image.Image | np.ndarray
MAX_PIXELS = 50_000_000  # a 45 MP camera photo fits; larger images are refused (decompression bombs)
MAX_FILE_BYTES = 50 * 1024 * 1024
WORKING_MAX_SIDE = 2048  # larger images are downscaled once on load; the model sees 224 px anyway
MIN_SIDE = 8
MAX_ASPECT = 20  # the models squash the whole image to a square; thinner strips are meaningless
SUPPORTED = "PNG, JPEG, GIF, WebP, AVIF, BMP or TIFF"

# Process-wide, on purpose: every PIL decode in this process (Gradio's uploads included) now raises
# DecompressionBombError above MAX_PIXELS (PIL errors at twice its limit and only warns in between;
# the warning band is refused by the explicit check below, so its warning is noise).
Image.MAX_IMAGE_PIXELS = MAX_PIXELS // 2
warnings.filterwarnings("ignore", category=Image.DecompressionBombWarning)


def open_image(source: ImageInput) -> Image.Image:
    """A path, bytes, PIL image or ``[H, W(, C)]`` array -> an RGB PIL image (EXIF-rotated).

    Raises UserError (one plain sentence) for anything that is not a readable image within the limits.
    """
    if isinstance(source, Image.Image):
        return to_rgb(source)
    if isinstance(source, np.ndarray):
        return to_rgb(_from_array(source))
    if isinstance(source, (bytes, bytearray, memoryview)):
        return to_rgb(_open_bytes(bytes(source), "the uploaded file"))
    if isinstance(source, (str, os.PathLike)):
        return to_rgb(_open_bytes(_read_file(source), _file_name(source)))
    raise UserError(f"an image must be a file path, bytes, a PIL image or an array, not {type(source).__name__}")


def _file_name(source) -> str:
    name = Path(os.fsdecode(source)).name if "\x00" not in os.fsdecode(source) else "the file"
    return _short(name or str(source))


def _short(text: str, limit: int = 80) -> str:
    return text if len(text) <= limit else text[: limit - 3] + "..."


def _read_file(source) -> bytes:
    shown = _short(os.fsdecode(source))
    try:
        path = Path(source)
        if not path.is_file():
            raise UserError(f"there is no image file at {shown!r}")
        size = path.stat().st_size
        if size > MAX_FILE_BYTES:
            raise UserError(f"{path.name} is too large ({size / 2**20:.0f} MB; at most {MAX_FILE_BYTES // 2**20} MB)")
        return path.read_bytes()
    except UserError:
        raise
    except PermissionError:
        raise UserError(f"the image file {shown!r} cannot be read (permission denied)") from None
    except (OSError, ValueError):  # a name too long, a NUL byte, a vanished file
        raise UserError(f"there is no readable image file at {shown!r}") from None


def _open_bytes(data: bytes, name: str) -> Image.Image:
    if not data:
        raise UserError(f"{name} is empty (0 bytes)")
    if len(data) > MAX_FILE_BYTES:
        raise UserError(f"{name} is too large ({len(data) / 2**20:.0f} MB; at most {MAX_FILE_BYTES // 2**20} MB)")
    try:
        image = Image.open(io.BytesIO(data))
        _check_size(image, name)  # before decoding a pixel
        if image.format == "JPEG" and max(image.size) > 2 * WORKING_MAX_SIDE:
            image.draft(image.mode, (WORKING_MAX_SIDE, WORKING_MAX_SIDE))  # decode at 1/2..1/8 scale
        image.seek(0)  # animated GIF/WebP/PNG: the first frame
        image.load()
    except UserError:
        raise
    except Image.DecompressionBombError:
        raise UserError(f"{name} is too large (over {MAX_PIXELS:,} pixels)") from None
    except UnidentifiedImageError:
        kind = _unsupported_kind(data, name)
        if kind:
            raise UserError(f"{name} is {kind}, which this app cannot read; convert it to PNG or JPEG first") from None
        raise UserError(f"{name} is not an image this app can read ({SUPPORTED})") from None
    except MemoryError:
        raise UserError(f"{name} is too large to decode") from None
    except Exception:  # noqa: BLE001 - any decoder failure on user data is the data's fault
        raise UserError(f"{name} could not be read as an image: it looks truncated or damaged") from None
    return image


def _check_size(image: Image.Image, name: str = "the image") -> None:
    width, height = image.size
    if width * height > MAX_PIXELS:
        raise UserError(f"{name} is too large ({width}x{height}; at most {MAX_PIXELS:,} pixels)")
    if min(width, height) < MIN_SIDE:
        raise UserError(f"{name} is too small ({width}x{height}); it needs at least {MIN_SIDE} pixels a side")
    if max(width, height) > MAX_ASPECT * min(width, height):
        raise UserError(
            f"{name} is too thin ({width}x{height}); its long side may be at most {MAX_ASPECT} times its short side"
        )


def _unsupported_kind(data: bytes, name: str) -> str | None:
    """Name formats PIL cannot read, from the first bytes (or the file name), for the message."""
    head = data[:1024]
    lower = head.lstrip().lower()
    suffix = Path(name).suffix.lower()
    if head[4:8] == b"ftyp":
        brand = head[8:12]
        if brand in (b"heic", b"heix", b"hevc", b"hevx", b"heim", b"heis", b"mif1", b"msf1"):
            return "a HEIC/HEIF image"
        if brand in (b"avif", b"avis"):
            return "an AVIF image this installation cannot decode"
        return "a video or MP4-family file, not a still image"
    if b"<svg" in lower or suffix in (".svg", ".svgz"):
        return "an SVG (vector) image"
    if head.startswith(b"%PDF"):
        return "a PDF document"
    if head.startswith((b"\xff\x0a", b"\x00\x00\x00\x0cJXL ")) or suffix == ".jxl":
        return "a JPEG XL image"
    if lower.startswith((b"<!doctype html", b"<html")):
        return "a web page (HTML)"
    if suffix in (".heic", ".heif"):
        return "a HEIC/HEIF image"
    if suffix in (".cr2", ".cr3", ".nef", ".arw", ".dng", ".raf", ".orf", ".rw2"):
        return "a camera RAW file"
    return None


def _from_array(array: np.ndarray) -> Image.Image:
    if array.ndim == 3 and array.shape[2] == 1:
        array = array[:, :, 0]
    if array.ndim not in (2, 3) or (array.ndim == 3 and array.shape[2] not in (3, 4)):
        raise UserError(f"an image array must be HxW, HxWx3 or HxWx4, not {tuple(array.shape)}")
    if array.dtype.kind not in "buif":
        raise UserError(f"an image array must hold numbers, not {array.dtype}")
    height, width = array.shape[:2]
    if height * width > MAX_PIXELS:
        raise UserError(f"the image array is too large ({width}x{height}; at most {MAX_PIXELS:,} pixels)")
    if array.dtype == np.bool_:
        array = array.astype(np.uint8) * 255
    elif array.dtype != np.uint8:
        array = np.nan_to_num(array.astype(np.float64), nan=0.0, posinf=255.0, neginf=0.0)
        if array.size and array.max() <= 1.0 and array.dtype.kind == "f":
            array = array * 255
        array = np.clip(array, 0, 255).round().astype(np.uint8)
    return Image.fromarray(np.ascontiguousarray(array))


def to_rgb(image: Image.Image) -> Image.Image:
    """Any PIL mode -> RGB; transparency composited on white; EXIF orientation applied; downscaled
    to at most ``WORKING_MAX_SIDE`` a side. Raises UserError for images outside the limits."""
    _check_size(image)
    try:
        image.load()
    except Exception:  # noqa: BLE001 - a lazily opened PIL image from a caller, truncated on disk
        raise UserError("the image could not be read: it looks truncated or damaged") from None
    try:
        image = ImageOps.exif_transpose(image)
    except Exception:  # noqa: BLE001 - broken EXIF: keep the pixels as stored
        pass
    try:
        image = _convert(image)
    except MemoryError:
        raise UserError("the image is too large to convert") from None
    except (OSError, ValueError, TypeError) as error:
        raise UserError(f"the image's colour mode {image.mode} cannot be converted to RGB ({error})") from None
    _check_size(image)  # the rotation cannot change the limits, but a conversion must not either
    if max(image.size) > WORKING_MAX_SIDE:
        image = image.copy()
        image.thumbnail((WORKING_MAX_SIDE, WORKING_MAX_SIDE), Image.Resampling.BICUBIC)
    return image


def _convert(image: Image.Image) -> Image.Image:
    mode = image.mode
    if mode.startswith("I;16"):
        # 16-bit grey: the full 0..65535 range maps to 0..255 (PIL's own convert would clip at 255).
        array = np.asarray(image).astype(np.float64) / 257.0
        image = Image.fromarray(np.clip(array, 0, 255).round().astype(np.uint8))
    elif mode in ("I", "F"):
        image = Image.fromarray(_scale_to_bytes(np.asarray(image).astype(np.float64), mode))
    elif mode == "LAB":
        from PIL import ImageCms

        lab_to_srgb = ImageCms.buildTransformFromOpenProfiles(
            ImageCms.createProfile("LAB"), ImageCms.createProfile("sRGB"), "LAB", "RGB"
        )
        converted = ImageCms.applyTransform(image, lab_to_srgb)  # None only with inPlace=True
        assert converted is not None
        image = converted
    if image.mode == "La":  # premultiplied grey + alpha: PIL converts it only to LA
        image = image.convert("LA")
    if image.mode in ("P", "L", "RGB", "1") and "transparency" in image.info:
        image = image.convert("RGBA")
    if image.mode in ("RGBA", "LA", "PA", "La", "RGBa"):
        image = image.convert("RGBA")
        background = Image.new("RGBA", image.size, (255, 255, 255, 255))
        image = Image.alpha_composite(background, image)
    return image.convert("RGB")


def _scale_to_bytes(array: np.ndarray, mode: str) -> np.ndarray:
    """32-bit int or float grey -> uint8: kept where it already is 0..255 (or 0..1 for floats),
    0..65535 scaled as 16-bit, anything else stretched from its minimum to its maximum."""
    finite = np.isfinite(array)
    array = np.where(finite, array, 0.0)
    low, high = (float(array[finite].min()), float(array[finite].max())) if finite.any() else (0.0, 0.0)
    if mode == "F" and low >= 0 and high <= 1:
        array = array * 255
    elif low >= 0 and high <= 255:
        pass
    elif low >= 0 and high <= 65535:
        array = array / 257.0
    elif high > low:
        array = (array - low) / (high - low) * 255
    else:
        array = np.zeros_like(array)
    return np.clip(array, 0, 255).round().astype(np.uint8)
