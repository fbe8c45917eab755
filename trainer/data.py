"""FairFace-layout data: CSV parsing, image loading, the torch Dataset, sampler and loader.

A data folder holds ``fairface_label_{split}.csv`` (columns ``file,age,gender,race,
service_test``) and the images those rows name, relative to the folder. Labels are checked
against :mod:`agr_batch.labels` for every row before anything trains: an unknown label stops
the run with an error naming the CSV file and its row. Images are checked lazily: a missing or
corrupt image is skipped and reported (:class:`SkippedImage`), never a crash.

Every sample's augmentation is drawn from a generator seeded by (seed, epoch, index) and the
shuffle order from (seed, epoch), so a batch's content does not depend on the number of
loader workers, and a run resumed at an epoch boundary sees exactly the data it would have
seen without the interruption.
"""

from __future__ import annotations

import csv
import logging
import os
import random
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, NamedTuple

import cv2
import numpy as np
import torch
from PIL import Image
from torch.utils.data import DataLoader, Dataset, Sampler

from agr_batch.labels import HEADS, VOCABULARIES, LabelError, encode
from agr_batch.stages.preprocess import PreprocessSpec, chips_to_tensor, resize_chip
from trainer.augment import AugmentConfig, augment_chip

log = logging.getLogger(__name__)

REQUIRED_COLUMNS: tuple[str, ...] = ("file", "age", "gender", "race")


class DataError(ValueError):
    """A data folder or CSV that cannot be used (one-line message naming the file and row)."""


@dataclass(frozen=True)
class Sample:
    """One CSV row.

    Attributes:
        file: The ``file`` column as written (relative to the data folder).
        path: The image's path.
        row: Row number in the CSV as a spreadsheet shows it (the header is row 1).
        age: Age class index.
        gender: Gender class index.
        race: Race class index.
    """

    file: str
    path: Path
    row: int
    age: int
    gender: int
    race: int

    @property
    def targets(self) -> tuple[int, int, int]:
        """Class indices in :data:`agr_batch.labels.HEADS` order."""
        return self.age, self.gender, self.race


@dataclass(frozen=True)
class Split:
    """One split of a data folder.

    Attributes:
        name: ``train``, ``val``, ...
        csv_path: The CSV it was read from.
        samples: Its rows, in file order.
    """

    name: str
    csv_path: Path
    samples: tuple[Sample, ...]

    def __len__(self) -> int:
        return len(self.samples)

    def class_counts(self, head: str) -> list[int]:
        """Number of samples per class of ``head``, in class-index order."""
        counts = [0] * len(VOCABULARIES[head])
        k = HEADS.index(head)
        for s in self.samples:
            counts[s.targets[k]] += 1
        return counts


@dataclass(frozen=True)
class SkippedImage:
    """An image that could not be read.

    Attributes:
        file: The CSV's ``file`` value.
        reason: Why it was skipped (one line).
    """

    file: str
    reason: str


def csv_path(data_dir: str | os.PathLike[str], split: str) -> Path:
    """Path of FairFace's label CSV of ``split`` under ``data_dir``."""
    return Path(data_dir) / f"fairface_label_{split}.csv"


def read_split(data_dir: str | os.PathLike[str], split: str, *, limit: int | None = None) -> Split:
    """Read and validate the label CSV of one split.

    Args:
        data_dir: The data folder (FairFace layout).
        split: ``train`` or ``val``.
        limit: Keep only the first ``limit`` rows (all rows are still validated).

    Raises:
        DataError: Missing or empty CSV, missing columns, an empty ``file`` or a label outside
            FairFace's vocabulary; the message names the CSV and the row.
    """
    path = csv_path(data_dir, split)
    if not path.is_file():
        raise DataError(f"{path}: no such label file (expected FairFace's layout under {data_dir})")
    try:
        samples = _read_rows(path, Path(data_dir))
    except (UnicodeDecodeError, csv.Error) as e:
        raise DataError(f"{path}: not a readable UTF-8 CSV ({e})") from None
    if not samples:
        raise DataError(f"{path}: no rows")
    if limit is not None:
        samples = samples[: max(0, limit)]
    return Split(split, path, tuple(samples))


