"""Face alignment throughput: the cv2 path (agr_batch.stages.align) against the torch path
(agr_batch.stages.align_torch), in faces/s, for batches of 1, 64 and 512 faces. Prints Markdown.

The frames are insightface's t1.jpg enlarged to 1920 px wide and cut to 1080 rows (six
faces of about 150-250 px), up to 8 frames per batch; the faces are CenterFace's landmarks,
turned, scaled and shifted at random to make as many as the batch needs. At chip 64 the
faces are more than twice the chip (area-averaged first), at chip 128 they are not.

Columns: ``cv2`` is ``align.align_faces`` per frame (uint8 chips on the host); ``cv2 +
tensor`` adds ``chips_to_tensor`` and, on CUDA, the upload of the batch; ``torch uint8`` is
``align_torch.align_faces`` and ``torch batch`` ``align_torch.align_faces_normalized``, with
the frames already on the device (decoded there) and the landmarks on the host, as the
detector returns them. Each is the median of ``--iters`` timed calls after warm-up.

    .venv/bin/python benchmarks/align_device.py [--device cuda] [--sizes 64,128] [--threads 1]
"""

from __future__ import annotations

import argparse
import importlib.util
import math
import platform
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path

import cv2
import numpy as np
import torch
from PIL import Image

from agr_batch.stages import align, align_torch
from agr_batch.stages.preprocess import PreprocessSpec, chips_to_tensor

FRAME_W, FRAME_H = 1920, 1080
MAX_FRAMES = 8


def default_image() -> Path:
    spec = importlib.util.find_spec("insightface")
    if spec is None or not spec.submodule_search_locations:
        sys.exit("insightface is not installed: pass --image and --landmarks")
    return Path(next(iter(spec.submodule_search_locations))) / "data" / "images" / "t1.jpg"


def load_scene(image: Path, landmarks: Path | None) -> tuple[np.ndarray, np.ndarray]:
    """The 1080p frame and its faces' landmarks."""
    with Image.open(image) as im:
        rgb = np.asarray(im.convert("RGB")).copy()
    if landmarks is not None:
        lm = np.load(landmarks).astype(np.float64)
    else:
        from agr_batch.stages.detect import create_detector

        lm = create_detector("centerface").detect([rgb])[0].landmarks.astype(np.float64)
    s = FRAME_W / rgb.shape[1]
    frame = cv2.resize(rgb, None, fx=s, fy=s, interpolation=cv2.INTER_LINEAR)[:FRAME_H]
    canvas = np.zeros((FRAME_H, FRAME_W, 3), np.uint8)
    canvas[: frame.shape[0]] = frame
    return canvas, (lm + 0.5) * s - 0.5


