"""Generators of real test media: face photos from the insightface wheel, videos written with
PyAV, images in every Pillow mode, and broken files.

Every video frame carries a white marker in its top-left corner and its frame number as a
row of 12 black/white 16-px cells (bit 0 first) to the right of it, so tests can tell which
frame they got and which way up it is (:func:`read_frame_number`).
"""

from __future__ import annotations

import datetime as dt
import importlib.util
from collections.abc import Sequence
from dataclasses import dataclass
from fractions import Fraction
from pathlib import Path

import av
import numpy as np
from PIL import Image

MARKER = 32  # side of the white top-left marker, pixels
CELL = 16  # side of one frame-number bit cell
BITS = 12
_BIT_X0 = MARKER + CELL  # first bit cell's x


def images_dir() -> Path:
    """insightface's bundled test photos (``t1.jpg`` has 6 faces, Tom Hanks one)."""
    # find_spec locates the package without importing it (its import needs onnxruntime and
    # OpenCV, absent from the light decode-test environment).
    spec = importlib.util.find_spec("insightface")
    if spec is None or not spec.submodule_search_locations:
        raise RuntimeError("insightface is not installed: it ships the test photos")
    return Path(next(iter(spec.submodule_search_locations))) / "data" / "images"


def load_rgb(name: str) -> np.ndarray:
    """A bundled photo as (H, W, 3) uint8 RGB."""
    with Image.open(images_dir() / name) as im:
        return np.asarray(im.convert("RGB")).copy()


# ---------------------------------------------------------------------------------------------
# Videos


@dataclass(frozen=True)
class WrittenVideo:
    """What :func:`make_video` wrote.

    Attributes:
        path: The file.
        times: Presentation time of each written frame, seconds.
        size: Display (W, H) — after the rotation metadata is applied.
        coded_size: (W, H) of the encoded pictures.
    """

    path: Path
    times: tuple[float, ...]
    size: tuple[int, int]
    coded_size: tuple[int, int]


def stamp_frame_number(image: np.ndarray, number: int) -> None:
    """Draw the top-left marker and ``number`` as bit cells into ``image`` (in place)."""
    image[:MARKER, :MARKER] = 255
    image[:MARKER, MARKER:_BIT_X0] = 0
    for bit in range(BITS):
        x = _BIT_X0 + bit * CELL
        image[:CELL, x : x + CELL] = 255 if (number >> bit) & 1 else 0
        image[CELL:MARKER, x : x + CELL] = 0


def read_frame_number(image: np.ndarray) -> int | None:
    """The number stamped by :func:`stamp_frame_number`, or None if the marker is missing."""
    if image[4 : MARKER - 4, 4 : MARKER - 4].mean() < 200:
        return None
    number = 0
    for bit in range(BITS):
        x = _BIT_X0 + bit * CELL
        if image[4 : CELL - 4, x + 4 : x + CELL - 4].mean() > 127:
            number |= 1 << bit
    return number


