from __future__ import annotations

import datetime as dt
import os
import threading
from pathlib import Path

import av
import numpy as np
import pytest
from PIL import Image

from agr_batch.stages.decode import image as images
from agr_batch.stages.decode import media as inputs
from agr_batch.stages.decode import video
from agr_batch.stages.decode.media import MediaFile, SourceError
from tests import media

# ---------------------------------------------------------------------------------------------
# discover


def _touch(path: Path, data: bytes = b"x") -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data)
    return path


def test_discover_mixes_files_dirs_unknown_and_missing(tmp_path: Path):
    root = tmp_path / "in"
    _touch(root / "b.jpg")
    _touch(root / "a.PNG")
    _touch(root / "sub" / "clip.MP4")
    _touch(root / "sub" / "deeper" / "x.webm")
    _touch(root / "notes.txt")
    _touch(root / "sub" / "data.xyz")
    _touch(root / ".hidden.jpg")  # hidden: ignored inside directories
    _touch(root / ".git" / "obj.png")
    single = _touch(tmp_path / "single.mov")
    odd = _touch(tmp_path / "odd.doc")
    (root / "dangling.jpg").symlink_to(tmp_path / "nowhere.jpg")

    found = inputs.discover([single, root, tmp_path / "missing.mp4", odd, root / "b.jpg"])

    assert [(m.path.relative_to(tmp_path).as_posix(), m.kind) for m in found.media] == [
        ("single.mov", "video"),
        ("in/a.PNG", "image"),
        ("in/b.jpg", "image"),
        ("in/sub/clip.MP4", "video"),
        ("in/sub/deeper/x.webm", "video"),
    ]  # b.jpg listed again by name is reported once
    assert sorted(p.name for p in found.skipped) == ["data.xyz", "notes.txt", "odd.doc"]
    assert sorted(p.name for p in found.missing) == ["dangling.jpg", "missing.mp4"]
    assert found.errors == ()
    assert [m.path.name for m in found.videos] == ["single.mov", "clip.MP4", "x.webm"]
    assert len(found.images) == 2


def test_missing_inputs_say_why(tmp_path: Path):
    (tmp_path / "dangling.mp4").symlink_to(tmp_path / "deleted.mp4")
    (tmp_path / "loop.mp4").symlink_to(tmp_path / "loop.mp4")
    found = inputs.discover([tmp_path / "dangling.mp4", tmp_path / "loop.mp4", tmp_path / "x.mp4"])
    assert [inputs.why_missing(p) for p in found.missing] == [
        f"dangling symbolic link (to {tmp_path / 'deleted.mp4'})",
        "symbolic link loop",
        "no such file or directory",
    ]


def test_discover_order_is_deterministic(tmp_path: Path):
    for name in ["c.jpg", "a.jpg", "b.mp4", "z/y.png", "m/k.png"]:
        _touch(tmp_path / name)
    first = inputs.discover([tmp_path])
    second = inputs.discover([str(tmp_path)])
    names = [m.path.relative_to(tmp_path).as_posix() for m in first.media]
    assert names == ["a.jpg", "b.mp4", "c.jpg", "m/k.png", "z/y.png"]
    assert [m.path for m in second.media] == [m.path for m in first.media]


def test_discover_survives_symlink_loops(tmp_path: Path):
    root = tmp_path / "root"
    _touch(root / "sub" / "face.jpg")
    (root / "sub" / "loop").symlink_to(root, target_is_directory=True)
    (root / "self").symlink_to(root / "self")  # a symlink to itself (ELOOP)
    result: list[inputs.Discovery] = []
    worker = threading.Thread(target=lambda: result.append(inputs.discover([root])), daemon=True)
    worker.start()
    worker.join(timeout=20)
    assert not worker.is_alive(), "discover() hung on a symlink loop"
    (found,) = result
    assert [m.path.name for m in found.media] == ["face.jpg"]
    assert [p.name for p in found.missing] == ["self"]


# ---------------------------------------------------------------------------------------------
# video sampling and timestamps


def test_sampling_2fps_of_30fps_3s(clip_3s: media.WrittenVideo):
    got = list(video.video_frames(clip_3s.path, sample_fps=2.0))
    assert [f.time_s for f in got] == pytest.approx([0.0, 0.5, 1.0, 1.5, 2.0, 2.5], abs=1e-3)
    assert [f.frame_index for f in got] == [0, 15, 30, 45, 60, 75]
    # The pixels are those of the frame the index names.
    assert [media.read_frame_number(f.image) for f in got] == [0, 15, 30, 45, 60, 75]
    for f in got:
        assert f.image.shape == (240, 320, 3)
        assert f.image.dtype == np.uint8
        assert f.image.flags.c_contiguous
        assert f.source == str(clip_3s.path)


