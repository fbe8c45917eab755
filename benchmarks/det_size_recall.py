"""Detector resolution against recall, by face size: what `--det-size` loses.

The bundled group photo (six faces) is scaled so its faces are a given width and pasted into
a 1920×1080 grey frame, at several positions. CenterFace at the frame's full size (1920 px) is
the reference; each `--det-size` is scored by how many reference faces it finds again (IoU
≥ 0.5), with its time per frame. Prints a Markdown table.

    .venv/bin/python benchmarks/det_size_recall.py
"""

from __future__ import annotations

import os
import platform
import time

import cv2
import numpy as np

from agr_batch.samples import photo
from agr_batch.stages.detect import create_detector
from agr_batch.stages.track import iou_matrix

FRAME = (1080, 1920)
FACE_WIDTHS = (16, 24, 32, 48, 64, 96)
DET_SIZES = (320, 480, 640, 800, 960)


def frames_with_faces(face_width: int, native_width: float) -> list[np.ndarray]:
    """Frames holding the group photo scaled so its faces are ``face_width`` px wide."""
    src = photo("t1.jpg")
    scale = face_width / native_width
    small = cv2.resize(src, None, fx=scale, fy=scale, interpolation=cv2.INTER_AREA)
    h, w = small.shape[:2]
    out = []
    for fy, fx in ((0.1, 0.05), (0.5, 0.5), (0.8, 0.7)):
        frame = np.full((*FRAME, 3), 128, np.uint8)
        y, x = int((FRAME[0] - h) * fy), int((FRAME[1] - w) * fx)
        frame[y : y + h, x : x + w] = small
        out.append(frame)
    return out


def main() -> None:
    reference = create_detector("centerface", input_width=None, max_side=FRAME[1])
    native = reference.detect([photo("t1.jpg")])[0]
    native_width = float(np.median(native.boxes[:, 2] - native.boxes[:, 0]))
    detectors = {d: create_detector("centerface", input_width=None, max_side=d) for d in DET_SIZES}
    print(f"Machine: {platform.processor() or platform.machine()}, {os.cpu_count()} cores")
    print(f"Frames {FRAME[1]}×{FRAME[0]}; reference: CenterFace at {FRAME[1]} px\n")
    print("| face width px | reference faces | " + " | ".join(f"{d} px" for d in DET_SIZES) + " |")
    print("|---:|---:|" + "---:|" * len(DET_SIZES))
    ms = {d: [] for d in DET_SIZES}
    for fw in FACE_WIDTHS:
        frames = frames_with_faces(fw, native_width)
        refs = [reference.detect([f])[0] for f in frames]
        total = sum(len(r.boxes) for r in refs)
        cells = []
        for d, det in detectors.items():
            found = 0
            for frame, ref in zip(frames, refs, strict=True):
                t0 = time.perf_counter()
                got = det.detect([frame])[0]
                ms[d].append((time.perf_counter() - t0) * 1000)
                if len(ref.boxes) and len(got.boxes):
                    found += int((iou_matrix(ref.boxes, got.boxes).max(axis=1) >= 0.5).sum())
            cells.append(f"{100 * found / total:.0f} %" if total else "-")
        print(f"| {fw} | {total} | " + " | ".join(cells) + " |")
    print("| ms per frame (median) | | " + " | ".join(
        f"{np.median(ms[d]):.0f}" for d in DET_SIZES) + " |")  # fmt: skip


if __name__ == "__main__":
    main()