def _read_rows(path: Path, data_dir: Path) -> list[Sample]:
    samples: list[Sample] = []
    with open(path, newline="", encoding="utf-8-sig") as f:
        reader = csv.DictReader(f)
        header = reader.fieldnames or []
        missing = [c for c in REQUIRED_COLUMNS if c not in header]
        if missing:
            raise DataError(
                f"{path}: header lacks column(s) {missing}; "
                "expected file,age,gender,race,service_test"
            )
        for record in reader:
            row = reader.line_num
            try:
                file = (record["file"] or "").strip()
                if not file:
                    raise DataError("empty 'file' value")
                age, gender, race = (encode(head, record[head] or "") for head in HEADS)
            except (LabelError, DataError) as e:
                raise DataError(f"{path}, row {row}: {e}") from None
            samples.append(Sample(file, data_dir / file, row, age, gender, race))
    return samples


class ImageError(Exception):
    """An image file that is missing, unreadable or not an image."""


def load_image(path: str | os.PathLike[str]) -> np.ndarray:
    """Decode an image file into an RGB uint8 array (H, W, 3).

    Truncated files are an error (not silently grey-filled).

    Raises:
        ImageError: For a missing, truncated, corrupt or non-image file.
    """
    try:
        with Image.open(path) as im:
            im.load()
            rgb = im.convert("RGB")
        array = np.asarray(rgb, dtype=np.uint8)
    except FileNotFoundError:
        raise ImageError("missing file") from None
    except (OSError, ValueError, SyntaxError, Image.DecompressionBombError) as e:
        reason = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise ImageError(f"unreadable image ({reason[:160]})") from None
    if array.ndim != 3 or min(array.shape[:2]) < 1:
        raise ImageError(f"unusable image shape {array.shape}")
    return array


class SampleKey(NamedTuple):
    """What the sampler yields: a sample index and the epoch it is drawn in."""

    index: int
    epoch: int


class Item(NamedTuple):
    """One loaded sample: the chip (``None`` when skipped) and its bookkeeping."""

    chip: np.ndarray | None
    targets: tuple[int, int, int]
    index: int
    skipped: SkippedImage | None


class FaceDataset(Dataset[Item]):
    """Images of one split as uint8 chips at the model's input size, optionally augmented.

    Args:
        split: The split's samples.
        spec: Preprocessing; chips are resized with :func:`resize_chip` to its input size.
        augment: Augmentation, or ``None`` for evaluation.
        seed: Seed of the per-sample augmentation generators.
    """

    def __init__(
        self,
        split: Split,
        spec: PreprocessSpec,
        *,
        augment: AugmentConfig | None = None,
        seed: int = 0,
    ) -> None:
        self.split = split
        self.spec = spec
        self.augment = None if augment is None or augment.is_identity else augment
        self.seed = seed

    def __len__(self) -> int:
        return len(self.split.samples)

    def __getitem__(self, key: int | SampleKey) -> Item:
        """Load sample ``key`` (an index, or a :class:`SampleKey` carrying the epoch)."""
        index, epoch = (key.index, key.epoch) if isinstance(key, SampleKey) else (int(key), 0)
        sample = self.split.samples[index]
        try:
            chip = resize_chip(load_image(sample.path), self.spec)
        except ImageError as e:
            return Item(None, sample.targets, index, SkippedImage(sample.file, str(e)))
        if self.augment is not None:
            rng = np.random.default_rng([self.seed, epoch, index])
            chip = augment_chip(chip, rng, self.augment)
        return Item(chip, sample.targets, index, None)


class EpochSampler(Sampler[SampleKey]):
    """Yields every index once per epoch, shuffled from (seed, epoch) when asked.

    Call :meth:`set_epoch` before iterating; the order depends only on the seed and epoch,
    never on global random state, so resuming at an epoch reproduces its order.
    """

    def __init__(self, n: int, *, shuffle: bool, seed: int = 0) -> None:
        self.n = n
        self.shuffle = shuffle
        self.seed = seed
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        """Select the epoch whose order the next iteration yields."""
        self.epoch = epoch

    def order(self) -> list[int]:
        """The indices of the current epoch, in the order they are drawn."""
        if not self.shuffle:
            return list(range(self.n))
        return np.random.default_rng([self.seed, 7, self.epoch]).permutation(self.n).tolist()

    def __iter__(self) -> Iterator[SampleKey]:
        epoch = self.epoch
        return (SampleKey(i, epoch) for i in self.order())

    def __len__(self) -> int:
        return self.n


