"""The pipelined runner: owns the threads and bounded queues between the stages.

Decoding, detection + alignment and classification run on three threads connected by
bounded queues, so they overlap (PyAV, onnxruntime and torch release the GIL) while memory
stays bounded by the queue sizes whatever a video's length. Model calls stay on the calling
thread. Each stage lives in its own module; this one only moves records between them.
"""

from __future__ import annotations

import contextlib
import logging
import queue
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from agr_batch.aggregate import (
    FACES_SCHEMA,
    StatsAggregator,
    everything_suppressed,
    faces_table,
    tracks_table,
)
from agr_batch.align import align_faces
from agr_batch.budget import ByteBudget
from agr_batch.checkpoint import describe_model, load_checkpoint
from agr_batch.classify import Classifier, resolve_device
from agr_batch.config import ProcessingConfig, RunConfig
from agr_batch.decode_gpu import resolve_decoder, torchcodec_frames
from agr_batch.detect import Detector, create_detector
from agr_batch.engines import engine_for_checkpoint
from agr_batch.preprocess import PreprocessSpec
from agr_batch.records import Detections, Frame, Predictions, TrackResult
from agr_batch.safety import check_outputs
from agr_batch.sinks import OutputSet, ParquetStreamWriter
from agr_batch.sources import (
    Discovery,
    MediaFile,
    SourceError,
    capture_time,
    discover,
    frames,
    image_frame,
    probe,
)
from agr_batch.track import Tracker, TrackerConfig
from agr_batch.vote import TrackVoter, VoteConfig

log = logging.getLogger(__name__)

ErrorCallback = Callable[[str], None]


@dataclass
class StageTimes:
    """Seconds spent inside each stage (summed over calls; each field has one writer)."""

    decode: float = 0.0
    detect: float = 0.0
    align: float = 0.0
    track: float = 0.0
    classify: float = 0.0
    write: float = 0.0

    def as_dict(self) -> dict[str, float]:
        """Rounded values by stage name."""
        return {k: round(v, 3) for k, v in self.__dict__.items()}


