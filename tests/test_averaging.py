"""Checkpoint averaging on a real run: the exact mean, a directory every reader takes, damage and pickles refused.

The DeepSpeed (ZeRO-2/3) checkpoints are averaged in tests/test_distributed.py, against DDP's.
"""

import json
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from safetensors.numpy import load_file

from asr.averaging import checkpoint_weights, select_checkpoints
from asr.checkpoint import CheckpointError
from trainrun import ROOT, env, max_weight_diff, plant, reseal, run_train

# three checkpoints (steps 1, 2, 3), all kept; the model is exported at the end (no dev evaluation in between)
RUN = ("train.max_steps=3", "train.save_every=1", "train.save_total_limit=null", "train.eval_every=1000",
       "optim.lr=1e-3", "optim.warmup_steps=1")


@pytest.fixture(scope="module")
def run(synth_corpus, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("avg")
    run_train(synth_corpus, out, *RUN)
    return out / "run"


def average(run: Path, out: Path, *which: str) -> subprocess.CompletedProcess:
    cmd = [sys.executable, str(ROOT / "scripts/average_checkpoints.py"), "--run", str(run), *which, "--output", str(out)]
    return subprocess.run(cmd, capture_output=True, text=True, env=env(), timeout=600)


def test_the_average_is_the_mean_of_the_checkpoints_and_loads_everywhere(run, tmp_path, synth_corpus):
    proc = average(run, tmp_path / "avg", "--last", "2")
    assert proc.returncode == 0, proc.stderr[-2000:]
    report = json.loads(proc.stdout.strip().splitlines()[-1])  # after DeepSpeed's import-time notice
    assert report["steps"] == [2, 3]
    a, b = (load_file(str(run / "checkpoints" / f"step_{s}" / "model.safetensors")) for s in (2, 3))
    got = load_file(str(tmp_path / "avg" / "model.safetensors"))
    assert got.keys() == a.keys()
    moved = max(float(np.abs(a[k] - b[k]).max()) for k in a)
    assert moved > 1e-4  # the two checkpoints differ, so the mean is a third set of weights
    assert max(float(np.abs(got[k] - (a[k].astype(np.float64) + b[k]) / 2).max()) for k in a) < 1e-6
    assert report["max_abs_diff"] > 0  # the exported model is step 3's, not the mean
    # the processor and LM-less card came along; the card and metrics say what was averaged
    for name in ("vocab.json", "preprocessor_config.json", "normalizer.json", "train_config.yaml"):
        assert (tmp_path / "avg" / name).read_bytes() == (run / "model" / name).read_bytes(), name
    metrics = json.loads((tmp_path / "avg" / "metrics.json").read_text())
    assert metrics["averaged"]["steps"] == [2, 3] and "wer" not in metrics and "data" in metrics
    assert "mean of the run's checkpoints at steps 2, 3" in (tmp_path / "avg" / "README.md").read_text()
    # an ordinary model directory: eval.py reads it and scores the corpus
    out = tmp_path / "eval"
    proc = subprocess.run([sys.executable, str(ROOT / "scripts/eval.py"), "--model", str(tmp_path / "avg"),
                           "--data", str(synth_corpus / "dev.jsonl"), "--decoder", "greedy", "--bootstrap", "0",
                           "--output", str(out)], capture_output=True, text=True, env=env(), timeout=600)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert "| greedy |" in proc.stdout


def test_the_last_checkpoint_alone_is_the_exported_model(run, tmp_path):
    assert average(run, tmp_path / "one", "--steps", "3").returncode == 0
    assert max_weight_diff(tmp_path / "one", run / "model") == 0.0


def test_a_missing_step_or_too_many_is_one_line_and_writes_nothing(run, tmp_path):
    for which, message in ((["--steps", "2", "7"], "no checkpoint of step(s) [7]"),
                           (["--last", "4"], "cannot average the last 4 checkpoints")):
        proc = average(run, tmp_path / "x", *which)
        assert proc.returncode == 2
        [line] = proc.stderr.strip().splitlines()[-1:]
        assert message in line and "steps [1, 2, 3]" in line, proc.stderr
        assert "Traceback" not in proc.stderr
        assert not (tmp_path / "x").exists()
    with pytest.raises(ValueError, match="not both"):
        select_checkpoints(run, last=1, steps=[1])


def test_a_damaged_checkpoint_stops_the_averaging(run, tmp_path):
    copy = Path(shutil.copytree(run, tmp_path / "run"))
    weights = copy / "checkpoints" / "step_2" / "model.safetensors"
    data = bytearray(weights.read_bytes())
    data[-1] ^= 0xFF  # same size, another hash
    weights.write_bytes(bytes(data))
    proc = average(copy, tmp_path / "avg", "--last", "2")
    assert proc.returncode == 2
    assert "step_2 is damaged (model.safetensors differs from what the save wrote" in proc.stderr
    assert not (tmp_path / "avg").exists()


def test_a_forged_weights_file_is_refused_without_running_it(run, tmp_path):
    checkpoint = Path(shutil.copytree(run / "checkpoints" / "step_2", tmp_path / "step_2"))
    plant(checkpoint / "model.safetensors", tmp_path / "marker")  # a torch pickle where safetensors belong
    reseal(checkpoint)
    with pytest.raises(CheckpointError, match="is not safetensors weights"):
        checkpoint_weights(checkpoint)
    assert not (tmp_path / "marker").exists()
