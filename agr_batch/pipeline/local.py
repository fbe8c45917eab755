"""The local executor: the chain on threads in this process, connected by bounded queues.

Decoding, the face step (detect, align, track) and voting + classification run on three
threads — decode → face step → the calling thread — so they overlap (PyAV, onnxruntime and
torch release the GIL) while memory stays bounded whatever a video's length: queues hold a
few records, and the decoded frames in flight are bounded by bytes. Model calls for
classification stay on the calling thread, where ``on_source`` runs too.

The start and end of each work item travel in-band, between its frames (as DeepStream's
stream events do), so each stage knows when to reset its tracker or complete a source
without a side channel. Records between the stages are frozen dataclasses.
"""

from __future__ import annotations

import logging
import queue
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from agr_batch.config import ProcessingConfig
from agr_batch.pipeline import PipelineInfo, ProcessStats, SourceResult, StageTimes
from agr_batch.pipeline.assemble import SourceAssembler
from agr_batch.pipeline.budget import ByteBudget
from agr_batch.pipeline.faces import FaceBatch, FaceStep, detection_error
from agr_batch.pipeline.frames import open_frames
from agr_batch.pipeline.progress import Progress
from agr_batch.pipeline.work import WorkItem
from agr_batch.records import Frame
from agr_batch.stages.decode.media import SourceError

if TYPE_CHECKING:
    from agr_batch.checkpoint import Checkpoint
    from agr_batch.stages.classify import Classifier
    from agr_batch.stages.detect import Detector

log = logging.getLogger(__name__)

__all__ = ["LocalPipeline"]


# Messages between the stages; ``key`` is the item's position in the batch.
@dataclass(frozen=True)
class _ItemStart:
    key: int
    item: WorkItem
    expected_frames: int | None


@dataclass(frozen=True)
class _ItemEnd:
    key: int
    duration_s: float | None
    error: str | None


@dataclass(frozen=True, eq=False)
class _FrameOf:
    key: int
    frame: Frame


@dataclass(frozen=True, eq=False)
class _FacesOf:
    key: int
    batch: FaceBatch


@dataclass(frozen=True)
class _TracksEnded:
    key: int
    track_ids: tuple[int, ...]


@dataclass(frozen=True)
class _FrameFailed:
    key: int
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


def _decode_worker(
    items: tuple[WorkItem, ...],
    config: ProcessingConfig,
    decoder: str,
    out: queue.Queue[Any],
    stop: threading.Event,
    times: StageTimes,
    budget: ByteBudget,
) -> None:
    try:
        for key, item in enumerate(items):
            error: str | None = None
            try:
                opened = open_frames(item, config, decoder)
            except SourceError as e:
                _put(out, _ItemStart(key, item, None), stop)
                _put(out, _ItemEnd(key, None, str(e)), stop)
                continue
            _put(out, _ItemStart(key, item, opened.expected_frames), stop)
            try:
                for frame in _timed(opened.frames, times):
                    if not budget.acquire(frame.image.nbytes, stop):
                        raise _CancelledError
                    _put(out, _FrameOf(key, frame), stop)
            except SourceError as e:
                error = str(e)
            except _CancelledError:
                raise
            except Exception as e:  # a decoder bug must not stop the batch
                error = f"{item.source}: cannot decode ({type(e).__name__}: {e})".splitlines()[0]
            if opened.problems and error is None:
                more = len(opened.problems) - 1
                error = opened.problems[0] + (f" (and {more} more in the sequence)" if more else "")
            _put(out, _ItemEnd(key, opened.duration_s, error), stop)
        _put(out, _DONE, stop)
    except _CancelledError:
        return
    except BaseException as e:
        stop.set()
        out.put(_Crashed("decode", e))


def _face_worker(
    step: FaceStep,
    inp: queue.Queue[Any],
    out: queue.Queue[Any],
    stop: threading.Event,
    budget: ByteBudget,
) -> None:
    try:
        while True:
            msg = _get(inp, stop)
            if isinstance(msg, _FrameOf):
                try:
                    batch = step.step(msg.frame)
                except Exception as e:
                    _put(out, _FrameFailed(msg.key, detection_error(msg.frame, e)), stop)
                    continue
                finally:
                    # Only the chips go on: the frame's pixels are no longer in flight.
                    budget.release(msg.frame.image.nbytes)
                _put(out, _FacesOf(msg.key, batch), stop)
                continue
            if isinstance(msg, _ItemStart):
                step.start_source()
            elif isinstance(msg, _ItemEnd):
                ended = step.end_source()
                if ended:
                    _put(out, _TracksEnded(msg.key, ended), stop)
            _put(out, msg, stop)
            if msg is _DONE or isinstance(msg, _Crashed):
                return
    except _CancelledError:
        return
    except BaseException as e:
        stop.set()
        out.put(_Crashed("face step", e))


