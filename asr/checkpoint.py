"""Checkpoints that are complete or invisible: atomic `step_<n>` folders, rotation, resume lookup.

A checkpoint is written into `step_<n>.tmp`, the small `trainer_state.json` goes in last, and the
folder is renamed to `step_<n>` only then. A run killed mid-save leaves a `.tmp` folder (ignored and
cleaned up) or, on file systems without atomic rename, a folder without `trainer_state.json`, which
`latest_checkpoint` skips with a warning.
"""

from __future__ import annotations

import json
import logging
import re
import shutil
from dataclasses import asdict, dataclass
from pathlib import Path

logger = logging.getLogger(__name__)

STATE_FILE = "trainer_state.json"
_STEP_DIR = re.compile(r"^step_(\d+)$")


@dataclass
class TrainerState:
    """What the loop needs besides the weights/optimizer to continue exactly."""

    step: int = 0  # optimizer steps taken
    epoch: int = 0
    batches_in_epoch: int = 0  # batches of `epoch` already trained on (this rank's sampler position)
    micro_batches: int = 0  # all batches seen, counting those inside gradient accumulation
    skipped_nonfinite: int = 0  # batches whose loss was NaN/Inf on some rank and were skipped everywhere
    best_wer: float | None = None
    best_step: int | None = None
    audio_seconds: float = 0.0  # training audio seen, summed over ranks

    def save(self, folder: Path) -> None:
        (folder / STATE_FILE).write_text(json.dumps(asdict(self), indent=2))

    @classmethod
    def load(cls, folder: Path) -> TrainerState:
        return cls(**json.loads((folder / STATE_FILE).read_text()))


def checkpoint_dir(root: Path, step: int) -> Path:
    """Folder of the checkpoint at `step`."""
    return root / f"step_{step}"


def is_complete(folder: Path) -> bool:
    """A checkpoint counts only once its state file exists (written last)."""
    return folder.is_dir() and (folder / STATE_FILE).is_file()


def list_checkpoints(root: Path) -> list[Path]:
    """Complete checkpoints under `root`, oldest first; incomplete ones are reported and skipped."""
    found = []
    for child in root.glob("step_*") if root.is_dir() else []:
        m = _STEP_DIR.match(child.name)
        if not m:
            continue
        if is_complete(child):
            found.append((int(m.group(1)), child))
        else:
            logger.warning("ignoring incomplete checkpoint %s (no %s: the save was interrupted)", child, STATE_FILE)
    return [path for _, path in sorted(found)]


def resolve_resume(resume: str | None, root: Path) -> Path | None:
    """`latest` -> newest complete checkpoint under root (None if there is none); a path -> that checkpoint.

    Raises:
        ValueError: a given path is not a complete checkpoint.
    """
    if resume is None:
        return None
    if resume == "latest":
        checkpoints = list_checkpoints(root)
        return checkpoints[-1] if checkpoints else None
    path = Path(resume)
    if not is_complete(path):
        raise ValueError(f"--resume {resume}: not a complete checkpoint (no {STATE_FILE}); use --resume latest")
    return path


def begin_save(root: Path, step: int) -> Path:
    """Fresh temporary folder for the checkpoint at `step` (main process only)."""
    tmp = root / f"step_{step}.tmp"
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    return tmp


def finish_save(tmp: Path, state: TrainerState, keep: int | None) -> Path:
    """Writes the state file last, renames the folder into place, and removes old checkpoints."""
    state.save(tmp)
    final = tmp.with_name(tmp.name.removesuffix(".tmp"))
    if final.exists():
        shutil.rmtree(final)
    tmp.rename(final)
    if keep is not None and keep > 0:
        for old in list_checkpoints(final.parent)[:-keep]:
            shutil.rmtree(old, ignore_errors=True)
    for stale in final.parent.glob("step_*.tmp"):
        shutil.rmtree(stale, ignore_errors=True)
    return final