def test_every_frame_when_sample_fps_is_none_or_zero(clip_3s: media.WrittenVideo):
    for fps in (None, 0, -1):
        got = list(video.video_frames(clip_3s.path, sample_fps=fps))
        assert [f.frame_index for f in got] == list(range(90))
        assert got[-1].time_s == pytest.approx(89 / 30, abs=1e-3)


def test_start_and_end_bound_the_frames(clip_3s: media.WrittenVideo):
    got = list(video.video_frames(clip_3s.path, sample_fps=None, start=1.0, end=2.0))
    assert [f.frame_index for f in got] == list(range(30, 60))
    assert [media.read_frame_number(f.image) for f in got] == list(range(30, 60))
    sampled = list(video.video_frames(clip_3s.path, sample_fps=1.0, start=0.9))
    assert [round(f.time_s, 2) for f in sampled] == [0.9, 1.9, 2.9]


def test_vfr_timestamps_match_written_pts(tmp_path: Path):
    written = media.make_video(tmp_path / "vfr.mkv", seconds=1.0, size=(256, 160), vfr=True)
    gaps = np.diff(written.times)
    assert gaps.max() > 3 * gaps.min()  # really variable
    got = list(video.video_frames(written.path, sample_fps=None))
    assert [f.time_s for f in got] == pytest.approx(list(written.times), abs=1e-3)
    assert [media.read_frame_number(f.image) for f in got] == list(range(len(written.times)))


def test_vfr_sampling_follows_time_not_frame_count(tmp_path: Path):
    written = media.make_video(tmp_path / "vfr.mp4", seconds=1.0, size=(256, 160), vfr=True)
    assert written.times[:6] == (0.0, 0.1, 0.117, 0.167, 0.2, 0.3)
    got = list(video.video_frames(written.path, sample_fps=4.0))
    # Instants 0, .25, .5, .75: taken are the first frames at or after each, and after a
    # frame at .3 the next instant is .5 (no catch-up burst).
    assert [round(f.time_s, 3) for f in got] == [0.0, 0.3, 0.5, 0.767]


def test_avi_mpeg4_is_sampled(tmp_path: Path, t1_rgb: np.ndarray):
    written = media.make_video(tmp_path / "old.avi", [t1_rgb], seconds=2, size=(320, 240))
    got = list(video.video_frames(written.path, sample_fps=2.0))
    assert [f.frame_index for f in got] == [0, 15, 30, 45]
    assert [media.read_frame_number(f.image) for f in got] == [0, 15, 30, 45]


def test_keyframes_only_yields_exactly_the_keyframes(clip_3s: media.WrittenVideo):
    reference = media.keyframe_indices(clip_3s.path)
    assert reference == list(range(0, 90, 10))  # gop=10, no scene cuts
    got = list(video.video_frames(clip_3s.path, sample_fps=None, keyframes_only=True))
    assert [f.frame_index for f in got] == reference
    assert [media.read_frame_number(f.image) for f in got] == reference
    assert [f.time_s for f in got] == pytest.approx([i / 30 for i in reference], abs=1e-3)
    sampled = list(video.video_frames(clip_3s.path, sample_fps=1.0, keyframes_only=True))
    assert [f.frame_index for f in sampled] == [0, 30, 60]


# ---------------------------------------------------------------------------------------------
# rotation


@pytest.mark.parametrize("rotation", [90, -90, 180])
def test_display_rotation_is_applied(tmp_path: Path, rotation: int):
    written = media.make_video(
        tmp_path / f"rot{rotation}.mp4", seconds=0.5, size=(320, 240), rotation=rotation
    )
    if rotation != 180:
        assert written.coded_size == (240, 320)
    # The stored pictures are sideways: without rotation, the marker is not top-left.
    with av.open(str(written.path)) as container:
        raw = next(container.decode(video=0))
        assert raw.rotation % 360 == rotation % 360
        assert media.read_frame_number(raw.to_ndarray(format="rgb24")) is None
    got = list(video.video_frames(written.path, sample_fps=None))
    assert len(got) == 15
    assert all(f.image.shape == (240, 320, 3) for f in got)
    assert [media.read_frame_number(f.image) for f in got] == list(range(15))
    info = video.probe(written.path)
    assert (info.width, info.height, info.rotation) == (320, 240, rotation)