@dataclass(frozen=True)
class Batch:
    """A collated batch.

    Attributes:
        images: Normalised (B, 3, H, W) float tensor from :func:`chips_to_tensor`.
        targets: (B, 3) class indices (age, gender, race).
        indices: (B,) sample indices in the split.
        skipped: Images of this batch that could not be read (not in ``images``).
    """

    images: torch.Tensor
    targets: torch.Tensor
    indices: torch.Tensor
    skipped: tuple[SkippedImage, ...] = ()

    def __len__(self) -> int:
        return int(self.targets.shape[0])

    def pin_memory(self) -> Batch:
        """Page-locked copy, used by the DataLoader's ``pin_memory``."""
        return Batch(
            self.images.pin_memory(),
            self.targets.pin_memory(),
            self.indices.pin_memory(),
            self.skipped,
        )


class Collate:
    """Stacks items into a :class:`Batch` with the checkpoint's :func:`chips_to_tensor`."""

    def __init__(self, spec: PreprocessSpec) -> None:
        self.spec = spec

    def __call__(self, items: Sequence[Item]) -> Batch:
        """Collate ``items``, leaving out those that were skipped."""
        good = [it for it in items if it.chip is not None]
        skipped = tuple(it.skipped for it in items if it.skipped is not None)
        images = chips_to_tensor([it.chip for it in good], self.spec)  # type: ignore[misc]
        targets = torch.tensor([it.targets for it in good], dtype=torch.long).reshape(-1, 3)
        indices = torch.tensor([it.index for it in good], dtype=torch.long)
        return Batch(images, targets, indices, skipped)


def worker_init(worker_id: int) -> None:
    """Seed a loader worker's global generators from its torch seed.

    The torch seed of a worker is derived from the loader's generator, itself seeded per
    epoch, so the workers' global state is reproducible too (augmentation does not use it).
    """
    del worker_id
    seed = torch.initial_seed() % 2**32
    np.random.seed(seed)
    random.seed(seed)


def default_workers() -> int:
    """Loader worker processes when none are asked for: 0 on ≤ 2 CPUs, else up to 4."""
    cpus = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    cpus = cpus or 1
    return 0 if cpus <= 2 else min(4, cpus - 1)


def make_loader(
    dataset: FaceDataset,
    *,
    batch_size: int,
    shuffle: bool,
    seed: int = 0,
    workers: int = 0,
    pin_memory: bool = False,
) -> tuple[DataLoader[Any], EpochSampler]:
    """Build a DataLoader over ``dataset`` and the sampler whose epoch it follows.

    Args:
        dataset: The data set.
        batch_size: Samples per batch (before skipped images are removed).
        shuffle: Shuffle per epoch (training) or keep file order (evaluation).
        seed: Seed of the shuffle order.
        workers: Loader worker processes (0 loads in the main process). More than 0 also
            switches OpenCV's threading off in this process: its pool does not survive fork.
        pin_memory: Page-locked batches (for CUDA).

    Returns:
        The loader, and its sampler: call ``sampler.set_epoch(e)`` before each epoch.
    """
    if workers > 0:
        # OpenCV's thread pool does not survive fork(): a worker forked after this process
        # used the pool deadlocks in it. Workers do the OpenCV work, so this process (and so
        # every worker forked from it) runs OpenCV single-threaded.
        cv2.setNumThreads(0)
    sampler = EpochSampler(len(dataset), shuffle=shuffle, seed=seed)
    # An explicit generator keeps the loader from drawing its worker seeds from (and so
    # advancing) the global torch generator that dropout uses.
    generator = torch.Generator().manual_seed(seed)
    loader: DataLoader[Any] = DataLoader(
        dataset,  # type: ignore[arg-type]
        batch_size=batch_size,
        sampler=sampler,  # type: ignore[arg-type]
        num_workers=workers,
        collate_fn=Collate(dataset.spec),
        pin_memory=pin_memory,
        worker_init_fn=worker_init if workers > 0 else None,
        generator=generator,
        persistent_workers=False,
    )
    return loader, sampler


def prepare_epoch(loader: DataLoader[Any], epoch: int) -> None:
    """Point a loader from :func:`make_loader` at ``epoch``: its order and worker seeds."""
    sampler = loader.sampler
    if not isinstance(sampler, EpochSampler):
        raise TypeError("prepare_epoch needs a loader built by make_loader")
    sampler.set_epoch(epoch)
    if loader.generator is not None:
        state = np.random.SeedSequence([sampler.seed, 11, epoch]).generate_state(1)
        loader.generator.manual_seed(int(state[0]))
