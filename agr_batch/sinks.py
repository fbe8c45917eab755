"""Parquet sinks: atomic writes with the resolved configuration in the file's metadata.

Every file is written under a temporary name in the destination folder and renamed over the
final name only when complete, so a crash never leaves a half-written file under that name.
"""

from __future__ import annotations

import contextlib
import json
import os
import tempfile
from collections.abc import Iterator, Mapping
from pathlib import Path
from types import TracebackType
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq

METADATA_KEY = b"agr_batch"


@contextlib.contextmanager
def atomic_path(final: str | os.PathLike[str]) -> Iterator[Path]:
    """Yield a temporary path beside ``final``; rename it over ``final`` on success.

    On an exception the temporary file is removed and ``final`` is left untouched.
    """
    final = Path(final)
    final.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp_name = tempfile.mkstemp(prefix=f".{final.name}.", suffix=".tmp", dir=final.parent)
    os.close(fd)
    tmp = Path(tmp_name)
    try:
        yield tmp
        with open(tmp, "rb") as f:
            os.fsync(f.fileno())
        os.replace(tmp, final)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def with_metadata(schema: pa.Schema, metadata: Mapping[str, Any]) -> pa.Schema:
    """``schema`` with ``metadata`` stored as JSON under the ``agr_batch`` key."""
    existing = dict(schema.metadata or {})
    existing[METADATA_KEY] = json.dumps(metadata, sort_keys=True, default=str).encode()
    return schema.with_metadata(existing)


def read_metadata(path: str | os.PathLike[str]) -> dict[str, Any]:
    """The configuration recorded in a Parquet file written by agr-batch (``{}`` if none)."""
    meta = pq.read_schema(path).metadata or {}
    raw = meta.get(METADATA_KEY)
    return json.loads(raw) if raw else {}


def write_table(
    path: str | os.PathLike[str], table: pa.Table, *, metadata: Mapping[str, Any]
) -> None:
    """Write ``table`` atomically with ``metadata``."""
    table = table.replace_schema_metadata(with_metadata(table.schema, metadata).metadata)
    with atomic_path(path) as tmp:
        pq.write_table(table, tmp)


class ParquetStreamWriter:
    """Stream record batches into one Parquet file, atomically renamed on a clean exit.

    Use as a context manager; an exception inside the block discards the partial file.

    Args:
        path: Final file name.
        schema: Arrow schema of every batch.
        metadata: Configuration recorded in the file's key-value metadata.
    """

    def __init__(
        self, path: str | os.PathLike[str], schema: pa.Schema, *, metadata: Mapping[str, Any]
    ) -> None:
        self.path = Path(path)
        self.schema = with_metadata(schema, metadata)
        self.rows = 0
        self._ctx: contextlib.AbstractContextManager[Path] | None = None
        self._writer: pq.ParquetWriter | None = None

    def __enter__(self) -> ParquetStreamWriter:
        self._ctx = atomic_path(self.path)
        tmp = self._ctx.__enter__()
        self._writer = pq.ParquetWriter(tmp, self.schema)
        return self

    def write(self, table: pa.Table) -> None:
        """Append ``table`` (its schema must match, metadata aside)."""
        if self._writer is None:
            raise RuntimeError("ParquetStreamWriter.write() outside its with-block")
        if len(table):
            self._writer.write_table(table.cast(self.schema))
            self.rows += len(table)

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        assert self._writer is not None and self._ctx is not None
        self._writer.close()
        self._ctx.__exit__(exc_type, exc, tb)
        self._writer = None
