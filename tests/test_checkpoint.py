"""Atomic checkpoints: incomplete ones are never resumed from; rotation keeps the newest."""

import pytest

from asr.checkpoint import (
    TrainerState, begin_save, finish_save, list_checkpoints, resolve_resume,
)


def make(root, step, keep=None):
    tmp = begin_save(root, step)
    (tmp / "weights.bin").write_bytes(b"x" * 10)
    return finish_save(tmp, TrainerState(step=step), keep)


def test_latest_skips_half_written(tmp_path, caplog):
    make(tmp_path, 10)
    make(tmp_path, 20)
    # a save killed after writing weights but before the state file
    broken = tmp_path / "step_30"
    broken.mkdir()
    (broken / "weights.bin").write_bytes(b"partial")
    # and one killed while still in its temporary folder
    (tmp_path / "step_40.tmp").mkdir()
    assert resolve_resume("latest", tmp_path).name == "step_20"
    assert "incomplete checkpoint" in caplog.text
    assert TrainerState.load(resolve_resume("latest", tmp_path)).step == 20


def test_rotation_and_cleanup(tmp_path):
    for step in (1, 2, 3, 4):
        make(tmp_path, step, keep=2)
    assert [p.name for p in list_checkpoints(tmp_path)] == ["step_3", "step_4"]
    assert not list(tmp_path.glob("*.tmp"))


def test_resume_none_and_missing(tmp_path):
    assert resolve_resume(None, tmp_path) is None
    assert resolve_resume("latest", tmp_path) is None
    with pytest.raises(ValueError, match="not a complete checkpoint"):
        resolve_resume(str(tmp_path / "step_5"), tmp_path)
