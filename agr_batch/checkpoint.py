"""Self-describing checkpoints: weights plus everything inference needs to match training.

One file holds the weights and a JSON metadata block: architecture name and constructor
overrides, label vocabularies, preprocessing (input size, normalisation, chip geometry),
training summary, format version and a content hash of the weights. Files are read with
``torch.load(weights_only=True)``, which never executes code from the file.
"""

from __future__ import annotations

import datetime as _dt
import hashlib
import json
import logging
import os
import secrets
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn

from agr_batch import __version__
from agr_batch.labels import HEADS, VOCABULARIES
from agr_batch.models import create_model
from agr_batch.models.registry import RegistryError
from agr_batch.stages.preprocess import PreprocessSpec
from agr_batch.storage.hashing import sha256_file

log = logging.getLogger(__name__)

FORMAT_KEY = "agr_batch_checkpoint"
FORMAT_VERSION = 1


class CheckpointError(Exception):
    """A checkpoint that is missing, unreadable, foreign or inconsistent (one-line message)."""


@dataclass(frozen=True)
class CheckpointMeta:
    """Metadata stored beside the weights.

    Attributes:
        arch: Registered model name.
        overrides: Constructor keyword overrides passed to ``create_model``.
        labels: Class names per head, in logit order.
        preprocess: Chip geometry, input size and normalisation.
        training: Free-form training summary (data, epochs, validation metrics, ...).
        format_version: Checkpoint format version.
        tool_version: agr-batch version that wrote the file.
        created: ISO-8601 UTC time of writing.
        weights_sha256: Hash of the weights' names, dtypes, shapes and bytes.
    """

    arch: str
    overrides: Mapping[str, Any]
    labels: Mapping[str, tuple[str, ...]]
    preprocess: PreprocessSpec
    training: Mapping[str, Any] = field(default_factory=dict)
    format_version: int = FORMAT_VERSION
    tool_version: str = __version__
    created: str = ""
    weights_sha256: str = ""

    def __post_init__(self) -> None:
        missing = [h for h in HEADS if h not in self.labels]
        if missing:
            raise ValueError(f"labels lack heads {missing}; expected {list(HEADS)}")
        for head in HEADS:
            expected = len(VOCABULARIES[head])
            got = len(self.labels[head])
            if got != expected:
                raise ValueError(f"{head} labels: expected {expected} classes, got {got}")
        object.__setattr__(self, "labels", {h: tuple(self.labels[h]) for h in HEADS})

    def to_json(self) -> str:
        """Serialise to JSON."""
        return json.dumps(
            {
                "arch": self.arch,
                "overrides": _jsonable(dict(self.overrides)),
                "labels": {h: list(v) for h, v in self.labels.items()},
                "preprocess": self.preprocess.to_dict(),
                "training": _jsonable(dict(self.training)),
                "format_version": self.format_version,
                "tool_version": self.tool_version,
                "created": self.created,
                "weights_sha256": self.weights_sha256,
            },
            sort_keys=True,
        )

    @classmethod
    def from_json(cls, text: str) -> CheckpointMeta:
        """Parse and validate metadata written by :meth:`to_json`."""
        d = json.loads(text)
        if not isinstance(d, dict):
            raise ValueError("metadata is not a JSON object")
        return cls(
            arch=str(d["arch"]),
            overrides={k: _tuplify(v) for k, v in dict(d.get("overrides", {})).items()},
            labels={h: tuple(v) for h, v in dict(d["labels"]).items()},
            preprocess=PreprocessSpec.from_dict(d["preprocess"]),
            training=dict(d.get("training", {})),
            format_version=int(d["format_version"]),
            tool_version=str(d.get("tool_version", "")),
            created=str(d.get("created", "")),
            weights_sha256=str(d.get("weights_sha256", "")),
        )


@dataclass(frozen=True)
class Checkpoint:
    """A loaded checkpoint: validated metadata and the model in eval mode."""

    path: Path
    meta: CheckpointMeta
    model: nn.Module
    file_sha256: str