class LocalPipeline:
    """The chain on threads in this process; models load on first use, once.

    One instance serves any number of :meth:`process` calls (``run``, ``scan``, a Ray
    worker's tasks).

    Args:
        config: Processing options.
        threads: Threads of the CPU face detector (None: its default, every core).
    """

    def __init__(self, config: ProcessingConfig, *, threads: int | None = None) -> None:
        self.config = config
        self.threads = threads
        self.inflight = ByteBudget(config.max_inflight_bytes)  # the last process() call's
        self._loaded: _Loaded | None = None

    def __enter__(self) -> LocalPipeline:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _load(self) -> _Loaded:
        if self._loaded is None:
            self._loaded = _Loaded.load(self.config, threads=self.threads)
        return self._loaded

    def info(self) -> PipelineInfo:
        """Load the checkpoint, classifier engine and detector; describe them.

        Raises:
            agr_batch.checkpoint.CheckpointError: The model cannot be loaded.
            agr_batch.device.DeviceError: The device is unavailable.
            ValueError: An unusable detector, backend or decoder configuration.
        """
        return self._load().info

    def process(
        self,
        items: Sequence[WorkItem],
        on_source: Callable[[SourceResult], None],
        progress: Progress | None = None,
    ) -> ProcessStats:
        """Decode, detect, track and classify ``items``; call ``on_source`` per finished item.

        Items complete in input order as far as the pipeline allows; ``on_source`` runs on
        the calling thread. A file that cannot be read is a result with its ``error`` set:
        the batch goes on.

        Raises:
            RuntimeError: A stage crashed (a bug, not a bad input).
        """
        loaded = self._load()
        config = self.config
        times = StageTimes()
        stop = threading.Event()
        q_frames: queue.Queue[Any] = queue.Queue(maxsize=config.queue_size)
        q_faces: queue.Queue[Any] = queue.Queue(maxsize=config.queue_size)
        budget = self.inflight = ByteBudget(config.max_inflight_bytes)
        step = FaceStep(loaded.detector, loaded.spec, config.tracker, times=times)
        threads = [
            threading.Thread(
                target=_decode_worker,
                args=(tuple(items), config, loaded.info.decoder, q_frames, stop, times, budget),
                name="agr-decode",
                daemon=True,
            ),
            threading.Thread(
                target=_face_worker,
                args=(step, q_frames, q_faces, stop, budget),
                name="agr-faces",
                daemon=True,
            ),
        ]
        items_by_key = dict(enumerate(items))

        def done(result: SourceResult) -> None:
            on_source(result)
            if progress is not None:
                progress.source_done(result.item)

        assembler = SourceAssembler(
            loaded.classifier.predict,
            vote=config.vote,
            batch_size=config.batch_size,
            chip_side=min(loaded.spec.input_size),
            times=times,
            on_source=done,
        )
        if progress is not None:
            progress.begin(len(items))
        try:
            for t in threads:
                t.start()
            while True:
                msg = q_faces.get()
                if msg is _DONE:
                    break
                if isinstance(msg, _Crashed):
                    raise RuntimeError(f"{msg.stage} stage crashed: {msg.exc!r}") from msg.exc
                if isinstance(msg, _FacesOf):
                    if progress is not None:
                        progress.frame(items_by_key[msg.key])
                    assembler.add(msg.key, msg.batch)
                elif isinstance(msg, _ItemStart):
                    if progress is not None:
                        progress.source_started(msg.item, msg.expected_frames)
                    assembler.start(msg.key, msg.item)
                elif isinstance(msg, _TracksEnded):
                    assembler.end_tracks(msg.key, msg.track_ids)
                elif isinstance(msg, _FrameFailed):
                    assembler.fail(msg.key, msg.error)
                elif isinstance(msg, _ItemEnd):
                    assembler.end(msg.key, duration_s=msg.duration_s, error=msg.error)
            assembler.finish()
        finally:
            stop.set()
            for t in threads:
                t.join(timeout=5)
        return ProcessStats(times, assembler.voter.classified_faces)

    def close(self) -> None:
        """Release the models (a later call loads them again)."""
        self._loaded = None


@dataclass(frozen=True, eq=False)
class _Loaded:
    """The loaded models of a pipeline and what they resolved to."""

    checkpoint: Checkpoint
    classifier: Classifier
    detector: Detector
    info: PipelineInfo

    @property
    def spec(self) -> Any:
        return self.checkpoint.meta.preprocess

    @classmethod
    def load(cls, config: ProcessingConfig, *, threads: int | None) -> _Loaded:
        from agr_batch.checkpoint import load_checkpoint
        from agr_batch.device import resolve_device
        from agr_batch.engines import engine_for_checkpoint
        from agr_batch.stages.classify import Classifier
        from agr_batch.stages.decode.torchcodec import resolve_decoder
        from agr_batch.stages.detect import create_detector

        device = resolve_device(config.device)
        checkpoint = load_checkpoint(config.model, device=device)
        engine = engine_for_checkpoint(
            config.backend,
            checkpoint,
            device=device,
            precision=config.precision,
            cache_dir=config.cache_dir,
            opt_batch=config.batch_size,
        )
        classifier = Classifier(
            checkpoint, device=device, batch_size=config.batch_size, forward=engine
        )
        det = config.detector
        extra = {"threads": threads} if threads and device.type == "cpu" else {}
        detector = create_detector(det.name, **det.kwargs(), **extra)
        decoder = resolve_decoder(config.decoder, device.type)
        meta = checkpoint.meta
        info = PipelineInfo(
            labels=dict(meta.labels),
            device=str(device),
            backend=engine.name,
            precision=engine.precision,
            decoder=decoder,
            build_s=float(engine.details.get("build_s", 0.0)),
            resolved={
                "checkpoint_sha256": checkpoint.file_sha256,
                "arch": meta.arch,
                "labels": {h: list(v) for h, v in meta.labels.items()},
                "preprocess": meta.preprocess.to_dict(),
                "detector_resolved": detector.config(),
                "device": str(device),
                "backend_resolved": engine.name,
                "precision_resolved": engine.precision,
                "decoder_resolved": decoder,
            },
        )
        return cls(checkpoint, classifier, detector, info)
