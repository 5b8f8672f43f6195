"""The filterbank front end (wav2vec2-bert on SeamlessM4T log-mel features) through training, for real.

Frame counts must agree three ways (our `frames_fn_for`, `output_frames`, and the model's own attention
mask and logits), or the CTC loss and every timestamp would be off; then a tiny conformer trains
through scripts/train.py like the wav2vec2 models: loss falls, the export loads in a pipeline, and
(slow) 2-process DDP / ZeRO-2 / ZeRO-3 match one process and a killed run resumes exactly.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from asr.collate import FilterbankCollator, make_collator
from asr.model import FBANK_HOP, filterbank_output_frames, frames_fn_for, output_frames, takes_filterbank
from asr.text import TextNormalizer, build_vocab, load_processor, make_processor, save_processor

from trainrun import ROOT, env, max_weight_diff, metrics, run_train, run_until_checkpoint_then_kill

# A conformer small enough for a fast step; the whole architecture replaces tiny_cpu.yaml's wav2vec2.
TINY_BERT = ("model.architecture={model_type: wav2vec2-bert, hidden_size: 32, num_hidden_layers: 2, "
             "num_attention_heads: 2, intermediate_size: 64, feature_projection_input_dim: 160, "
             "conv_depthwise_kernel_size: 5}")


def _tiny_model(add_adapter: bool):
    from transformers import Wav2Vec2BertConfig, Wav2Vec2BertForCTC

    config = Wav2Vec2BertConfig(hidden_size=32, num_hidden_layers=1, num_attention_heads=2, intermediate_size=32,
                                vocab_size=8, pad_token_id=0, add_adapter=add_adapter, output_hidden_size=32,
                                conv_depthwise_kernel_size=5, layerdrop=0.0)
    return Wav2Vec2BertForCTC(config).eval()


@pytest.mark.parametrize("add_adapter", [False, True])
def test_frame_counts_agree_with_the_model_and_its_feature_extractor(add_adapter):
    model = _tiny_model(add_adapter)
    assert takes_filterbank(model.config)
    frames_fn = frames_fn_for(model.config)
    processor = make_processor(build_vocab(["ab"]), return_attention_mask=True, filterbank=True)
    rng = np.random.default_rng(0)
    lengths = [400, 719, 720, 16000, 16159, 16160, 33333]
    audio = [rng.standard_normal(n).astype(np.float32) for n in lengths]
    batch = FilterbankCollator(processor.feature_extractor)([{"input_values": a} for a in audio])
    with torch.no_grad():
        mask_frames = model._get_feat_extract_output_lengths(batch["attention_mask"].sum(-1))
    expected = [frames_fn(n) for n in lengths]
    assert expected == mask_frames.tolist() == output_frames(model, torch.tensor(lengths)).tolist()
    # one frame per 20 ms without an adapter (the wav2vec2 rate), half that with the default adapter
    assert frames_fn(16000) == (49 if not add_adapter else 25)
    assert filterbank_output_frames(FBANK_HOP) == 0  # shorter than one 25 ms window: no frame at all


def test_filterbank_processor_round_trips_and_picks_its_collator(tmp_path: Path):
    vocab = build_vocab(["hello world"])
    processor = make_processor(vocab, return_attention_mask=False, filterbank=True)
    save_processor(processor, TextNormalizer(), tmp_path)
    loaded, _ = load_processor(tmp_path)
    assert type(loaded).__name__ == "Wav2Vec2BertProcessor"
    assert type(loaded.feature_extractor).__name__ == "SeamlessM4TFeatureExtractor"
    assert loaded.tokenizer.get_vocab() == processor.tokenizer.get_vocab()
    collator = make_collator(loaded, return_attention_mask=False)
    items = [{"input_values": np.zeros(16000, np.float32) + 0.01 * np.sin(np.arange(16000)), "labels": [1, 2, 3]},
             {"input_values": np.ones(8000, np.float32) * 0.01, "labels": [4]}]
    batch = collator(items)
    assert batch["input_features"].shape == (2, 49, 160) and batch["input_features"].dtype == torch.float32
    assert batch["attention_mask"].sum(-1).tolist() == [49, 24]
    assert batch["input_lengths"].tolist() == [16000, 8000]
    assert batch["labels"].tolist() == [[1, 2, 3], [4, -100, -100]]
    waveform = make_collator(make_processor(vocab, return_attention_mask=False), return_attention_mask=False)
    assert "input_values" in waveform(items)


@pytest.fixture(scope="module")
def bert_run(synth_corpus, tmp_path_factory) -> Path:
    """A tiny conformer trained for 24 steps on the synthetic corpus (~20 s), evaluated once at the end."""
    out = tmp_path_factory.mktemp("bert")
    run_train(synth_corpus, out, TINY_BERT, "train.max_steps=24", "train.eval_every=24", "train.log_every=1",
              "optim.lr=3e-3")
    return out / "run"


def test_tiny_conformer_trains_and_exports_a_pipeline_model(synth_corpus, bert_run):
    train = metrics(bert_run, "train")
    assert len(train) == 24 and all(np.isfinite(r["loss"]) for r in train)
    # measured: ~7.3 over the first 3 steps, ~4.5 over the last 3 (the blank plateau is ~3); 0.7 leaves margin
    assert np.mean([r["loss"] for r in train[-3:]]) < 0.7 * np.mean([r["loss"] for r in train[:3]])
    [last_eval] = metrics(bert_run, "eval")
    assert last_eval["n"] == 4 and last_eval["cpu_s"] > 0
    config = json.loads((bert_run / "model" / "config.json").read_text())
    assert config["model_type"] == "wav2vec2-bert"
    from transformers import pipeline

    asr = pipeline("automatic-speech-recognition", model=str(bert_run / "model"), device="cpu")
    assert type(asr.model).__name__ == "Wav2Vec2BertForCTC"
    wav = sorted((synth_corpus / "audio" / "test").glob("*.wav"))[0]
    assert isinstance(asr(str(wav))["text"], str)


def _script(*args: str) -> subprocess.CompletedProcess:
    proc = subprocess.run([sys.executable, *args], capture_output=True, text=True, env=env(), cwd=ROOT, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return proc


def test_eval_reads_a_filterbank_model_as_training_scored_it(synth_corpus, bert_run, tmp_path):
    """eval.py's inference path (batched by length, features per row) gives training's dev CER/WER."""
    _script("scripts/eval.py", "--model", str(bert_run / "model"), "--data", str(synth_corpus / "dev.jsonl"),
            "--decoder", "greedy", "--output", str(tmp_path / "eval"))
    [row] = json.loads((tmp_path / "eval" / "results.json").read_text())["results"]
    [last_eval] = metrics(bert_run, "eval")
    assert row["utterances"] == last_eval["n"] == 4
    assert row["cer"] == pytest.approx(last_eval["cer"], abs=1e-9)
    assert row["wer"] == pytest.approx(last_eval["wer"], abs=1e-9)


def test_transcribe_export_and_publish_a_filterbank_model(synth_corpus, bert_run, tmp_path):
    """ONNX export passes its parity gate, transcribes like PyTorch (chunked long file included) with
    timestamps at the model's 20 ms frames, and publish_model keeps the logits."""
    from asr.audio import load_audio
    from asr.inference import load_acoustic_model

    import soundfile as sf

    # 24 steps leave the trained model at the blank plateau (it says nothing on long audio); the same
    # architecture freshly initialised emits characters all over, which is what timestamps need here.
    import shutil

    import torch
    from transformers import AutoConfig, AutoModelForCTC

    model = tmp_path / "model"
    shutil.copytree(bert_run / "model", model)
    torch.manual_seed(0)
    AutoModelForCTC.from_config(AutoConfig.from_pretrained(model)).save_pretrained(model)
    assert load_acoustic_model(model).seconds_per_frame == pytest.approx(0.02)
    audio_dir = tmp_path / "audio"
    audio_dir.mkdir()
    wavs = sorted((synth_corpus / "audio").rglob("*.wav"))
    joined = np.concatenate([load_audio(w) for w in wavs])  # ~50 s: longer than --chunk-seconds 8
    sf.write(audio_dir / "long.wav", joined, 16000)
    sf.write(audio_dir / "short.wav", load_audio(wavs[0]), 16000)
    _script("scripts/export.py", "--model", str(model), "--output", str(tmp_path / "onnx"))
    assert load_acoustic_model(tmp_path / "onnx", "onnx").seconds_per_frame == pytest.approx(0.02)
    rows = {}
    for backend, path in (("torch", model), ("onnx", tmp_path / "onnx")):
        out = tmp_path / f"tr_{backend}"
        _script("scripts/transcribe.py", str(audio_dir), "--model", str(path), "--backend", backend,
                "--decoder", "greedy", "--chunk-seconds", "8", "--overlap-seconds", "2", "--segmenter", "grid",
                "--output", str(out))
        rows[backend] = {r["path"]: r for r in map(json.loads, (out / "transcripts.jsonl").read_text().splitlines())}
    assert set(rows["torch"]) == {"long.wav", "short.wav"}
    for name, row in rows["torch"].items():
        assert row["text"] and row["text"] == rows["onnx"][name]["text"], name
        ends = [w["end"] for w in row["words"]]
        assert ends == sorted(ends) and ends[-1] <= row["duration"] + 1e-6
    # the long file's words spread over its whole length: times are in 20 ms frames, not another rate
    assert rows["torch"]["long.wav"]["words"][-1]["end"] > 0.8 * len(joined) / 16000
    _script("scripts/publish_model.py", "--model", str(model), "--output", str(tmp_path / "published"))
    published = AutoModelForCTC.from_pretrained(tmp_path / "published")
    assert type(published).__name__ == "Wav2Vec2BertForCTC"
    assert (tmp_path / "published" / "model.safetensors").stat().st_size < 0.6 * (model / "model.safetensors").stat().st_size