def _jsonable(value: Any) -> Any:
    if isinstance(value, Mapping):
        return {str(k): _jsonable(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_jsonable(v) for v in value]
    if isinstance(value, float | int | str | bool) or value is None:
        return value
    if isinstance(value, Path):
        return str(value)
    if isinstance(value, torch.Tensor) and value.numel() == 1:
        return value.item()
    raise TypeError(f"cannot store {type(value).__name__} in checkpoint metadata")


def _tuplify(value: Any) -> Any:
    # JSON turns tuples into lists; constructors take tuples (input_size, widths).
    return tuple(_tuplify(v) for v in value) if isinstance(value, list) else value


def weights_hash(state_dict: Mapping[str, torch.Tensor]) -> str:
    """SHA-256 over the weights' names, dtypes, shapes and bytes, in name order."""
    h = hashlib.sha256()
    for name in sorted(state_dict):
        t = state_dict[name].detach().cpu().contiguous()
        h.update(f"{name}|{t.dtype}|{tuple(t.shape)}|".encode())
        h.update(t.reshape(-1).view(torch.uint8).numpy().tobytes())
    return h.hexdigest()


SYNTH_MARKER = "agr_synth.json"
"""The file ``agr-train synth`` writes into a synthetic data set (mirrors trainer.synth)."""


def describe_model(meta: CheckpointMeta) -> dict[str, Any]:
    """What a checkpoint says about its training data, for reports and ``info``.

    Returns:
        ``arch``; ``dataset`` (a name, or None when not recorded); ``synthetic`` (True for
        ``agr-train synth`` data, False for other data, None when not recorded);
        ``val_mean_accuracy`` (None when absent); ``note`` (a free-form note, e.g. that
        the weights are untrained).
    """
    training = dict(meta.training)
    synthetic = training.get("synthetic")
    dataset = training.get("dataset")
    data = training.get("data")
    if synthetic is None and isinstance(data, str):
        # Checkpoints from before the flag was recorded: the data folder may still say.
        with_marker = Path(data) / SYNTH_MARKER
        if with_marker.is_file():
            synthetic, dataset = True, "agr-train synth (synthetic drawn faces)"
    if dataset is None and isinstance(data, str):
        dataset = Path(data).name or None
    accuracy = training.get("val_mean_accuracy")
    return {
        "arch": meta.arch,
        "dataset": dataset,
        "synthetic": None if synthetic is None else bool(synthetic),
        "val_mean_accuracy": float(accuracy) if isinstance(accuracy, int | float) else None,
        "note": training.get("note"),
    }


def default_preprocess(model: nn.Module) -> PreprocessSpec:
    """The preprocessing a freshly built model expects: its input size, ImageNet statistics."""
    return PreprocessSpec(input_size=tuple(model.input_size))  # type: ignore[arg-type]


def _state_dict(model: nn.Module) -> dict[str, torch.Tensor]:
    # torch.compile wraps the module as ``_orig_mod``; store the plain names.
    inner = getattr(model, "_orig_mod", model)
    return {k: v.detach().cpu() for k, v in inner.state_dict().items()}


def save_checkpoint(
    path: str | os.PathLike[str],
    model: nn.Module,
    *,
    preprocess: PreprocessSpec | None = None,
    training: Mapping[str, Any] | None = None,
    extra: Mapping[str, Any] | None = None,
) -> CheckpointMeta:
    """Write ``model`` and its metadata to ``path`` atomically.

    Args:
        path: Destination file (conventionally ``*.pt``).
        model: A model built by :func:`agr_batch.models.create_model`.
        preprocess: Defaults to the model's input size with ImageNet statistics.
        training: Training summary stored in the metadata.
        extra: Additional tensors/containers stored beside the weights (e.g. the trainer's
            optimizer state); must be loadable with ``weights_only=True``.

    Returns:
        The metadata written.
    """
    inner = getattr(model, "_orig_mod", model)
    arch = getattr(inner, "arch", None)
    if arch is None:
        raise ValueError("model was not built by create_model(); its arch is unknown")
    state = _state_dict(model)
    meta = CheckpointMeta(
        arch=arch,
        overrides=dict(getattr(inner, "arch_overrides", {})),
        labels=dict(VOCABULARIES),
        preprocess=preprocess or default_preprocess(inner),
        training=dict(training or {}),
        created=_dt.datetime.now(_dt.UTC).isoformat(timespec="seconds"),
        weights_sha256=weights_hash(state),
    )
    payload: dict[str, Any] = {
        FORMAT_KEY: FORMAT_VERSION,
        "metadata": meta.to_json(),
        "state_dict": state,
    }
    if extra:
        payload["extra"] = dict(extra)
    atomic_torch_save(payload, path)
    return meta


def new_temp_file(folder: Path, *, prefix: str, suffix: str) -> tuple[int, Path]:
    """Create a new, empty file with a random name in ``folder``; return its fd and path.

    Unlike :func:`tempfile.mkstemp` (always 0600), the file gets the permissions the umask
    leaves of 0666, like any file a Unix tool writes: outputs renamed from it can be read
    by the users the umask allows (e.g. host users reading what a container wrote).
    """
    flags = os.O_RDWR | os.O_CREAT | os.O_EXCL | getattr(os, "O_CLOEXEC", 0)
    while True:
        path = folder / f"{prefix}{secrets.token_hex(6)}{suffix}"
        try:
            return os.open(path, flags, 0o666), path
        except FileExistsError:
            continue


def atomic_torch_save(obj: Any, path: str | os.PathLike[str]) -> None:
    """``torch.save`` to a temporary file in the same folder, then rename over ``path``."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = new_temp_file(path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            torch.save(obj, f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def read_payload(path: str | os.PathLike[str]) -> dict[str, Any]:
    """Read a checkpoint file's raw payload safely, with one-line errors.

    Raises:
        CheckpointError: Missing, unreadable, truncated, foreign or too new.
    """
    path = Path(path)
    if not path.exists():
        raise CheckpointError(f"{path}: no such checkpoint file")
    if not path.is_file():
        raise CheckpointError(f"{path}: not a file")
    try:
        payload = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # torch raises many types for bad zips and pickles
        text = str(e).strip()
        reason = text.splitlines()[0].split(". ")[0] if text else type(e).__name__
        raise CheckpointError(
            f"{path}: not a readable checkpoint (corrupt or truncated: {reason[:200]})"
        ) from None
    if not isinstance(payload, dict) or FORMAT_KEY not in payload:
        raise CheckpointError(
            f"{path}: not an agr-batch checkpoint (no {FORMAT_KEY!r} marker; "
            "train one with `agr-train fit`)"
        )
    version = payload[FORMAT_KEY]
    if not isinstance(version, int) or version > FORMAT_VERSION:
        raise CheckpointError(
            f"{path}: checkpoint format {version!r} is newer than this agr-batch "
            f"(reads up to {FORMAT_VERSION}); upgrade agr-batch"
        )
    return payload


def load_checkpoint(
    path: str | os.PathLike[str], *, device: str | torch.device = "cpu"
) -> Checkpoint:
    """Load and validate a checkpoint; the returned model is in eval mode on ``device``.

    Raises:
        CheckpointError: For a missing, corrupt, truncated, foreign or inconsistent file.
    """
    path = Path(path)
    payload = read_payload(path)
    try:
        meta = CheckpointMeta.from_json(payload["metadata"])
    except (KeyError, ValueError, TypeError) as e:
        raise CheckpointError(f"{path}: invalid checkpoint metadata ({e})") from None
    state = payload.get("state_dict")
    if not isinstance(state, dict):
        raise CheckpointError(f"{path}: checkpoint has no state_dict")
    actual = weights_hash(state)
    if meta.weights_sha256 and actual != meta.weights_sha256:
        raise CheckpointError(
            f"{path}: weights do not match their recorded hash (corrupt file): "
            f"expected {meta.weights_sha256[:12]}, got {actual[:12]}"
        )
    try:
        model = create_model(meta.arch, **dict(meta.overrides))
    except RegistryError as e:
        raise CheckpointError(f"{path}: {e}") from None
    except TypeError as e:
        raise CheckpointError(f"{path}: overrides do not fit arch {meta.arch!r} ({e})") from None
    try:
        result = model.load_state_dict(state, strict=False)
    except (RuntimeError, ValueError, TypeError) as e:
        # Same names, other shapes (weights of another arch): torch lists every tensor.
        first = next((ln.strip() for ln in str(e).splitlines()[1:] if ln.strip()), str(e))
        raise CheckpointError(
            f"{path}: weights do not fit arch {meta.arch!r} ({first[:200]})"
        ) from None
    if result.missing_keys or result.unexpected_keys:
        raise CheckpointError(
            f"{path}: weights do not fit arch {meta.arch!r} "
            f"(missing {result.missing_keys[:3]}, unexpected {result.unexpected_keys[:3]})"
        )
    if tuple(model.input_size) != meta.preprocess.input_size:
        log.info(
            "%s: model built for %s runs at preprocessing input size %s",
            path,
            model.input_size,
            meta.preprocess.input_size,
        )
    model.eval().to(device)
    return Checkpoint(path=path, meta=meta, model=model, file_sha256=sha256_file(path))
