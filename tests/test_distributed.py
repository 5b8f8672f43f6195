"""Real multi-process training on CPU: DDP, DeepSpeed ZeRO-2/3, two nodes, exact resume after a kill, faults.

Every test launches scripts/train.py with `accelerate launch` (gloo) exactly as a user would.
"""

from __future__ import annotations

import json
import shutil
import time
from pathlib import Path

import numpy as np
import pytest

from trainrun import launch_two_nodes, max_weight_diff, metrics, plant, reseal, run_train, run_until_checkpoint_then_kill

pytestmark = pytest.mark.slow

# Deterministic batches (ascending length) so that 2 ranks x 1 batch == 1 rank x 2 accumulated batches.
SAME_BATCHES = ["data.shuffle=false", "model.mask_time_prob=0", "model.hidden_dropout=0", "model.attention_dropout=0",
                "train.eval_every=1000", "train.log_every=1"]


@pytest.fixture(scope="module")
def ddp_run(synth_corpus, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("ddp")
    run_train(synth_corpus, out, "train.max_steps=4", *SAME_BATCHES, kind="ddp2")
    return out / "run"


def test_ddp_two_processes_matches_one_process_with_same_global_batch(synth_corpus, tmp_path, ddp_run):
    run_train(synth_corpus, tmp_path, "train.max_steps=4", "optim.grad_accum_steps=2", *SAME_BATCHES)
    single = tmp_path / "run"
    ddp_losses = [r["loss"] for r in metrics(ddp_run, "train")]
    single_losses = [r["loss"] for r in metrics(single, "train")]
    assert len(ddp_losses) == len(single_losses) == 4
    np.testing.assert_allclose(ddp_losses, single_losses, rtol=1e-4)
    assert ddp_losses[-1] < ddp_losses[0]
    assert max_weight_diff(ddp_run / "model", single / "model") < 1e-4


@pytest.mark.parametrize("stage", ["zero2", "zero3", "zero2_offload"])
def test_deepspeed_zero_runs_and_matches_ddp(synth_corpus, tmp_path, ddp_run, stage):
    proc = run_train(synth_corpus, tmp_path, "train.max_steps=4", *SAME_BATCHES, kind=stage)
    run = tmp_path / "run"
    # really DeepSpeed, not DDP under another name: the engine ran and wrote its partitioned state
    assert "2 processes (DEEPSPEED)" in proc.stderr
    if stage == "zero2_offload":  # the optimizer step ran in DeepSpeed's CPU Adam on the offloaded states
        assert "optimizer DeepSpeedCPUAdam" in proc.stderr
    [last] = sorted((run / "checkpoints").glob("step_*"))
    assert list(last.rglob("*zero_pp_rank_1*optim_states.pt")), sorted(p.name for p in last.rglob("*"))
    np.testing.assert_allclose([r["loss"] for r in metrics(run, "train")],
                               [r["loss"] for r in metrics(ddp_run, "train")], rtol=1e-4)
    # ZeRO-3 shards the parameters: the exported model must hold the gathered full weights
    assert max_weight_diff(run / "model", ddp_run / "model") < 1e-4


def test_two_nodes_on_loopback(synth_corpus, tmp_path, ddp_run):
    results = launch_two_nodes(synth_corpus, tmp_path, "train.max_steps=4", *SAME_BATCHES)
    for r in results:
        assert r.returncode == 0, r.stderr[-4000:]
    run = tmp_path / "run"
    np.testing.assert_allclose([r["loss"] for r in metrics(run, "train")],
                               [r["loss"] for r in metrics(ddp_run, "train")], rtol=1e-4)


# Dropout and SpecAugment on, shuffled batches, a DataLoader worker: everything a resume must restore.
RESUME = ["train.max_steps=10", "train.save_every=2", "train.eval_every=1000", "model.mask_time_prob=0.2",
          "model.hidden_dropout=0.1", "data.num_workers=1", "data.max_batch_seconds=10", "train.log_every=1"]


@pytest.mark.parametrize("kind", ["single", "ddp2", "zero2"])
def test_killed_run_resumes_to_identical_weights(synth_corpus, tmp_path, kind):
    full, killed = tmp_path / "full", tmp_path / "killed"
    run_train(synth_corpus, full, *RESUME, kind=kind)
    saved = run_until_checkpoint_then_kill(synth_corpus, killed, *RESUME, kind=kind, step=4)
    assert saved < 10, "the run finished before it was killed; the test proves nothing"
    # a save killed half-way through: the folder exists but its state file does not
    broken = killed / "run" / "checkpoints" / "step_999"
    broken.mkdir()
    (broken / "model.safetensors").write_bytes(b"partial")
    proc = run_train(synth_corpus, killed, *RESUME, kind=kind, resume="latest")
    assert f"resumed from {killed / 'run' / 'checkpoints' / f'step_{saved}'}" in proc.stderr
    assert "ignoring incomplete checkpoint" in proc.stderr
    assert "memory allocator: jemalloc" in proc.stderr  # the resumed process re-executed itself under it
    assert max_weight_diff(full / "run" / "model", killed / "run" / "model") == 0.0
    full_losses = {r["step"]: r["loss"] for r in metrics(full / "run", "train")}
    resumed_losses = {r["step"]: r["loss"] for r in metrics(killed / "run", "train")}
    for step in range(saved + 1, 11):
        assert resumed_losses[step] == pytest.approx(full_losses[step], rel=1e-6)


def test_deepspeed_resume_refuses_a_crafted_pickle_in_its_shards(synth_corpus, tmp_path):
    """DeepSpeed's own loader would unpickle these with weights_only=False; the resume reads them without."""
    run_train(synth_corpus, tmp_path / "trusted", "train.max_steps=2", "train.save_every=2", "train.eval_every=1000",
              kind="zero2")
    trusted = tmp_path / "trusted" / "run" / "checkpoints" / "step_2"
    # the model states are read by every rank, each optimizer shard by its own rank only
    for name in ("pytorch_model/mp_rank_00_model_states.pt", "pytorch_model/zero_pp_rank_1_mp_rank_00_optim_states.pt"):
        out = tmp_path / Path(name).stem
        checkpoint = Path(shutil.copytree(trusted, out / "untrusted" / "step_2"))
        plant(checkpoint / name, out / "marker")
        reseal(checkpoint)  # the manifest catches damage, not forgery: the reader must refuse it
        proc = run_train(synth_corpus, out, "train.max_steps=4", "train.eval_every=1000", kind="zero2",
                         resume=str(checkpoint), check=False)
        assert not (out / "marker").exists(), f"{name}: the checkpoint's pickle ran"
        assert proc.returncode != 0
        assert f"checkpoint file {checkpoint / name} refused" in proc.stderr, proc.stderr[-3000:]


def test_nan_batch_is_skipped_on_every_rank(synth_corpus, tmp_path):
    run_train(synth_corpus, tmp_path, "train.max_steps=4", "train.log_every=1", "faults.nan_at=[2]",
              "faults.rank=1", kind="ddp2")
    train = metrics(tmp_path / "run", "train")
    assert [r["step"] for r in train] == [1, 2, 3, 4]
    assert all(np.isfinite(r["loss"]) for r in train)
    assert train[-1]["skipped"] == 1
    state = json.loads((tmp_path / "run/checkpoints/step_4/trainer_state.json").read_text())
    assert state["skipped_nonfinite"] == 1


def test_a_rank_that_raises_ends_the_job_promptly(synth_corpus, tmp_path):
    start = time.time()
    proc = run_train(synth_corpus, tmp_path, "train.max_steps=50", "faults.raise_at=2", "faults.rank=1",
                     kind="ddp2", check=False, timeout=300)
    assert proc.returncode != 0
    assert "injected fault at micro-batch 2" in proc.stderr
    assert time.time() - start < 120


def test_layerdrop_with_ddp_and_gradient_checkpointing(synth_corpus, tmp_path):
    # Ranks drop different layers, so DDP must be told some parameters may get no gradient
    # (find_unused_parameters, switched on by the loop when layerdrop > 0).
    run_train(synth_corpus, tmp_path, "train.max_steps=4", "train.log_every=1", "model.layerdrop=0.5",
              "model.gradient_checkpointing=true", kind="ddp2")
    train = metrics(tmp_path / "run", "train")
    assert len(train) == 4 and all(np.isfinite(r["loss"]) for r in train)


@pytest.fixture(scope="module")
def parquet_corpus(synth_corpus, tmp_path_factory) -> Path:
    """The synthetic corpus as hub-style parquet shards (audio bytes embedded), for streaming."""
    from asr.layouts import export_layout

    out = tmp_path_factory.mktemp("parquet")
    export_layout(synth_corpus, "parquet", out, splits=("train",))
    return out


STREAM = ["data.train.kind=hf", "data.train.streaming=true", "data.train.split=train", "train.log_every=1",
          "train.save_every=2", "train.eval_every=1000"]


def test_streaming_training_on_two_ranks(synth_corpus, parquet_corpus, tmp_path):
    run_train(synth_corpus, tmp_path, "train.max_steps=4", f"data.train.path={parquet_corpus}", *STREAM, kind="ddp2")
    train = metrics(tmp_path / "run", "train")
    assert [r["step"] for r in train] == [1, 2, 3, 4] and all(np.isfinite(r["loss"]) for r in train)
    assert train[-1]["loss"] < train[0]["loss"]


def test_streaming_run_resumes_to_identical_weights(synth_corpus, parquet_corpus, tmp_path):
    args = ["train.max_steps=10", f"data.train.path={parquet_corpus}", *STREAM, "model.hidden_dropout=0.1"]
    run_train(synth_corpus, tmp_path / "full", *args)
    saved = run_until_checkpoint_then_kill(synth_corpus, tmp_path / "killed", *args, kind="single", step=4)
    assert saved < 10
    run_train(synth_corpus, tmp_path / "killed", *args, resume="latest")
    assert max_weight_diff(tmp_path / "full/run/model", tmp_path / "killed/run/model") == 0.0
