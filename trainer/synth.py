"""Synthetic FairFace-layout data set of procedurally drawn faces. TEST DATA ONLY.

The images are cartoon faces drawn with OpenCV; they are not photographs, they do not
depict anyone, and the colours and shapes tied to each label are arbitrary codes chosen so
that a small CNN can learn every head quickly. A model trained on them knows nothing about
real faces. Use them to test the trainer, the processor and their plumbing, never to measure
or claim accuracy on people.

Layout (identical to FairFace's ``fairface-img-margin025-trainval`` release)::

    DIR/fairface_label_train.csv   file,age,gender,race,service_test
    DIR/fairface_label_val.csv
    DIR/train/1.jpg ...            224×224 RGB JPEG chips (``size``)
    DIR/val/1.jpg ...
    DIR/agr_synth.json             marks the folder as synthetic: ``agr-train fit`` records
                                   it in the checkpoint, and reports and ``agr-batch info``
                                   say so

Each label drives its own visible features, drawn independently of the others:

* **race** — skin tone (one of seven distinct colours) and the base colour of the hair;
* **gender** — hair shape (short cap versus long hair framing the face down to the
  shoulders), eyebrow weight and lip colour;
* **age** — face proportions (round, small, big-eyed faces for children; longer faces for
  adults), forehead wrinkle lines, nasolabial folds, crow's feet and eye bags for the older
  bins, and the share of grey in the hair.

Nuisance factors (background, clothing, lighting, small shifts, scale changes and rotations,
expression) vary at random so that the labels are the only consistent signal. Labels are
drawn independently with FairFace-like frequencies, including its strong age imbalance
(20–29 is about 30 % of the faces, 70+ about 1 %). Faces are drawn on a 256 px canvas and
resized, so the features look the same at every ``size`` and stay visible at 64 px. Output is
byte-for-byte deterministic for a given seed, count and size.
"""

from __future__ import annotations

import csv
import json
import logging
import sys
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import cv2
import numpy as np

from agr_batch import __version__
from agr_batch.labels import AGE, GENDER, RACE, VOCABULARIES

log = logging.getLogger(__name__)

MARKER = "agr_synth.json"
"""The file that marks a folder as a synthetic data set (see :func:`is_synthetic`)."""

DATASET_NAME = "agr-train synth (synthetic drawn faces)"
"""How checkpoints trained on this data name their data set."""

CSV_HEADER: tuple[str, ...] = ("file", "age", "gender", "race", "service_test")
"""FairFace's CSV columns, in order."""

SPLITS: tuple[str, ...] = ("train", "val")

# Approximate FairFace training-set label counts; synthetic labels follow these frequencies.
FAIRFACE_TRAIN_COUNTS: dict[str, dict[str, int]] = {
    "age": {
        "0-2": 1792,
        "3-9": 10408,
        "10-19": 9103,
        "20-29": 25598,
        "30-39": 19250,
        "40-49": 10744,
        "50-59": 6228,
        "60-69": 2779,
        "more than 70": 842,
    },
    "gender": {"Male": 45986, "Female": 40758},
    "race": {
        "White": 16527,
        "Black": 12233,
        "Latino_Hispanic": 13367,
        "East Asian": 12287,
        "Southeast Asian": 10795,
        "Indian": 12319,
        "Middle Eastern": 9216,
    },
}

CANVAS = 256
"""Side of the drawing canvas; images are resized from it to the requested size."""

VAL_FRACTION = 0.2
JPEG_QUALITY = 92

# Arbitrary colour codes per race (RGB): skin tone and base hair colour. Tones differ in both
# lightness and hue so that mild brightness/contrast jitter does not merge them.
_SKIN: dict[str, tuple[int, int, int]] = {
    "White": (246, 208, 196),
    "Black": (92, 58, 42),
    "Latino_Hispanic": (206, 148, 96),
    "East Asian": (242, 222, 150),
    "Southeast Asian": (168, 122, 62),
    "Indian": (136, 84, 64),
    "Middle Eastern": (222, 172, 128),
}
_HAIR: dict[str, tuple[int, int, int]] = {
    "White": (176, 128, 60),
    "Black": (22, 18, 18),
    "Latino_Hispanic": (70, 42, 24),
    "East Asian": (12, 12, 24),
    "Southeast Asian": (40, 30, 22),
    "Indian": (30, 22, 26),
    "Middle Eastern": (54, 34, 22),
}
_GREY = np.array((206.0, 206.0, 210.0))