def test_probe_reports_stream_properties(clip_3s: media.WrittenVideo):
    info = video.probe(clip_3s.path)
    assert info.duration_s == pytest.approx(3.0, abs=0.05)
    assert info.fps == pytest.approx(30.0)
    assert (info.width, info.height, info.rotation, info.frames) == (320, 240, 0, 90)
    assert info.codec == "h264"


# ---------------------------------------------------------------------------------------------
# images


@pytest.mark.parametrize("orientation", [3, 6, 8])
def test_exif_orientation_is_applied(tmp_path: Path, t1_rgb: np.ndarray, orientation: int):
    upright = t1_rgb[:300, :500]
    path = media.make_exif_jpeg(tmp_path / "turned.jpg", upright, orientation=orientation)
    with Image.open(path) as im:
        stored = im.size
    if orientation != 3:
        assert stored == (300, 500)  # stored sideways
    frame = images.image_frame(path)
    assert frame.image.shape == (300, 500, 3)
    diff = np.abs(frame.image.astype(np.int16) - upright.astype(np.int16))
    assert diff.mean() < 4  # JPEG noise only; a wrong rotation differs by tens


_LOSSY = {"gray_jpeg": 3, "cmyk_jpeg": 4}


@pytest.mark.parametrize(
    "name",
    [
        "gray", "gray_jpeg", "gray16", "rgba", "palette", "palette_alpha", "cmyk_jpeg",
        "bilevel", "rgb_bmp", "rgb_tif", "rgb_webp",
    ],
)  # fmt: skip
def test_image_modes_become_rgb_uint8(tmp_path: Path, name: str):
    made = media.make_mode_images(tmp_path)
    path, expected = made[name]
    frame = images.image_frame(path)
    assert frame.image.dtype == np.uint8
    assert frame.image.shape == (*expected.shape[:2], 3)
    assert frame.image.flags.c_contiguous
    diff = np.abs(frame.image.astype(np.int16) - expected.astype(np.int16))
    assert diff.max() <= _LOSSY.get(name, 0), f"{name}: max difference {diff.max()}"
    assert (frame.frame_index, frame.time_s) == (0, 0.0)


def test_16bit_uses_the_high_byte_range(tmp_path: Path):
    ramp = np.linspace(0, 65535, 256).astype(np.uint16).reshape(16, 16)
    Image.fromarray(ramp).save(tmp_path / "ramp16.png")
    image = images.image_frame(tmp_path / "ramp16.png").image
    assert image[0, 0, 0] == 0 and image[-1, -1, 0] == 255
    assert image[8, 0, 0] == pytest.approx(128, abs=1)  # not clipped or wrapped


def test_image_too_large_is_refused(tmp_path: Path, t1_rgb: np.ndarray, monkeypatch):
    Image.fromarray(t1_rgb).save(tmp_path / "big.png")
    with pytest.raises(SourceError, match=r"image too large: 1134080 pixels > limit 1000000$"):
        images.image_frame(tmp_path / "big.png", max_pixels=1_000_000)
    # Pillow's own decompression-bomb warning is an error too.
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 700_000)
    with pytest.raises(SourceError, match="image too large"):
        images.image_frame(tmp_path / "big.png")


# ---------------------------------------------------------------------------------------------
# bad files


def _bad_files(tmp: Path, clip: Path) -> dict[str, tuple[Path, str]]:
    Image.fromarray(media.load_rgb("t1.jpg")).save(tmp / "good.jpg", quality=90)
    return {
        "empty video": (media.make_empty(tmp / "empty.mp4"), "empty file"),
        "empty image": (media.make_empty(tmp / "empty.jpg"), "empty file"),
        "text video": (
            media.make_text_as(tmp / "notes.mp4"),
            "not a media file PyAV can open (Invalid data found when processing input)",
        ),
        "text image": (media.make_text_as(tmp / "notes.jpg"), "not an image Pillow can open"),
        "truncated jpeg": (
            media.make_truncated(tmp / "good.jpg", tmp / "cut.jpg", 0.5),
            "truncated image",
        ),
        "truncated mp4 (index at the end)": (
            media.make_truncated(clip, tmp / "cut.mp4", 0.5),
            "not a media file PyAV can open",
        ),
        "missing": (tmp / "absent.mkv", "no such file"),
    }


