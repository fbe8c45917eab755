"""File identity for ``scan``: is this the recording processed before, changed, or a new one?

A path alone does not identify a recording: loop recorders delete old files and write new
ones under the same names, and Linux hands a freed inode number to the next new file at
once. What is recorded per file, and why:

- size and mtime: the cheap "unchanged" test, as before;
- device and inode: the file object (a rename keeps them, a new file gets others, unless
  the number was reused);
- birth time (``statx``, where the filesystem keeps one: ext4, XFS, Btrfs, tmpfs): tells a
  new file from an old one even when the inode number was reused;
- SHA-256 of the content, and of its first 64 KiB (:mod:`agr_batch.storage.hashing`):
  content identity (a renamed or touched file is no new data), and where no birth time
  exists, whether the file still begins as it did (a recording that grew in place) or is
  another recording under a reused inode.
"""

from __future__ import annotations

import ctypes
import os
import stat
from dataclasses import dataclass
from functools import cache

__all__ = ["FileStat", "birth_time_ns", "file_stat"]


@dataclass(frozen=True)
class FileStat:
    """What ``stat`` (and ``statx``) say about a file.

    Attributes:
        size: Bytes.
        mtime_ns: Modification time.
        ctime_ns: Status change time (permissions, links, renames, writes).
        dev: Device.
        ino: Inode number.
        btime_ns: Birth time, or None where the filesystem (or platform) keeps none.
        regular: Whether it is a regular file (not a FIFO, device, socket or folder).
    """

    size: int
    mtime_ns: int
    ctime_ns: int
    dev: int
    ino: int
    btime_ns: int | None
    regular: bool


class _Timestamp(ctypes.Structure):
    _fields_ = [("tv_sec", ctypes.c_int64), ("tv_nsec", ctypes.c_uint32), ("_pad", ctypes.c_int32)]


class _Statx(ctypes.Structure):
    # struct statx of <linux/stat.h>; 256 bytes.
    _fields_ = [
        ("stx_mask", ctypes.c_uint32),
        ("stx_blksize", ctypes.c_uint32),
        ("stx_attributes", ctypes.c_uint64),
        ("stx_nlink", ctypes.c_uint32),
        ("stx_uid", ctypes.c_uint32),
        ("stx_gid", ctypes.c_uint32),
        ("stx_mode", ctypes.c_uint16),
        ("_spare0", ctypes.c_uint16),
        ("stx_ino", ctypes.c_uint64),
        ("stx_size", ctypes.c_uint64),
        ("stx_blocks", ctypes.c_uint64),
        ("stx_attributes_mask", ctypes.c_uint64),
        ("stx_atime", _Timestamp),
        ("stx_btime", _Timestamp),
        ("stx_ctime", _Timestamp),
        ("stx_mtime", _Timestamp),
        ("stx_rdev_major", ctypes.c_uint32),
        ("stx_rdev_minor", ctypes.c_uint32),
        ("stx_dev_major", ctypes.c_uint32),
        ("stx_dev_minor", ctypes.c_uint32),
        ("_spare", ctypes.c_uint64 * 14),
    ]


_AT_FDCWD = -100
_STATX_BTIME = 0x800


@cache
def _statx() -> ctypes._CFuncPtr | None:  # type: ignore[name-defined]
    """Glibc's ``statx`` (2.28+), or None (other platforms, other C libraries)."""
    try:
        fn = ctypes.CDLL(None, use_errno=True).statx
    except (OSError, AttributeError):
        return None
    fn.argtypes = [
        ctypes.c_int, ctypes.c_char_p, ctypes.c_int, ctypes.c_uint, ctypes.POINTER(_Statx)
    ]  # fmt: skip
    fn.restype = ctypes.c_int
    return fn  # type: ignore[no-any-return]


def birth_time_ns(path: str | os.PathLike[str]) -> int | None:
    """A file's birth time in ns (following symlinks), or None where none is kept."""
    fn = _statx()
    if fn is None:
        return None
    buf = _Statx()
    if fn(_AT_FDCWD, os.fsencode(path), 0, _STATX_BTIME, ctypes.byref(buf)) != 0:
        return None
    if not buf.stx_mask & _STATX_BTIME:
        return None
    return int(buf.stx_btime.tv_sec) * 1_000_000_000 + int(buf.stx_btime.tv_nsec)


def file_stat(path: str | os.PathLike[str]) -> FileStat:
    """``stat`` (following symlinks) plus the birth time; opens nothing.

    Raises:
        OSError: If the file cannot be stat'ed (missing, dangling link, permission).
    """
    st = os.stat(path)
    regular = stat.S_ISREG(st.st_mode)
    return FileStat(
        size=st.st_size,
        mtime_ns=st.st_mtime_ns,
        ctime_ns=st.st_ctime_ns,
        dev=st.st_dev,
        ino=st.st_ino,
        btime_ns=birth_time_ns(path) if regular else None,
        regular=regular,
    )
