"""Small file-system helpers shared by every writer: a file or directory appears whole or not at all."""

from __future__ import annotations

import os
import shutil
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path


@contextmanager
def atomic_path(path: str | os.PathLike) -> Iterator[Path]:
    """Yields a temporary sibling of `path` to write; it is renamed over `path` only if the block completes.

    The sibling keeps `path`'s suffix (so writers that pick a format from it, like matplotlib, still
    do), and is removed if the block raises, so a crash leaves the old file or none, never half of one.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.stem}.{os.getpid()}.tmp{path.suffix}")
    try:
        yield tmp
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


def write_text_atomic(path: str | os.PathLike, text: str) -> None:
    """Replaces `path` with `text` (UTF-8), flushed to disk before the rename."""
    with atomic_path(path) as tmp, open(tmp, "w", encoding="utf-8") as f:
        f.write(text)
        f.flush()
        os.fsync(f.fileno())


def fsync_path(path: Path) -> None:
    """Flushes one file's data, or one directory's entries (a rename into it), to disk."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def fsync_tree(folder: Path) -> None:
    """Flushes every file and directory under `folder` (itself included) to disk.

    Files written by other processes count too: fsync flushes a file's pages, whoever wrote them.
    """
    for path in sorted(Path(folder).rglob("*"), reverse=True) + [Path(folder)]:  # children before parents
        fsync_path(path)


def replace_dir(new: Path, target: Path) -> None:
    """Move the complete directory `new` to `target`, replacing whatever was there only once `new` is done.

    The previous `target` is renamed aside first and removed last, so a crash leaves either the old
    or the new directory in place, never a half-written one. A `target` that is a file is refused (ValueError).
    """
    if target.exists() and not target.is_dir():
        raise ValueError(f"{target} is a file, not a directory; choose a directory path")
    old = target.with_name(f".{target.name}.old")
    shutil.rmtree(old, ignore_errors=True)
    if target.exists():
        target.rename(old)
    new.rename(target)
    shutil.rmtree(old, ignore_errors=True)