def _compose(
    images: Sequence[np.ndarray], i: int, n: int, size: tuple[int, int], pan: bool
) -> np.ndarray:
    """Frame ``i`` of ``n``: one of ``images`` fitted into a grey canvas of ``size`` (W, H)."""
    width, height = size
    canvas = np.full((height, width, 3), 96, np.uint8)
    if images:
        src = images[min(i * len(images) // max(n, 1), len(images) - 1)]
        scale = min(width / src.shape[1], (height - MARKER) / src.shape[0])
        if pan:
            scale *= 0.6
        w, h = max(1, int(src.shape[1] * scale)), max(1, int(src.shape[0] * scale))
        fitted = np.asarray(Image.fromarray(src).resize((w, h), Image.Resampling.BOX))
        x = (width - w) // 2
        if pan:  # slide from the left edge to the right edge over the clip
            x = int((width - w) * i / max(n - 1, 1))
        y = MARKER + (height - MARKER - h) // 2
        canvas[y : y + h, x : x + w] = fitted
    stamp_frame_number(canvas, i)
    return canvas


def make_video(
    path: str | Path,
    images: Sequence[np.ndarray] = (),
    *,
    fps: float = 30,
    seconds: float = 2.0,
    size: tuple[int, int] = (1280, 720),
    codec: str | None = None,
    rotation: int | None = None,
    vfr: bool = False,
    pan: bool = False,
    gop: int | None = None,
    creation_time: str | None = None,
    faststart: bool = False,
    preset: str = "veryfast",
) -> WrittenVideo:
    """Write a test video with PyAV.

    Args:
        path: Output file; the extension picks the muxer.
        images: RGB pictures shown in turn (none: a grey background).
        fps: Nominal frame rate.
        seconds: Length.
        size: Display (W, H). With a 90° rotation the coded pictures are (H, W).
        codec: Encoder; default libx264 (mpeg4 for ``.avi``), yuv420p.
        rotation: Counter-clockwise display rotation written as the stream's display matrix
            (what phones record). The pictures are stored rotated the other way, so a player
            honouring the matrix shows them upright.
        vfr: Variable frame rate: frame durations cycle through 1/30, 1/10, 1/60 and 1/20 s
            (stored in milliseconds).
        pan: Move the picture across the frame over time.
        gop: Fixed keyframe interval (scene-cut keyframes disabled).
        creation_time: ISO time stored as the container's ``creation_time``.
        faststart: MP4 only: put the index first, so a truncated file still opens.
        preset: x264 preset.

    Returns:
        Path, frame times and sizes.
    """
    path = Path(path)
    if codec is None:
        codec = "mpeg4" if path.suffix.lower() == ".avi" else "libx264"
    quarter = round(rotation / 90) % 4 if rotation else 0
    width, height = size
    coded = (height, width) if quarter % 2 else (width, height)
    if vfr:
        durations_ms = (33, 100, 17, 50)
        pts_ms, t = [], 0
        while t < seconds * 1000:
            pts_ms.append(t)
            t += durations_ms[len(pts_ms) % len(durations_ms)]
        times = tuple(p / 1000 for p in pts_ms)
    else:
        n = round(fps * seconds)
        times = tuple(i / fps for i in range(n))
    options: dict[str, str] = {}
    if codec == "libx264":
        options["preset"] = preset
    if gop:
        options.update(g=str(gop), keyint_min=str(gop), sc_threshold="0")
    container_options = {"movflags": "faststart"} if faststart else {}
    rate = Fraction(fps).limit_denominator(1001)
    with av.open(str(path), "w", options=container_options) as container:
        if creation_time is not None:
            container.metadata["creation_time"] = creation_time
        stream = container.add_stream(codec, rate=rate, options=options)
        stream.width, stream.height = coded
        stream.pix_fmt = "yuv420p"
        if vfr:
            stream.codec_context.time_base = Fraction(1, 1000)
        if rotation:
            stream.set_display_rotation(rotation)
        for i, t in enumerate(times):
            upright = _compose(images, i, len(times), size, pan)
            # Stored rotated clockwise by `rotation` so that displaying it rotates it back.
            picture = np.ascontiguousarray(np.rot90(upright, -quarter)) if quarter else upright
            frame = av.VideoFrame.from_ndarray(picture, format="rgb24")
            if vfr:
                frame.pts = round(t * 1000)
                frame.time_base = Fraction(1, 1000)
            else:
                frame.pts = i
                frame.time_base = 1 / rate
            container.mux(stream.encode(frame))
        container.mux(stream.encode(None))
    return WrittenVideo(path, times, (width, height), coded)


def keyframe_indices(path: str | Path) -> list[int]:
    """Indices of the key frames of a video, from a full decode (reference for tests)."""
    with av.open(str(path)) as container:
        return [i for i, f in enumerate(container.decode(video=0)) if f.key_frame]


# ---------------------------------------------------------------------------------------------
# Images


def gradient_rgb(width: int = 96, height: int = 64) -> np.ndarray:
    """A smooth colour gradient (compresses well, survives JPEG)."""
    x = np.linspace(0, 255, width)[None, :]
    y = np.linspace(0, 255, height)[:, None]
    r = np.broadcast_to(x, (height, width))
    g = np.broadcast_to(y, (height, width))
    b = np.full((height, width), 128.0)
    return np.stack([r, g, b], axis=-1).round().astype(np.uint8)


def make_exif_jpeg(
    path: str | Path,
    upright: np.ndarray,
    *,
    orientation: int = 6,
    datetime_original: str | None = None,
    offset_time_original: str | None = None,
    **save: object,
) -> Path:
    """A JPEG stored turned or mirrored, with the EXIF orientation (1-8) that shows it ``upright``.

    Extra keyword arguments go to Pillow's ``save`` (``progressive=True``, ``subsampling=0``).
    """
    # What is stored is the inverse of what the viewer applies: orientation 6 means "rotate
    # 90° clockwise to display", so it is stored 90° anticlockwise; 2, 3, 4, 5 (transpose)
    # and 7 (transverse) are their own inverses.
    store = {
        1: lambda a: a,
        2: lambda a: a[:, ::-1],
        3: lambda a: np.rot90(a, 2),
        4: lambda a: a[::-1],
        5: lambda a: a.transpose(1, 0, 2),
        6: lambda a: np.rot90(a, 1),
        7: lambda a: np.rot90(a, 2).transpose(1, 0, 2),
        8: lambda a: np.rot90(a, 3),
    }[orientation]
    stored = np.ascontiguousarray(store(upright))
    im = Image.fromarray(stored)
    exif = Image.Exif()
    exif[0x0112] = orientation
    if datetime_original is not None or offset_time_original is not None:
        ifd = exif.get_ifd(0x8769)
        if datetime_original is not None:
            ifd[0x9003] = datetime_original
        if offset_time_original is not None:
            ifd[0x9011] = offset_time_original
    im.save(path, format="JPEG", **{"quality": 95, **save}, exif=exif)
    return Path(path)


def make_mode_images(directory: str | Path) -> dict[str, tuple[Path, np.ndarray]]:
    """One file per awkward Pillow mode, with the RGB uint8 each should read as.

    Returns:
        ``{name: (path, expected_rgb)}``; JPEG entries are lossy, compare with a tolerance.
    """
    d = Path(directory)
    rgb = gradient_rgb()
    gray = rgb[..., 0]
    out: dict[str, tuple[Path, np.ndarray]] = {}

    Image.fromarray(gray).save(d / "gray.png")
    out["gray"] = (d / "gray.png", np.repeat(gray[..., None], 3, axis=2))

    Image.fromarray(gray).save(d / "gray.jpg", quality=95)
    out["gray_jpeg"] = (d / "gray.jpg", np.repeat(gray[..., None], 3, axis=2))

    g16 = (gray.astype(np.uint16) * 257 + 100).astype(np.uint16)  # full 16-bit range
    Image.fromarray(g16).save(d / "gray16.png")
    expect16 = np.clip(np.rint(g16 / 257.0), 0, 255).astype(np.uint8)
    out["gray16"] = (d / "gray16.png", np.repeat(expect16[..., None], 3, axis=2))

    rgba = np.dstack([rgb, np.full(gray.shape, 255, np.uint8)])
    rgba[:, : rgb.shape[1] // 2, 3] = 0  # left half fully transparent → white
    rgba[:, rgb.shape[1] // 2 :, 3] = 128  # right half half transparent
    Image.fromarray(rgba, "RGBA").save(d / "rgba.png")
    expect_rgba = rgb.astype(np.float64)
    expect_rgba[:, : rgb.shape[1] // 2] = 255
    a = 128 / 255
    expect_rgba[:, rgb.shape[1] // 2 :] = expect_rgba[:, rgb.shape[1] // 2 :] * a + 255 * (1 - a)
    out["rgba"] = (d / "rgba.png", np.rint(expect_rgba).astype(np.uint8))

    palette = Image.fromarray(rgb).quantize(colors=16)
    palette.save(d / "palette.png")
    out["palette"] = (d / "palette.png", np.asarray(palette.convert("RGB")))

    transparent = palette.copy()
    transparent.info["transparency"] = int(np.asarray(palette)[0, 0])
    transparent.save(d / "palette_alpha.png", transparency=int(np.asarray(palette)[0, 0]))
    expect_pa = np.asarray(palette.convert("RGB")).copy()
    expect_pa[np.asarray(palette) == np.asarray(palette)[0, 0]] = 255
    out["palette_alpha"] = (d / "palette_alpha.png", expect_pa)

    Image.fromarray(rgb).convert("CMYK").save(d / "cmyk.jpg", quality=95)
    out["cmyk_jpeg"] = (d / "cmyk.jpg", rgb)

    Image.fromarray(gray > 128).save(d / "bilevel.png")
    out["bilevel"] = (d / "bilevel.png", np.repeat(np.where(gray > 128, 255, 0)[..., None], 3, 2))

    for ext in ("bmp", "tif", "webp"):
        Image.fromarray(rgb).save(d / f"rgb.{ext}", **({"lossless": True} if ext == "webp" else {}))
        out[f"rgb_{ext}"] = (d / f"rgb.{ext}", rgb)
    return {k: (p, e.astype(np.uint8)) for k, (p, e) in out.items()}


# ---------------------------------------------------------------------------------------------
# Broken files


def make_empty(path: str | Path) -> Path:
    """A zero-byte file."""
    Path(path).write_bytes(b"")
    return Path(path)


def make_text_as(path: str | Path) -> Path:
    """A text file with a media extension."""
    Path(path).write_text("this is not media\n" * 20)
    return Path(path)


def faceless_frames() -> list[np.ndarray]:
    """A flat grey 720p frame and one of uniform noise: no detector may find a face in them."""
    blank = np.full((720, 1280, 3), 90, np.uint8)
    noise = np.random.default_rng(0).integers(0, 256, (720, 1280, 3), dtype=np.uint8)
    return [blank, noise]


def make_edit_listed(src: str | Path, dst: str | Path, *, hidden: int = 7) -> Path:
    """``src`` remuxed so that an edit list hides its first ``hidden`` frames (as a cut made
    without re-encoding leaves them): their packets stay, flagged discard, for reference."""
    with av.open(str(src)) as source, av.open(str(dst), "w") as out:
        stream = source.streams.video[0]
        copy = out.add_stream_from_template(stream)
        shift = None
        for packet in source.demux(stream):
            if packet.dts is None:
                continue
            if shift is None:  # one frame's duration in PTS units, times the frames hidden
                shift = round(hidden / float(stream.average_rate) / stream.time_base)
            packet.pts -= shift
            packet.dts -= shift
            packet.stream = copy
            out.mux(packet)
    return Path(dst)


def make_truncated(src: str | Path, dst: str | Path, fraction: float = 0.5) -> Path:
    """The first ``fraction`` of ``src``'s bytes."""
    data = Path(src).read_bytes()
    Path(dst).write_bytes(data[: int(len(data) * fraction)])
    return Path(dst)


def set_mtime(path: str | Path, when: dt.datetime) -> None:
    """Set a file's modification (and access) time."""
    import os

    ts = when.timestamp()
    os.utime(path, (ts, ts))
