"""Decoding one encoded image file (bytes) into a square uint8 array with Pillow.

Valid but awkward files are normalised: EXIF orientation is applied; CMYK, YCbCr and other
modes become RGB; transparency (RGBA, LA, palette with a transparent index) is composited
over white; 16-bit and 32-bit greyscale is scaled to 8 bits. Files that cannot be decoded
raise `BrokenImage` with a short reason of the form "<kind>: <detail>".
"""

from __future__ import annotations

import io
import struct

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

# Reason kinds, the part of a skip reason before ": ". Summaries count skipped files by these.
EMPTY = "empty file"
NOT_AN_IMAGE = "not an image"
CORRUPT = "truncated or corrupt image"
TOO_LARGE = "too large"
UNREADABLE = "unreadable"
SYMLINK_LOOP = "symlink loop"
BROKEN_LINK = "broken symlink"
NOT_A_FILE = "not a regular file"
UNSUPPORTED = "unsupported image"

# Errors Pillow raises on malformed input (its own fuzzing tests treat these as "expected").
DECODE_ERRORS = (OSError, SyntaxError, ValueError, EOFError, NotImplementedError, struct.error)

# Background for transparent pixels: most images with alpha are drawn for a light page.
BACKGROUND = (255, 255, 255)

_HIGH_DEPTH_MODES = ("I;16", "I;16B", "I;16L", "I;16N", "I", "F")


class BrokenImage(Exception):
    """A file that is not a usable image; `reason` says why ("<kind>: <detail>")."""

    def __init__(self, kind: str, detail: str = "") -> None:
        self.reason = f"{kind}: {detail}" if detail else kind
        super().__init__(self.reason)


def reason_kind(reason: str) -> str:
    """The kind of a skip reason: the text before the first ": "."""
    return reason.split(": ", 1)[0]


def decode_image(data: bytes, size: int, channels: int | None) -> tuple[np.ndarray, bool]:
    """Decode `data` into a (C, size, size) uint8 array and whether it is greyscale.

    C is `channels`, or 3 when `channels` is None (the caller may reduce an all-grey set to one
    channel). Non-square images are cut to their central square, then resized with Pillow's
    antialiased bicubic filter. Raises `BrokenImage`; an image over Pillow's decompression-bomb
    limit (`Image.MAX_IMAGE_PIXELS`) is "too large" (Pillow also warns about it while opening).
    """
    if not data:
        raise BrokenImage(EMPTY)
    try:
        with Image.open(io.BytesIO(data)) as opened:
            # Pillow only warns between its limit and twice it; refuse here as well, so that
            # this function needs no warnings filter.
            if opened.width * opened.height > (Image.MAX_IMAGE_PIXELS or float("inf")):
                pixels = opened.width * opened.height
                raise BrokenImage(TOO_LARGE, f"{pixels} pixels exceeds Pillow's limit of {Image.MAX_IMAGE_PIXELS}")
            # JPEG can decode at 1/2, 1/4 or 1/8 scale directly: far faster for big photos.
            opened.draft("RGB" if channels != 1 else "L", (size, size))
            opened.load()
            # A JPEG keeps EXIF only in its APP1 segment; skipping the lookup when there is
            # none saves a quarter of the time on small images.
            has_exif = opened.format != "JPEG" or "exif" in opened.info
            img = ImageOps.exif_transpose(opened) if has_exif else opened
            img = _to_l_or_rgb(img)
            img = _fit_square(img, size)
            if channels == 1 and img.mode != "L":
                img = img.convert("L")
            array = np.asarray(img)
    except Image.DecompressionBombError as e:
        raise BrokenImage(TOO_LARGE, str(e).split(".")[0]) from None
    except Image.DecompressionBombWarning as e:
        raise BrokenImage(TOO_LARGE, str(e).split(".")[0]) from None
    except UnidentifiedImageError:
        raise BrokenImage(NOT_AN_IMAGE, _describe_unknown(data)) from None
    except MemoryError:
        raise BrokenImage(TOO_LARGE, "out of memory while decoding") from None
    except DECODE_ERRORS as e:
        raise BrokenImage(CORRUPT, _one_line(e)) from None
    if array.ndim == 2:
        grey = True
        if channels == 1:
            return array[None], True
        return np.broadcast_to(array[None], (3, size, size)), grey
    chw = array.transpose(2, 0, 1)
    grey = bool((chw[0] == chw[1]).all() and (chw[1] == chw[2]).all())
    return chw, grey


def probe_size(data: bytes) -> tuple[int, int] | None:
    """(width, height) from the header alone, after EXIF orientation; None if unreadable."""
    try:
        with Image.open(io.BytesIO(data)) as img:
            w, h = img.size
            # Orientations 5-8 swap width and height.
            if img.getexif().get(0x0112, 1) in (5, 6, 7, 8):
                w, h = h, w
            return w, h
    except (Image.DecompressionBombError, Image.DecompressionBombWarning, *DECODE_ERRORS):
        return None


def _to_l_or_rgb(img: Image.Image) -> Image.Image:
    """Any Pillow mode → 8-bit "L" or "RGB", compositing transparency over BACKGROUND."""
    if img.mode in _HIGH_DEPTH_MODES:
        return Image.fromarray(_high_depth_to_uint8(np.asarray(img), img.mode), "L")
    if img.mode == "1":
        return img.convert("L")
    has_alpha = img.mode in ("RGBA", "RGBa", "LA", "La", "PA") or "transparency" in img.info
    if has_alpha:
        rgba = img.convert("RGBA")
        background = Image.new("RGBA", rgba.size, (*BACKGROUND, 255))
        return Image.alpha_composite(background, rgba).convert("RGB")
    if img.mode in ("L", "RGB"):
        return img
    try:
        return img.convert("RGB")  # CMYK, YCbCr, P, HSV, ...
    except ValueError as e:  # e.g. LAB has no direct conversion
        raise BrokenImage(UNSUPPORTED, f"mode {img.mode}: {_one_line(e)}") from None


def _high_depth_to_uint8(a: np.ndarray, mode: str) -> np.ndarray:
    """16-bit images span 0..65535; "I" (32-bit) is taken as 16-bit when it exceeds 255;
    "F" as [0, 1] when it stays within it, else as 0..255."""
    x = a.astype(np.float64)
    if mode == "F":
        scale = 255.0 if float(np.nanmax(x, initial=0)) <= 1.0 else 1.0
    elif mode.startswith("I;16") or float(x.max(initial=0)) > 255:
        scale = 255.0 / 65535.0
    else:
        scale = 1.0
    return np.clip(np.round(np.nan_to_num(x) * scale), 0, 255).astype(np.uint8)


def _fit_square(img: Image.Image, size: int) -> Image.Image:
    """The central square of `img`, resized to size×size."""
    w, h = img.size
    if (w, h) == (size, size):
        return img
    side = min(w, h)
    left, top = (w - side) / 2, (h - side) / 2
    return img.resize(
        (size, size), Image.Resampling.BICUBIC, box=(left, top, left + side, top + side),
        reducing_gap=3.0,
    )


def _describe_unknown(data: bytes) -> str:
    # The first 512 bytes may end inside a multi-byte character; ignore a bad tail only.
    text = data[:512].decode("utf-8", "replace")
    body = text[:-3] if len(data) > 512 else text
    if "\ufffd" not in body and all(ch.isprintable() or ch in "\r\n\t" for ch in body):
        return "looks like text"
    return "unrecognised format"


def _one_line(e: BaseException) -> str:
    text = str(e).strip().splitlines()
    return text[0] if text else type(e).__name__
