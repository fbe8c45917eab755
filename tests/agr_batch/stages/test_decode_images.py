"""Batched device image decoding (agr_batch.stages.decode.nvjpeg) against sources.image_frame.

On the CPU torchvision's libjpeg-turbo decoder gives Pillow's pixels exactly (measured: max
difference 0 at qualities 50-98 and 4:2:0, 4:2:2, 4:4:4), so the CPU tests demand equality.
nvJPEG upsamples chroma differently: measured on an H200 (torch 2.11, torchvision 0.26,
``benchmarks/decode_images_device.py``) it equals Pillow exactly on 4:4:4 JPEGs and on small
images, and on 4:2:0 / 4:2:2 photos differs by 0.35-0.77 on average and at most 24 (at q50
4:2:0; 11 on the q95 files below), at sharp colour edges.
"""

from __future__ import annotations

import datetime as dt
import io
import os
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from agr_batch.stages.decode import nvjpeg as di
from agr_batch.stages.decode.image import image_frame
from agr_batch.stages.decode.media import SourceError
from tests import media
from tests.conftest import CUDA_TESTS_DEVICE

# nvJPEG against Pillow (libjpeg-turbo), pixel values 0-255 (measured: max 24, mean <= 0.77).
NVJPEG_MAX_DIFF = 32
NVJPEG_MEAN_DIFF = 1.0


@pytest.fixture(scope="module")
def upright(t1_rgb: np.ndarray) -> np.ndarray:
    """A non-square, asymmetric part of t1.jpg (so every orientation tells apart)."""
    return np.ascontiguousarray(t1_rgb[100:460, 200:680])


@pytest.fixture(scope="module")
def image_dir(tmp_path_factory: pytest.TempPathFactory, upright, hanks_rgb) -> dict[str, Path]:
    """JPEGs with every EXIF orientation, other kinds of JPEG, other formats, broken files."""
    d = tmp_path_factory.mktemp("images")
    files: dict[str, Path] = {}
    for o in range(1, 9):
        files[f"orient{o}"] = media.make_exif_jpeg(
            d / f"orient{o}.jpg",
            upright,
            orientation=o,
            datetime_original=f"2023:0{o}:14 10:11:12",
            offset_time_original="+02:00" if o % 2 else None,
        )
    files["no_exif"] = d / "hanks.jpg"
    Image.fromarray(hanks_rgb).save(files["no_exif"], quality=90)
    media.set_mtime(files["no_exif"], dt.datetime(2020, 1, 2, 3, 4, 5, tzinfo=dt.UTC))
    files["444"] = media.make_exif_jpeg(d / "444.jpg", upright, orientation=6, subsampling=0)
    files["progressive"] = media.make_exif_jpeg(
        d / "progressive.jpg", upright, orientation=3, progressive=True
    )
    files["gray"] = d / "gray.jpg"
    Image.fromarray(upright).convert("L").save(files["gray"], quality=90)
    files["cmyk"] = d / "cmyk.jpg"
    Image.fromarray(upright).convert("CMYK").save(files["cmyk"], quality=90)
    files["png"] = d / "t1.png"
    Image.fromarray(upright).save(files["png"])
    files["png_named_jpg"] = d / "png_named.jpg"
    Image.fromarray(upright).save(files["png_named_jpg"], format="PNG")
    files["truncated"] = media.make_truncated(files["orient1"], d / "truncated.jpg", 0.6)
    files["empty"] = media.make_empty(d / "empty.jpg")
    files["text"] = media.make_text_as(d / "text.jpg")
    files["missing"] = d / "missing.jpg"
    files["directory"] = d / "folder.jpg"
    files["directory"].mkdir()
    # Random bytes over part of the entropy-coded data: the header and end marker survive.
    data = bytearray(files["orient1"].read_bytes())
    mid = len(data) // 2
    data[mid : mid + 2000] = np.random.default_rng(0).integers(0, 256, 2000, np.uint8).tobytes()
    files["corrupt"] = d / "corrupt.jpg"
    files["corrupt"].write_bytes(bytes(data))
    # A Huffman table whose code counts overflow: the markers are fine, the decoders refuse.
    data = bytearray(files["orient6"].read_bytes())
    dht = data.find(b"\xff\xc4")
    data[dht + 5 : dht + 21] = b"\xff" * 16
    files["bogus_table"] = d / "bogus_table.jpg"
    files["bogus_table"].write_bytes(bytes(data))
    return files


