"""File content hashes: one SHA-256 helper for checkpoints, engine caches and scan identity."""

from __future__ import annotations

import hashlib
import os

from agr_batch.stages.decode.media import open_regular

__all__ = ["PREFIX_BYTES", "hash_file", "prefix_hash", "sha256_file"]

PREFIX_BYTES = 64 * 1024
"""Bytes of a file's start hashed apart by :func:`hash_file` (a recording that grew in place
still begins as it did)."""
_CHUNK = 1 << 20


def sha256_file(path: str | os.PathLike[str]) -> str:
    """SHA-256 of a file's bytes (hex).

    Raises:
        OSError: If the file cannot be read.
    """
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(_CHUNK), b""):
            h.update(chunk)
    return h.hexdigest()


def hash_file(path: str | os.PathLike[str]) -> tuple[str, str, int]:
    """SHA-256 of the whole content and of its first :data:`PREFIX_BYTES`, in one read.

    Only regular files are opened (``O_NONBLOCK``, checked on the descriptor): a FIFO named
    like a video never blocks the scan.

    Returns:
        ``(sha256, prefix_sha256, prefix_length)``.

    Raises:
        OSError: If the file cannot be opened or read, or is not a regular file.
    """
    whole, head = hashlib.sha256(), hashlib.sha256()
    taken = 0
    with open_regular(path) as f:
        for chunk in iter(lambda: f.read(_CHUNK), b""):
            whole.update(chunk)
            if taken < PREFIX_BYTES:
                part = chunk[: PREFIX_BYTES - taken]
                head.update(part)
                taken += len(part)
    return whole.hexdigest(), head.hexdigest(), taken


def prefix_hash(path: str | os.PathLike[str], length: int) -> str:
    """SHA-256 of the first ``length`` bytes (fewer if the file is shorter).

    Raises:
        OSError: If the file cannot be opened or read, or is not a regular file.
    """
    with open_regular(path) as f:
        return hashlib.sha256(f.read(length)).hexdigest()
