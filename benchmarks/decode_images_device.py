"""Batched image decoding on a device (agr_batch.stages.decode.nvjpeg) against Pillow
(sources.image_frame): pixel differences per kind of JPEG, then images/s. Prints Markdown.

JPEGs are insightface's t1.jpg (1280x886, six faces) and Tom Hanks (112x112) re-encoded at
several qualities and chroma subsamplings, plus grayscale, CMYK and progressive files, which
``decode_images`` sends to Pillow but which are decoded here with torchvision directly too,
to see whether the device decoder could take them. Throughput: ``--images`` copies of t1 as
a quality-90 JPEG with EXIF orientation 6, decoded by ``decode_images`` in batches of
``--batches`` against ``image_frame`` one by one on one thread.

    .venv/bin/python benchmarks/decode_images_device.py [--device cuda]
"""

from __future__ import annotations

import argparse
import importlib.util
import io
import sys
import tempfile
import time
import warnings
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from agr_batch.stages.decode.image import image_frame
from agr_batch.stages.decode.nvjpeg import DecodedImage, decode_images

warnings.filterwarnings("ignore", message=".*decoding and encoding capabilities of TorchVision")


def photos() -> dict[str, np.ndarray]:
    spec = importlib.util.find_spec("insightface")
    if spec is None or not spec.submodule_search_locations:
        sys.exit("insightface is not installed: it ships the photos")
    folder = Path(next(iter(spec.submodule_search_locations))) / "data" / "images"
    out = {}
    for name in ("t1.jpg", "Tom_Hanks_54745.png"):
        with Image.open(folder / name) as im:
            out[name.split(".")[0]] = np.asarray(im.convert("RGB")).copy()
    return out


def encode(rgb: np.ndarray, mode: str = "RGB", **kwargs: object) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(rgb).convert(mode).save(buf, format="JPEG", **kwargs)
    return buf.getvalue()


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--images", type=int, default=256)
    parser.add_argument("--batches", default="16,64,256")
    args = parser.parse_args(argv)
    device = torch.device(args.device)
    from torchvision.io import ImageReadMode, decode_jpeg

    pics = photos()
    cases: dict[str, bytes] = {}
    for name, rgb in pics.items():
        for quality in (50, 75, 90, 98):
            for subsampling, label in ((2, "4:2:0"), (1, "4:2:2"), (0, "4:4:4")):
                cases[f"{name} q{quality} {label}"] = encode(
                    rgb, quality=quality, subsampling=subsampling
                )
    t1 = pics["t1"]
    cases["t1 gray q90"] = encode(t1, "L", quality=90)
    cases["t1 CMYK q90"] = encode(t1, "CMYK", quality=90)
    cases["t1 progressive q90"] = encode(t1, quality=90, progressive=True)

    name = torch.cuda.get_device_name(device) if device.type == "cuda" else "CPU"
    print(f"Device: {device} ({name}), torch {torch.__version__}\n")
    print("| JPEG | torchvision vs Pillow: max | mean | 99.9th percentile |")
    print("|---|---:|---:|---:|")
    for label, data in cases.items():
        want = np.asarray(Image.open(io.BytesIO(data)).convert("RGB")).astype(np.int16)
        try:
            got = decode_jpeg(
                torch.frombuffer(bytearray(data), dtype=torch.uint8),
                mode=ImageReadMode.RGB,
                device=device,
            )
        except RuntimeError as e:
            print(f"| {label} | refused: {' '.join(str(e).split())[:80]} | | |")
            continue
        diff = np.abs(got.permute(1, 2, 0).cpu().numpy().astype(np.int16) - want)
        print(f"| {label} | {diff.max()} | {diff.mean():.3f} | {np.percentile(diff, 99.9):.0f} |")

    with tempfile.TemporaryDirectory() as tmp:
        exif = Image.Exif()
        exif[0x0112] = 6
        paths = []
        for i in range(args.images):
            path = Path(tmp) / f"{i:05d}.jpg"
            Image.fromarray(np.rot90(t1, 1).copy()).save(path, quality=90, exif=exif)
            paths.append(path)
        t0 = time.perf_counter()
        for path in paths[:64]:
            image_frame(path)
        pillow = 64 / (time.perf_counter() - t0)
        print(f"\n| decoder | batch | images/s ({t1.shape[1]}x{t1.shape[0]}, EXIF-rotated) |")
        print("|---|---:|---:|")
        print(f"| Pillow (image_frame, 1 thread) | 1 | {pillow:,.0f} |")
        for batch in (int(b) for b in args.batches.split(",")):
            decode_images(paths[:batch], device=device)  # warm-up: decoder state, allocator
            sync(device)
            t0 = time.perf_counter()
            done = 0
            for start in range(0, len(paths), batch):
                results = decode_images(paths[start : start + batch], device=device)
                assert all(isinstance(r, DecodedImage) for r in results)
                done += len(results)
            sync(device)
            rate = done / (time.perf_counter() - t0)
            print(
                f"| decode_images ({device.type}, read + EXIF + decode) | {batch} | {rate:,.0f} |"
            )


if __name__ == "__main__":
    main()
