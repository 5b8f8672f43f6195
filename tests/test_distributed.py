"""Real multi-process training on CPU: DDP, DeepSpeed ZeRO-2/3, two nodes, exact resume after random kills, faults.

Every test launches scripts/train.py with `accelerate launch` (gloo) exactly as a user would.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest

from asr.averaging import checkpoint_weights
from asr.checkpoint import CheckpointError
from asr.model import average_checkpoints
from trainrun import (
    KILLABLE,
    Kill,
    assert_same_weights,
    kill_at_random_moments,
    launch_two_nodes,
    max_weight_diff,
    metrics,
    plant,
    reseal,
    run_train,
)

pytestmark = pytest.mark.slow

# Deterministic batches (ascending length) so that 2 ranks x 1 batch == 1 rank x 2 accumulated batches.
SAME_BATCHES = ["data.shuffle=false", "model.mask_time_prob=0", "model.hidden_dropout=0", "model.attention_dropout=0",
                "train.eval_every=1000", "train.log_every=1"]
# checkpoints at steps 2 and 4, both kept: the DeepSpeed runs' are averaged and compared with DDP's
KEEP_2_AND_4 = ["train.save_every=2", "train.save_total_limit=null"]


@pytest.fixture(scope="module")
def ddp_run(synth_corpus, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("ddp")
    run_train(synth_corpus, out, "train.max_steps=4", *SAME_BATCHES, *KEEP_2_AND_4, kind="ddp2")
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
    assert all(200 < r["rss_mb"] < 64_000 for r in metrics(ddp_run, "train"))  # the fuller rank's, all-reduced (max)


@pytest.mark.parametrize("stage", ["zero2", "zero3", "zero2_offload"])
def test_deepspeed_zero_runs_and_matches_ddp(synth_corpus, tmp_path, ddp_run, stage):
    proc = run_train(synth_corpus, tmp_path, "train.max_steps=4", *SAME_BATCHES, *KEEP_2_AND_4, kind=stage)
    run = tmp_path / "run"
    # really DeepSpeed, not DDP under another name: the engine ran and wrote its partitioned state
    assert "2 processes (DEEPSPEED)" in proc.stderr
    if stage == "zero2_offload":  # the optimizer step ran in DeepSpeed's CPU Adam on the offloaded states
        assert "optimizer DeepSpeedCPUAdam" in proc.stderr
    last = run / "checkpoints" / "step_4"
    assert list(last.rglob("*zero_pp_rank_1*optim_states.pt")), sorted(p.name for p in last.rglob("*"))
    np.testing.assert_allclose([r["loss"] for r in metrics(run, "train")],
                               [r["loss"] for r in metrics(ddp_run, "train")], rtol=1e-4)
    # ZeRO-3 shards the parameters: the exported model must hold the gathered full weights
    assert max_weight_diff(run / "model", ddp_run / "model") < 1e-4
    # averaging consolidates the shards (read weights-only): the last alone is the exported model, and the
    # mean of steps 2 and 4 is DDP's mean of its plain weights files
    average_checkpoints(run, tmp_path / "last", last=1)
    assert max_weight_diff(tmp_path / "last", run / "model") < 1e-6
    average_checkpoints(run, tmp_path / "avg", steps=[2, 4])
    average_checkpoints(ddp_run, tmp_path / "ddp_avg", steps=[2, 4])
    assert max_weight_diff(tmp_path / "avg", tmp_path / "ddp_avg") < 1e-4
    assert max_weight_diff(tmp_path / "avg", run / "model") > 1e-4  # step 2 moved it


def test_layer_decay_under_zero3_stopped_and_resumed_matches_ddp(synth_corpus, tmp_path):
    """optim.layer_decay makes one param-group pair per layer: ZeRO-3 partitions each group and saves and
    restores each group's state; a ZeRO-3 run stopped at step 2 and resumed ends where DDP does."""
    decay = [*SAME_BATCHES, "train.max_steps=4", "optim.layer_decay=0.5", "train.save_every=1"]
    ddp, zero = tmp_path / "ddp", tmp_path / "zero3"
    run_train(synth_corpus, ddp, *decay, kind="ddp2")
    run_train(synth_corpus, zero, *decay, "train.stop_at=2", kind="zero3")
    proc = run_train(synth_corpus, zero, *decay, kind="zero3", resume="latest")
    assert "at step 2" in proc.stderr
    np.testing.assert_allclose([r["loss"] for r in metrics(zero / "run", "train")],
                               [r["loss"] for r in metrics(ddp / "run", "train")], rtol=1e-4)
    for run in (ddp, zero):  # model/ is the best dev step: the last one here, or the comparison says little
        assert json.loads((run / "run" / "model" / "metrics.json").read_text())["step"] == 4
    assert max_weight_diff(zero / "run" / "model", ddp / "run" / "model") < 1e-4
    # the logged rate is the head's (the peak); the schedule's warmup and decay scale every group alike
    lrs = [r["lr"] for r in metrics(ddp / "run", "train")]
    assert lrs == [r["lr"] for r in metrics(zero / "run", "train")] and max(lrs) > 0


