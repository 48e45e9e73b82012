"""Every kind of image a user can send: converted correctly, or refused with one plain sentence.

Model-free: these call ``explainers.images.open_image`` directly (no model load).
"""

from __future__ import annotations

import io
import os

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from PIL import Image

from explainers.errors import UserError
from explainers.images import MAX_ASPECT, MAX_FILE_BYTES, MAX_PIXELS, MIN_SIDE, WORKING_MAX_SIDE, open_image

RED = (200, 30, 10)


def encode(image: Image.Image, fmt: str = "PNG", **options) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, fmt, **options)
    return buffer.getvalue()


def refused(source, *words: str) -> str:
    """open_image(source) raises a UserError: one line, no traceback text, naming ``words``."""
    with pytest.raises(UserError) as caught:
        open_image(source)
    message = str(caught.value)
    assert message and "\n" not in message and "Traceback" not in message, message
    for word in words:
        assert word.lower() in message.lower(), message
    return message


def assert_rgb(image: Image.Image, size=None, pixel=None, tolerance: int = 3) -> None:
    assert image.mode == "RGB"
    if size is not None:
        assert image.size == size
    if pixel is not None:
        got = image.getpixel((image.width // 2, image.height // 2))
        assert all(abs(a - b) <= tolerance for a, b in zip(got, pixel)), (got, pixel)


# ------------------------------------------------------------------------------------------
# Modes


@pytest.mark.parametrize("mode", ["RGB", "RGBA", "RGBX", "RGBa", "CMYK", "YCbCr", "HSV", "LAB"])
def test_colour_modes_keep_the_colour(mode):
    source = Image.new("RGB", (40, 30), RED).convert(mode)
    assert_rgb(open_image(source), (40, 30), RED, tolerance=6)


@pytest.mark.parametrize("mode", ["L", "LA", "La", "1", "I", "F", "P", "PA"])
def test_grey_and_palette_modes(mode):
    grey = Image.new("L", (40, 30), 255 if mode == "1" else 120)
    source = grey.convert("LA").convert("La") if mode == "La" else grey.convert(mode)
    value = 255 if mode == "1" else 120
    assert_rgb(open_image(source), (40, 30), (value,) * 3, tolerance=1)


def test_16_bit_grey_uses_the_whole_range():
    # PIL's own convert("L") clips 16-bit values at 255; 32768/65535 must come out mid-grey.
    array = np.full((30, 40), 32768, dtype=np.uint16)
    for fmt in ("PNG", "TIFF"):
        image = Image.open(io.BytesIO(encode(Image.fromarray(array), fmt)))
        assert image.mode.startswith("I")
        assert_rgb(open_image(encode(Image.fromarray(array), fmt)), (40, 30), (128, 128, 128), tolerance=1)


def test_float_images_in_0_1_and_out_of_range():
    assert_rgb(open_image(Image.fromarray(np.full((20, 20), 0.5, np.float32))), pixel=(128,) * 3, tolerance=1)
    ramp = np.tile(np.linspace(-1000, 1000, 20, dtype=np.float32), (20, 1))  # stretched to 0..255
    out = np.asarray(open_image(Image.fromarray(ramp)))
    assert out[:, 0].max() == 0 and out[:, -1].min() == 255
    assert np.asarray(open_image(Image.fromarray(np.full((20, 20), np.nan, np.float32)))).max() == 0


def test_transparency_is_composited_on_white():
    rgba = Image.new("RGBA", (20, 20), (255, 0, 0, 0))
    assert_rgb(open_image(rgba), pixel=(255, 255, 255))
    half = Image.new("RGBA", (20, 20), (0, 0, 0, 128))
    assert_rgb(open_image(encode(half)), pixel=(127, 127, 127), tolerance=2)
    assert_rgb(open_image(Image.new("LA", (20, 20), (0, 0))), pixel=(255, 255, 255))


def test_palette_with_transparency():
    palette = Image.new("P", (20, 20), 0)
    palette.putpalette([255, 0, 0, 0, 255, 0] + [0] * 762)
    palette.paste(1, (0, 0, 10, 20))  # left half green, right half index 0 (transparent red)
    data = encode(palette, transparency=0)
    out = open_image(data)
    assert out.getpixel((2, 10)) == (0, 255, 0)
    assert out.getpixel((15, 10)) == (255, 255, 255)
    gif = open_image(encode(palette, "GIF", transparency=0))
    assert gif.getpixel((15, 10)) == (255, 255, 255)


def test_grey_png_with_a_transparent_value():
    assert_rgb(open_image(encode(Image.new("L", (20, 20), 7), transparency=7)), pixel=(255, 255, 255))


# ------------------------------------------------------------------------------------------
# EXIF, animation, formats


@pytest.mark.parametrize("orientation,size", [(1, (40, 20)), (3, (40, 20)), (6, (20, 40)), (8, (20, 40))])
def test_exif_orientation_is_honoured(orientation, size):
    image = Image.new("RGB", (40, 20), (0, 0, 0))
    image.paste((255, 255, 255), (0, 0, 10, 20))  # a white band on the stored left edge
    exif = image.getexif()
    exif[0x0112] = orientation
    out = open_image(encode(image, "JPEG", exif=exif.tobytes(), quality=95))
    assert out.size == size
    # where the white band ends up: left (1), right (3: 180°), top (6: 90° CW), bottom (8: 90° CCW)
    corner = {1: (2, 10), 3: (37, 10), 6: (10, 2), 8: (10, 37)}[orientation]
    assert min(out.getpixel(corner)) > 200


def test_broken_exif_does_not_stop_the_image():
    image = Image.new("RGB", (40, 20), RED)
    exif = image.getexif()
    exif[0x0112] = 99  # not an orientation
    assert_rgb(open_image(encode(image, "JPEG", exif=exif.tobytes(), quality=95)), (40, 20), RED, tolerance=8)


@pytest.mark.parametrize("fmt,options", [("GIF", {}), ("WEBP", {"lossless": True}), ("PNG", {})])
def test_animations_give_their_first_frame(fmt, options):
    frames = [Image.new("RGB", (20, 20), colour) for colour in [(255, 0, 0), (0, 0, 255), (0, 255, 0)]]
    data = encode(frames[0], fmt, save_all=True, append_images=frames[1:], duration=100, **options)
    assert Image.open(io.BytesIO(data)).n_frames == 3
    assert_rgb(open_image(data), (20, 20), (255, 0, 0), tolerance=2)
    animated = Image.open(io.BytesIO(data))
    animated.seek(2)  # a PIL image left on a later frame is taken as it is
    assert_rgb(open_image(animated), (20, 20))


@pytest.mark.parametrize("fmt", ["JPEG", "PNG", "BMP", "TIFF", "WEBP", "GIF", "PPM", "ICO"])
def test_common_formats_read(fmt, tmp_path):
    path = tmp_path / f"photo.{fmt.lower()}"
    Image.new("RGB", (32, 32), RED).save(path, fmt)
    assert_rgb(open_image(path), (32, 32), RED, tolerance=12)
    assert_rgb(open_image(str(path)), (32, 32))


def test_paths_bytes_and_arrays_agree(tmp_path):
    path = tmp_path / "x.png"
    Image.new("RGB", (16, 12), RED).save(path)
    a, b, c = open_image(path), open_image(path.read_bytes()), open_image(bytearray(path.read_bytes()))
    d = open_image(np.asarray(Image.open(path)))
    assert a.tobytes() == b.tobytes() == c.tobytes() == d.tobytes()


# ------------------------------------------------------------------------------------------
# Sizes


@pytest.mark.parametrize("size", [(1, 1), (1, 100), (MIN_SIDE - 1, 50), (0, 0)])
def test_tiny_images_are_refused(size):
    if size == (0, 0):
        refused(np.zeros((0, 0, 3), np.uint8), "too small")
    else:
        refused(encode(Image.new("RGB", size)), "too small", f"{MIN_SIDE} pixels")


def test_thin_images_are_refused_clearly_and_the_limit_itself_passes():
    refused(encode(Image.new("RGB", (MAX_ASPECT * 10 + 1, 10))), "too thin", f"{MAX_ASPECT} times")
    refused(Image.new("RGB", (10, MAX_ASPECT * 10 + 1)), "too thin")
    assert_rgb(open_image(encode(Image.new("RGB", (MAX_ASPECT * 10, 10)))), (MAX_ASPECT * 10, 10))
    assert_rgb(open_image(Image.new("RGB", (MIN_SIDE, MIN_SIDE))), (MIN_SIDE, MIN_SIDE))


def test_large_images_are_downscaled_keeping_the_aspect():
    out = open_image(Image.new("RGB", (5000, 2500), RED))
    assert out.size == (WORKING_MAX_SIDE, WORKING_MAX_SIDE // 2)
    jpeg = open_image(encode(Image.new("RGB", (6000, 4000), RED), "JPEG"))  # decoded in draft mode
    assert max(jpeg.size) == WORKING_MAX_SIDE and abs(jpeg.width / jpeg.height - 1.5) < 0.01
    assert_rgb(jpeg, pixel=RED, tolerance=8)


def test_exif_rotated_large_jpeg_is_downscaled_and_rotated():
    image = Image.new("RGB", (4200, 2100), RED)
    exif = image.getexif()
    exif[0x0112] = 6
    out = open_image(encode(image, "JPEG", exif=exif.tobytes()))
    assert out.size == (WORKING_MAX_SIDE // 2, WORKING_MAX_SIDE)


def test_decompression_bombs_are_refused_before_decoding():
    side = int(MAX_PIXELS**0.5) + 100  # a few kB of PNG that would decode to > MAX_PIXELS
    bomb = encode(Image.new("1", (side, side)))
    assert len(bomb) < 1_000_000
    refused(bomb, "too large")
    refused(encode(Image.new("1", (4 * side, 4 * side))), "too large")  # past PIL's own 2x limit
    refused(Image.new("1", (side, side)), "too large")  # a PIL image already opened elsewhere


def test_arrays_too_large_are_refused_before_conversion():
    huge = np.broadcast_to(np.zeros(1, np.float32), (MAX_PIXELS // 1000 + 1, 1000))
    refused(huge, "too large")


def test_files_over_the_byte_limit_are_refused(tmp_path):
    path = tmp_path / "big.png"
    with open(path, "wb") as f:
        f.truncate(MAX_FILE_BYTES + 1)  # sparse: costs no disk
    refused(path, "too large", "MB")


# ------------------------------------------------------------------------------------------
# Not images


def test_zero_bytes(tmp_path):
    refused(b"", "empty", "0 bytes")
    path = tmp_path / "empty.jpg"
    path.write_bytes(b"")
    assert refused(path, "empty").startswith("empty.jpg")


@pytest.mark.parametrize("fmt", ["JPEG", "PNG", "GIF", "WEBP"])
@pytest.mark.parametrize("keep", [0.1, 0.5, 0.9])
def test_truncated_files(fmt, keep):
    noise = np.random.default_rng(0).integers(0, 255, (120, 160, 3), dtype=np.uint8)
    data = encode(Image.fromarray(noise), fmt)
    cut = data[: max(16, int(len(data) * keep))]
    message = refused(cut)
    assert "truncated" in message or "not an image" in message


def test_truncated_file_opened_lazily_by_the_caller(tmp_path):
    path = tmp_path / "cut.png"
    noise = np.random.default_rng(1).integers(0, 255, (60, 80, 3), dtype=np.uint8)
    path.write_bytes(encode(Image.fromarray(noise))[:2000])
    lazy = Image.open(path)  # opens (header only); decoding fails later
    refused(lazy, "truncated")


@pytest.mark.parametrize(
    "data,words",
    [
        (b"hello, this is a text file\n", ["not an image", "PNG"]),
        (b"PK\x03\x04" + b"\x00" * 200, ["not an image"]),
        (b'<?xml version="1.0"?>\n<svg xmlns="http://www.w3.org/2000/svg" width="10" height="10"/>', ["SVG"]),
        (b'<svg xmlns="http://www.w3.org/2000/svg"><rect width="10" height="10"/></svg>', ["SVG"]),
        (b"\x00\x00\x00\x18ftypheic\x00\x00\x00\x00mif1heic" + b"\x00" * 64, ["HEIC"]),
        (b"\x00\x00\x00\x18ftypmif1\x00\x00\x00\x00mif1heic" + b"\x00" * 64, ["HEIC"]),
        (b"\x00\x00\x00\x18ftypisom\x00\x00\x02\x00isomiso2" + b"\x00" * 64, ["video"]),
        (b"%PDF-1.7\n" + b"\x00" * 64, ["PDF"]),
        (b"<!DOCTYPE html><html><body>hi</body></html>", ["HTML"]),
        (b"\xff\x0a" + b"\x00" * 64, ["JPEG XL"]),
    ],
)
def test_non_images_and_unsupported_formats_are_named(data, words):
    message = refused(data, *words)
    if "not an image" not in message:
        assert "cannot read" in message and "convert it to PNG or JPEG" in message


def test_unsupported_format_named_from_the_file_name(tmp_path):
    path = tmp_path / "IMG_0001.HEIC"
    path.write_bytes(b"\x00" * 64)
    assert refused(path, "HEIC").startswith("IMG_0001.HEIC")


@pytest.mark.parametrize(
    "source,words",
    [
        ("/no/such/file.png", ["no image file", "/no/such/file.png"]),
        ("a\x00b.png", ["no image file"]),
        ("x" * 5000, ["no readable image file"]),
        (".", ["no image file"]),
        (12, ["file path, bytes", "int"]),
        (None, ["NoneType"]),
        ([[1, 2], [3, 4]], ["list"]),
    ],
)
def test_bad_sources(source, words):
    message = refused(source, *words)
    assert len(message) < 300


def test_unreadable_file(tmp_path):
    if os.geteuid() == 0:
        pytest.skip("root reads every file")
    path = tmp_path / "secret.png"
    path.write_bytes(encode(Image.new("RGB", (10, 10))))
    path.chmod(0)
    refused(path, "permission denied")


@pytest.mark.parametrize(
    "array,words",
    [
        (np.zeros((2, 2, 2, 2)), ["HxW"]),
        (np.zeros((10, 10, 2)), ["HxW"]),
        (np.array([[object()] * 10] * 10), ["numbers"]),
        (np.full((10, 10), "a"), ["numbers"]),
    ],
)
def test_bad_arrays(array, words):
    refused(array, *words)


@pytest.mark.parametrize(
    "array,pixel",
    [
        (np.full((10, 10, 3), 0.5), (128, 128, 128)),
        (np.full((10, 10), 300, np.int32), (255, 255, 255)),
        (np.full((10, 10, 3), -5.0), (0, 0, 0)),
        (np.full((10, 10, 3), np.inf), (255, 255, 255)),
        (np.ones((10, 10), bool), (255, 255, 255)),
        (np.full((10, 10, 4), 255, np.uint8), (255, 255, 255)),
        (np.full((10, 10, 1), 7, np.uint8), (7, 7, 7)),
    ],
)
def test_arrays(array, pixel):
    assert_rgb(open_image(array), (10, 10), pixel, tolerance=1)


# ------------------------------------------------------------------------------------------
# Whatever the bytes: an RGB image or a UserError, never another exception

SEEDS = [encode(Image.new("RGB", (24, 16), RED), fmt) for fmt in ("PNG", "JPEG", "GIF", "WEBP", "BMP", "TIFF")]


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    st.sampled_from(SEEDS),
    st.lists(st.tuples(st.integers(0, 10_000), st.integers(0, 255)), max_size=8),
    st.integers(0, 10_000),
)
def test_corrupted_files_never_crash(seed, flips, cut):
    data = bytearray(seed)
    for position, value in flips:
        data[position % len(data)] = value
    data = bytes(data[: max(1, len(data) - cut % len(data))])
    try:
        image = open_image(data)
    except UserError as error:
        assert str(error) and "\n" not in str(error)
    else:
        assert image.mode == "RGB" and min(image.size) >= MIN_SIDE and max(image.size) <= WORKING_MAX_SIDE


@settings(max_examples=60, deadline=None)
@given(st.binary(max_size=2048))
def test_random_bytes_never_crash(data):
    try:
        assert open_image(data).mode == "RGB"
    except UserError as error:
        assert str(error) and "\n" not in str(error)
