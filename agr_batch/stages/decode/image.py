"""Image decoding with Pillow: upright RGB frames, capture times, bounded memory."""

from __future__ import annotations

import datetime as dt
import logging
import os
import re
import warnings
from pathlib import Path
from typing import BinaryIO

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

from agr_batch.records import Frame
from agr_batch.stages.decode.media import (
    DEFAULT_MAX_PIXELS,
    SourceError,
    check_file,
    mtime,
    open_regular,
)

logger = logging.getLogger(__name__)

# Images are converted to RGB in strips of about this many bytes of working memory, so an
# 88-megapixel 16-bit picture needs its RGB result and one strip, not five float64 copies.
_STRIP_BYTES = 32 << 20

# EXIF tags (Exif IFD) for the capture time.
_EXIF_IFD = 0x8769
_DATETIME_ORIGINAL = 0x9003
_OFFSET_TIME_ORIGINAL = 0x9011
_SUBSEC_TIME_ORIGINAL = 0x9291


def image_frame(
    path: str | os.PathLike[str],
    *,
    max_pixels: int = DEFAULT_MAX_PIXELS,
    exif_tz: dt.tzinfo | None = None,
) -> Frame:
    """Read an image with Pillow as an upright RGB uint8 frame.

    EXIF orientation is applied. Grayscale, bilevel and palette images become RGB;
    transparency is composited on white; 16- and 32-bit integer and float images are scaled
    to 8 bits; CMYK and other colour spaces are converted by Pillow (ICC profiles are not
    applied). Multi-page files give their first page.

    Args:
        path: The image file.
        max_pixels: Refuse images with more pixels than this (decompression bombs). Pillow's
            own guard, ``PIL.Image.MAX_IMAGE_PIXELS`` (89.5 MP unless changed), is also
            enforced: its warning is treated as an error, so raise both to go beyond it.
        exif_tz: Timezone assumed for an EXIF ``DateTimeOriginal`` that has no
            ``OffsetTimeOriginal`` (cameras store wall-clock time). None assumes the local
            timezone of this machine, the usual case when photos are processed where they
            were taken; pass ``datetime.UTC`` for machine-independent results.

    Returns:
        The frame (``frame_index`` 0, ``time_s`` 0), with ``start_time`` the EXIF capture time
        when present, else the file's mtime.

    Raises:
        SourceError: If the file is empty, not an image, truncated, too large or undecodable.
    """
    path = Path(path)
    check_file(path)
    try:
        fp = open_regular(path)
    except OSError as e:
        raise SourceError(path, e.strerror or str(e)) from None
    with fp:
        return _image_frame(path, fp, max_pixels=max_pixels, exif_tz=exif_tz)


def _image_frame(path: Path, fp: BinaryIO, *, max_pixels: int, exif_tz: dt.tzinfo | None) -> Frame:
    try:
        with warnings.catch_warnings():
            # Pillow only warns between MAX_IMAGE_PIXELS and twice that; make it a refusal.
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            im = Image.open(fp)
    except (Image.DecompressionBombWarning, Image.DecompressionBombError) as e:
        raise SourceError(path, f"image too large ({e})") from None
    except UnidentifiedImageError:
        raise SourceError(path, "not an image Pillow can open") from None
    except (OSError, SyntaxError, ValueError) as e:
        raise SourceError(path, f"cannot open image ({e})") from None
    with im:
        pixels = im.width * im.height
        if pixels > max_pixels:
            raise SourceError(path, f"image too large: {pixels} pixels > limit {max_pixels}")
        try:
            exif = im.getexif()
        except Exception as e:  # a corrupt EXIF block should not lose the picture
            logger.warning("%s: unreadable EXIF ignored (%s)", path, e)
            exif = None
        try:
            im.load()
        except OSError as e:
            if "truncated" in str(e):
                raise SourceError(path, "truncated image") from None
            raise SourceError(path, f"cannot decode image ({e})") from None
        except (SyntaxError, ValueError) as e:
            raise SourceError(path, f"cannot decode image ({e})") from None
        try:
            # In place: without an orientation tag a copy (the whole picture again) is made.
            upright = ImageOps.exif_transpose(im, in_place=True) or im
        except Exception as e:
            logger.warning("%s: EXIF orientation ignored (%s)", path, e)
            upright = im
        rgb = _to_rgb(upright)
    start_time = (_exif_time(exif, exif_tz) if exif is not None else None) or mtime(path)
    return Frame(str(path), 0, 0.0, rgb, start_time)


def capture_time(path: str | os.PathLike[str], *, exif_tz: dt.tzinfo | None = None) -> dt.datetime:
    """When an image was taken: EXIF ``DateTimeOriginal`` (pixels are not decoded), else mtime.

    Used to order a folder of snapshots as one timestamped sequence. Anything but a regular
    file (a FIFO would block the open forever) is ordered by its mtime, unopened.
    """
    path = Path(path)
    try:
        with open_regular(path) as fp, Image.open(fp) as im:
            when = _exif_time(im.getexif(), exif_tz)
    except Exception:  # unreadable, not an image or not a file: its mtime still orders it
        when = None
    if when is not None:
        return when
    try:
        return mtime(path)
    except OSError:  # vanished or dangling: ordered first; reading it reports the error
        return dt.datetime.fromtimestamp(0, tz=dt.UTC)


