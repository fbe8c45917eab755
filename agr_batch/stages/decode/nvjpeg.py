"""Images decoded in batches on the device: nvJPEG for JPEGs, Pillow for everything else.

:func:`agr_batch.stages.decode.image.image_frame` decodes one image at a time with Pillow on the
host. On a GPU, :func:`decode_images` reads a batch of files, decodes the plain JPEGs among them
with one ``torchvision.io.decode_jpeg(..., device="cuda")`` call (nvJPEG) and leaves the pixels on
the device, upright. Given ``device="cpu"`` it uses torchvision's libjpeg-turbo decoder, which gives
Pillow's pixels exactly.

Which files take the fast path: JPEGs (by content, not extension) whose header Pillow reads
without decoding pixels as 8-bit three-component (YCbCr) baseline frames, that end with the
end-of-image marker, whose entropy-coded data holds no marker libjpeg would refuse (nvJPEG
decodes such a file into garbage where Pillow raises), and that fit ``max_pixels``.
Everything else goes to ``image_frame`` unchanged: PNG and other formats, grayscale, CMYK
and progressive JPEGs, truncated files, and any JPEG the batched decoder refuses (then it is
retried alone, so one corrupt file does not fail its batch). So results, start times and the
one-line :class:`SourceError` messages are ``image_frame``'s by construction (a JPEG damaged
in ways libjpeg only warns about decodes on both paths, into different garbage); only the
JPEG decoder differs.

The EXIF orientation is read from the header with Pillow (the same ``getexif()`` that
``ImageOps.exif_transpose`` uses, XMP fallback included) and applied by flipping and
transposing the decoded tensor.
"""

from __future__ import annotations

import datetime as dt
import io
import logging
import os
import stat
import warnings
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import numpy as np
import torch
from PIL import Image

from agr_batch.records import Frame
from agr_batch.stages.decode.image import _exif_time, image_frame
from agr_batch.stages.decode.media import DEFAULT_MAX_PIXELS, SourceError, check_file, mtime

__all__ = [
    "DecodedImage",
    "ImageLayout",
    "ImageResult",
    "decode_images",
    "iter_decoded_images",
    "orient",
]

logger = logging.getLogger(__name__)

ImageLayout = Literal["chw", "hwc"]
"""``chw``: (3, H, W), what the decoders give; ``hwc``: (H, W, 3), as in :class:`Frame`."""

_ORIENTATION = 0x0112
_JPEG_SOI = b"\xff\xd8\xff"
_JPEG_EOI = b"\xff\xd9"
_JPEG_SOS = b"\xff\xda"
# What may follow 0xFF after the first scan starts, as libjpeg sees it: byte stuffing (00),
# fill (FF), restart markers, EOI, and the table/scan/comment markers of later scans. Any
# other marker (reserved codes, a second SOF) is a hard error for libjpeg, so Pillow refuses
# the file, while nvJPEG may decode it into garbage without a word (seen on an H200).
_SCAN_MARKERS = np.zeros(256, dtype=bool)
_SCAN_MARKERS[[0x00, 0x01, 0xC4, 0xCC, 0xD9, 0xDA, 0xDB, 0xDC, 0xDD, 0xFE, 0xFF]] = True
_SCAN_MARKERS[0xD0:0xD8] = True  # RST0-7
_SCAN_MARKERS[0xE0:0xF0] = True  # APP0-15


@dataclass(frozen=True, eq=False)
class DecodedImage:
    """One upright RGB image on the device.

    Attributes:
        path: The file.
        image: uint8 tensor, (3, H, W) or (H, W, 3) as asked, on the decode device.
        start_time: EXIF ``DateTimeOriginal`` when present, else the file's mtime (as
            :func:`agr_batch.stages.decode.image.image_frame` gives it).
        decoder: ``"torchvision"`` (nvJPEG on CUDA, libjpeg-turbo on the CPU) or
            ``"pillow"`` (the :func:`~agr_batch.stages.decode.image.image_frame` fallback).
        layout: The layout of ``image``.
    """

    path: Path
    image: torch.Tensor
    start_time: dt.datetime
    decoder: Literal["torchvision", "pillow"]
    layout: ImageLayout = "chw"

    def to_frame(self) -> Frame:
        """The image as a host :class:`Frame` (a copy), as ``image_frame`` returns it."""
        image = self.image if self.layout == "hwc" else self.image.permute(1, 2, 0)
        array = np.ascontiguousarray(image.cpu().numpy())
        return Frame(str(self.path), 0, 0.0, array, self.start_time)


ImageResult = DecodedImage | SourceError
"""What :func:`decode_images` gives per path: the image, or why it could not be read."""


@dataclass(frozen=True, eq=False)
class _Jpeg:
    """A file bound for the batched decoder: its bytes and what its header says."""

    index: int
    path: Path
    data: torch.Tensor
    orientation: int
    start_time: dt.datetime


