"""Small file-system helpers shared by the writers of whole directories."""

from __future__ import annotations

import shutil
from pathlib import Path


def replace_dir(new: Path, target: Path) -> None:
    """Move the complete directory `new` to `target`, replacing whatever was there only once `new` is done.

    The previous `target` is renamed aside first and removed last, so a crash leaves either the old
    or the new directory in place, never a half-written one.
    """
    old = target.with_name(f".{target.name}.old")
    shutil.rmtree(old, ignore_errors=True)
    if target.exists():
        target.rename(old)
    new.rename(target)
    shutil.rmtree(old, ignore_errors=True)
