"""Publishing on the Hugging Face Hub (asr.hub, publish_model.py --push, train.push_to_hub), up to the network.

No hub is reachable here, so the tests go as far as a real upload can: offline mode refuses at once (before any
copying or training) with a line naming HF_HUB_OFFLINE, and online against an endpoint that refuses
connections, huggingface_hub's real client is called and its failure comes back as one line, exit code 1.
"""

from __future__ import annotations

import subprocess
import sys

import pytest

from trainrun import ROOT, env, free_port, run_train

BASE = ROOT / "assets" / "base_model"


def publish(*args: str, online: bool = False) -> subprocess.CompletedProcess:
    run_env = env()
    if online:  # the real client, pointed at a port nothing listens on
        run_env.update(HF_HUB_OFFLINE="0", HF_ENDPOINT=f"http://127.0.0.1:{free_port()}", HF_TOKEN="hf_test")
    return subprocess.run([sys.executable, str(ROOT / "scripts/publish_model.py"), *args], capture_output=True,
                          text=True, env=run_env, cwd=ROOT, timeout=300)


def test_push_offline_fails_at_once_naming_hf_hub_offline(tmp_path):
    proc = publish("--model", str(BASE), "--output", str(tmp_path / "out"), "--push", "me/asr-demo")
    assert proc.returncode == 2 and "Traceback" not in proc.stderr
    assert proc.stderr.strip().count("\n") == 0 and "HF_HUB_OFFLINE=1 is set" in proc.stderr
    assert not (tmp_path / "out").exists()  # refused before copying anything


@pytest.mark.parametrize("repo", ["no-owner", "a/b/c", "me/bad name"])
def test_a_malformed_repo_id_is_refused_before_any_work(tmp_path, repo):
    proc = publish("--model", str(BASE), "--output", str(tmp_path / "out"), "--push", repo, online=True)
    assert proc.returncode == 2 and "is not a hub repo id" in proc.stderr and "Traceback" not in proc.stderr
    assert not (tmp_path / "out").exists()


def test_push_that_cannot_reach_the_hub_is_one_line_after_the_local_copy(tmp_path):
    proc = publish("--model", str(BASE), "--output", str(tmp_path / "out"), "--push", "me/asr-demo", online=True)
    assert proc.returncode == 1 and "Traceback" not in proc.stderr, proc.stderr[-2000:]
    errors = [line for line in proc.stderr.splitlines() if line.startswith("publish_model:")]
    assert len(errors) == 1 and "could not reach the hub to push to me/asr-demo" in errors[0]
    assert (tmp_path / "out" / "model.safetensors").is_file()  # the local copy is done and kept


def test_push_needs_a_model_directory_and_something_to_do(tmp_path):
    (tmp_path / "notes").mkdir()
    proc = publish("--model", str(tmp_path / "notes"), "--push", "me/asr-demo", online=True)
    assert proc.returncode == 2 and "is not a model directory (no config.json)" in proc.stderr
    proc = publish("--model", str(BASE))
    assert proc.returncode == 2 and "nothing to do" in proc.stderr


def test_train_push_to_hub_offline_is_refused_before_training(synth_corpus, tmp_path):
    proc = run_train(synth_corpus, tmp_path, "train.max_steps=1", "train.push_to_hub=me/asr-demo", check=False)
    assert proc.returncode == 2 and "Traceback" not in proc.stderr
    assert [line for line in proc.stderr.splitlines() if "HF_HUB_OFFLINE=1 is set" in line]
    assert not (tmp_path / "run" / "checkpoints").exists()


def test_push_uploads_the_directory_without_hidden_leftovers(tmp_path):
    """What goes up: every file of the model directory (LM and card included), not interrupted writes."""
    from asr import hub

    model = tmp_path / "model"
    (model / "language_model").mkdir(parents=True)
    for name in ("config.json", "README.md", "alphabet.json", "language_model/lm.bin", ".model.tmp123", "x.tmp4"):
        (model / name).write_text("{}")
    from huggingface_hub.utils import filter_repo_objects

    kept = sorted(filter_repo_objects([str(p.relative_to(model)) for p in model.rglob("*") if p.is_file()],
                                      ignore_patterns=hub.IGNORED))
    assert kept == ["README.md", "alphabet.json", "config.json", "language_model/lm.bin"]