@pytest.mark.parametrize(
    "case",
    [
        "empty video", "empty image", "text video", "text image", "truncated jpeg",
        "truncated mp4 (index at the end)", "missing",
    ],
)  # fmt: skip
def test_bad_files_raise_one_line_source_error(
    tmp_path: Path, clip_3s: media.WrittenVideo, case: str
):
    path, reason = _bad_files(tmp_path, clip_3s.path)[case]
    with pytest.raises(SourceError) as info:
        list(inputs.frames(path))
    message = str(info.value)
    assert "\n" not in message
    assert message.startswith(f"{path}: ")
    assert reason in message
    assert info.value.path == path


def test_truncated_video_yields_good_frames_then_fails(
    tmp_path: Path, noisy_clip: media.WrittenVideo
):
    cut = media.make_truncated(noisy_clip.path, tmp_path / "cut.mp4", 0.9)
    got: list[int] = []
    with pytest.raises(SourceError) as info:
        for frame in video.video_frames(cut, sample_fps=None):
            got.append(frame.frame_index)
    assert len(got) > 30
    assert got == list(range(len(got)))
    assert str(info.value).startswith(f"{cut}: ")
    assert "truncated" in str(info.value) or "decoding failed" in str(info.value)


def test_unknown_extension_and_mediafile_dispatch(tmp_path: Path, t1_rgb: np.ndarray):
    Image.fromarray(t1_rgb).save(tmp_path / "face.png")
    with pytest.raises(SourceError, match=r"unknown media extension '\.xyz'"):
        list(inputs.frames(tmp_path / "face.xyz"))
    (frame,) = inputs.frames(MediaFile(tmp_path / "face.png", "image"))
    assert np.array_equal(frame.image, t1_rgb)


# ---------------------------------------------------------------------------------------------
# start times


def test_video_start_time_from_creation_time(clip_3s: media.WrittenVideo):
    (frame,) = video.video_frames(clip_3s.path, sample_fps=None, end=0.01)
    assert frame.start_time == dt.datetime(2024, 5, 6, 7, 8, 9, tzinfo=dt.UTC)  # MP4 keeps seconds
    assert frame.absolute_time == frame.start_time


def test_video_start_time_falls_back_to_mtime_less_the_duration(tmp_path: Path):
    # A recorder's mtime is its last write, when the recording ENDED: the start is the mtime
    # less the clip's length, or every window would be late by that length.
    for name in ("plain.mkv", "plain.mp4"):
        written = media.make_video(tmp_path / name, seconds=4.0, size=(128, 96))
        ended = dt.datetime(2001, 2, 3, 4, 5, 6, tzinfo=dt.UTC)
        media.set_mtime(written.path, ended)
        frames = list(video.video_frames(written.path, sample_fps=1.0))
        started = ended - dt.timedelta(seconds=4.0)
        assert abs((frames[0].start_time - started).total_seconds()) < 0.1, name
        assert frames[0].start_time.tzinfo is not None
        with av.open(str(written.path)) as container:
            facts = video.stream_facts(written.path, container)
        assert facts.start_time == frames[0].start_time  # the GPU decoder's timing agrees


def test_image_start_time_from_exif(tmp_path: Path, hanks_rgb: np.ndarray):
    with_offset = media.make_exif_jpeg(
        tmp_path / "a.jpg",
        hanks_rgb,
        orientation=1,
        datetime_original="2023:08:09 10:11:12",
        offset_time_original="+02:00",
    )
    got = images.image_frame(with_offset).start_time
    assert got == dt.datetime(2023, 8, 9, 8, 11, 12, tzinfo=dt.UTC)
    assert got.utcoffset() == dt.timedelta(hours=2)

    naive = media.make_exif_jpeg(
        tmp_path / "b.jpg", hanks_rgb, orientation=1, datetime_original="2023:08:09 10:11:12"
    )
    assert images.image_frame(naive, exif_tz=dt.UTC).start_time == dt.datetime(
        2023, 8, 9, 10, 11, 12, tzinfo=dt.UTC
    )
    local = images.image_frame(naive).start_time
    assert local.replace(tzinfo=None) == dt.datetime(2023, 8, 9, 10, 11, 12)
    assert local.tzinfo is not None

    Image.fromarray(hanks_rgb).save(tmp_path / "c.png")
    when = dt.datetime(2010, 1, 2, 3, 4, 5, tzinfo=dt.UTC)
    media.set_mtime(tmp_path / "c.png", when)
    assert images.image_frame(tmp_path / "c.png").start_time == when


def test_parse_creation_time_variants():
    parse = video._parse_iso
    assert parse("2024-05-06T07:08:09.000000Z") == dt.datetime(2024, 5, 6, 7, 8, 9, tzinfo=dt.UTC)
    assert parse("2024-05-06 07:08:09") == dt.datetime(2024, 5, 6, 7, 8, 9, tzinfo=dt.UTC)
    assert parse("2024-05-06T09:08:09+0200") == dt.datetime(2024, 5, 6, 7, 8, 9, tzinfo=dt.UTC)
    assert parse("1970-01-01T00:00:00.000000Z") is None
    assert parse("garbage") is None