def decode_images(
    paths: Sequence[str | os.PathLike[str]],
    *,
    device: str | torch.device = "cuda",
    max_pixels: int = DEFAULT_MAX_PIXELS,
    exif_tz: dt.tzinfo | None = None,
    layout: ImageLayout = "chw",
) -> list[ImageResult]:
    """Decode images, the plain JPEGs among them in one batch on ``device``.

    Args:
        paths: Image files, decoded together (bound the batch size by the number given:
            see :func:`iter_decoded_images`).
        device: Where to decode and keep the pixels: ``"cuda"`` (nvJPEG) or ``"cpu"``.
        max_pixels: Refuse images with more pixels than this, before decoding them.
        exif_tz: Timezone for EXIF capture times without an offset; see
            :func:`agr_batch.stages.decode.image.image_frame`.
        layout: ``"chw"`` or ``"hwc"`` for the returned tensors.

    Returns:
        One result per path, in order: a :class:`DecodedImage`, or the
        :class:`~agr_batch.stages.decode.media.SourceError` ``image_frame`` would raise for that
        file.
    """
    if layout not in ("chw", "hwc"):
        raise ValueError(f"layout: expected 'chw' or 'hwc', got {layout!r}")
    device = torch.device(device)
    results: list[ImageResult | None] = [None] * len(paths)
    jpegs: list[_Jpeg] = []
    for i, raw in enumerate(paths):
        path = Path(raw)
        try:
            jpeg = _probe(i, path, max_pixels, exif_tz)
        except SourceError as e:
            results[i] = e
            continue
        if jpeg is None:
            results[i] = _pillow(path, device, max_pixels, exif_tz, layout)
        else:
            jpegs.append(jpeg)

    for jpeg, decoded in zip(jpegs, _decode_batch(jpegs, device), strict=True):
        if decoded is None:  # the JPEG decoder refused it: Pillow decides
            results[jpeg.index] = _pillow(jpeg.path, device, max_pixels, exif_tz, layout)
            continue
        image = orient(decoded, jpeg.orientation)
        if layout == "hwc":
            image = image.permute(1, 2, 0)
        results[jpeg.index] = DecodedImage(
            jpeg.path, image.contiguous(), jpeg.start_time, "torchvision", layout
        )
    assert all(r is not None for r in results)
    return results  # type: ignore[return-value]


def iter_decoded_images(
    paths: Sequence[str | os.PathLike[str]],
    *,
    batch_size: int = 64,
    device: str | torch.device = "cuda",
    max_pixels: int = DEFAULT_MAX_PIXELS,
    exif_tz: dt.tzinfo | None = None,
    layout: ImageLayout = "chw",
) -> Iterator[ImageResult]:
    """:func:`decode_images` over ``paths`` in batches of ``batch_size``, in order.

    Args:
        paths: Image files.
        batch_size: Files decoded per call (nvJPEG throughput grows up to a few hundred).
        device: See :func:`decode_images`.
        max_pixels: See :func:`decode_images`.
        exif_tz: See :func:`decode_images`.
        layout: See :func:`decode_images`.

    Yields:
        One result per path, in order.
    """
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    for start in range(0, len(paths), batch_size):
        yield from decode_images(
            paths[start : start + batch_size],
            device=device,
            max_pixels=max_pixels,
            exif_tz=exif_tz,
            layout=layout,
        )


def orient(image: torch.Tensor, orientation: int) -> torch.Tensor:
    """Apply an EXIF orientation to a (…, H, W) tensor, as ``ImageOps.exif_transpose`` does.

    Args:
        image: Pixels as stored in the file, height and width the last two axes.
        orientation: EXIF orientation 1-8; other values leave the image as it is.

    Returns:
        The upright image (a view where possible).
    """
    h, w = image.ndim - 2, image.ndim - 1
    if orientation == 2:  # mirrored
        return image.flip(w)
    if orientation == 3:  # upside down
        return image.flip(h, w)
    if orientation == 4:
        return image.flip(h)
    if orientation == 5:  # transpose
        return image.transpose(h, w)
    if orientation == 6:  # shown after a 90° clockwise turn
        return image.transpose(h, w).flip(w)
    if orientation == 7:  # transverse
        return image.transpose(h, w).flip(h, w)
    if orientation == 8:  # shown after a 90° anticlockwise turn
        return image.transpose(h, w).flip(h)
    return image


# ---------------------------------------------------------------------------------------------
# Helpers


