"""On-disk cache of compiled classifier engines.

An entry is keyed by everything that makes a compiled artifact valid: the checkpoint's file
hash, backend, precision, batch range, input size, device name and library versions. Each
entry is the artifact plus a JSON sidecar holding its key and the artifact's SHA-256; an entry
whose sidecar is missing, different or whose bytes do not hash to the recorded value is
rebuilt, never trusted.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import platform
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import torch

from agr_batch import __version__
from agr_batch.checkpoint import new_temp_file
from agr_batch.storage.hashing import sha256_file

log = logging.getLogger(__name__)


def default_cache_dir() -> Path:
    """``$AGR_BATCH_CACHE`` or ``$XDG_CACHE_HOME/agr-batch`` or ``~/.cache/agr-batch``."""
    env = os.environ.get("AGR_BATCH_CACHE")
    if env:
        return Path(env)
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base) / "agr-batch"


def device_name(device: torch.device) -> str:
    """A name that changes whenever compiled code for ``device`` would."""
    if device.type == "cuda":
        props = torch.cuda.get_device_properties(device)
        return f"cuda:{props.name}:sm{props.major}{props.minor}"
    cap = torch.backends.cpu.get_cpu_capability()
    return f"cpu:{platform.machine()}:{cap}"


def library_versions() -> dict[str, str]:
    """Versions of the libraries a compiled artifact depends on."""
    versions = {"torch": torch.__version__, "agr_batch": __version__}
    try:
        import torch_tensorrt  # type: ignore[import-not-found]

        versions["torch_tensorrt"] = torch_tensorrt.__version__
    except Exception:  # absent, or present but broken: either way not part of the key
        pass
    return versions


class EngineCache:
    """Compiled artifacts by key, validated on every read.

    Args:
        root: Cache folder (created on first write).
    """

    def __init__(self, root: str | os.PathLike[str] | None = None) -> None:
        self.root = Path(root) if root is not None else default_cache_dir()

    @staticmethod
    def key(fields: Mapping[str, Any]) -> str:
        """Stable hex key of ``fields`` (any JSON-serialisable mapping)."""
        blob = json.dumps(fields, sort_keys=True, default=str).encode()
        return hashlib.sha256(blob).hexdigest()[:32]

    def paths(self, backend: str, key: str, suffix: str) -> tuple[Path, Path]:
        """(artifact, sidecar) paths of an entry."""
        folder = self.root / backend
        return folder / f"{key}{suffix}", folder / f"{key}.json"

    def lookup(self, backend: str, fields: Mapping[str, Any], suffix: str) -> Path | None:
        """The artifact for ``fields`` if present and intact, else None (stale entries removed)."""
        key = self.key(fields)
        artifact, sidecar = self.paths(backend, key, suffix)
        if not artifact.exists() and not sidecar.exists():
            return None
        try:
            meta = json.loads(sidecar.read_text())
            ok = meta.get("fields") == json.loads(json.dumps(fields, default=str)) and meta.get(
                "sha256"
            ) == sha256_file(artifact)
        except (OSError, ValueError):
            ok = False
        if ok:
            return artifact
        log.warning("engine cache: entry %s is stale or corrupt; rebuilding it", artifact)
        self.remove(backend, key, suffix)
        return None

    def verdict_path(self, backend: str, fields: Mapping[str, Any]) -> Path:
        """Where the child-process verdict of the engine ``fields`` describes is kept."""
        return self.root / backend / f"{self.key(fields)}.verdict.json"

    def verdict(self, backend: str, fields: Mapping[str, Any]) -> dict[str, Any] | None:
        """The recorded verdict for ``fields``, or None (unreadable or foreign ones too)."""
        path = self.verdict_path(backend, fields)
        try:
            data = json.loads(path.read_text())
        except FileNotFoundError:
            return None
        except (OSError, ValueError):
            log.warning("engine cache: unreadable verdict %s ignored", path)
            return None
        if not isinstance(data, dict) or data.get("fields") != json.loads(
            json.dumps(fields, default=str)
        ):
            return None
        return data

    def record_verdict(
        self, backend: str, fields: Mapping[str, Any], verdict: Mapping[str, Any]
    ) -> Path:
        """Store a verdict for ``fields`` atomically; returns its path."""
        path = self.verdict_path(backend, fields)
        path.parent.mkdir(parents=True, exist_ok=True)
        data = {**verdict, "fields": json.loads(json.dumps(fields, default=str))}
        fd, tmp_name = new_temp_file(path.parent, prefix=f".{path.stem}.", suffix=".tmp")
        with os.fdopen(fd, "w") as f:
            json.dump(data, f, indent=2, sort_keys=True)
        os.replace(tmp_name, path)
        return path

    def remove(self, backend: str, key: str, suffix: str) -> None:
        """Delete an entry's files."""
        for p in self.paths(backend, key, suffix):
            p.unlink(missing_ok=True)

    def store(
        self,
        backend: str,
        fields: Mapping[str, Any],
        suffix: str,
        build: Callable[[Path], None],
    ) -> Path:
        """Build an artifact with ``build(tmp_path)`` and publish it atomically."""
        key = self.key(fields)
        artifact, sidecar = self.paths(backend, key, suffix)
        artifact.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp_name = new_temp_file(artifact.parent, prefix=f".{key}.", suffix=suffix)
        os.close(fd)
        tmp = Path(tmp_name)
        try:
            build(tmp)
            sha = sha256_file(tmp)
            os.replace(tmp, artifact)
        finally:
            tmp.unlink(missing_ok=True)
        meta = {"fields": json.loads(json.dumps(fields, default=str)), "sha256": sha}
        tmp_side = sidecar.with_suffix(".json.tmp")
        tmp_side.write_text(json.dumps(meta, indent=2, sort_keys=True))
        os.replace(tmp_side, sidecar)
        return artifact
