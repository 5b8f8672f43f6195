"""train.report_to: TensorBoard by default with the whole config as hparams, the grad norm and dev transcripts;
no tracker at all; a tracker that is not installed refused in one line."""

from __future__ import annotations

import json
import math

import pytest
import yaml

from trainrun import run_train

RUN = ["train.max_steps=2", "train.eval_every=2", "train.log_every=1", "train.eval_samples_logged=2",
       "optim.max_grad_norm=null"]


def test_tensorboard_gets_the_whole_config_the_grad_norm_and_dev_transcripts(synth_corpus, tmp_path):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    run_train(synth_corpus, tmp_path, *RUN, "train.run_name=smoke")
    logdir = tmp_path / "run" / "trackers" / "smoke"
    [hparams_file] = logdir.glob("*/hparams.yml")  # add_hparams writes a sub-run per call
    hparams = yaml.safe_load(hparams_file.read_text())
    assert hparams["optim.lr"] > 0 and hparams["train.max_steps"] == 2 and hparams["data.augment.enabled"] is False
    assert hparams["model.architecture.hidden_size"] == 32 and hparams["train.report_to"] == '["tensorboard"]'
    events = EventAccumulator(str(logdir), size_guidance={"tensors": 0})
    events.Reload()
    norms = [e.value for e in events.Scalars("train/grad_norm")]
    records = [json.loads(line) for line in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    logged = [r["grad_norm"] for r in records if r["kind"] == "train"]
    # not clipped (max_grad_norm null) yet measured: the norm of real gradients, the same in both logs
    assert len(norms) == 2 and all(math.isfinite(n) and n > 0 for n in norms)
    assert norms == pytest.approx(logged, rel=1e-6)  # TensorBoard keeps float32
    [text] = events.Tensors("dev/transcripts/text_summary")
    table = text.tensor_proto.string_val[0].decode()
    assert text.step == 2 and table.startswith("| id | reference | hypothesis |") and table.count("\n") == 3


def test_no_tracker_writes_no_tracker_files(synth_corpus, tmp_path):
    run_train(synth_corpus, tmp_path, *RUN, "train.report_to=[]")
    assert not (tmp_path / "run" / "trackers").exists()
    assert (tmp_path / "run" / "model" / "model.safetensors").is_file()


def test_a_tracker_that_is_not_installed_fails_in_one_line_naming_the_install(synth_corpus, tmp_path):
    proc = run_train(synth_corpus, tmp_path, *RUN, "train.report_to=[tensorboard,wandb]", check=False)
    assert proc.returncode == 2 and "Traceback" not in proc.stderr
    [line] = [line for line in proc.stderr.splitlines() if "wandb" in line]
    assert "`pip install wandb`" in line and "WANDB_MODE=offline" in line
    proc = run_train(synth_corpus, tmp_path, *RUN, "train.report_to=[tensorbord]", check=False)
    assert proc.returncode == 2 and "train.report_to" in proc.stderr and "tensorboard, wandb, mlflow" in proc.stderr