def _probe(i: int, path: Path, max_pixels: int, exif_tz: dt.tzinfo | None) -> _Jpeg | None:
    """The file's bytes and header if it takes the batched path, else None (Pillow's).

    Raises:
        SourceError: For a missing, non-regular or empty file (``image_frame``'s messages).
    """
    check_file(path)
    data = _read_regular(path)
    # Zero padding after the end marker is common and harmless; look only at the tail.
    if (
        data is None
        or not data.startswith(_JPEG_SOI)
        or not bytes(data[-64:]).rstrip(b"\0").endswith(_JPEG_EOI)
    ):
        # Not a JPEG, or one without its end marker (truncated, or trailing data): Pillow
        # knows which, and says so as image_frame does.
        return None
    if not _scan_markers_ok(data):
        return None
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            # Opening reads the markers up to the first scan: no pixels are decoded.
            with Image.open(io.BytesIO(data)) as im:
                plain = (
                    im.format in ("JPEG", "MPO")
                    and im.mode == "RGB"
                    and not im.info.get("progressive")
                    and not im.info.get("progression")
                    # Adobe's marker can declare RGB stored without the YCbCr transform.
                    and im.info.get("adobe_transform", 1) == 1
                    and im.width * im.height <= max_pixels
                )
                if not plain:
                    return None
                exif = im.getexif()
    except Exception:  # anything unusual: image_frame's handling and messages apply
        return None
    orientation = exif.get(_ORIENTATION, 1)
    start_time = _exif_time(exif, exif_tz) or mtime(path)
    tensor = torch.frombuffer(data, dtype=torch.uint8)
    return _Jpeg(i, path, tensor, orientation if isinstance(orientation, int) else 1, start_time)


def _scan_markers_ok(data: bytearray) -> bool:
    """False when the entropy-coded data holds a marker libjpeg would stop at with an error.

    One vectorised pass over the bytes after the first SOS header: every 0xFF must be
    followed by a byte of :data:`_SCAN_MARKERS`.
    """
    sos = data.find(_JPEG_SOS)
    if sos < 0 or sos + 4 > len(data):
        return False
    start = sos + 2 + ((data[sos + 2] << 8) | data[sos + 3])  # skip the SOS header
    scan = np.frombuffer(data, dtype=np.uint8)[start:]
    follows = scan[1:][scan[:-1] == 0xFF]
    return bool(_SCAN_MARKERS[follows].all())


def _read_regular(path: Path) -> bytearray | None:
    """The bytes of a regular file; None when it cannot be read (``image_frame`` reports).

    Opened without blocking and checked again once open, so a file replaced by a FIFO or a
    device after :func:`_check_file` is never read.
    """
    flags = os.O_RDONLY | getattr(os, "O_NONBLOCK", 0) | getattr(os, "O_CLOEXEC", 0)
    try:
        fd = os.open(path, flags)
    except OSError:
        return None
    try:
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode):
            return None
        with os.fdopen(fd, "rb", closefd=False) as f:
            return bytearray(f.read())
    except OSError:
        return None
    finally:
        os.close(fd)


def _decode_batch(jpegs: list[_Jpeg], device: torch.device) -> list[torch.Tensor | None]:
    """Decoded (3, H, W) tensors, None for each JPEG the decoder refuses."""
    if not jpegs:
        return []
    from torchvision.io import ImageReadMode, decode_jpeg

    with warnings.catch_warnings():
        # torchvision 0.29 deprecates its image codecs in favour of TorchCodec's, which are
        # not installed here; the warning would repeat on every batch.
        warnings.filterwarnings(
            "ignore", message=".*decoding and encoding capabilities of TorchVision"
        )
        data = [j.data for j in jpegs]
        try:
            return list(decode_jpeg(data, mode=ImageReadMode.RGB, device=device))
        except Exception as e:  # torchvision raises RuntimeError; be safe with any failure
            logger.debug("batched JPEG decode failed (%s); decoding one by one", e)
        out: list[torch.Tensor | None] = []
        for jpeg in jpegs:
            try:
                out.append(decode_jpeg(jpeg.data, mode=ImageReadMode.RGB, device=device))
            except Exception as e:
                logger.debug("%s: torchvision cannot decode it (%s); trying Pillow", jpeg.path, e)
                out.append(None)
        return out


def _pillow(
    path: Path,
    device: torch.device,
    max_pixels: int,
    exif_tz: dt.tzinfo | None,
    layout: ImageLayout,
) -> ImageResult:
    """``image_frame``'s result moved to ``device``, or its error."""
    try:
        frame = image_frame(path, max_pixels=max_pixels, exif_tz=exif_tz)
    except SourceError as e:
        return e
    image = torch.from_numpy(frame.image)
    if layout == "chw":
        image = image.permute(2, 0, 1)
    if device.type == "cuda":
        # Page-locked memory lets the copy run asynchronously with the host.
        image = image.contiguous().pin_memory().to(device, non_blocking=True)
    else:
        image = image.to(device).contiguous()
    assert frame.start_time is not None  # image_frame falls back on the mtime
    return DecodedImage(path, image, frame.start_time, "pillow", layout)