@dataclass(frozen=True)
class AgeLook:
    """How one age bin is drawn.

    Attributes:
        scale: Face size relative to an adult's.
        aspect: Face half-height over half-width.
        eye: Eye radius relative to an adult's.
        eye_y: Eye height on the face (fraction from the forehead to the chin).
        grey: Share of grey in the hair.
        forehead_lines: Number of forehead wrinkle lines.
        folds: Nasolabial folds from the nose to the mouth corners.
        crows_feet: Lines at the outer eye corners.
        bags: Lines under the eyes.
    """

    scale: float
    aspect: float
    eye: float
    eye_y: float
    grey: float
    forehead_lines: int
    folds: bool
    crows_feet: bool
    bags: bool


AGE_LOOKS: dict[str, AgeLook] = {
    "0-2": AgeLook(0.84, 0.92, 1.75, 0.56, 0.0, 0, False, False, False),
    "3-9": AgeLook(0.89, 1.02, 1.45, 0.50, 0.0, 0, False, False, False),
    "10-19": AgeLook(0.95, 1.14, 1.18, 0.45, 0.0, 0, False, False, False),
    "20-29": AgeLook(1.00, 1.24, 1.0, 0.42, 0.0, 0, False, False, False),
    "30-39": AgeLook(1.00, 1.26, 1.0, 0.42, 0.12, 1, False, False, False),
    "40-49": AgeLook(1.00, 1.28, 0.96, 0.42, 0.35, 2, True, False, False),
    "50-59": AgeLook(1.00, 1.30, 0.93, 0.42, 0.58, 3, True, True, False),
    "60-69": AgeLook(0.99, 1.31, 0.90, 0.42, 0.80, 3, True, True, True),
    "more than 70": AgeLook(0.98, 1.32, 0.86, 0.42, 0.97, 4, True, True, True),
}


@dataclass(frozen=True)
class FaceLabels:
    """One face's labels as FairFace strings."""

    age: str
    gender: str
    race: str

    def __post_init__(self) -> None:
        for head in ("age", "gender", "race"):
            if getattr(self, head) not in VOCABULARIES[head]:
                raise ValueError(f"unknown {head} label {getattr(self, head)!r}")


@dataclass(frozen=True)
class SynthSummary:
    """What :func:`make_dataset` wrote.

    Attributes:
        root: The data set folder.
        n_train: Images under ``train/``.
        n_val: Images under ``val/``.
        size: Image side in pixels.
        seed: Seed the data set was drawn with.
        counts: Label counts per split and head, e.g. ``counts["train"]["age"]["0-2"]``.
    """

    root: Path
    n_train: int
    n_val: int
    size: int
    seed: int
    counts: dict[str, dict[str, dict[str, int]]]


def _probabilities(head: str) -> np.ndarray:
    counts = FAIRFACE_TRAIN_COUNTS[head]
    p = np.array([counts[name] for name in VOCABULARIES[head]], dtype=np.float64)
    return p / p.sum()


def sample_labels(n: int, *, seed: int) -> list[FaceLabels]:
    """Draw ``n`` label triples independently with FairFace-like frequencies.

    Args:
        n: Number of faces.
        seed: Seed; the same seed gives the same labels.
    """
    rng = np.random.default_rng([seed, 0])
    age = rng.choice(len(AGE), size=n, p=_probabilities("age"))
    gender = rng.choice(len(GENDER), size=n, p=_probabilities("gender"))
    race = rng.choice(len(RACE), size=n, p=_probabilities("race"))
    return [
        FaceLabels(AGE[a], GENDER[g], RACE[r])
        for a, g, r in zip(age.tolist(), gender.tolist(), race.tolist(), strict=True)
    ]


def _pt(x: float, y: float) -> tuple[int, int]:
    return round(x * CANVAS), round(y * CANVAS)


def _ax(a: float, b: float) -> tuple[int, int]:
    return max(1, round(a * CANVAS)), max(1, round(b * CANVAS))


def _col(rgb: np.ndarray | tuple[float, float, float]) -> tuple[int, int, int]:
    r, g, b = (int(np.clip(round(float(v)), 0, 255)) for v in rgb)
    return r, g, b


