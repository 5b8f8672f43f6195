"""Atomic checkpoints: incomplete ones are never resumed from; rotation keeps the newest; no file runs code."""

import json
import shutil
from pathlib import Path

import pytest
import torch

from asr.checkpoint import (
    CheckpointError, TrainerState, begin_save, finish_save, list_checkpoints, resolve_resume, verify_checkpoint,
)

from trainrun import max_weight_diff, plant, reseal, run_train


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
    reseal(checkpoint)  # as a forger would: the manifest guards against damage, not against an attacker
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


# ---------------------------------------------------------------------- damaged checkpoints: verified, skipped


def truncate(path: Path) -> None:
    """Cuts a file to half its size, as a full disk or a lost write leaves it."""
    data = path.read_bytes()
    assert data, path
    path.write_bytes(data[: len(data) // 2])


def copy_run(full_run: Path, to: Path) -> Path:
    return Path(shutil.copytree(full_run, to / "run" / "checkpoints"))


CHECKPOINT_FILES = ["model.safetensors", "optimizer.pt", "scheduler.json", "sampler.json", "trainer_state.json",
                    "rng_state_0.json", "train_config.yaml"]


def test_every_file_of_a_checkpoint_is_in_its_manifest(full_run):
    manifest = json.loads((full_run / "step_4" / "manifest.json").read_text())
    assert sorted(manifest) == sorted(CHECKPOINT_FILES)
    for name, entry in manifest.items():
        assert entry["size"] == (full_run / "step_4" / name).stat().st_size > 0


@pytest.mark.parametrize("name", CHECKPOINT_FILES)
def test_latest_falls_back_past_a_truncated_file(full_run, tmp_path, caplog, name):
    root = copy_run(full_run, tmp_path)
    truncate(root / "step_4" / name)
    assert resolve_resume("latest", root) == root / "step_2"
    warnings = [r.getMessage() for r in caplog.records if r.levelname == "WARNING"]
    assert warnings == [f"checkpoint step_4 ({name} has {(root / 'step_4' / name).stat().st_size} bytes, "
                        f"the save wrote {(full_run / 'step_4' / name).stat().st_size}) is damaged: "
                        "resuming from step_2 instead"]


def test_a_changed_file_of_the_same_size_is_caught_by_its_hash(full_run, tmp_path, caplog):
    root = copy_run(full_run, tmp_path)
    path = root / "step_4" / "model.safetensors"
    data = bytearray(path.read_bytes())
    data[-1] ^= 0xFF  # one flipped byte in the last weight: loadable, silently wrong
    path.write_bytes(bytes(data))
    assert resolve_resume("latest", root) == root / "step_2"
    assert "model.safetensors differs from what the save wrote (SHA-256 mismatch)" in caplog.text


def test_an_explicit_damaged_checkpoint_or_all_damaged_is_refused(full_run, tmp_path):
    root = copy_run(full_run, tmp_path)
    (root / "step_4" / "optimizer.pt").unlink()
    with pytest.raises(CheckpointError, match=r"step_4: the checkpoint is damaged \(optimizer.pt is missing\)"):
        resolve_resume(str(root / "step_4"), root)
    truncate(root / "step_2" / "sampler.json")
    with pytest.raises(CheckpointError, match=r"every checkpoint under .* is damaged: checkpoints step_4 "
                                              r"\(optimizer.pt is missing\), step_2 \(sampler.json has"):
        resolve_resume("latest", root)


@pytest.mark.parametrize("name", ["model.safetensors", "rng_state_0.json"])
def test_resume_latest_past_a_truncated_checkpoint_is_exact(synth_corpus, full_run, tmp_path, name):
    """The run resumes from step 2, says so in one line, and ends with the uninterrupted run's weights."""
    root = copy_run(full_run, tmp_path)
    truncate(root / "step_4" / name)
    proc = run_train(synth_corpus, tmp_path, *RUN, resume="latest")
    assert "Traceback" not in proc.stderr
    lines = [line for line in proc.stderr.splitlines() if "is damaged" in line]
    assert len(lines) == 1 and lines[0].endswith("resuming from step_2 instead"), proc.stderr[-3000:]
    assert f"resumed from {root / 'step_2'} at step 2" in proc.stderr
    assert max_weight_diff(full_run / "step_4", root / "step_4") == 0.0
    assert verify_checkpoint(root / "step_4") is None


def test_a_run_stopped_at_a_step_and_resumed_equals_the_uninterrupted_run(synth_corpus, tmp_path):
    """train.stop_at splits one schedule into stages (sessions): the first stage ends at step 3 with its
    LR still on the 6-step schedule; `--resume latest` without it runs on to weights equal to one run."""
    run = ["train.max_steps=6", "train.save_every=100", "train.eval_every=100", "train.log_every=1"]
    full, staged = tmp_path / "full", tmp_path / "staged"
    run_train(synth_corpus, full, *run)
    run_train(synth_corpus, staged, *run, "train.stop_at=3")
    assert [p.name for p in (staged / "run" / "checkpoints").glob("step_*")] == ["step_3"]
    lrs = {r["step"]: r["lr"] for r in map(json.loads, (full / "run" / "metrics.jsonl").read_text().splitlines())
           if r["kind"] == "train"}
    staged_train = [r for r in map(json.loads, (staged / "run" / "metrics.jsonl").read_text().splitlines())
                    if r["kind"] == "train"]
    assert [r["step"] for r in staged_train] == [1, 2, 3]
    assert [r["lr"] for r in staged_train] == [lrs[1], lrs[2], lrs[3]] and lrs[3] > lrs[6]  # mid-schedule, not decayed
    proc = run_train(synth_corpus, staged, *run, resume="latest")
    assert "at step 3" in proc.stderr
    assert max_weight_diff(full / "run" / "checkpoints" / "step_6", staged / "run" / "checkpoints" / "step_6") == 0.0
    # a finished run (or a first stage already passed) re-run with --resume latest does nothing, not even an eval
    before = (staged / "run" / "metrics.jsonl").read_text()
    proc = run_train(synth_corpus, staged, *run, "train.stop_at=3", resume="latest")
    assert "nothing to train" in proc.stderr and (staged / "run" / "metrics.jsonl").read_text() == before


def test_best_metric_chooses_model_and_a_change_on_resume_chooses_anew(synth_corpus, tmp_path):
    """train.best_metric=loss exports the lowest dev loss; resumed with `last`, the run says so and ends with
    the last step in model/."""
    run = ["train.max_steps=5", "train.save_every=100", "train.eval_every=1", "train.log_every=1"]
    out = tmp_path / "run"
    run_train(synth_corpus, tmp_path, *run, "train.best_metric=loss", "train.stop_at=3")
    evals = [r for r in map(json.loads, (out / "metrics.jsonl").read_text().splitlines()) if r["kind"] == "eval"]
    lowest = min(evals, key=lambda r: (r["loss"], r["step"]))
    state = json.loads((out / "checkpoints" / "step_3" / "trainer_state.json").read_text())
    assert [r["step"] for r in evals] == [1, 2, 3]
    assert (state["best_metric"], state["best_step"], state["best_score"]) == ("loss", lowest["step"], lowest["loss"])
    assert json.loads((out / "model" / "metrics.json").read_text())["step"] == lowest["step"]
    proc = run_train(synth_corpus, tmp_path, *run, "train.best_metric=last", resume="latest")
    assert f"train.best_metric is now last, but model/ (step {lowest['step']}) was chosen by loss" in proc.stderr
    assert f"{out / 'model'} holds step 5 (the last evaluated step)" in proc.stderr
    assert json.loads((out / "model" / "metrics.json").read_text())["step"] == 5


def test_a_state_written_before_best_metric_reads_its_wer_as_the_score(tmp_path):
    (tmp_path / "trainer_state.json").write_text(json.dumps({"step": 3, "best_wer": 0.5, "best_step": 2}))
    state = TrainerState.load(tmp_path)
    assert (state.best_score, state.best_step, state.best_metric) == (0.5, 2, None)
    (tmp_path / "trainer_state.json").write_text(json.dumps({"step": 3, "best_metric": "bleu"}))
    with pytest.raises(CheckpointError, match="best_metric: one of wer, cer, loss, last"):
        TrainerState.load(tmp_path)
    from typing import get_args, get_type_hints

    from asr.constants import BEST_METRICS
    from asr.train import LoopConfig

    assert get_args(get_type_hints(LoopConfig)["best_metric"]) == BEST_METRICS  # the config offers what loads


@pytest.mark.parametrize("value", ["0", "7"])
def test_stop_at_outside_the_schedule_fails_in_one_line(synth_corpus, tmp_path, value):
    proc = run_train(synth_corpus, tmp_path, "train.max_steps=6", f"train.stop_at={value}", check=False)
    assert proc.returncode == 2 and "train.stop_at" in proc.stderr and "Traceback" not in proc.stderr