def make_batch(
    frame: np.ndarray, lm: np.ndarray, faces: int, rng: np.random.Generator
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(B, H, W, 3) frames (shifted copies), (N, 5, 2) landmarks, (N,) frame index."""
    n_frames = min(MAX_FRAMES, max(1, math.ceil(faces / len(lm))))
    frames = np.stack([np.roll(frame, 16 * k, axis=1) for k in range(n_frames)])
    out, index = [], []
    for i in range(faces):
        k = i % n_frames
        base = lm[i % len(lm)] + [16 * k, 0]
        centre = base.mean(axis=0)
        a = np.deg2rad(rng.uniform(-20, 20))
        rot = rng.uniform(0.9, 1.1) * np.array([[np.cos(a), -np.sin(a)], [np.sin(a), np.cos(a)]])
        out.append((base - centre) @ rot.T + centre + rng.normal(0, 3, 2))
        index.append(k)
    order = np.argsort(index, kind="stable")  # frame by frame, as the cv2 path returns them
    return frames, np.array(out)[order], np.array(index)[order]


def timed(fn: Callable[[], object], sync: Callable[[], None], warmup: int, iters: int) -> float:
    """Median seconds of ``fn``."""
    for _ in range(warmup):
        fn()
    sync()
    times = []
    for _ in range(iters):
        t0 = time.perf_counter()
        fn()
        sync()
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cpu", help="torch device: cpu or cuda")
    parser.add_argument("--sizes", default="64,128", help="chip sizes (square)")
    parser.add_argument("--faces", default="1,64,512", help="faces per batch")
    parser.add_argument("--image", type=Path, default=None, help="photo (default: t1.jpg)")
    parser.add_argument("--landmarks", type=Path, default=None, help=".npy (N, 5, 2) for it")
    parser.add_argument(
        "--threads", type=int, default=0, help="CPU threads for torch and OpenCV (0: default)"
    )
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("--iters", type=int, default=5)
    args = parser.parse_args(argv)

    if args.threads > 0:
        # On a busy machine OpenMP's barriers cost milliseconds per op: one thread is steadier.
        torch.set_num_threads(args.threads)
        cv2.setNumThreads(args.threads)
    device = torch.device(args.device)
    if device.type == "cuda" and not torch.cuda.is_available():
        sys.exit("--device cuda: no CUDA device here")

    def sync() -> None:
        if device.type == "cuda":
            torch.cuda.synchronize(device)

    if args.image is None and args.landmarks is not None:
        sys.exit("--landmarks needs --image")
    frame, lm = load_scene(args.image or default_image(), args.landmarks)
    rng = np.random.default_rng(0)
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else platform.processor()
    print(
        f"Device: {device} ({name or platform.machine()}), torch {torch.__version__}, "
        f"{torch.get_num_threads()} CPU threads, OpenCV {cv2.__version__} with "
        f"{cv2.getNumThreads()} threads; frames {FRAME_W}x{FRAME_H}, up to {MAX_FRAMES} a batch.\n"
    )
    print(
        "| chip | faces | frames | area-averaged | cv2 (faces/s) | cv2 + tensor (faces/s) "
        "| torch uint8 (faces/s) | torch batch (faces/s) | batch vs cv2 + tensor | "
        "max mean diff |"
    )
    print("|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|")
    for size in (int(s) for s in args.sizes.split(",")):
        spec = PreprocessSpec(input_size=(size, size))
        for faces in (int(n) for n in args.faces.split(",")):
            frames, landmarks, index = make_batch(frame, lm, faces, rng)
            groups = [(frames[k], landmarks[index == k]) for k in range(len(frames))]
            on_device = torch.from_numpy(frames).to(device)
            lm_t, index_t = torch.from_numpy(landmarks), torch.from_numpy(index)

            def cv2_chips(groups=groups, spec=spec) -> np.ndarray:
                return np.concatenate([align.align_faces(f, g, spec) for f, g in groups])

            def cv2_tensor(spec=spec) -> torch.Tensor:
                x = chips_to_tensor(cv2_chips(), spec)
                if device.type == "cuda":
                    x = x.pin_memory().to(device, non_blocking=True)
                return x

            def torch_chips(frames=on_device, lm=lm_t, index=index_t, spec=spec):
                return align_torch.align_faces(frames, lm, spec, frame_index=index)

            def torch_batch(frames=on_device, lm=lm_t, index=index_t, spec=spec):
                return align_torch.align_faces_normalized(frames, lm, spec, frame_index=index)

            want = cv2_chips()
            got = torch_chips().cpu().numpy()
            diff = np.abs(got.astype(np.int16) - want).mean(axis=(1, 2, 3)).max()
            scales = np.sqrt(
                np.abs(np.linalg.det(align.chip_transforms(landmarks, spec)[:, :, :2]))
            )
            averaged = int((scales < 0.5).sum())
            rates = [
                faces / timed(fn, sync, args.warmup, args.iters)
                for fn in (cv2_chips, cv2_tensor, torch_chips, torch_batch)
            ]
            print(
                f"| {size} | {faces} | {len(frames)} | {averaged} | {rates[0]:,.0f} | "
                f"{rates[1]:,.0f} | {rates[2]:,.0f} | {rates[3]:,.0f} | "
                f"{rates[3] / rates[1]:.2f}x | {diff:.3f} |",
                flush=True,
            )


if __name__ == "__main__":
    main()