def _exif_time(exif: Image.Exif, tz: dt.tzinfo | None) -> dt.datetime | None:
    """EXIF DateTimeOriginal (+ sub-seconds, + OffsetTimeOriginal) as an aware datetime."""
    try:
        ifd = exif.get_ifd(_EXIF_IFD)
    except Exception:
        return None
    raw = ifd.get(_DATETIME_ORIGINAL)
    if not isinstance(raw, str):
        return None
    try:
        when = dt.datetime.strptime(raw.strip("\x00 "), "%Y:%m:%d %H:%M:%S")
    except ValueError:
        return None
    subsec = str(ifd.get(_SUBSEC_TIME_ORIGINAL) or "").strip("\x00 ")
    if subsec.isdigit():
        when = when.replace(microsecond=int((subsec + "000000")[:6]))
    offset = str(ifd.get(_OFFSET_TIME_ORIGINAL) or "").strip("\x00 ")
    match = re.fullmatch(r"([+-])(\d\d):?(\d\d)", offset)
    if match:
        sign = 1 if match[1] == "+" else -1
        delta = dt.timedelta(hours=int(match[2]), minutes=int(match[3]))
        return when.replace(tzinfo=dt.timezone(sign * delta))
    if tz is not None:
        return when.replace(tzinfo=tz)
    return when.astimezone()  # naive → this machine's local timezone


def _to_rgb(im: Image.Image) -> np.ndarray:
    """Any Pillow mode as a contiguous (H, W, 3) uint8 RGB array, converted in strips.

    Working memory beyond the picture and its result is one strip (``_STRIP_BYTES``).
    """
    width, height = im.size
    out = np.empty((height, width, 3), np.uint8)
    if im.mode.startswith("I") or im.mode == "F":
        samples = np.asarray(im)  # the raw samples, once; converted strip by strip
        scale = _high_depth_scale(samples)
        rows = max(1, _STRIP_BYTES // max(1, width * 3 * 8))
        for y in range(0, height, rows):
            out[y : y + rows] = _high_depth_strip(samples[y : y + rows], scale)
        return out
    rows = max(1, _STRIP_BYTES // max(1, width * 4 * 4))  # float32 RGBA while compositing
    for y in range(0, height, rows):
        strip = im if rows >= height else im.crop((0, y, width, min(height, y + rows)))
        out[y : y + rows] = _strip_to_rgb(strip)
    return out


def _strip_to_rgb(im: Image.Image) -> np.ndarray:
    """A low-depth picture (or strip of one) as (H, W, 3) uint8 RGB."""
    mode = im.mode
    if mode == "RGB":
        return np.asarray(im, dtype=np.uint8)
    has_alpha = mode in ("RGBA", "LA", "PA", "RGBa", "La") or (
        mode == "P" and "transparency" in im.info
    )
    if has_alpha:
        rgba = np.asarray(im.convert("RGBA"), dtype=np.float32)
        alpha = rgba[..., 3:] / 255.0
        # Composite on white: transparent areas look like paper, not like a black face.
        out = rgba[..., :3] * alpha + 255.0 * (1.0 - alpha)
        return np.clip(out + 0.5, 0, 255).astype(np.uint8)
    return np.asarray(im.convert("RGB"), dtype=np.uint8)


def _high_depth_scale(a: np.ndarray) -> float:
    """Factor mapping 16/32-bit integer or float samples to 0..255, by type or data range."""
    if np.issubdtype(a.dtype, np.floating):
        peak = float(np.nanmax(a)) if a.size else 1.0
        return 255.0 if not peak > 1.0 else 255.0 / peak
    peak = int(a.max()) if a.size else 0
    if a.dtype.itemsize == 2 or 255 < peak <= 65535:
        return 1.0 / 257.0  # 0..65535 → 0..255
    if peak > 65535:
        return 255.0 / peak
    return 1.0  # mode "I" holding 8-bit values


def _high_depth_strip(a: np.ndarray, scale: float) -> np.ndarray:
    """Rows of high-depth grayscale (or multi-channel) samples as (h, W, 3) uint8."""
    if a.ndim == 3:  # some plugins give (H, W, C) for multi-channel high-depth data
        a = a[..., :3] if a.shape[2] >= 3 else a[..., 0]
    out = np.nan_to_num(a.astype(np.float64) * scale)
    out8 = np.clip(np.rint(out), 0, 255).astype(np.uint8)
    if out8.ndim == 2:
        out8 = np.repeat(out8[..., None], 3, axis=2)
    return out8