def test_feature_cache_is_refused_for_a_filterbank_model(synth_corpus, tmp_path):
    proc = run_train(synth_corpus, tmp_path, TINY_BERT, "train.max_steps=1", "data.feature_cache.enabled=true",
                     "model.freeze_feature_encoder=true", check=False)
    assert proc.returncode == 2
    assert "filterbank models (wav2vec2-bert) have none; set data.feature_cache.enabled=false" in proc.stderr
    assert "Traceback" not in proc.stderr


# The conformer's convolution module has a dropout of its own (0.1 by default): off too, or the ranks'
# RNG streams differ from one process's.
SAME_BATCHES = ["data.shuffle=false", "model.mask_time_prob=0", "model.hidden_dropout=0", "model.attention_dropout=0",
                "model.extra={conformer_conv_dropout: 0.0}", "train.eval_every=1000", "train.log_every=1",
                "train.max_steps=4"]


@pytest.mark.slow
def test_filterbank_model_under_ddp_and_deepspeed_matches_one_process(synth_corpus, tmp_path):
    run_train(synth_corpus, tmp_path / "one", TINY_BERT, *SAME_BATCHES, "optim.grad_accum_steps=2")
    one = [r["loss"] for r in metrics(tmp_path / "one" / "run", "train")]
    assert len(one) == 4 and one[-1] < one[0]
    for kind in ("ddp2", "zero2", "zero3"):
        run_train(synth_corpus, tmp_path / kind, TINY_BERT, *SAME_BATCHES, kind=kind)
        losses = [r["loss"] for r in metrics(tmp_path / kind / "run", "train")]
        np.testing.assert_allclose(losses, one, rtol=1e-4, err_msg=kind)
        assert max_weight_diff(tmp_path / kind / "run" / "model", tmp_path / "one" / "run" / "model") < 1e-4, kind


