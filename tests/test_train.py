"""The training script run for real: smoke run, exported model in the transformers pipeline, bad configs."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from asr.audio import load_audio

from trainrun import run_train


@pytest.fixture()
def corpus(synth_corpus) -> Path:
    return synth_corpus


def read_metrics(run: Path) -> list[dict]:
    return [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]


def test_two_step_smoke_run_exports_a_pipeline_model(corpus, tmp_path):
    run_train(corpus, tmp_path, "train.max_steps=2", "train.eval_every=2", "train.save_every=1", "train.log_every=1")
    run = tmp_path / "run"
    records = read_metrics(run)
    train = [r for r in records if r["kind"] == "train"]
    assert [r["step"] for r in train] == [1, 2]
    assert all(np.isfinite(r["loss"]) and r["loss"] > 0 for r in train)
    evals = [r for r in records if r["kind"] == "eval"]
    assert evals and evals[-1]["n"] == 4 and 0 <= evals[-1]["cer"]
    # save_total_limit=2 keeps the last two checkpoints, each complete
    assert sorted(p.name for p in (run / "checkpoints").iterdir()) == ["step_1", "step_2"]
    assert (run / "checkpoints" / "step_2" / "trainer_state.json").exists()
    assert json.loads((run / "checkpoints" / "step_2" / "trainer_state.json").read_text())["step"] == 2
    for name in ("config.json", "model.safetensors", "vocab.json", "preprocessor_config.json",
                 "normalizer.json", "README.md", "metrics.json", "train_config.yaml"):
        assert (run / "model" / name).exists(), name
    assert (run / "curves.png").stat().st_size > 1000
    # TensorBoard through accelerate's tracker: the loss curve is readable back
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    events = EventAccumulator(str(run / "trackers" / "run"))  # trackers/<run name: the output folder's>
    events.Reload()
    assert [e.step for e in events.Scalars("train/loss")] == [1, 2]

    from transformers import pipeline

    asr = pipeline("automatic-speech-recognition", model=str(run / "model"), device="cpu")
    wav = sorted((corpus / "audio" / "test").glob("*.wav"))[0]
    result = asr(load_audio(wav))  # an untrained model says little, but the pipeline must run end to end
    assert isinstance(result["text"], str)
    result_from_path = asr(str(wav))
    assert result_from_path["text"] == result["text"]


@pytest.mark.parametrize(
    "overrides, message",
    [
        (["optim.lrr=1"], "unknown key(s) lrr in optim"),
        (["data.train.text_column=sentence"], "text column 'sentence' not found"),
        (["data.max_batch_seconds=1"], "raise max_batch_seconds"),
        (["data.train.path=/nonexistent/train.jsonl"], "does not exist"),
    ],
)
def test_bad_configs_fail_before_training_with_one_line(corpus, tmp_path, overrides, message):
    proc = run_train(corpus, tmp_path, "train.max_steps=1", *overrides, check=False)
    assert proc.returncode == 2, proc.stderr[-2000:]
    errors = [line for line in proc.stderr.splitlines() if message in line]
    assert errors, proc.stderr[-2000:]
    assert "Traceback" not in proc.stderr


@pytest.mark.slow
def test_tiny_model_learns_its_corpus(trained_model):
    """The fixture's run (tiny wav2vec2 from scratch, a few minutes on 2 cores): CER falls far below its start."""
    records = read_metrics(trained_model.parent)
    evals = [r for r in records if r["kind"] == "eval"]
    train = [r for r in records if r["kind"] == "train"]
    assert evals[0]["cer"] >= 0.95  # blank output at first
    assert evals[-1]["cer"] < 0.3 * evals[0]["cer"]
    assert train[-1]["loss"] < 0.5 * train[0]["loss"]
    metrics = json.loads((trained_model / "metrics.json").read_text())
    assert metrics["wer"] == pytest.approx(min(r["wer"] for r in evals))  # model/ holds the best by dev WER


def test_bf16_mixed_precision_runs_to_the_device_boundary(corpus, tmp_path):
    """bf16 autocast works on CPU too: the mixed-precision path (float32 CTC loss) runs for real here."""
    run_train(corpus, tmp_path, "train.max_steps=2", "train.log_every=1", "train.mixed_precision=bf16")
    train = [r for r in read_metrics(tmp_path / "run") if r["kind"] == "train"]
    assert len(train) == 2 and all(np.isfinite(r["loss"]) and r["loss"] > 0 for r in train)
