"""Atomic checkpoints: incomplete ones are never resumed from; rotation keeps the newest; no file runs code."""

import shutil
from pathlib import Path

import pytest
import torch

from asr.checkpoint import (
    TrainerState, begin_save, finish_save, list_checkpoints, resolve_resume,
)

from trainrun import max_weight_diff, plant, run_train


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


# ---------------------------------------------------------------------- crafted pickles on resume


def test_the_planted_pickle_runs_code_when_unpickled_unsafely(tmp_path):
    """The payload is live: what Accelerate's load_state did to custom_checkpoint_0.pkl creates the marker."""
    plant(tmp_path / "custom_checkpoint_0.pkl", tmp_path / "marker")
    torch.load(tmp_path / "custom_checkpoint_0.pkl", weights_only=False)
    assert (tmp_path / "marker").exists()


# Dropout and SpecAugment on: a resume that restored the RNG wrongly would not give identical weights.
RUN = ["train.max_steps=4", "train.save_every=2", "train.eval_every=1000", "train.log_every=1",
       "model.mask_time_prob=0.2", "model.hidden_dropout=0.1", "data.max_batch_seconds=10"]


@pytest.fixture(scope="module")
def full_run(synth_corpus, tmp_path_factory) -> Path:
    """An uninterrupted 4-step run with checkpoints at steps 2 and 4."""
    out = tmp_path_factory.mktemp("full")
    run_train(synth_corpus, out, *RUN)
    return out / "run" / "checkpoints"


def copy_checkpoint(full_run: Path, to: Path) -> Path:
    return Path(shutil.copytree(full_run / "step_2", to / "step_2"))


@pytest.mark.parametrize("name", ["model.safetensors", "optimizer.pt", "scheduler.json", "rng_state_0.json",
                                  "sampler.json", "trainer_state.json"])
def test_resume_refuses_a_crafted_pickle_in_any_checkpoint_file(synth_corpus, full_run, tmp_path, name):
    checkpoint = copy_checkpoint(full_run, tmp_path / "untrusted")
    marker = tmp_path / "marker"
    plant(checkpoint / name, marker)
    proc = run_train(synth_corpus, tmp_path, *RUN, resume=str(checkpoint), check=False)
    assert not marker.exists(), "the checkpoint's pickle ran"
    assert proc.returncode == 2, proc.stderr[-3000:]
    errors = [line for line in proc.stderr.splitlines() if f"checkpoint file {checkpoint / name}" in line]
    assert errors, proc.stderr[-3000:]
    assert "Traceback" not in proc.stderr
    assert not list((tmp_path / "run" / "checkpoints").glob("step_*")), "it trained after refusing"


def test_resume_never_opens_accelerates_pickles_and_stays_exact(synth_corpus, full_run, tmp_path):
    """The files Accelerate's load_state unpickled are not read at all; the resumed run equals the uninterrupted one."""
    checkpoint = copy_checkpoint(full_run, tmp_path / "untrusted")
    markers = []
    for name in ("custom_checkpoint_0.pkl", "random_states_0.pkl", "scheduler.bin"):
        markers.append(tmp_path / f"{name}.ran")
        plant(checkpoint / name, markers[-1])
    proc = run_train(synth_corpus, tmp_path, *RUN, resume=str(checkpoint))
    assert not [m for m in markers if m.exists()], "a checkpoint pickle ran"
    assert "not reading custom_checkpoint_0.pkl, random_states_0.pkl, scheduler.bin" in proc.stderr
    assert f"resumed from {checkpoint} at step 2" in proc.stderr
    assert max_weight_diff(full_run / "step_4", tmp_path / "run" / "checkpoints" / "step_4") == 0.0