def test_early_close_releases_the_file(clip_3s: media.WrittenVideo):
    gen = video.video_frames(clip_3s.path)
    next(gen)
    gen.close()  # the container is closed by the generator's with-block
    fd_dir = Path("/proc/self/fd")
    if fd_dir.exists():
        open_files = {os.path.realpath(fd_dir / fd) for fd in os.listdir(fd_dir)}
        assert str(clip_3s.path.resolve()) not in open_files


def test_skip_nonref_samples_near_the_same_instants(clip_3s):
    from agr_batch.stages.decode.video import video_frames

    full = list(video_frames(clip_3s.path, sample_fps=2))
    fast = list(video_frames(clip_3s.path, sample_fps=2, skip_nonref=True))
    assert len(fast) == len(full)
    for a, b in zip(full, fast, strict=True):
        assert abs(a.time_s - b.time_s) <= 3 / 30  # within a few frames of the instant
        assert b.frame_index == round(b.time_s * 30)
        assert media.read_frame_number(b.image) == b.frame_index


# ---------------------------------------------------------------------------------------------
# sampling precision, FIFOs and memory bounds


def test_1000_fps_is_sampled_once_per_instant(tmp_path: Path):
    # At 1000 fps the frame interval equals the old 1 ms tolerance: frames 499 and 500 were
    # both taken for the instant 0.5 s.
    clip = media.make_video(tmp_path / "fast.mp4", fps=1000, seconds=1.6, size=(256, 64))
    got = [f.frame_index for f in video.video_frames(clip.path, sample_fps=2.0)]
    assert got == [0, 500, 1000, 1500]
    stamped = [
        media.read_frame_number(f.image) for f in video.video_frames(clip.path, sample_fps=4.0)
    ]
    assert stamped == [0, 250, 500, 750, 1000, 1250, 1500]


def _returns_within(fn, seconds: float = 10.0):  # type: ignore[no-untyped-def]
    """Run ``fn`` on a daemon thread; its result, or a failure if it is still blocked."""
    box: dict[str, object] = {}

    def target() -> None:
        try:
            box["value"] = fn()
        except BaseException as e:
            box["error"] = e

    t = threading.Thread(target=target, daemon=True)
    t.start()
    t.join(seconds)
    assert not t.is_alive(), "blocked (opened a FIFO?)"
    if "error" in box:
        raise box["error"]  # type: ignore[misc]
    return box["value"]


def test_fifo_named_like_a_picture_never_blocks(tmp_path: Path):
    fifo = tmp_path / "snap.jpg"
    os.mkfifo(fifo)
    when = _returns_within(lambda: images.capture_time(fifo))
    assert when == dt.datetime.fromtimestamp(fifo.stat().st_mtime, tz=dt.UTC)
    with pytest.raises(SourceError, match="not a regular file"):
        _returns_within(lambda: images.image_frame(fifo))
    with pytest.raises(OSError, match="not a regular file"):
        _returns_within(lambda: inputs.open_regular(fifo))


def test_high_depth_conversion_memory_is_bounded_by_strips(tmp_path: Path):
    import tracemalloc

    h, w = 3000, 4000  # 12 MP, 16-bit grayscale
    ramp = (np.arange(w, dtype=np.uint32)[None, :] * 65535 // (w - 1)).astype(np.uint16)
    Image.fromarray(np.repeat(ramp, h, axis=0)).save(tmp_path / "g16.png", compress_level=1)
    tracemalloc.start()
    try:
        image = images.image_frame(tmp_path / "g16.png").image
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert image.shape == (h, w, 3) and image[0, -1, 0] == 255 and image[0, 0, 0] == 0
    # The RGB result (36 MB) plus the raw samples (24 MB) plus one strip; converting the
    # whole picture through float64 took five 96 MB arrays.
    assert peak < image.nbytes + h * w * 2 + 3 * images._STRIP_BYTES, peak


def test_video_frames_beyond_the_pixel_limit_are_refused(clip_3s: media.WrittenVideo, monkeypatch):
    monkeypatch.setattr(video, "DEFAULT_MAX_PIXELS", 320 * 240 - 1)
    with pytest.raises(SourceError, match=r"frames too large: 320x240 pixels > limit 76799"):
        next(video.video_frames(clip_3s.path))