def test_two_nodes_on_loopback(synth_corpus, tmp_path, ddp_run):
    results = launch_two_nodes(synth_corpus, tmp_path, "train.max_steps=4", *SAME_BATCHES)
    for r in results:
        assert r.returncode == 0, r.stderr[-4000:]
    run = tmp_path / "run"
    np.testing.assert_allclose([r["loss"] for r in metrics(run, "train")],
                               [r["loss"] for r in metrics(ddp_run, "train")], rtol=1e-4)


# Exact resume: a run SIGKILLed at seeded-random moments (about half inside a checkpoint save), each time
# relaunched with --resume latest, ends with the weights of a run never interrupted. 10 kills for the two
# common launch modes, 3 for the others: every relaunch of a 2-process job costs its start-up (~20 s), and
# the slow suite must fit CI's time with the rest.
KILLS = {"single": 10, "ddp2": 10}
OTHER_KILLS = 3


def kill_steps(kills: int) -> int:
    return 3 * kills + 2  # a kill moves the run 1-3 steps on: the last one still lands before the end


def resume_args(kills: int) -> list[str]:
    """Dropout and SpecAugment on, shuffled batches, a DataLoader worker: everything a resume must restore.
    A checkpoint every step (KILLABLE), so that kills often land in a save."""
    return [*KILLABLE, f"train.max_steps={kill_steps(kills)}", "train.eval_every=1000", "model.mask_time_prob=0.2",
            "model.hidden_dropout=0.1", "data.num_workers=1", "data.max_batch_seconds=10"]


def assert_resumed_exactly(full: Path, killed: Path, kills: list[Kill], planned: int) -> None:
    """The killed-and-resumed run ended bit-identical to the full one, and every step it ran matched."""
    assert len(kills) == planned
    assert any(k.in_save for k in kills), f"no kill landed inside a save: {kills}"
    assert kills[-1].resumes_from < kill_steps(planned), "the run ended before its last kill: it proves nothing"
    assert_same_weights(full / "model", killed / "model")
    full_losses = {r["step"]: r["loss"] for r in metrics(full, "train")}
    # every attempt at a step, by a run killed later or not, trained on the same batch from the same state
    redone = metrics(killed, "train")
    assert len(redone) > kill_steps(planned), "no step was trained twice: no kill lost work"
    for r in redone:
        assert r["loss"] == pytest.approx(full_losses[r["step"]], rel=1e-6), r


def kill_and_resume_ddp2(corpus: Path, tmp_path: Path, args: list[str], planned: int) -> tuple[Path, Path]:
    """A 2-process run uninterrupted and one killed `planned` times, resumed to its end: returns (full, killed)."""
    full, killed = tmp_path / "full", tmp_path / "killed"
    run_train(corpus, full, *args, kind="ddp2")
    kills = kill_at_random_moments(corpus, killed, *args, kind="ddp2", kills=planned, max_steps=kill_steps(planned))
    run_train(corpus, killed, *args, kind="ddp2", resume="latest")
    assert_resumed_exactly(full / "run", killed / "run", kills, planned)
    return full, killed


# zero2_offload was inexact until 2026-12-05: after a load the LR scheduler stepped param groups the offloaded
# optimizer no longer read, and its C++ bias correction restarted from a pow (asr.checkpoint._load_deepspeed).
@pytest.mark.parametrize("kind", ["single", "ddp2", "zero2", "zero2_offload", "zero3"])
def test_run_killed_at_random_moments_resumes_to_identical_weights(synth_corpus, tmp_path, kind):
    full, killed = tmp_path / "full", tmp_path / "killed"
    planned = KILLS.get(kind, OTHER_KILLS)
    args = resume_args(planned)
    run_train(synth_corpus, full, *args, kind=kind)
    kills = kill_at_random_moments(synth_corpus, killed, *args, kind=kind, kills=planned,
                                   max_steps=kill_steps(planned))
    saved = kills[-1].resumes_from
    # a save killed half-way through on a file system without atomic rename: a folder without its state file
    broken = killed / "run" / "checkpoints" / "step_999"
    broken.mkdir()
    (broken / "model.safetensors").write_bytes(b"partial")
    proc = run_train(synth_corpus, killed, *args, kind=kind, resume="latest")
    resumed = [line for line in proc.stderr.splitlines() if "resumed from" in line]
    assert f"resumed from {killed / 'run' / 'checkpoints' / f'step_{saved}'} " in "".join(resumed), (kills, resumed)
    assert "ignoring incomplete checkpoint" in proc.stderr
    assert "memory allocator: jemalloc" in proc.stderr  # the resumed process re-executed itself under it
    assert_resumed_exactly(full / "run", killed / "run", kills, planned)


