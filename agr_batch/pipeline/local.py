"""The local executor: the chain on threads in this process, connected by bounded queues.

Decoding, the face step (detect, align, track) and voting + classification run on three
threads — decode → face step → the calling thread — so they overlap (PyAV, onnxruntime and
torch release the GIL) while memory stays bounded whatever a video's length: queues hold a
few records, and the decoded frames in flight are bounded by bytes. Model calls for
classification stay on the calling thread, where ``on_source`` runs too. The thread bodies
and the records they pass, with the start and end of each item in-band, are in
:mod:`agr_batch.pipeline.stream`.
"""

from __future__ import annotations

import dataclasses
import logging
import queue
import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from agr_batch.config import ProcessingConfig
from agr_batch.pipeline import Pipeline, PipelineInfo, ProcessStats, StageTimes
from agr_batch.pipeline.budget import ByteBudget
from agr_batch.pipeline.progress import Progress
from agr_batch.pipeline.work import WorkItem

if TYPE_CHECKING:
    from agr_batch.checkpoint import Checkpoint
    from agr_batch.pipeline import OnSource, SourceResult
    from agr_batch.stages.classify import Classifier
    from agr_batch.stages.detect import Detector
    from agr_batch.stages.preprocess import PreprocessSpec

log = logging.getLogger(__name__)

__all__ = ["LocalPipeline"]


class LocalPipeline(Pipeline):
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
        self, items: Sequence[WorkItem], on_source: OnSource, progress: Progress | None = None
    ) -> ProcessStats:
        """Decode, detect, track and classify ``items``; call ``on_source`` per finished item.

        Items complete in input order as far as the pipeline allows; ``on_source`` runs on
        the calling thread. A file that cannot be read is a result with its ``error`` set:
        the batch goes on.

        Raises:
            RuntimeError: A stage crashed (a bug, not a bad input).
        """
        # The stages load with the models, not with this module: creating a pipeline (and an
        # overlapping scan's lock check) stays fast.
        from agr_batch.pipeline import stream
        from agr_batch.pipeline.assemble import SourceAssembler
        from agr_batch.pipeline.faces import FaceStep
        from agr_batch.stages.detect.base import default_threads
        from agr_batch.stages.detect.regions import RegionPolicy

        loaded = self._load()
        config = self.config
        times = StageTimes()
        stop = threading.Event()
        step = FaceStep(
            loaded.detector,
            loaded.spec,
            config.tracker,
            times=times,
            regions=RegionPolicy(redetect_s=config.detector.redetect_s),
            lookahead=loaded.lookahead,
        )
        # A batched (GPU) detector needs a batch's worth of frames queued ahead of it.
        q_frames: queue.Queue[Any] = queue.Queue(
            maxsize=max(config.queue_size, 2 * step.batch_size)
        )
        q_faces: queue.Queue[Any] = queue.Queue(maxsize=config.queue_size)
        budget = self.inflight = ByteBudget(config.max_inflight_bytes)
        on_gpu = step.on_device and step.device.type == "cuda"
        # A detector on the CPU shares the cores with the decoder. Given half of them, the
        # decoder wastes less on frame threading: on 2 cores one decoder thread measured
        # 7-8 % faster end to end than FFmpeg's default (BENCHMARKS.md).
        cores = int(getattr(loaded.detector, "threads", 0) or default_threads())
        decode_threads = None if step.device.type != "cpu" else max(1, cores // 2)
        workers = [
            threading.Thread(
                target=stream.decode_worker,
                args=(tuple(items), config, loaded.info.decoder, q_frames, stop, times, budget),
                kwargs={
                    "device": str(step.device),
                    "gpu_images": on_gpu,
                    "decode_threads": decode_threads,
                },
                name="agr-decode",
                daemon=True,
            ),
            threading.Thread(
                target=stream.face_worker,
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
            for w in workers:
                w.start()
            while True:
                msg = q_faces.get()
                if msg is stream.DONE:
                    break
                if isinstance(msg, stream.Crashed):
                    raise RuntimeError(f"{msg.stage} stage crashed: {msg.exc!r}") from msg.exc
                if isinstance(msg, stream.FacesOf):
                    if progress is not None:
                        progress.frame(items_by_key[msg.key])
                    assembler.add(msg.key, msg.batch)
                elif isinstance(msg, stream.ItemStart):
                    if progress is not None:
                        progress.source_started(msg.item, msg.expected_frames)
                    assembler.start(msg.key, msg.item)
                elif isinstance(msg, stream.TracksEnded):
                    assembler.end_tracks(msg.key, msg.track_ids)
                elif isinstance(msg, stream.FrameFailed):
                    assembler.fail(msg.key, msg.error)
                elif isinstance(msg, stream.ItemEnd):
                    assembler.end(
                        msg.key,
                        duration_s=msg.duration_s,
                        error=msg.error,
                        frames=msg.frames,
                        last_time_s=msg.last_time_s,
                    )
            assembler.finish()
        finally:
            stop.set()
            for w in workers:
                w.join(timeout=5)
            step.close()
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
    lookahead: Detector | None = None

    @property
    def spec(self) -> PreprocessSpec:
        """The checkpoint's preprocessing (chip size, alignment)."""
        return self.checkpoint.meta.preprocess

    @classmethod
    def load(cls, config: ProcessingConfig, *, threads: int | None) -> _Loaded:
        from agr_batch.checkpoint import describe_model, load_checkpoint
        from agr_batch.device import resolve_device
        from agr_batch.engines import engine_for_checkpoint
        from agr_batch.stages.classify import Classifier
        from agr_batch.stages.decode.torchcodec import resolve_decoder
        from agr_batch.stages.detect import build_detector

        device = resolve_device(config.device)
        checkpoint = load_checkpoint(config.model, device=device)
        if describe_model(checkpoint.meta)["synthetic"]:
            log.warning(
                "%s was trained on synthetic faces (agr-train synth): its age, gender and "
                "race labels are meaningless; face and visitor counts are real",
                config.model,
            )
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
        if threads and device.type == "cpu" and not det.threads:
            # A Ray worker's share of the node's cores. Locally onnxruntime takes every core:
            # half of them used 10-20 % less CPU on 2 cores but was no faster (BENCHMARKS.md).
            det = dataclasses.replace(det, threads=threads)
        t0 = time.perf_counter()
        detector = build_detector(det, device=device, cache_dir=config.cache_dir)
        # A second instance searches whole frames ahead of the tiles (FaceStep): on the CPU,
        # where the two inferences overlap better than one inference uses every core.
        lookahead = None
        if device.type == "cpu" and det.redetect_s > 0 and hasattr(detector, "detect_around"):
            lookahead = build_detector(det, device=device, cache_dir=config.cache_dir)
        # Building an int8 or compiled detector is a one-off, like the classifier's engine.
        detector_build_s = time.perf_counter() - t0
        decoder = resolve_decoder(config.decoder, device.type)
        meta = checkpoint.meta
        info = PipelineInfo(
            labels=dict(meta.labels),
            device=str(device),
            backend=engine.name,
            precision=engine.precision,
            decoder=decoder,
            build_s=float(engine.details.get("build_s", 0.0)) + detector_build_s,
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
                # Reports name the model's training data truthfully from this.
                "model_training": describe_model(meta),
            },
        )
        return cls(checkpoint, classifier, detector, info, lookahead)