def _background(rng: np.random.Generator) -> np.ndarray:
    top = rng.uniform(40, 230, size=3)
    bottom = rng.uniform(40, 230, size=3)
    t = np.linspace(0.0, 1.0, CANVAS)[:, None, None]
    img = (1 - t) * top + t * bottom
    img = np.broadcast_to(img, (CANVAS, CANVAS, 3)).copy()
    img += rng.normal(0.0, 6.0, size=img.shape)
    return img


def draw_face(labels: FaceLabels, *, rng: np.random.Generator, size: int = 224) -> np.ndarray:
    """Draw one synthetic face chip. TEST DATA ONLY.

    Args:
        labels: The face's age, gender and race (FairFace strings).
        rng: Source of every nuisance factor (background, pose, lighting, expression);
            drawing the same labels with equally seeded generators gives the same image.
        size: Output side in pixels.

    Returns:
        An RGB uint8 array (size, size, 3), laid out like a dlib face chip with padding 0.25.
    """
    look = AGE_LOOKS[labels.age]
    female = labels.gender == "Female"
    skin = np.array(_SKIN[labels.race], dtype=np.float64) * rng.uniform(0.96, 1.04)
    hair_base = np.array(_HAIR[labels.race], dtype=np.float64)
    grey = float(np.clip(look.grey + rng.uniform(-0.05, 0.05), 0.0, 1.0))
    hair = (1 - grey) * hair_base + grey * _GREY
    shade = skin * 0.55  # wrinkles, folds, nostrils

    img = _background(rng)
    # Nuisance geometry: small shifts and size changes (the chip is aligned, not perfect).
    cx = 0.5 + rng.uniform(-0.02, 0.02)
    scale = look.scale * rng.uniform(0.96, 1.04)
    hw = 0.29 * scale  # face half-width
    hh = hw * look.aspect * rng.uniform(0.98, 1.02)  # face half-height
    chin = 0.88 + rng.uniform(-0.015, 0.015)
    cy = chin - hh
    top = cy - hh

    # Clothing and neck.
    shirt = _col(rng.uniform(30, 230, size=3))
    cv2.ellipse(img, _pt(0.5, 1.08), _ax(0.42, 0.2), 0, 180, 360, shirt, -1, cv2.LINE_AA)
    cv2.rectangle(img, _pt(cx - hw * 0.42, cy), _pt(cx + hw * 0.42, 0.97), _col(skin * 0.9), -1)

    # Long hair (female) falls behind the face down to the shoulders.
    if female:
        cv2.ellipse(
            img,
            _pt(cx, cy + hh * 0.25),
            _ax(hw * 1.32, hh * 1.3),
            0,
            0,
            360,
            _col(hair),
            -1,
            cv2.LINE_AA,
        )
        cv2.rectangle(img, _pt(cx - hw * 1.32, cy), _pt(cx + hw * 1.32, 0.99), _col(hair), -1)

    # Ears and face.
    for side in (-1, 1):
        cv2.ellipse(
            img, _pt(cx + side * hw * 0.98, cy), _ax(hw * 0.16, hh * 0.2), 0, 0, 360, _col(skin), -1
        )
    cv2.ellipse(img, _pt(cx, cy), _ax(hw, hh), 0, 0, 360, _col(skin), -1, cv2.LINE_AA)

    # Hair on top: a short cap for men, a fuller fringe for women.
    cap_depth = 0.32 if female else 0.22
    cv2.ellipse(
        img,
        _pt(cx, top + hh * cap_depth),
        _ax(hw * 1.04, hh * (cap_depth + 0.06)),
        0,
        180,
        360,
        _col(hair),
        -1,
        cv2.LINE_AA,
    )
    if female:
        for side in (-1, 1):
            cv2.ellipse(
                img,
                _pt(cx + side * hw * 0.9, cy - hh * 0.1),
                _ax(hw * 0.2, hh * 0.75),
                0,
                0,
                360,
                _col(hair),
                -1,
                cv2.LINE_AA,
            )

    # Forehead wrinkles (age).
    line_w = 3
    for i in range(look.forehead_lines):
        y = top + hh * (cap_depth + 0.14 + 0.085 * i)
        cv2.ellipse(
            img, _pt(cx, y + hh * 0.08), _ax(hw * 0.5, hh * 0.08), 0, 200, 340, _col(shade), line_w
        )

    # Eyes, brows.
    eye_y = top + 2 * hh * look.eye_y
    eye_dx = hw * 0.42
    eye_r = 0.036 * look.eye * rng.uniform(0.95, 1.05)
    brow_w = 4 if female else 9
    for side in (-1, 1):
        ex = cx + side * eye_dx
        cv2.ellipse(
            img,
            _pt(ex, eye_y),
            _ax(eye_r * 1.5, eye_r),
            0,
            0,
            360,
            (250, 250, 250),
            -1,
            cv2.LINE_AA,
        )
        iris = _col(rng.uniform(20, 90, size=3))
        cv2.circle(img, _pt(ex, eye_y), max(2, round(eye_r * 0.75 * CANVAS)), iris, -1, cv2.LINE_AA)
        cv2.circle(img, _pt(ex, eye_y), max(1, round(eye_r * 0.35 * CANVAS)), (5, 5, 5), -1)
        brow_y = eye_y - eye_r - 0.03
        cv2.line(
            img,
            _pt(ex - eye_r * 1.6, brow_y + 0.006),
            _pt(ex + eye_r * 1.6, brow_y - 0.004 * side),
            _col(hair * 0.8),
            brow_w,
            cv2.LINE_AA,
        )
        if look.crows_feet:
            ox = ex + side * eye_r * 1.8
            for dy in (-0.014, 0.0, 0.014):
                cv2.line(
                    img,
                    _pt(ox, eye_y + dy * 0.4),
                    _pt(ox + side * 0.03, eye_y + dy * 1.6),
                    _col(shade),
                    2,
                )
        if look.bags:
            cv2.ellipse(
                img,
                _pt(ex, eye_y + eye_r * 1.05),
                _ax(eye_r * 1.4, eye_r * 0.7),
                0,
                20,
                160,
                _col(shade),
                line_w,
            )

    # Nose.
    nose_y = eye_y + (chin - eye_y) * 0.42
    cv2.line(img, _pt(cx, eye_y + 0.02), _pt(cx - 0.012, nose_y), _col(shade), 2, cv2.LINE_AA)
    for side in (-1, 1):
        cv2.circle(img, _pt(cx + side * 0.016, nose_y), 3, _col(shade), -1)

    # Nasolabial folds (age).
    mouth_y = eye_y + (chin - eye_y) * 0.68
    mouth_w = hw * 0.38 * rng.uniform(0.9, 1.1)
    if look.folds:
        for side in (-1, 1):
            cv2.line(
                img,
                _pt(cx + side * 0.035, nose_y + 0.004),
                _pt(cx + side * (mouth_w + 0.02), mouth_y + 0.02),
                _col(shade),
                line_w,
                cv2.LINE_AA,
            )

    # Mouth: red lips for women, a thin line for men; the smile varies at random.
    lips = (188, 40, 60) if female else _col(skin * 0.6)
    smile = rng.uniform(-0.3, 1.0)
    cv2.ellipse(
        img,
        _pt(cx, mouth_y - 0.012 * smile),
        _ax(mouth_w, 0.006 + 0.014 * abs(smile)),
        0,
        0 if smile >= 0 else 180,
        180 if smile >= 0 else 360,
        lips,
        6 if female else 3,
        cv2.LINE_AA,
    )

    # Lighting, a small rotation, then resize to the output size.
    gain = rng.uniform(0.9, 1.1)
    img = np.clip(img * gain, 0, 255).astype(np.uint8)
    angle = rng.uniform(-5.0, 5.0)
    m = cv2.getRotationMatrix2D((CANVAS / 2, CANVAS / 2), angle, 1.0)
    img = cv2.warpAffine(
        img, m, (CANVAS, CANVAS), flags=cv2.INTER_LINEAR, borderMode=cv2.BORDER_REFLECT_101
    )
    if size != CANVAS:
        interp = cv2.INTER_AREA if size < CANVAS else cv2.INTER_CUBIC
        img = cv2.resize(img, (size, size), interpolation=interp)
    return img


