"""The threads of the local pipeline and the records they pass: decode → face step → caller.

The start and end of each work item travel in-band, between its frames (as DeepStream's
stream events do), so each stage knows when to reset its tracker or complete a source
without a side channel. Records between the stages are frozen dataclasses. Queues are
bounded, and so are the bytes of decoded frames in flight (:class:`ByteBudget`).
"""

from __future__ import annotations

import queue
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

from agr_batch.config import ProcessingConfig
from agr_batch.pipeline import StageTimes
from agr_batch.pipeline.budget import ByteBudget
from agr_batch.pipeline.faces import FaceBatch, FaceStep, PartialBatchError, detection_error
from agr_batch.pipeline.frames import ImageBatcher, open_frames
from agr_batch.pipeline.work import WorkItem
from agr_batch.records import Frame
from agr_batch.stages.decode.media import SourceError

__all__ = [
    "DONE",
    "Crashed",
    "FacesOf",
    "FrameFailed",
    "ItemEnd",
    "ItemStart",
    "TracksEnded",
    "decode_worker",
    "face_worker",
]


@dataclass(frozen=True)
class ItemStart:
    """Item ``key`` (its position in the batch) starts; about ``expected_frames`` follow."""

    key: int
    item: WorkItem
    expected_frames: int | None


@dataclass(frozen=True)
class ItemEnd:
    """Item ``key`` has no more frames (``error``: why it stopped early, if it did).

    ``frames`` were decoded, the last one at ``last_time_s`` seconds (for the coverage rows).
    """

    key: int
    duration_s: float | None
    error: str | None
    frames: int = 0
    last_time_s: float | None = None


@dataclass(frozen=True, eq=False)
class FrameOf:
    """A decoded frame of item ``key`` (its bytes are reserved in the budget)."""

    key: int
    frame: Frame


@dataclass(frozen=True, eq=False)
class FacesOf:
    """The face step's record of one frame of item ``key``."""

    key: int
    batch: FaceBatch


@dataclass(frozen=True)
class TracksEnded:
    """Tracks of item ``key`` that ended with the item (its last frame)."""

    key: int
    track_ids: tuple[int, ...]


@dataclass(frozen=True)
class FrameFailed:
    """A frame of item ``key`` whose face detection failed (one line)."""

    key: int
    error: str


@dataclass(frozen=True)
class Crashed:
    """A stage died of a bug: the pipeline stops and re-raises it."""

    stage: str
    exc: BaseException


DONE = object()
"""The end of the batch."""


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


def decode_worker(
    items: tuple[WorkItem, ...],
    config: ProcessingConfig,
    decoder: str,
    out: queue.Queue[Any],
    stop: threading.Event,
    times: StageTimes,
    budget: ByteBudget,
    *,
    device: str = "cpu",
    gpu_images: bool = False,
    decode_threads: int | None = None,
) -> None:
    """The decode thread: every item's frames, between its start and end records.

    A file that cannot be read ends its item with the error; the batch goes on. Each frame's
    bytes are reserved in ``budget`` before it is queued. With ``gpu_images`` single images
    are decoded on ``device`` by nvJPEG, in batches. ``decode_threads`` caps PyAV's threads.
    """
    try:
        images = ImageBatcher(items, device) if gpu_images else None
        for key, item in enumerate(items):
            error: str | None = None
            try:
                opened = open_frames(
                    item, config, decoder, device=device, images=images,
                    decode_threads=decode_threads,
                )  # fmt: skip
            except Exception as e:  # probing failed: the item fails, the batch goes on
                _put(out, ItemStart(key, item, None), stop)
                _put(out, ItemEnd(key, None, _decode_error(item, e)), stop)
                continue
            _put(out, ItemStart(key, item, opened.expected_frames), stop)
            count, last_time = 0, None
            try:
                for frame in _timed(opened.frames, times):
                    if not budget.acquire(frame.image.nbytes, stop):
                        raise _CancelledError
                    _put(out, FrameOf(key, frame), stop)
                    count += 1
                    last_time = frame.time_s
            except _CancelledError:
                raise
            except Exception as e:
                error = _decode_error(item, e)
            if opened.problems and error is None:
                more = len(opened.problems) - 1
                error = opened.problems[0] + (f" (and {more} more in the sequence)" if more else "")
            _put(out, ItemEnd(key, opened.duration_s, error, count, last_time), stop)
        _put(out, DONE, stop)
    except _CancelledError:
        return
    except BaseException as e:
        stop.set()
        out.put(Crashed("decode", e))


def _decode_error(item: WorkItem, e: Exception) -> str:
    """One line: a :class:`SourceError` says it all; a decoder bug must not stop the batch."""
    if isinstance(e, SourceError):
        return str(e)
    return f"{item.source}: cannot decode ({type(e).__name__}: {e})".splitlines()[0]


def face_worker(
    step: FaceStep,
    inp: queue.Queue[Any],
    out: queue.Queue[Any],
    stop: threading.Event,
    budget: ByteBudget,
) -> None:
    """The face-step thread: frames in, :class:`FaceBatch` records out; other records pass.

    Frames of one item that are already queued are taken together, up to the step's batch
    size, so a batched (GPU) detector sees several frames per call; nothing waits for a
    batch to fill. A batch whose detection fails becomes one :class:`FrameFailed` record per
    frame; frame bytes go back to ``budget`` as soon as the step is done with them.
    """
    pending: Any = None
    try:
        while True:
            msg = pending if pending is not None else _get(inp, stop)
            pending = None
            if isinstance(msg, FrameOf):
                batch = [msg]
                while len(batch) < step.batch_size:
                    try:
                        more = inp.get_nowait()
                    except queue.Empty:
                        break
                    if isinstance(more, FrameOf) and more.key == msg.key:
                        batch.append(more)
                    else:
                        pending = more
                        break
                try:
                    results = step.step_batch([m.frame for m in batch])
                except Exception as e:
                    # Frames done before a failure part-way through the batch keep their faces.
                    done, cause = (e.done, e.cause) if isinstance(e, PartialBatchError) else ([], e)
                    for m, faces in zip(batch, done, strict=False):
                        _put(out, FacesOf(m.key, faces), stop)
                    for m in batch[len(done) :]:
                        _put(out, FrameFailed(m.key, detection_error(m.frame, cause)), stop)
                    continue
                finally:
                    # Only the chips go on: the frames' pixels are no longer in flight.
                    for m in batch:
                        budget.release(m.frame.image.nbytes)
                for m, faces in zip(batch, results, strict=True):
                    _put(out, FacesOf(m.key, faces), stop)
                continue
            if isinstance(msg, ItemStart):
                step.start_source()
            elif isinstance(msg, ItemEnd):
                ended = step.end_source()
                if ended:
                    _put(out, TracksEnded(msg.key, ended), stop)
            _put(out, msg, stop)
            if msg is DONE or isinstance(msg, Crashed):
                return
    except _CancelledError:
        return
    except BaseException as e:
        stop.set()
        out.put(Crashed("face step", e))
