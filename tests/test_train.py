"""The training script run for real: smoke run, exported model in the transformers pipeline, bad configs."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from asr.audio import load_audio
from asr.corpus import CorpusOptions, make_corpus

ROOT = Path(__file__).resolve().parents[1]

# A model small enough that a step takes well under a second on one core.
TINY = [
    "model.architecture.hidden_size=32",
    "model.architecture.num_hidden_layers=2",
    "model.architecture.num_attention_heads=2",
    "model.architecture.intermediate_size=64",
    "model.architecture.conv_dim=[32,32,32,32,32,32,32]",
    "model.architecture.num_conv_pos_embeddings=16",
    "model.architecture.num_conv_pos_embedding_groups=4",
    "data.max_batch_seconds=20",
    "data.num_workers=0",
    "optim.warmup_steps=2",
]


@pytest.fixture(scope="module")
def corpus(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("corpus")
    make_corpus(CorpusOptions(train=16, dev=4, test=4, seed=1, engines=("espeak-ng", "flite")), out,
                progress=False, workers=2)
    return out


def run_train(corpus: Path, out: Path, *overrides: str, resume: str | None = None,
              launcher: list[str] | None = None, check: bool = True) -> subprocess.CompletedProcess:
    """Runs scripts/train.py in a fresh process (as a user would) with the tiny config."""
    args = [
        *(launcher or [sys.executable]), str(ROOT / "scripts" / "train.py"),
        "--config", str(ROOT / "configs/train/tiny_cpu.yaml"),
        f"data.train.path={corpus / 'train.jsonl'}", f"data.dev.path={corpus / 'dev.jsonl'}",
        f"data.cache_dir={out / 'cache'}", f"train.output_dir={out / 'run'}", *TINY, *overrides,
    ]
    if resume:
        args += ["--resume", resume]
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1", "TOKENIZERS_PARALLELISM": "false"}
    proc = subprocess.run(args, capture_output=True, text=True, env=env, cwd=ROOT, timeout=600)
    if check and proc.returncode != 0:
        raise AssertionError(f"train.py exited {proc.returncode}\n{proc.stdout[-3000:]}\n{proc.stderr[-5000:]}")
    return proc


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