def _face_rng(seed: int, split: str, index: int) -> np.random.Generator:
    return np.random.default_rng([seed, 1, SPLITS.index(split), index])


def is_synthetic(data: str | Path) -> bool:
    """Whether ``data`` is a folder written by :func:`make_dataset` (it holds the marker)."""
    return (Path(data) / MARKER).is_file()


def make_dataset(
    out: str | Path,
    n: int,
    *,
    seed: int = 0,
    size: int = 224,
    val_fraction: float = VAL_FRACTION,
    progress: bool = False,
) -> SynthSummary:
    """Write a synthetic data set in FairFace's exact layout. TEST DATA ONLY.

    Args:
        out: Destination folder (created; existing files with the same names are replaced).
        n: Total number of images; about ``1 - val_fraction`` go to ``train/``.
        seed: Seed; the same seed, ``n`` and ``size`` give byte-identical files.
        size: Image side in pixels (FairFace's chips are 224).
        val_fraction: Share of images in ``val/``.
        progress: Show a progress bar (images written of ``n``, rate, ETA) on stderr.

    Returns:
        What was written.

    Raises:
        ValueError: For ``n < 2``, ``size < 32`` or a fraction outside (0, 1).
    """
    if n < 2:
        raise ValueError(f"n must be at least 2 (one train and one val image), got {n}")
    if size < 32:
        raise ValueError(f"size must be at least 32 px, got {size}")
    if not 0.0 < val_fraction < 1.0:
        raise ValueError(f"val_fraction must be in (0, 1), got {val_fraction}")
    root = Path(out)
    n_val = min(n - 1, max(1, round(n * val_fraction)))
    n_train = n - n_val
    labels = sample_labels(n, seed=seed)
    service = np.random.default_rng([seed, 2]).random(n) < 0.5
    parts = {"train": range(n_train), "val": range(n_train, n)}
    counts: dict[str, dict[str, dict[str, int]]] = {}
    root.mkdir(parents=True, exist_ok=True)
    # Written first: a half-written folder is synthetic too.
    marker = {
        "synthetic": True, "generator": "agr-train synth", "dataset": DATASET_NAME,
        "agr_batch_version": __version__, "n": n, "seed": seed, "size": size,
        "note": "TEST DATA ONLY: cartoon faces whose labels are arbitrary codes",
    }  # fmt: skip
    (root / MARKER).write_text(json.dumps(marker, indent=2) + "\n", encoding="utf-8")
    bar = _progress_bar(n) if progress else None
    for split, indices in parts.items():
        (root / split).mkdir(parents=True, exist_ok=True)
        rows = []
        for number, i in enumerate(indices, start=1):
            rel = f"{split}/{number}.jpg"
            chip = draw_face(labels[i], rng=_face_rng(seed, split, number), size=size)
            ok, buf = cv2.imencode(
                ".jpg",
                cv2.cvtColor(chip, cv2.COLOR_RGB2BGR),
                [cv2.IMWRITE_JPEG_QUALITY, JPEG_QUALITY],
            )
            if not ok:  # pragma: no cover - cv2 fails only on invalid arrays
                raise RuntimeError(f"could not encode {rel}")
            (root / rel).write_bytes(buf.tobytes())
            lab = labels[i]
            rows.append((rel, lab.age, lab.gender, lab.race, str(bool(service[i]))))
            if bar is not None:
                bar.update(1)
        with open(root / f"fairface_label_{split}.csv", "w", newline="", encoding="utf-8") as f:
            writer = csv.writer(f, lineterminator="\n")
            writer.writerow(CSV_HEADER)
            writer.writerows(rows)
        counts[split] = {
            head: dict(Counter(getattr(labels[i], head) for i in indices))
            for head in ("age", "gender", "race")
        }
    if bar is not None:
        bar.close()
    log.info(
        "synth: wrote %d train + %d val synthetic faces (%d px, seed %d) to %s — TEST DATA ONLY",
        n_train,
        n_val,
        size,
        seed,
        root,
    )
    return SynthSummary(
        root=root, n_train=n_train, n_val=n_val, size=size, seed=seed, counts=counts
    )


def _progress_bar(total: int) -> Any:
    """A bar of images written out of ``total``, with rate and ETA, on stderr."""
    from tqdm import tqdm

    return tqdm(total=total, desc="synth", unit="img", file=sys.stderr, dynamic_ncols=True)