RESUME = ["train.max_steps=8", "train.save_every=2", "train.eval_every=1000", "model.mask_time_prob=0.2",
          "model.hidden_dropout=0.1", "data.num_workers=1", "data.max_batch_seconds=10", "train.log_every=1"]


@pytest.mark.slow
def test_killed_filterbank_run_resumes_to_identical_weights(synth_corpus, tmp_path):
    full, killed = tmp_path / "full", tmp_path / "killed"
    run_train(synth_corpus, full, TINY_BERT, *RESUME, kind="ddp2")
    saved = run_until_checkpoint_then_kill(synth_corpus, killed, TINY_BERT, *RESUME, kind="ddp2", step=4)
    assert saved < 8, "the run finished before it was killed; the test proves nothing"
    run_train(synth_corpus, killed, TINY_BERT, *RESUME, kind="ddp2", resume="latest")
    assert max_weight_diff(full / "run" / "model", killed / "run" / "model") == 0.0


def test_fast_relative_key_attention_equals_transformers_own():
    """The cheaper relative-position bias (asr.model.use_fast_relative_key_attention) gives transformers' logits and
    gradients, with distances clipped on both sides and a padded batch."""
    from transformers import Wav2Vec2BertConfig, Wav2Vec2BertForCTC
    from transformers.models.wav2vec2_bert import modeling_wav2vec2_bert as w2v_bert

    from asr.model import REPLACED, use_fast_relative_key_attention

    use_fast_relative_key_attention()
    fast, original = w2v_bert._apply_relative_key_position_encoding, REPLACED["relative_key"]
    assert fast is not original
    torch.manual_seed(0)
    config = Wav2Vec2BertConfig(hidden_size=32, num_hidden_layers=2, num_attention_heads=2, intermediate_size=32,
                                vocab_size=8, pad_token_id=0, conv_depthwise_kernel_size=5, layerdrop=0.0,
                                position_embeddings_type="relative_key", left_max_position_embeddings=5,
                                right_max_position_embeddings=2, mask_time_prob=0.0)
    model = Wav2Vec2BertForCTC(config).eval()
    features = torch.randn(3, 23, 160)
    mask = torch.ones(3, 23, dtype=torch.long)
    mask[1, 17:] = 0
    mask[2, 9:] = 0
    labels = torch.tensor([[1, 2, 3], [4, 5, -100], [6, -100, -100]])
    results = []
    try:
        for function in (original, fast):
            w2v_bert._apply_relative_key_position_encoding = function
            model.zero_grad()
            out = model(input_features=features, attention_mask=mask, labels=labels)
            out.loss.backward()
            results.append((out.logits.detach(), model.wav2vec2_bert.encoder.layers[0].self_attn.distance_embedding
                            .weight.grad.clone()))
    finally:
        w2v_bert._apply_relative_key_position_encoding = fast
    (logits_a, grad_a), (logits_b, grad_b) = results
    torch.testing.assert_close(logits_b, logits_a, rtol=1e-6, atol=1e-6)
    assert grad_a.abs().sum() > 0  # the embedding is used and trained
    torch.testing.assert_close(grad_b, grad_a, rtol=1e-5, atol=1e-6)