def test_run_killed_across_evaluations_resumes_to_identical_weights_and_scores(synth_corpus, tmp_path):
    """Kills before, inside and after evaluations (one per step): the dev scores and weights match too."""
    planned = OTHER_KILLS
    full, killed = kill_and_resume_ddp2(synth_corpus, tmp_path, [*resume_args(planned), "train.eval_every=1"], planned)
    # model/ holds the best model, which may be an early one: the last checkpoint's weights must match as well
    last = f"checkpoints/step_{kill_steps(planned)}/model.safetensors"
    assert_same_weights(full / "run" / last, killed / "run" / last)
    full_evals = {r["step"]: r for r in metrics(full / "run", "eval")}
    evals = metrics(killed / "run", "eval")
    assert len({r["step"] for r in evals}) < len(evals), "no evaluation was run again after a kill"
    for r in evals:
        expected = full_evals[r["step"]]
        assert (r["wer"], r["cer"], r["n"]) == (expected["wer"], expected["cer"], expected["n"]), r
        assert r["loss"] == pytest.approx(expected["loss"], rel=1e-6), r


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
        with pytest.raises(CheckpointError, match="refused"):  # averaging reads the shards the same way
            checkpoint_weights(checkpoint)
        assert not (out / "marker").exists(), f"{name}: averaging ran the checkpoint's pickle"


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
    proc = run_train(synth_corpus, tmp_path, "train.max_steps=50", "train.log_every=1", "faults.raise_at=2",
                     "faults.rank=1", kind="ddp2", check=False)
    assert proc.returncode != 0
    assert "injected fault at micro-batch 2" in proc.stderr
    # promptly: the healthy rank trained no step past the fault (it did not go on, or wait, alone) ...
    assert all(r["step"] < 2 for r in metrics(tmp_path / "run", "train"))
    assert not (tmp_path / "run" / "checkpoints").exists()
    # ... and no process of the job outlived the launcher (none left hanging in a collective)
    import psutil

    def of_this_job(p: psutil.Process) -> bool:
        try:
            return any(str(tmp_path) in arg for arg in p.cmdline())
        except psutil.Error:
            return False

    assert not [p.pid for p in psutil.process_iter() if of_this_job(p)]


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


def test_streaming_run_on_two_ranks_killed_at_random_moments_resumes_to_identical_weights(
        synth_corpus, parquet_corpus, tmp_path):
    args = [f"data.train.path={parquet_corpus}", *STREAM, *resume_args(OTHER_KILLS)]  # its save/eval/log settings win
    kill_and_resume_ddp2(synth_corpus, tmp_path, args, OTHER_KILLS)


def test_dev_scores_on_two_ranks_equal_one_rank_on_an_odd_sized_dev_set(synth_corpus, tmp_path):
    """5 dev utterances over 2 ranks: the gather must count each exactly once (no padding duplicate, none dropped),
    so WER/CER/n equal the 1-process run's at the same weights (same global batches, as in the DDP test above).
    tiny_cpu.yaml's group-norm encoder has no attention mask and reads the zero padding, so this holds only because
    dev batches do not depend on the process count (asr.train.EvalShards); before, CER was 1.2624 on 1 process vs
    1.2805 on 2."""
    rows = [json.loads(line) for split in ("dev", "test")
            for line in (synth_corpus / f"{split}.jsonl").read_text().splitlines()]
    dev = tmp_path / "dev5.jsonl"
    for row in rows:  # absolute paths: the file is not beside the corpus
        row["audio_filepath"] = str(synth_corpus / row["audio_filepath"])
    dev.write_text("".join(json.dumps(row) + "\n" for row in rows[:5]))
    common = ["train.max_steps=2", *SAME_BATCHES, "train.eval_every=1", f"data.dev.path={dev}"]
    run_train(synth_corpus, tmp_path / "two", *common, kind="ddp2")
    run_train(synth_corpus, tmp_path / "one", *common, "optim.grad_accum_steps=2")
    two, one = metrics(tmp_path / "two" / "run", "eval"), metrics(tmp_path / "one" / "run", "eval")
    assert [r["step"] for r in two] == [r["step"] for r in one] == [1, 2]
    assert max_weight_diff(tmp_path / "two" / "run" / "model", tmp_path / "one" / "run" / "model") < 1e-4
    for a, b in zip(two, one):
        assert a["n"] == b["n"] == 5
        assert (a["wer"], a["cer"]) == (b["wer"], b["cer"])
        assert a["loss"] == pytest.approx(b["loss"], rel=1e-4)
