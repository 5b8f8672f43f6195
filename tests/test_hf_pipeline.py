"""The LM is part of the model for Hugging Face users: after build_lm.py and eval.py --tune, transformers'
ASR pipeline decodes a model directory with its KenLM ("ctc_with_lm") and says what eval.py's beam column
says; the card's usage code runs and prints eval.py's greedy and beam transcripts.

Real pieces throughout: the trained test model, lmplz/build_binary on a small text, the scripts as
subprocesses. eval.py runs one utterance per forward pass (--max-batch-seconds 0), as the pipeline does, so
both decode the same log-probs (batched, a group-norm model's log-probs move with the padding).
"""

from __future__ import annotations

import contextlib
import io
import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from asr.audio import load_audio
from asr.model_card import card_metadata
from lm.build import KENLM_BIN_DIR

ROOT = Path(__file__).resolve().parents[1]
NUM_UTTERANCES = 6  # a few utterances: the pipeline decodes one at a time

pytestmark = [pytest.mark.slow,
              pytest.mark.skipif(not (KENLM_BIN_DIR / "lmplz").is_file(), reason="run `bash scripts/setup.sh`")]


def _run(*args: str) -> subprocess.CompletedProcess:
    """A script of this checkout, to completion."""
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1"}
    proc = subprocess.run([sys.executable, *args], capture_output=True, text=True, env=env, cwd=ROOT, timeout=1800)
    assert proc.returncode == 0, f"{args[0]} exited {proc.returncode}\n{proc.stdout[-2000:]}\n{proc.stderr[-4000:]}"
    return proc


def _manifest(corpus: Path, out: Path, count: int) -> Path:
    """The first `count` utterances of the corpus's train manifest, audio paths made absolute."""
    rows = [json.loads(line) for line in (corpus / "train.jsonl").read_text().splitlines()[:count]]
    for row in rows:
        row["audio_filepath"] = str(corpus / row["audio_filepath"])
    out.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return out


def _asr_pipeline(model_dir: Path):
    from transformers import pipeline

    return pipeline("automatic-speech-recognition", model=str(model_dir), device="cpu")


@pytest.fixture(scope="module")
def tuned_model(trained_model, tmp_path_factory) -> dict:
    """The trained model copied, its greedy pipeline output, then build_lm.py beside it and eval.py --tune."""
    work = tmp_path_factory.mktemp("hf_pipeline")
    model = work / "model"
    shutil.copytree(trained_model, model)
    corpus = trained_model.parent.parent / "corpus"
    manifest = _manifest(corpus, work / "few.jsonl", NUM_UTTERANCES)
    audio = {json.loads(line)["id"]: json.loads(line)["audio_filepath"] for line in manifest.open()}

    greedy_pipe = _asr_pipeline(model)  # no LM yet
    greedy = {i: greedy_pipe(load_audio(path))["text"] for i, path in audio.items()}
    greedy_type = greedy_pipe.type
    del greedy_pipe

    # a small LM text: the train sentences and 500 other corpus sentences
    text = [json.loads(line)["text"] for line in (corpus / "train.jsonl").open()]
    text += (corpus / "lm.txt").read_text().splitlines()[:500]
    (work / "lm.txt").write_text("\n".join(text) + "\n")
    _run("scripts/build_lm.py", "--model", str(model), "--text", str(work / "lm.txt"), "--order", "3")
    card_after_build = (model / "README.md").read_text()
    # a grid without the defaults (0.5, 1), so the pipeline can only agree by reading the tuned values
    _run("scripts/eval.py", "--model", str(model), "--data", str(manifest), "--output", str(work / "eval"),
         "--cache-dir", str(work / "cache"), "--max-batch-seconds", "0", "--check-padding", "0", "--tune",
         "--alphas", "0.3", "0.8", "--betas", "0", "2", "--nbest", "0")
    rows = {r["id"]: r for r in map(json.loads, (work / "eval" / "utterances.jsonl").read_text().splitlines())}
    results = json.loads((work / "eval" / "results.json").read_text())
    return {"model": model, "audio": audio, "greedy_pipeline": greedy, "greedy_type": greedy_type, "rows": rows,
            "results": results, "card_after_build": card_after_build, "manifest": manifest}


def test_without_lm_the_pipeline_is_greedy_and_says_what_eval_greedy_says(tuned_model):
    assert tuned_model["greedy_type"] == "ctc"
    assert tuned_model["greedy_pipeline"] == {i: r["greedy"] for i, r in tuned_model["rows"].items()}