def _reference(path: Path, **kwargs) -> np.ndarray | SourceError:
    try:
        return image_frame(path, **kwargs)
    except SourceError as e:
        return e


def _check_like_image_frame(paths: list[Path], results, *, max_diff: int, **kwargs) -> None:
    assert len(results) == len(paths)
    for path, got in zip(paths, results, strict=True):
        want = _reference(path, **kwargs)
        if isinstance(want, SourceError):
            assert isinstance(got, SourceError), path
            assert str(got) == str(want) and "\n" not in str(got)
            continue
        assert isinstance(got, di.DecodedImage), (path, got)
        assert got.path == path and got.start_time == want.start_time
        frame = got.to_frame()
        assert frame.image.shape == want.image.shape, path
        diff = np.abs(frame.image.astype(np.int16) - want.image)
        assert diff.max() <= max_diff, (path, diff.max())


def test_cpu_results_equal_image_frame(image_dir: dict[str, Path]):
    paths = list(image_dir.values())
    results = di.decode_images(paths, device="cpu", exif_tz=dt.UTC)
    _check_like_image_frame(paths, results, max_diff=0, exif_tz=dt.UTC)
    by_name = dict(zip(image_dir, results, strict=True))
    # Plain JPEGs took the batched decoder, the rest went to Pillow.
    for name in [f"orient{o}" for o in range(1, 9)] + ["no_exif", "444"]:
        assert by_name[name].decoder == "torchvision", name
    for name in ("progressive", "gray", "cmyk", "png", "png_named_jpg"):
        assert by_name[name].decoder == "pillow", name
    for name, reason in {
        "truncated": "truncated image",
        "empty": "empty file",
        "missing": "no such file",
        "directory": "not a regular file",
        "text": "not an image Pillow can open",
        "corrupt": "cannot decode image",
        "bogus_table": "cannot decode image",
    }.items():
        assert isinstance(by_name[name], SourceError) and reason in str(by_name[name]), name


def test_every_orientation_comes_out_upright(image_dir: dict[str, Path], upright: np.ndarray):
    paths = [image_dir[f"orient{o}"] for o in range(1, 9)]
    for layout in ("chw", "hwc"):
        results = di.decode_images(paths, device="cpu", layout=layout, exif_tz=dt.UTC)
        for o, result in enumerate(results, start=1):
            assert isinstance(result, di.DecodedImage)
            shape = upright.shape if layout == "hwc" else (3, *upright.shape[:2])
            assert tuple(result.image.shape) == shape and result.image.is_contiguous()
            # JPEG loses a little; a wrong turn or flip would differ by tens of levels.
            diff = np.abs(result.to_frame().image.astype(np.int16) - upright).mean()
            assert diff < 1.5, (o, diff)
            offset = dt.timedelta(hours=2) if o % 2 else dt.timedelta(0)
            want = dt.datetime(2023, o, 14, 10, 11, 12, tzinfo=dt.timezone(offset))
            assert result.start_time == want


def test_orient_matches_pillow_exif_transpose():
    stored = np.arange(2 * 3 * 5, dtype=np.uint8).reshape(2, 3, 5)  # (C, H, W)
    for o, method in {
        2: Image.Transpose.FLIP_LEFT_RIGHT,
        3: Image.Transpose.ROTATE_180,
        4: Image.Transpose.FLIP_TOP_BOTTOM,
        5: Image.Transpose.TRANSPOSE,
        6: Image.Transpose.ROTATE_270,
        7: Image.Transpose.TRANSVERSE,
        8: Image.Transpose.ROTATE_90,
    }.items():
        want = np.stack([np.asarray(Image.fromarray(c).transpose(method)) for c in stored])
        np.testing.assert_array_equal(di.orient(torch.from_numpy(stored), o).numpy(), want)
    for o in (0, 1, 9):
        np.testing.assert_array_equal(di.orient(torch.from_numpy(stored), o).numpy(), stored)


@pytest.mark.parametrize("bad", ["corrupt", "bogus_table"])
def test_a_corrupt_jpeg_does_not_fail_its_batch(image_dir: dict[str, Path], bad: str):
    """Garbage in the scan is caught before decoding; a bogus table by the decoder, alone."""
    paths = [image_dir["orient1"], image_dir[bad], image_dir["orient6"]]
    results = di.decode_images(paths, device="cpu")
    assert [type(r).__name__ for r in results] == ["DecodedImage", "SourceError", "DecodedImage"]
    assert results[0].decoder == results[2].decoder == "torchvision"
    assert str(results[1]) == str(_reference(image_dir[bad]))


