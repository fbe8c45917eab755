"""The configuration of a run, recorded in every output's metadata.

Every stage's options live here (detector, tracker, voting, processing), so a configuration
can be built and checked without loading any stage: the command line answers usage errors
at once.
"""

from __future__ import annotations

import dataclasses
import platform
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from agr_batch import __version__, limits
from agr_batch.clock import ALIGN_CHOICES, check_clock_window, resolve_tz
from agr_batch.limits import MAX_BEST_K, MAX_GAP_S, MAX_REFRESH_EVERY, check_number


@dataclass(frozen=True)
class TrackerConfig:
    """Association thresholds.

    Attributes:
        high_score: Detections at or above this score are associated first.
        min_similarity: Lowest similarity accepted as a match.
        max_gap_s: Seconds a track may go unmatched before it ends.
        center_gate: Centre distance, in face sizes, within which non-overlapping boxes may
            still match (similarity falls linearly to 0 at the gate).
        velocity_smoothing: Weight of the newest velocity measurement (exponential average).
        gate_reference_s: Gap at which the centre gate is ``center_gate``; longer gaps
            widen it by the square root of their ratio to this.
        gap_samples: A track survives at least this many sampling intervals unseen (so one
            missed detection between two sparse samples does not split it).
        interval_window: Frames over which the sampling interval's median is taken.
    """

    high_score: float = 0.6
    min_similarity: float = 0.1
    max_gap_s: float = 3.0
    center_gate: float = 2.0
    velocity_smoothing: float = 0.5
    gate_reference_s: float = 0.5
    gap_samples: float = 2.5
    interval_window: int = 16

    def __post_init__(self) -> None:
        check_number("--max-gap", self.max_gap_s, low=0, high=MAX_GAP_S, low_open=True, unit="s")
        check_number("high_score", self.high_score, low=0.0, high=1.0)
        check_number("min_similarity", self.min_similarity, low=0, high=1, low_open=True)
        check_number("velocity_smoothing", self.velocity_smoothing, low=0, high=1, low_open=True)
        check_number("center_gate", self.center_gate, low=0, high=100, low_open=True)
        check_number("gate_reference_s", self.gate_reference_s, low=0, high=1e6, low_open=True)
        check_number("gap_samples", self.gap_samples, low=0, high=1000)
        check_number("interval_window", self.interval_window, low=1, high=10_000, integer=True)


@dataclass(frozen=True)
class VoteConfig:
    """Which faces of a track are classified.

    Attributes:
        best_k: Best faces (by quality) classified per track.
        refresh_every: A fresh face is classified each time the track grows by this many faces.
        per_face: Classify every face and keep per-face labels (no voting).
    """

    best_k: int = 3
    refresh_every: int = 20
    per_face: bool = False

    def __post_init__(self) -> None:
        check_number("--best-k", self.best_k, low=1, high=MAX_BEST_K, integer=True)
        check_number(
            "--refresh-every", self.refresh_every, low=1, high=MAX_REFRESH_EVERY, integer=True
        )


@dataclass(frozen=True)
class DetectorConfig:
    """Face detector choice and thresholds.

    Attributes:
        name: Registered detector name (``centerface``, ``scrfd``).
        score_threshold: Minimum detection score.
        min_face: Minimum face size (shorter box side) in frame pixels.
        max_side: Longest side of the detector's working resolution, in pixels.
        model_path: Weights file for detectors that need one (``scrfd``).
        backend: How CenterFace runs: ``auto`` (on CPU OpenVINO in bf16 where the CPU computes
            bf16 natively, else onnxruntime; the compiled engine on CUDA), ``onnxruntime``,
            ``onnxruntime-int8``, ``openvino``, ``openvino-bf16``, or an engine backend
            (``eager``, ``channels_last``, ``compiled``, ``inductor``, ``tensorrt``) in PyTorch.
        threads: Detector threads (None: every core this process may use).
        redetect_s: In videos, search whole frames at least this often (seconds of video)
            and, in between, only around the faces being tracked; 0 searches every frame
            whole. Faces that appear are found at the next whole-frame search. Detectors
            without tile search (``scrfd``, the PyTorch ones) always search whole frames.
    """

    name: str = "centerface"
    score_threshold: float = 0.5
    min_face: int = 20
    max_side: int = 640
    model_path: str | None = None
    backend: str = "auto"
    threads: int | None = None
    redetect_s: float = 1.0

    def __post_init__(self) -> None:
        check_number(
            "--redetect-every (0 = every frame)", self.redetect_s, low=0.0,
            high=limits.MAX_GAP_S, unit="seconds",
        )  # fmt: skip
        check_number("--det-threshold", self.score_threshold, low=0.0, high=1.0, low_open=True)
        if self.score_threshold == 1.0:
            raise ValueError("--det-threshold must be < 1 (no detection scores 1 or more)")
        check_number(
            "--min-face", self.min_face, low=1, high=limits.MAX_MIN_FACE, unit="pixels",
            integer=True,
        )  # fmt: skip
        check_number(
            "--det-size", self.max_side, low=limits.MIN_DET_SIZE, high=limits.MAX_DET_SIZE,
            unit="pixels", integer=True,
        )  # fmt: skip

    def kwargs(self) -> dict[str, Any]:
        """Constructor keywords for :func:`agr_batch.stages.detect.create_detector`."""
        kw: dict[str, Any] = {
            "score_threshold": self.score_threshold,
            "min_face_size": float(self.min_face),
        }
        if self.name == "centerface":
            kw["max_side"] = self.max_side
            kw["input_width"] = None
        elif self.name == "scrfd":
            kw["input_size"] = (self.max_side, self.max_side)
        if self.model_path:
            kw["model_path"] = self.model_path
        if self.threads:
            kw["threads"] = self.threads
        return kw


