"""Output safety: no output may be an input, another output, or lie inside a scanned folder.

Paths are compared by what they are, not by how they are spelled: symlinks and ``..`` are
resolved, and existing files and folders are compared by device and inode, so a hard link,
a bind mount or a symlinked parent folder is still recognised as the same file or folder.
"""

from __future__ import annotations

import os
from collections.abc import Iterable, Mapping
from pathlib import Path

from agr_batch.stages.decode.media import media_kind

__all__ = ["OutputError", "check_outputs", "is_within", "resolved", "same_file"]


class OutputError(ValueError):
    """An output path that must not be written (one-line message; exit code 2)."""


def resolved(path: str | os.PathLike[str]) -> Path:
    """``path`` absolute, with symlinks and ``..`` resolved (also below a missing tail)."""
    return Path(os.path.realpath(os.path.abspath(path)))


def _key(path: str | os.PathLike[str]) -> tuple[int, int] | None:
    try:
        st = os.stat(path)
    except (OSError, ValueError):
        return None
    return (st.st_dev, st.st_ino)


def same_file(a: str | os.PathLike[str], b: str | os.PathLike[str]) -> bool:
    """Whether ``a`` and ``b`` name the same file or folder, however spelled (or linked)."""
    if resolved(a) == resolved(b):
        return True
    ka = _key(a)
    return ka is not None and ka == _key(b)


def is_within(path: str | os.PathLike[str], folder: str | os.PathLike[str]) -> bool:
    """Whether ``path`` is ``folder`` or lies below it, however either is spelled."""
    target = resolved(path)
    top = resolved(folder)
    if target == top or top in target.parents:
        return True
    folder_key = _key(folder)
    if folder_key is None:
        return False
    # Bind mounts and hard-linked spellings: compare each existing ancestor by inode.
    return any(_key(p) == folder_key for p in (target, *target.parents) if p.exists())


def check_outputs(
    outputs: Mapping[str, Path | None],
    inputs: Iterable[str | os.PathLike[str]],
    *,
    hints: Mapping[str, str] | None = None,
) -> None:
    """Refuse outputs that would overwrite an input or each other, or cannot be files.

    Args:
        outputs: Output paths by the option that names them (``--out``); None is skipped.
        inputs: Every file the run reads (media, model); folders are allowed.
        hints: Extra advice per option for a media-named output.

    Raises:
        OutputError: Naming the option, the path and the problem.
    """
    named = [(opt, Path(p)) for opt, p in outputs.items() if p is not None]
    for opt, path in named:
        kind = media_kind(path)
        if kind is not None:
            hint = (hints or {}).get(opt, "")
            article = "an" if kind == "image" else "a"
            raise OutputError(
                f"{opt} {path}: {article} {kind} file name, but {opt} writes a Parquet table"
                f"{'; ' + hint if hint else ''}"
            )
        if path.is_dir():
            raise OutputError(f"{opt} {path}: is a folder, not a file name")
        blocker = next((p for p in resolved(path).parents if p.exists()), None)
        if blocker is not None and not blocker.is_dir():
            raise OutputError(f"{opt} {path}: cannot be created, {blocker} is not a folder")
    by_path = {resolved(p): p for p in (Path(i) for i in inputs)}
    by_key: dict[tuple[int, int], Path] = {}
    for p in by_path.values():
        key = _key(p)
        if key is not None:
            by_key.setdefault(key, p)
    for opt, path in named:
        key = _key(path)
        victim = by_path.get(resolved(path)) or (by_key.get(key) if key is not None else None)
        if victim is not None and not Path(victim).is_dir():
            raise OutputError(
                f"{opt} {path}: is the input {victim}; refusing to overwrite an input"
            )
    for i, (opt_a, a) in enumerate(named):
        for opt_b, b in named[i + 1 :]:
            if same_file(a, b):
                raise OutputError(f"{opt_a} {a} and {opt_b} {b} name the same file")