@dataclass
class RunSummary:
    """What a run did; the CLI prints it and ``--json`` emits it."""

    files_ok: int = 0
    files_failed: int = 0
    skipped: int = 0
    frames: int = 0
    faces: int = 0
    classified_faces: int = 0
    visitors: int = 0
    suppressed_faces: int = 0
    suppressed_cells: int = 0
    wall_s: float = 0.0
    build_s: float = 0.0
    failures: list[str] = field(default_factory=list)
    stage_s: dict[str, float] = field(default_factory=dict)
    outputs: dict[str, str] = field(default_factory=dict)
    backend: str = ""
    device: str = ""

    @property
    def process_s(self) -> float:
        """Wall time without the engine build (compiling is a one-off, not throughput)."""
        return max(self.wall_s - self.build_s, 0.0)

    @property
    def frames_per_s(self) -> float:
        """Sampled frames processed per second of processing (engine build excluded)."""
        return self.frames / self.process_s if self.process_s > 0 else 0.0

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready form."""
        d = dict(self.__dict__)
        d["frames_per_s"] = round(self.frames_per_s, 2)
        d["wall_s"] = round(self.wall_s, 3)
        d["build_s"] = round(self.build_s, 3)
        return d


@dataclass(frozen=True)
class ImageSequence:
    """The images of one folder, processed as one timestamped sequence (``--sequence``).

    Attributes:
        path: The folder (the ``source`` of its rows).
        images: The images, ordered by capture time.
        kind: Sequences are windowed and tracked like videos.
    """

    path: Path
    images: tuple[Path, ...]
    kind: str = "video"


def group_sequences(media: Sequence[MediaFile]) -> list[MediaFile | ImageSequence]:
    """Videos as they are; images grouped by folder into sequences ordered by capture time."""
    out: list[MediaFile | ImageSequence] = []
    folders: dict[Path, list[Path]] = {}
    for m in media:
        if m.kind == "image":
            folders.setdefault(m.path.parent, []).append(m.path)
        else:
            out.append(m)
    for folder, images in folders.items():
        ordered = sorted(images, key=lambda p: (capture_time(p), str(p)))
        out.append(ImageSequence(folder, tuple(ordered)))
    return out


def _sequence_frames(seq: ImageSequence, errors: list[str]) -> Iterator[Frame]:
    """Frames of a sequence; unreadable images are reported and skipped."""
    t0 = capture_time(seq.images[0])
    for i, path in enumerate(seq.images):
        try:
            frame = image_frame(path)
        except SourceError as e:
            errors.append(str(e))
            continue
        when = capture_time(path)
        yield Frame(
            source=str(seq.path),
            frame_index=i,
            time_s=max(0.0, (when - t0).total_seconds()),
            image=frame.image,
            start_time=t0,
        )


# Messages between the stages.
@dataclass(frozen=True)
class _SourceStart:
    media: MediaFile


@dataclass(frozen=True)
class _SourceEnd:
    media: MediaFile
    frames: int
    duration_s: float | None
    error: str | None
    last_time_s: float | None = None  # of the last frame decoded


@dataclass(frozen=True, eq=False)
class _Detected:
    media: MediaFile
    frame_index: int
    time_s: float
    start_time: Any
    detections: Detections
    chips: np.ndarray
    track_ids: np.ndarray
    ended: tuple[int, ...]


@dataclass(frozen=True)
class _TracksEnded:
    media: MediaFile
    track_ids: tuple[int, ...]


@dataclass(frozen=True, eq=False)
class _FrameItem:
    media: MediaFile
    frame: Frame


@dataclass(frozen=True)
class _FrameFailed:
    media: MediaFile
    error: str


@dataclass(frozen=True)
class _Crashed:
    stage: str
    exc: BaseException


_DONE = object()


class _CancelledError(Exception):
    pass


def _put(q: queue.Queue[Any], item: Any, stop: threading.Event) -> None:
    while True:
        if stop.is_set():
            raise _CancelledError
        try:
            q.put(item, timeout=0.1)
            return
        except queue.Full:
            continue


def _get(q: queue.Queue[Any], stop: threading.Event) -> Any:
    while True:
        if stop.is_set():
            raise _CancelledError
        try:
            return q.get(timeout=0.1)
        except queue.Empty:
            continue


def _timed(it: Iterator[Frame], times: StageTimes) -> Iterator[Frame]:
    while True:
        t0 = time.perf_counter()
        try:
            item = next(it)
        except StopIteration:
            times.decode += time.perf_counter() - t0
            return
        times.decode += time.perf_counter() - t0
        yield item


def _open_source(
    m: MediaFile | ImageSequence, config: ProcessingConfig, decoder: str, seq_errors: list[str]
) -> tuple[Iterator[Frame], float | None]:
    """The frame generator of one source and its duration when known (a video's)."""
    if isinstance(m, ImageSequence):
        return _sequence_frames(m, seq_errors), None
    if m.kind == "image":
        return frames(m), None
    duration = probe(m.path).duration_s
    if decoder == "torchcodec" and not config.keyframes_only:
        return torchcodec_frames(m.path, sample_fps=config.sample_fps), duration
    it = frames(
        m,
        sample_fps=config.sample_fps,
        keyframes_only=config.keyframes_only,
        skip_nonref=config.skip_nonref,
    )
    return it, duration


def _decode_worker(
    media: tuple[MediaFile | ImageSequence, ...],
    config: ProcessingConfig,
    decoder: str,
    out: queue.Queue[Any],
    stop: threading.Event,
    times: StageTimes,
    budget: ByteBudget,
) -> None:
    try:
        for m in media:
            _put(out, _SourceStart(m), stop)
            count, error = 0, None
            duration: float | None = None
            last_time: float | None = None
            seq_errors: list[str] = []
            try:
                it, duration = _open_source(m, config, decoder, seq_errors)
                for frame in _timed(iter(it), times):
                    if not budget.acquire(frame.image.nbytes, stop):
                        raise _CancelledError
                    _put(out, _FrameItem(m, frame), stop)
                    count += 1
                    last_time = frame.time_s
            except SourceError as e:
                error = str(e)
            except _CancelledError:
                raise
            except Exception as e:  # a decoder bug must not stop the batch
                error = f"{m.path}: cannot decode ({type(e).__name__}: {e})".splitlines()[0]
            if seq_errors and error is None:
                more = len(seq_errors) - 1
                error = seq_errors[0] + (f" (and {more} more in the sequence)" if more else "")
            _put(out, _SourceEnd(m, count, duration, error, last_time), stop)
        _put(out, _DONE, stop)
    except _CancelledError:
        return
    except BaseException as e:
        stop.set()
        out.put(_Crashed("decode", e))


def detect_frame(
    detector: Detector, spec: PreprocessSpec, tracker: Tracker, frame: Frame, times: StageTimes
) -> tuple[Detections, np.ndarray, np.ndarray, tuple[int, ...]]:
    """Detect, align and track one frame: detections, chips, track ids and ended tracks.

    Shared by the local runner and the Ray segment workers so both do exactly the same.
    """
    t0 = time.perf_counter()
    dets = detector.detect([frame.image])[0]
    t1 = time.perf_counter()
    chips = align_faces(frame.image, dets.landmarks, spec)
    t2 = time.perf_counter()
    # A new tracker per source: in an image each face is its own track (ids 0..n-1).
    track_ids = tracker.update(dets.boxes, dets.scores, frame.time_s)
    ended = tuple(tracker.pop_ended())
    times.detect += t1 - t0
    times.align += t2 - t1
    times.track += time.perf_counter() - t2
    return dets, chips, track_ids, ended


def detection_error(frame: Frame, exc: BaseException) -> str:
    """The one-line message for a frame whose detection failed."""
    return f"{frame.source}: face detection failed at {frame.time_s:.2f} s ({exc})".splitlines()[0]


def _detect_worker(
    detector: Detector,
    spec: PreprocessSpec,
    tracker_config: TrackerConfig,
    inp: queue.Queue[Any],
    out: queue.Queue[Any],
    stop: threading.Event,
    times: StageTimes,
    budget: ByteBudget,
) -> None:
    tracker = Tracker(tracker_config)
    try:
        while True:
            msg = _get(inp, stop)
            if isinstance(msg, _SourceStart):
                tracker = Tracker(tracker_config)
            elif isinstance(msg, _SourceEnd):
                ended = tuple(tracker.close_all())
                if ended:
                    _put(out, _TracksEnded(msg.media, ended), stop)
            if isinstance(msg, _FrameItem):
                media, item = msg.media, msg.frame
                try:
                    dets, chips, track_ids, ended = detect_frame(
                        detector, spec, tracker, item, times
                    )
                except Exception as e:
                    _put(out, _FrameFailed(media, detection_error(item, e)), stop)
                    continue
                finally:
                    # Only the chips go on: the frame's pixels are no longer in flight.
                    budget.release(item.image.nbytes)
                detected = _Detected(
                    media,
                    item.frame_index,
                    item.time_s,
                    item.start_time,
                    dets,
                    chips,
                    track_ids,
                    ended,
                )
                _put(out, detected, stop)
            else:
                _put(out, msg, stop)
                if msg is _DONE or isinstance(msg, _Crashed):
                    return
    except _CancelledError:
        return
    except BaseException as e:
        stop.set()
        out.put(_Crashed("detect", e))


@dataclass(frozen=True, eq=False)
class SourceResult:
    """Everything one input file produced, handed to the caller when the file is complete.

    Attributes:
        media: The file.
        frames: Sampled frames processed.
        duration_s: Video duration when known.
        start_time: Absolute start of the source when known.
        tracks: Its finished, classified tracks (people).
        error: One-line reason when the file failed (its partial tracks are kept).
        processed_s: End of the span decoded, seconds from the start (None: not known).
    """

    media: MediaFile
    frames: int
    duration_s: float | None
    start_time: Any
    tracks: tuple[TrackResult, ...]
    error: str | None
    processed_s: float | None = None

    @property
    def faces(self) -> int:
        """Faces over all tracks."""
        return sum(len(t) for t in self.tracks)

    @property
    def covered_s(self) -> float | None:
        """End of the span processed, for the coverage rows; None when nothing was."""
        if self.processed_s is not None:
            return self.processed_s
        if self.frames == 0:
            return None
        if self.error is None and self.duration_s is not None:
            return self.duration_s
        return max((t.last_time for t in self.tracks), default=0.0)


@dataclass
class _SourceState:
    media: MediaFile
    frames: int = 0
    start_time: Any = None
    duration_s: float | None = None
    processed_s: float | None = None
    error: str | None = None
    ended: bool = False
    open_tracks: set[int] = field(default_factory=set)
    tracks: list[TrackResult] = field(default_factory=list)


class _Collector:
    """Feeds detected faces to the track voter; completes each source once all its tracks are."""

    def __init__(
        self,
        classifier: Classifier,
        vote: VoteConfig,
        batch_size: int,
        times: StageTimes,
        on_source: Callable[[SourceResult], None],
    ) -> None:
        self.classifier = classifier
        self.times = times
        self.on_source = on_source
        self.voter = TrackVoter(
            self._classify,
            batch_size=batch_size,
            config=vote,
            chip_side=min(classifier.spec.input_size),
        )
        self.sources: dict[str, _SourceState] = {}

    def _classify(self, chips: np.ndarray) -> Predictions:
        t0 = time.perf_counter()
        preds = self.classifier.predict(chips)
        self.times.classify += time.perf_counter() - t0
        return preds

    def start(self, media: MediaFile) -> None:
        self.sources[str(media.path)] = _SourceState(media)

    def add(self, item: _Detected) -> None:
        source = str(item.media.path)
        st = self.sources[source]
        st.frames += 1
        if st.start_time is None:
            st.start_time = item.start_time
        for i in range(len(item.detections)):
            tid = int(item.track_ids[i])
            st.open_tracks.add(tid)
            self.voter.add_face(
                source=source,
                kind=item.media.kind,
                start_time=item.start_time,
                track_id=tid,
                frame_index=item.frame_index,
                time_s=item.time_s,
                box=item.detections.boxes[i],
                score=float(item.detections.scores[i]),
                chip=item.chips[i],
            )
        self.end_tracks(item.media, item.ended)

    def fail(self, media: MediaFile, error: str) -> None:
        st = self.sources[str(media.path)]
        if st.error is None:
            st.error = error

    def end_tracks(self, media: MediaFile, track_ids: tuple[int, ...]) -> None:
        for tid in track_ids:
            self.voter.end_track(str(media.path), tid)
        self._collect(self.voter.pop_finished())

    def end_source(self, item: _SourceEnd) -> None:
        st = self.sources[str(item.media.path)]
        st.ended = True
        st.duration_s = item.duration_s
        if item.frames:
            # Decoded to the end: the whole duration; else up to the last frame decoded.
            whole = item.error is None and item.duration_s is not None
            st.processed_s = item.duration_s if whole else (item.last_time_s or 0.0)
        if item.error is not None:
            self.fail(item.media, item.error)
        self._collect([])

    def finish(self) -> None:
        self._collect(self.voter.finish_all())

    def _collect(self, finished: list[TrackResult]) -> None:
        for track in finished:
            st = self.sources[track.source]
            st.tracks.append(track)
            st.open_tracks.discard(track.track_id)
        for key, st in list(self.sources.items()):
            if st.ended and not st.open_tracks:
                del self.sources[key]
                t0 = time.perf_counter()
                st.tracks.sort(key=lambda t: t.track_id)
                self.on_source(
                    SourceResult(
                        st.media,
                        st.frames,
                        st.duration_s,
                        st.start_time,
                        tuple(st.tracks),
                        st.error,
                        st.processed_s,
                    )
                )
                self.times.write += time.perf_counter() - t0


class _Progress:
    """A tqdm bar per video and one for all images; silent when disabled."""

    def __init__(self, enabled: bool, total_images: int) -> None:
        self.enabled = enabled
        self.bar: Any = None
        self.images_bar: Any = None
        self.total_images = total_images

    def start(self, media: MediaFile) -> None:
        if not self.enabled:
            return
        from tqdm import tqdm

        if media.kind == "image":
            if self.images_bar is None:
                self.images_bar = tqdm(
                    total=self.total_images, desc="images", unit="img", leave=False
                )
        else:
            self.bar = tqdm(desc=media.path.name[-40:], unit="frame", leave=False)

    def frame(self, media: MediaFile) -> None:
        if media.kind == "image" and self.images_bar is not None:
            self.images_bar.update(1)
        elif self.bar is not None:
            self.bar.update(1)

    def end(self, media: MediaFile) -> None:
        if media.kind == "video" and self.bar is not None:
            self.bar.close()
            self.bar = None

    def close(self) -> None:
        for b in (self.bar, self.images_bar):
            if b is not None:
                b.close()


def _default_on_error(message: str) -> None:
    log.error("%s", message)


class Pipeline:
    """Loaded model, engine and detector, reusable across batches of files (run and scan).

    Args:
        config: Processing options.
    """

    def __init__(self, config: ProcessingConfig) -> None:
        self.config = config
        self.device = resolve_device(config.device)
        self.checkpoint = load_checkpoint(config.model, device=self.device)
        if describe_model(self.checkpoint.meta)["synthetic"]:
            log.warning(
                "%s was trained on synthetic faces (agr-train synth): its age, gender and "
                "race labels are meaningless; face and visitor counts are real",
                config.model,
            )
        self.engine = engine_for_checkpoint(
            config.backend,
            self.checkpoint,
            device=self.device,
            precision=config.precision,
            cache_dir=config.cache_dir,
            opt_batch=config.batch_size,
        )
        self.classifier = Classifier(
            self.checkpoint, device=self.device, batch_size=config.batch_size, forward=self.engine
        )
        self.detector = create_detector(config.detector.name, **config.detector.kwargs())
        self.decoder = resolve_decoder(config.decoder, self.device.type)
        self.inflight = ByteBudget(config.max_inflight_bytes)  # the last process() call's

    @property
    def labels(self) -> dict[str, tuple[str, ...]]:
        """Class names per head, from the checkpoint."""
        return self.classifier.labels

    def metadata(self, config: ProcessingConfig | None = None) -> dict[str, Any]:
        """The resolved configuration recorded in every output file."""
        ckpt = self.checkpoint
        return (config or self.config).to_metadata(
            checkpoint_sha256=ckpt.file_sha256,
            arch=ckpt.meta.arch,
            labels={h: list(v) for h, v in ckpt.meta.labels.items()},
            preprocess=ckpt.meta.preprocess.to_dict(),
            detector_resolved=self.detector.config(),
            device=str(self.device),
            backend_resolved=self.engine.name,
            precision_resolved=self.engine.precision,
            decoder_resolved=self.decoder,
            model_training=describe_model(ckpt.meta),  # reports name the data truthfully
        )

    def process(
        self,
        media: Sequence[MediaFile | ImageSequence],
        on_source: Callable[[SourceResult], None],
        *,
        progress: bool = False,
    ) -> StageTimes:
        """Decode, detect, track and classify ``media``; call ``on_source`` per finished file.

        Files complete in input order as far as the pipeline allows; ``on_source`` runs on the
        calling thread. Returns the time spent in each stage.
        """
        config = self.config
        times = StageTimes()
        stop = threading.Event()
        q_frames: queue.Queue[Any] = queue.Queue(maxsize=config.queue_size)
        q_detected: queue.Queue[Any] = queue.Queue(maxsize=config.queue_size)
        bars = _Progress(progress, sum(1 for m in media if m.kind == "image"))
        spec = self.checkpoint.meta.preprocess
        budget = self.inflight = ByteBudget(config.max_inflight_bytes)
        threads = [
            threading.Thread(
                target=_decode_worker,
                args=(tuple(media), config, self.decoder, q_frames, stop, times, budget),
                name="agr-decode",
                daemon=True,
            ),
            threading.Thread(
                target=_detect_worker,
                args=(
                    self.detector,
                    spec,
                    config.tracker,
                    q_frames,
                    q_detected,
                    stop,
                    times,
                    budget,
                ),
                name="agr-detect",
                daemon=True,
            ),
        ]
        collector = _Collector(self.classifier, config.vote, config.batch_size, times, on_source)
        try:
            for t in threads:
                t.start()
            while True:
                item = q_detected.get()
                if item is _DONE:
                    break
                if isinstance(item, _Crashed):
                    raise RuntimeError(f"{item.stage} stage crashed: {item.exc!r}") from item.exc
                if isinstance(item, _SourceStart):
                    bars.start(item.media)
                    collector.start(item.media)
                elif isinstance(item, _Detected):
                    bars.frame(item.media)
                    collector.add(item)
                elif isinstance(item, _TracksEnded):
                    collector.end_tracks(item.media, item.track_ids)
                elif isinstance(item, _FrameFailed):
                    collector.fail(item.media, item.error)
                elif isinstance(item, _SourceEnd):
                    bars.end(item.media)
                    collector.end_source(item)
            collector.finish()
        finally:
            stop.set()
            for t in threads:
                t.join(timeout=5)
            bars.close()
        return times


_MEDIA_HINTS = {
    "--faces": "run --faces takes the per-face table's file name (as in --faces faces.parquet)",
    "--tracks": "run --tracks takes the per-track table's file name (--tracks tracks.parquet)",
}


def _check_outputs(config: RunConfig, found: Discovery) -> None:
    """Refuse outputs that are inputs (however spelled), each other, or media names."""
    inputs: list[Path] = [Path(p) for p in config.inputs]
    inputs += [m.path for m in found.media] + list(found.skipped) + [Path(config.model)]
    if config.detector.model_path:
        inputs.append(Path(config.detector.model_path))
    check_outputs(
        {"--out": config.out, "--faces": config.faces_out, "--tracks": config.tracks_out},
        inputs,
        hints=_MEDIA_HINTS,
    )


def run(
    config: RunConfig,
    *,
    progress: bool = False,
    on_error: ErrorCallback = _default_on_error,
    pipeline_factory: Callable[[ProcessingConfig], Any] | None = None,
) -> RunSummary:
    """Process ``config.inputs`` and write the stats (and optional faces/tracks) tables.

    Bad inputs are reported through ``on_error`` (one line naming the file and the reason)
    and counted; processing goes on with the rest. ``pipeline_factory`` replaces the local
    :class:`Pipeline` (the Ray engine passes one that runs on a cluster).

    The outputs are checked first (none may be an input or another output, however
    spelled), then written as one set: all or nothing (see :class:`agr_batch.sinks.OutputSet`).

    Raises:
        agr_batch.checkpoint.CheckpointError: If the model cannot be loaded.
        agr_batch.safety.OutputError: An output that must not or cannot be written (nothing
            was replaced).
        ValueError: For an unusable device or detector configuration.
        KeyboardInterrupt: On SIGINT (and SIGTERM under the CLI); nothing was replaced, or,
            when ``after_commit`` is set, the whole set was.
    """
    t_start = time.perf_counter()
    found = discover(config.inputs)
    _check_outputs(config, found)  # before anything is loaded or written
    pipeline = (pipeline_factory or Pipeline)(config)
    outputs = OutputSet(
        {"--out": config.out, "--faces": config.faces_out, "--tracks": config.tracks_out}
    )
    media = group_sequences(found.media) if config.sequence else list(found.media)
    engine = pipeline.engine
    summary = RunSummary(
        backend=f"{engine.name} {engine.precision}",
        device=str(pipeline.device),
        build_s=float(getattr(engine, "details", {}).get("build_s", 0.0)),
    )
    problems = [f"{p}: no such file or directory" for p in found.missing]
    problems += [f"{p}: {reason}" for p, reason in found.errors]
    for err in problems:
        on_error(err)
        summary.failures.append(err)
        summary.files_failed += 1
    summary.skipped = len(found.skipped)
    if found.skipped:
        log.info("skipped %d non-media files", len(found.skipped))

    # The token ties the files of one run together: a reader can check they belong.
    metadata = {**pipeline.metadata(config), "output_set": outputs.token}
    aggregator = StatsAggregator(
        pipeline.labels, window_s=config.window_s, align=config.align_windows, tz=config.tz
    )
    tracks: list[TrackResult] = []
    faces_writer: ParquetStreamWriter | None = None

    def on_source(result: SourceResult) -> None:
        source = str(result.media.path)
        aggregator.add_source(source, result.media.kind, result.start_time)
        for track in result.tracks:
            aggregator.add(track)
            if faces_writer is not None:
                faces_writer.write(faces_table(track, pipeline.labels))
        aggregator.finish_source(source, duration_s=result.duration_s, covered_s=result.covered_s)
        if config.tracks_out is not None:
            tracks.extend(result.tracks)
        summary.frames += result.frames
        summary.faces += result.faces
        summary.visitors += len(result.tracks)
        if result.error is not None:
            on_error(result.error)
            summary.failures.append(result.error)
            summary.files_failed += 1
        else:
            summary.files_ok += 1

    times = StageTimes()
    # All outputs go to locked temporary files (reserved before any work, so an unwritable
    # folder fails at once) and replace the old set together, or not at all.
    with outputs:
        faces_ctx = (
            outputs.stream("--faces", FACES_SCHEMA, metadata=metadata)
            if config.faces_out is not None
            else contextlib.nullcontext()
        )
        with faces_ctx as faces_writer:
            times = pipeline.process(media, on_source, progress=progress)
        t_w = time.perf_counter()
        outputs.write_table(
            "--out", aggregator.table(min_cell_count=config.min_cell_count), metadata=metadata
        )
        summary.suppressed_faces = aggregator.suppressed.faces
        summary.suppressed_cells = aggregator.suppressed.cells
        if aggregator.suppressed.everything:
            faces = aggregator.suppressed.faces
            msg = everything_suppressed(config.min_cell_count, faces=faces, where=str(config.out))
            log.warning("%s", msg)
        elif aggregator.suppressed.cells:
            log.info(
                "suppressed %d cells (%d faces) below --min-cell-count %d",
                aggregator.suppressed.cells,
                aggregator.suppressed.faces,
                config.min_cell_count,
            )
        if config.tracks_out is not None:
            outputs.write_table(
                "--tracks", tracks_table(tracks, pipeline.labels), metadata=metadata
            )
        outputs.commit()
        times.write += time.perf_counter() - t_w
    summary.classified_faces = pipeline.classifier.faces_seen
    summary.wall_s = time.perf_counter() - t_start
    summary.stage_s = times.as_dict()
    summary.outputs = {"stats": str(config.out)}
    if config.faces_out is not None:
        summary.outputs["faces"] = str(config.faces_out)
    if config.tracks_out is not None:
        summary.outputs["tracks"] = str(config.tracks_out)
    return summary