@dataclass(frozen=True, kw_only=True)
class ProcessingConfig:
    """Everything that determines how files become face records (shared by run and scan).

    Attributes:
        model: Checkpoint path.
        sample_fps: Frames sampled per second of video (by presentation time; 0 = all).
        keyframes_only: Decode keyframes alone (fast scans).
        skip_nonref: Skip decoding every frame nothing refers to (B-frames), sampled ones
            too; sampled frames may move by a frame or two. (Unsampled ones are skipped
            exactly without it.)
        window_s: Aggregation window in seconds.
        detector: Detector configuration.
        batch_size: Faces per classifier call.
        device: ``auto``, ``cpu`` or ``cuda``.
        backend: Classifier backend name (``auto`` picks one).
        precision: ``auto``, ``fp32``, ``bf16`` or ``fp16``.
        cache_dir: Compiled-engine cache folder (default ``~/.cache/agr-batch``).
        queue_size: Bound of each inter-stage queue, in frames.
        max_inflight_bytes: Bound of the decoded frame bytes queued between the decoder and
            the detector (a single larger frame still passes, alone).
        tracker: Face tracker thresholds.
        vote: Which faces of each track are classified.
        min_cell_count: Drop stats cells with fewer faces or people than this (0 = keep all).
        decoder: Video decoder: ``auto``, ``pyav`` or ``torchcodec`` (GPU).
        align_windows: ``start`` (windows from each source's start) or ``clock`` (on the
            wall clock of ``tz``: 15-minute windows at :00, :15, …).
        tz: IANA time zone of the clock windows (None: this system's local time).
    """

    model: Path
    sample_fps: float = 2.0
    keyframes_only: bool = False
    skip_nonref: bool = False
    window_s: float = 60.0
    detector: DetectorConfig = field(default_factory=DetectorConfig)
    batch_size: int = 64
    device: str = "auto"
    backend: str = "auto"
    precision: str = "auto"
    cache_dir: Path | None = None
    queue_size: int = 8
    max_inflight_bytes: int = limits.DEFAULT_MAX_INFLIGHT_BYTES
    tracker: TrackerConfig = field(default_factory=TrackerConfig)
    vote: VoteConfig = field(default_factory=VoteConfig)
    min_cell_count: int = 0
    decoder: str = "auto"
    align_windows: str = "start"
    tz: str | None = None

    def __post_init__(self) -> None:
        check_number(
            "--min-cell-count", self.min_cell_count, low=0, high=limits.MAX_MIN_CELL_COUNT,
            integer=True,
        )  # fmt: skip
        check_number(
            "--sample-fps (0 = every frame)", self.sample_fps, low=0.0,
            high=limits.MAX_SAMPLE_FPS,
        )  # fmt: skip
        check_number(
            "--window", self.window_s, low=limits.MIN_WINDOW_S, high=limits.MAX_WINDOW_S,
            unit="seconds",
        )  # fmt: skip
        check_number(
            "--batch-size", self.batch_size, low=1, high=limits.MAX_BATCH_SIZE, integer=True
        )
        if self.align_windows not in ALIGN_CHOICES:
            raise ValueError(
                f"--align-windows {self.align_windows}: choose one of {', '.join(ALIGN_CHOICES)}"
            )
        if self.align_windows == "clock":
            check_clock_window(self.window_s)
        resolve_tz(self.tz)  # an unknown name fails here, before any work
        check_number("queue size", self.queue_size, low=1, high=1024, integer=True)
        check_number(
            "in-flight frame bytes", self.max_inflight_bytes, low=1, high=2**48, integer=True
        )

    def to_metadata(self, **resolved: Any) -> dict[str, Any]:
        """The configuration as JSON-ready data, plus values resolved at run time."""
        data = _plain(dataclasses.asdict(self))
        data["tool"] = "agr-batch"
        data["tool_version"] = __version__
        data["python"] = platform.python_version()
        data.update(_plain(resolved))
        return data


@dataclass(frozen=True, kw_only=True)
class RunConfig(ProcessingConfig):
    """``agr-batch run``: inputs and output files on top of the processing options.

    Attributes:
        inputs: Video files, image files and directories.
        out: Stats table path.
        faces_out: Optional per-face table path.
        tracks_out: Optional per-track table path.
        sequence: Treat each folder's images as one timestamped sequence (tracked like a
            video, ordered by capture time) instead of independent pictures.
    """

    inputs: tuple[str, ...]
    out: Path
    faces_out: Path | None = None
    tracks_out: Path | None = None
    sequence: bool = False

    def __post_init__(self) -> None:
        super().__post_init__()
        if not self.inputs:
            raise ValueError("no inputs given")
        outs = [Path(p) for p in (self.out, self.faces_out, self.tracks_out) if p is not None]
        if len(set(outs)) != len(outs):
            raise ValueError("--out, --faces and --tracks must be different files")


def _plain(value: Any) -> Any:
    if isinstance(value, Mapping):
        return {str(k): _plain(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_plain(v) for v in value]
    if isinstance(value, Path):
        return str(value)
    return value