def test_scan_marker_check(image_dir: dict[str, Path]):
    for name in ("orient1", "444", "no_exif", "bogus_table"):
        assert di._scan_markers_ok(bytearray(image_dir[name].read_bytes())), name
    assert di._scan_markers_ok(bytearray((media.images_dir() / "t1.jpg").read_bytes()))
    assert not di._scan_markers_ok(bytearray(image_dir["corrupt"].read_bytes()))


def test_size_limit_is_read_from_the_header(image_dir: dict[str, Path], upright: np.ndarray):
    limit = upright.shape[0] * upright.shape[1] - 1
    paths = [image_dir["orient6"], image_dir["png"]]
    results = di.decode_images(paths, device="cpu", max_pixels=limit)
    _check_like_image_frame(paths, results, max_diff=0, max_pixels=limit)
    assert all("image too large" in str(r) for r in results)


def test_fifo_is_never_opened(tmp_path: Path):
    fifo = tmp_path / "pipe.jpg"
    os.mkfifo(fifo)  # opening it for reading would block until a writer comes
    (result,) = di.decode_images([fifo], device="cpu")
    assert isinstance(result, SourceError) and str(result) == f"{fifo}: not a regular file"


def test_batches_keep_the_order(image_dir: dict[str, Path]):
    paths = list(image_dir.values())
    whole = di.decode_images(paths, device="cpu")
    batched = list(di.iter_decoded_images(paths, batch_size=3, device="cpu"))
    assert len(batched) == len(whole)
    for a, b in zip(whole, batched, strict=True):
        assert type(a) is type(b)
        if isinstance(a, di.DecodedImage):
            assert a.path == b.path and torch.equal(a.image, b.image)
        else:
            assert str(a) == str(b)
    assert di.decode_images([], device="cpu") == []
    with pytest.raises(ValueError, match="batch_size"):
        next(di.iter_decoded_images(paths, batch_size=0, device="cpu"))


def test_trailing_zeros_after_the_end_marker_keep_the_fast_path(
    image_dir: dict[str, Path], tmp_path: Path
):
    padded = tmp_path / "padded.jpg"
    padded.write_bytes(image_dir["orient8"].read_bytes() + b"\0" * 16)
    (result,) = di.decode_images([padded], device="cpu")
    assert result.decoder == "torchvision"
    _check_like_image_frame([padded], [result], max_diff=0)


@pytest.mark.filterwarnings(
    "ignore:The image decoding and encoding capabilities:DeprecationWarning"
)
def test_jpeg_bytes_decode_like_pillow_for_common_encoder_settings(upright: np.ndarray):
    """Quality and subsampling variants straight from memory: exact on the CPU."""
    for quality, subsampling in ((50, 2), (75, 1), (98, 0)):
        buf = io.BytesIO()
        Image.fromarray(upright).save(buf, format="JPEG", quality=quality, subsampling=subsampling)
        want = np.asarray(Image.open(io.BytesIO(buf.getvalue())).convert("RGB"))
        from torchvision.io import decode_jpeg

        got = decode_jpeg(torch.frombuffer(bytearray(buf.getvalue()), dtype=torch.uint8))
        np.testing.assert_array_equal(got.permute(1, 2, 0).numpy(), want)


@pytest.mark.cuda
def test_cuda_results_match_image_frame(image_dir: dict[str, Path]):
    device = torch.device(CUDA_TESTS_DEVICE)
    paths = list(image_dir.values())
    results = di.decode_images(paths, device=device, exif_tz=dt.UTC)
    tolerance = NVJPEG_MAX_DIFF if device.type == "cuda" else 0
    _check_like_image_frame(paths, results, max_diff=tolerance, exif_tz=dt.UTC)
    decoded = [r for r in results if isinstance(r, di.DecodedImage)]
    assert all(r.image.device.type == device.type for r in decoded)
    fast = [r for r in decoded if r.decoder == "torchvision"]
    assert len(fast) == 10  # orientations 1-8, no EXIF, 4:4:4
    for r in fast:
        want = image_frame(r.path, exif_tz=dt.UTC).image
        diff = np.abs(r.to_frame().image.astype(np.int16) - want)
        assert diff.mean() <= NVJPEG_MEAN_DIFF, (r.path, diff.mean())