def test_with_the_tuned_lm_the_pipeline_says_what_eval_beam_says(tuned_model):
    model = tuned_model["model"]
    attrs = json.loads((model / "language_model" / "attrs.json").read_text())
    assert (attrs["alpha"], attrs["beta"]) != (0.5, 1.0)  # tuned values, which the pipeline reads from attrs.json
    asr = _asr_pipeline(model)
    assert asr.type == "ctc_with_lm"
    said = {i: asr(load_audio(path))["text"] for i, path in tuned_model["audio"].items()}
    beam = {i: r["beam"] for i, r in tuned_model["rows"].items()}
    assert said == beam
    assert beam != {i: r["greedy"] for i, r in tuned_model["rows"].items()}  # the LM changed some transcripts
    # our own loaders still read the directory whose files now name Wav2Vec2ProcessorWithLM
    from asr.inference import load_model

    assert type(load_model(model).model).__name__ == "Wav2Vec2ForCTC"
    assert "local_files_only" not in json.loads((model / "tokenizer_config.json").read_text())


def test_card_follows_build_and_tuning_and_its_usage_code_runs(tuned_model):
    model, results = tuned_model["model"], tuned_model["results"]
    assert "KenLM 3-gram over words" in tuned_model["card_after_build"]
    assert "defaults until `scripts/eval.py --tune`" in tuned_model["card_after_build"]
    card = (model / "README.md").read_text()
    entries = card_metadata(card)["model-index"][0]["results"]
    named = {(e["metrics"][0]["name"], e["dataset"].get("split")): e for e in entries}
    assert ("WER (greedy)", "dev") in named  # training's dev row stays
    tuned = json.loads((model / "decoder.json").read_text())["tuned"]
    for decoder, title in (("beam", "pyctcdecode"), ("flashlight", "flashlight-text")):
        entry = named[(f"WER (KenLM beam search ({title}))", "tuning")]
        assert entry["metrics"][0]["value"] == round(100 * tuned["wer"][decoder], 2)
        assert entry["metrics"][1]["value"] == round(100 * tuned["cer"][decoder], 2)
    evaluated = [e for e in entries if e["dataset"]["name"] == str(tuned_model["manifest"]) and not
                 e["dataset"].get("split")]
    by_decoder = {e["metrics"][0]["args"]["decoder"]: e["metrics"][0]["value"] for e in evaluated}
    assert by_decoder == {r["decoder"]: round(100 * r["wer"], 2) for r in results["results"]}
    assert "tuned by scripts/eval.py --tune" in card

    # the card's second code block (greedy, then pyctcdecode without the pipeline) on one utterance
    utt, path = next(iter(tuned_model["audio"].items()))
    code = re.findall(r"```python\n(.*?)```", card, re.S)[1]
    code = code.replace("MODEL_DIR", str(model)).replace("audio.wav", path)
    printed = io.StringIO()
    with contextlib.redirect_stdout(printed):
        exec(compile(code, "model card", "exec"), {})
    assert printed.getvalue().splitlines() == [tuned_model["rows"][utt]["greedy"], tuned_model["rows"][utt]["beam"]]


def test_filterbank_model_with_lm_in_the_pipeline_says_what_eval_beam_says(synth_corpus, tmp_path):
    """wav2vec2-bert: Wav2Vec2ProcessorWithLM takes its SeamlessM4T feature extractor, so the pipeline decodes
    with the LM here too (an untrained conformer: its words are noise, the two decoders' agreement is the point)."""
    import torch
    from transformers import Wav2Vec2BertConfig, Wav2Vec2BertForCTC

    from asr.text import TextNormalizer, build_vocab, make_processor, save_processor

    texts = [json.loads(line)["text"] for line in (synth_corpus / "train.jsonl").open()]
    vocab = build_vocab(texts)
    model_dir = tmp_path / "bert"
    torch.manual_seed(0)
    config = Wav2Vec2BertConfig(hidden_size=32, num_hidden_layers=1, num_attention_heads=2, intermediate_size=32,
                                vocab_size=len(vocab), pad_token_id=0, add_adapter=False,
                                conv_depthwise_kernel_size=5, layerdrop=0.0)
    Wav2Vec2BertForCTC(config).save_pretrained(model_dir)
    save_processor(make_processor(vocab, return_attention_mask=True, filterbank=True), TextNormalizer(), model_dir)
    (tmp_path / "lm.txt").write_text("\n".join(texts) + "\n")
    _run("scripts/build_lm.py", "--model", str(model_dir), "--text", str(tmp_path / "lm.txt"), "--order", "2",
         "--discount-fallback")
    manifest = _manifest(synth_corpus, tmp_path / "few.jsonl", 3)
    _run("scripts/eval.py", "--model", str(model_dir), "--data", str(manifest), "--output", str(tmp_path / "eval"),
         "--cache-dir", str(tmp_path / "cache"), "--max-batch-seconds", "0", "--check-padding", "0",
         "--decoder", "beam")
    rows = [json.loads(line) for line in (tmp_path / "eval" / "utterances.jsonl").read_text().splitlines()]
    audio = {json.loads(line)["id"]: json.loads(line)["audio_filepath"] for line in manifest.open()}
    asr = _asr_pipeline(model_dir)
    assert asr.type == "ctc_with_lm" and type(asr.feature_extractor).__name__ == "SeamlessM4TFeatureExtractor"
    assert [asr(load_audio(audio[r["id"]]))["text"] for r in rows] == [r["beam"] for r in rows]
