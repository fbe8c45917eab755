"""Sample media built from real photos that a dependency ships (insightface's test images).

Used by ``make demo``, ``agr-batch bench`` and the benchmarks: nothing is downloaded. The
photos are insightface's ``data/images`` (``t1.jpg`` shows six people, ``Tom_Hanks_54745.png``
one); they are only composed into frames here, never written out as face crops.
"""

from __future__ import annotations

import importlib.resources
import math
from collections.abc import Sequence
from dataclasses import dataclass
from fractions import Fraction
from pathlib import Path

import av
import cv2
import numpy as np
from PIL import Image


def photos_dir() -> Path:
    """Folder of insightface's bundled test photos."""
    return Path(str(importlib.resources.files("insightface") / "data" / "images"))


def photo(name: str = "t1.jpg") -> np.ndarray:
    """One bundled photo as (H, W, 3) uint8 RGB."""
    with Image.open(photos_dir() / name) as im:
        return np.asarray(im.convert("RGB")).copy()


@dataclass(frozen=True)
class SceneVideo:
    """What :func:`write_scene_video` wrote."""

    path: Path
    seconds: float
    fps: float
    size: tuple[int, int]
    frames: int


def scene_frame(
    picture: np.ndarray, t: float, *, size: tuple[int, int], height_frac: float, sway_px: float
) -> np.ndarray:
    """The frame at time ``t``: ``picture`` on a grey canvas, swaying slowly left and right."""
    width, height = size
    canvas = np.full((height, width, 3), 96, np.uint8)
    scale = min(height * height_frac / picture.shape[0], width * 0.8 / picture.shape[1])
    w, h = int(picture.shape[1] * scale), int(picture.shape[0] * scale)
    fitted = cv2.resize(picture, (w, h), interpolation=cv2.INTER_AREA)
    # One sway period every 12 s: people drift slowly, as in a lobby camera.
    dx = int(sway_px * math.sin(2 * math.pi * t / 12.0))
    x = min(max((width - w) // 2 + dx, 0), width - w)
    y = (height - h) // 2
    canvas[y : y + h, x : x + w] = fitted
    return canvas


def write_scene_video(
    path: str | Path,
    *,
    seconds: float = 10.0,
    fps: float = 30.0,
    size: tuple[int, int] = (1280, 720),
    picture: str = "t1.jpg",
    height_frac: float = 0.6,
    sway_px: float = 120.0,
    gop: int | None = 60,
    crf: int = 23,
    visits: Sequence[tuple[float, float]] | None = None,
) -> SceneVideo:
    """Write an H.264 video of a bundled photo swaying slowly (its faces stay in view).

    Args:
        path: Output ``.mp4`` path.
        seconds: Duration.
        fps: Frame rate.
        size: (W, H).
        picture: Bundled photo name.
        height_frac: Fraction of the frame height the photo fills.
        sway_px: Amplitude of the horizontal sway, pixels.
        gop: Keyframe interval in frames (None: encoder default).
        crf: x264 quality.
        visits: When given, the photo is in view only during these (start, end) seconds
            (people arriving and leaving); the empty canvas is shown otherwise.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    src = photo(picture)
    n = round(seconds * fps)
    rate = Fraction(fps).limit_denominator(1001)
    options = {"preset": "veryfast", "crf": str(crf)}
    if gop:
        options.update(g=str(gop), keyint_min=str(gop), sc_threshold="0")
    with av.open(str(path), "w") as container:
        stream = container.add_stream("libx264", rate=rate, options=options)
        stream.width, stream.height = size
        stream.pix_fmt = "yuv420p"
        for i in range(n):
            t = i / fps
            if visits is None or any(a <= t < b for a, b in visits):
                img = scene_frame(src, t, size=size, height_frac=height_frac, sway_px=sway_px)
            else:
                img = np.full((size[1], size[0], 3), 96, np.uint8)
            frame = av.VideoFrame.from_ndarray(img, format="rgb24")
            frame.pts = i
            frame.time_base = 1 / rate
            container.mux(stream.encode(frame))
        container.mux(stream.encode(None))
    return SceneVideo(path, seconds, fps, size, n)
