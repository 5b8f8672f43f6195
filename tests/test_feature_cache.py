"""asr.feature_cache: cached conv features train exactly like the audio, on disk, refused where they cannot work.

The library tests build tiny models in-process (a second or two each); the training tests run
scripts/train.py for real on the synthetic corpus (about 10 s a run), the 2-process one is `slow`.
"""

from __future__ import annotations

import copy
import json
import logging
from pathlib import Path

import numpy as np
import pytest
import torch

from asr.collate import CTCCollator
from asr.config import ConfigError
from asr.data import prepare_split
from asr.datasets import SpeechDataset
from asr.feature_cache import (
    CachedFeatureEncoder,
    FeatureCacheConfig,
    FeatureCollator,
    check_feature_cache,
    check_model_matches,
    encode_audio,
    encoder_fingerprint,
    estimate_bytes,
    prepare_feature_cache,
    use_cached_features,
)
from asr.filters import FilterConfig
from asr.model import ModelConfig, build_model, frames_fn_for
from asr.sources import SourceConfig, load_source
from asr.text import TextNormalizer, build_vocab
from asr.train import forward_loss

from trainrun import metrics, run_train

VOCAB = {"[PAD]": 0, "[UNK]": 1, "|": 2, **{c: i + 3 for i, c in enumerate("abcdefghij")}}
ARCH = {"model_type": "wav2vec2", "hidden_size": 32, "num_hidden_layers": 2, "num_attention_heads": 2,
        "intermediate_size": 64, "conv_dim": [32] * 7, "num_conv_pos_embeddings": 16,
        "num_conv_pos_embedding_groups": 4}
LAYER_NORM = {"feat_extract_norm": "layer", "do_stable_layer_norm": True}  # takes an attention mask (XLS-R style)
GROUP_NORM = {"feat_extract_norm": "group", "do_stable_layer_norm": False}  # no mask (wav2vec2-base style)


def tiny_model(norm: dict, seed: int = 0, **kw):
    """A frozen-encoder tiny CTC model with SpecAugment and dropout on (their RNG use is part of the test)."""
    torch.manual_seed(seed)
    cfg = ModelConfig(architecture={**ARCH, **norm}, mask_time_prob=0.3, mask_time_length=2, hidden_dropout=0.1,
                      attention_dropout=0.1, **kw)
    return build_model(cfg, VOCAB, pad_token_id=0)


def utterances(lengths, seed=0) -> list[dict]:
    rng = np.random.default_rng(seed)
    return [{"input_values": rng.standard_normal(n).astype(np.float32), "labels": list(rng.integers(3, 13, 4)),
             "id": f"u{i}"} for i, n in enumerate(lengths)]


def cached_items(model, items) -> list[dict]:
    return [{"features": encode_audio(model, it["input_values"]), "samples": len(it["input_values"]),
             "labels": it["labels"], "id": it["id"]} for it in items]


def loss_and_grads(model, batch, seed=1) -> tuple[float, dict[str, torch.Tensor]]:
    """One training forward/backward from the same torch and numpy RNG state (SpecAugment draws from numpy)."""
    model.train()
    model.zero_grad(set_to_none=True)
    torch.manual_seed(seed)
    np.random.seed(seed)
    loss, _, _ = forward_loss(model, model, batch, torch.device("cpu"))
    loss.backward()
    return loss.item(), {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}


# ------------------------------------------------------------------------------------ model and batches
@pytest.mark.parametrize("norm, mask, lengths", [
    (LAYER_NORM, True, (16000, 12345, 9001)),  # padded batch: exact, the mask hides the padding
    (GROUP_NORM, False, (12000, 12000, 12000)),  # group norm sees padding, so only unpadded batches are exact
])
def test_cached_batch_trains_like_the_audio_batch(norm, mask, lengths):
    model = tiny_model(norm)
    cached = copy.deepcopy(model)
    use_cached_features(cached)
    items = utterances(lengths)
    audio_loss, audio_grads = loss_and_grads(model, CTCCollator(return_attention_mask=mask)(items))
    cached_loss, cached_grads = loss_and_grads(cached, FeatureCollator(return_attention_mask=mask)(cached_items(model,
                                                                                                               items)))
    assert abs(audio_loss - cached_loss) <= 1e-5
    assert audio_grads.keys() == cached_grads.keys() and not any("feature_extractor" in k for k in audio_grads)
    for name, grad in audio_grads.items():
        torch.testing.assert_close(cached_grads[name], grad, atol=1e-5, rtol=1e-4, msg=name)


def test_feature_batch_has_the_audio_batch_shapes_and_masks():
    model = tiny_model(LAYER_NORM)
    items = utterances((16000, 12345, 400))
    audio = CTCCollator(return_attention_mask=True)(items)
    feats = FeatureCollator(return_attention_mask=True)(cached_items(model, items))
    frames = frames_fn_for(model.config)
    assert feats["input_values"].shape == (3, 32, frames(16000))  # [B, C, frames of the padded audio]
    assert torch.equal(feats["attention_mask"], audio["attention_mask"])
    assert torch.equal(feats["labels"], audio["labels"]) and torch.equal(feats["input_lengths"], audio["input_lengths"])
    assert feats["input_values"][2, :, frames(400):].abs().sum() == 0  # zero padding after the short item
    assert "attention_mask" not in FeatureCollator(return_attention_mask=False)(cached_items(model, items))


def test_cached_encoder_keeps_weights_names_and_the_audio_path(tmp_path):
    model = tiny_model(LAYER_NORM)
    model.eval()
    audio = torch.from_numpy(utterances((8000,))[0]["input_values"])[None]
    before = model(audio).logits
    keys = list(model.state_dict())
    use_cached_features(model)
    use_cached_features(model)  # idempotent
    assert isinstance(model.wav2vec2.feature_extractor, CachedFeatureEncoder)
    assert list(model.state_dict()) == keys  # checkpoints and exported models are unchanged
    torch.testing.assert_close(model(audio).logits, before)  # evaluation still reads audio
    model.save_pretrained(tmp_path)
    from transformers import AutoModelForCTC

    reloaded = AutoModelForCTC.from_pretrained(tmp_path).eval()
    torch.testing.assert_close(reloaded(audio).logits, before)


def test_fingerprint_covers_encoder_weights_and_settings_only():
    model = tiny_model(GROUP_NORM)
    base = encoder_fingerprint(model, True, "float32")
    assert encoder_fingerprint(copy.deepcopy(model), True, "float32") == base
    assert encoder_fingerprint(model, False, "float32") != base  # do_normalize changes the features
    assert encoder_fingerprint(model, True, "float16") != base
    with torch.no_grad():
        model.lm_head.weight.add_(1.0)  # training the rest of the model does not invalidate the cache
    assert encoder_fingerprint(model, True, "float32") == base
    with torch.no_grad():
        model.wav2vec2.feature_extractor.conv_layers[3].conv.weight[0, 0, 0] += 1e-3
    assert encoder_fingerprint(model, True, "float32") != base


@pytest.mark.parametrize("overrides, message", [
    ({"freeze_feature_encoder": False}, "needs model.freeze_feature_encoder=true"),
    ({"streaming": True}, "data.train.streaming=true"),
    ({"zero_stage": 3}, "ZeRO-3"),
])
def test_cache_is_refused_where_it_cannot_work(overrides, message):
    args = {"freeze_feature_encoder": True, "streaming": False, "zero_stage": None, **overrides}
    with pytest.raises(ConfigError, match=message):
        check_feature_cache(FeatureCacheConfig(enabled=True), **args)
    check_feature_cache(FeatureCacheConfig(enabled=False), **args)  # off: nothing to refuse
    check_feature_cache(FeatureCacheConfig(enabled=True), freeze_feature_encoder=True, streaming=False, zero_stage=2)


# ------------------------------------------------------------------------------------------ on disk
@pytest.fixture(scope="module")
def split(synth_corpus, tmp_path_factory):
    source = SourceConfig(path=str(synth_corpus / "train.jsonl"))
    vocab = build_vocab([TextNormalizer()(u.text) for u in load_source(source)])
    model = tiny_model(GROUP_NORM)
    return prepare_split(source, TextNormalizer(), vocab, FilterConfig(min_duration=0.5, max_duration=15.0),
                         frames_fn_for(model.config), tmp_path_factory.mktemp("prepared"))


def test_fill_reuse_and_invalidation(split, tmp_path, caplog):
    cfg = FeatureCacheConfig(enabled=True, dir=str(tmp_path / "features"))
    model = tiny_model(GROUP_NORM)
    with caplog.at_level(logging.INFO, logger="asr.feature_cache"):
        first = prepare_feature_cache(model, split, cfg, True, False)
    assert (first.report.reused, first.report.computed) == (0, len(split))
    assert "equals uncached training on unpadded batches only" in caplog.text  # group norm: the known limit
    files = sorted((tmp_path / "features").rglob("*.safetensors"))
    assert len(files) == len(split)
    assert first.report.estimated_bytes == sum(f.stat().st_size for f in files) - _headers(files)
    mtimes = [f.stat().st_mtime_ns for f in files]

    again = prepare_feature_cache(copy.deepcopy(model), split, cfg, True, False)
    assert (again.report.reused, again.report.computed) == (len(split), 0)
    assert [f.stat().st_mtime_ns for f in files] == mtimes  # read, not rewritten
    item = again[0]
    row = split.table[0]
    assert item["id"] == row["id"] and item["labels"] == list(row["labels"])
    np.testing.assert_array_equal(item["features"], encode_audio(model, SpeechDataset(split.table)[0]["input_values"]))
    check_model_matches(again, model, True)

    with torch.no_grad():
        model.wav2vec2.feature_extractor.conv_layers[0].conv.weight[0, 0, 0] += 1e-3  # another checkpoint's encoder
    with pytest.raises(RuntimeError, match="not the one the feature cache was filled with"):
        check_model_matches(again, model, True)
    changed = prepare_feature_cache(model, split, cfg, True, False)
    assert (changed.report.reused, changed.report.computed) == (0, len(split))
    assert changed.cache.folder != again.cache.folder
    assert not np.array_equal(changed[0]["features"], item["features"])


def _headers(files) -> int:
    """Bytes of the safetensors headers (8-byte length + JSON), to compare the estimate with the payload."""
    return sum(8 + int.from_bytes(f.read_bytes()[:8], "little") for f in files)


def test_size_limit_is_refused_before_anything_is_written(split, tmp_path):
    model = tiny_model(GROUP_NORM)
    frames = frames_fn_for(model.config)
    samples = [round(d * 16000) for d in split.durations]
    need = estimate_bytes(samples, frames, 32, "float32")
    assert need == sum(frames(n) for n in samples) * 32 * 4  # frames x conv_dim[-1] x bytes, over utterances
    assert estimate_bytes(samples, frames, 32, "float16") * 2 == need
    cfg = FeatureCacheConfig(enabled=True, dir=str(tmp_path / "features"), max_gb=need / 2e9)
    with pytest.raises(ConfigError, match=r"over data.feature_cache.max_gb=.*; raise data.feature_cache.max_gb"):
        prepare_feature_cache(model, split, cfg, True, False)
    assert not (tmp_path / "features").exists()
    with pytest.raises(ValueError, match="max_gb must be > 0"):
        FeatureCacheConfig(max_gb=0)


def test_float16_storage_and_a_missing_file(split, tmp_path, caplog):
    model = tiny_model(GROUP_NORM)
    cfg = FeatureCacheConfig(enabled=True, dir=str(tmp_path / "features"), dtype="float16")
    dataset = prepare_feature_cache(model, split, cfg, True, False)
    exact = encode_audio(model, SpeechDataset(split.table)[1]["input_values"])
    assert dataset[1]["features"].dtype == np.float32
    np.testing.assert_allclose(dataset[1]["features"], exact, rtol=1e-3, atol=1e-3)
    dataset.cache.path(dataset.keys[1]).unlink()
    with caplog.at_level(logging.WARNING, logger="asr.feature_cache"):
        assert dataset[1] is None  # skipped like an unreadable audio file, with the reason
    assert "no cached features" in caplog.text


# ------------------------------------------------------------------------------- scripts/train.py
# A layer-norm encoder with an attention mask (padded batches are exact), fixed batch order, dropout and
# SpecAugment off, 2 accumulated micro-batches per step, checkpoints at steps 2 and 4.
TRAIN = ["model.architecture.feat_extract_norm=layer", "model.architecture.do_stable_layer_norm=true",
         "model.freeze_feature_encoder=true", "model.mask_time_prob=0", "data.shuffle=false",
         "train.max_steps=4", "train.log_every=1", "train.eval_every=1000", "train.save_every=2"]


def losses(out: Path) -> list[float]:
    return [r["loss"] for r in metrics(out / "run", "train")]


@pytest.fixture(scope="module")
def uncached_run(synth_corpus, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("uncached")
    run_train(synth_corpus, out, *TRAIN, "optim.grad_accum_steps=2")
    return out


@pytest.fixture(scope="module")
def cached_run(synth_corpus, tmp_path_factory) -> tuple[Path, str]:
    out = tmp_path_factory.mktemp("cached")
    proc = run_train(synth_corpus, out, *TRAIN, "optim.grad_accum_steps=2", "data.feature_cache.enabled=true",
                     f"data.feature_cache.dir={out / 'features'}")
    return out, proc.stderr


def test_cached_training_gives_the_uncached_losses(uncached_run, cached_run):
    out, log = cached_run
    assert "feature cache: 0 reused, 12 computed" in log
    [fill] = metrics(out / "run", "feature_cache")  # the one-off cost, for benchmarks and the curious
    assert (fill["step"], fill["utterances"], fill["reused"]) == (0, 12, 0) and fill["seconds"] > 0
    assert len(losses(uncached_run)) == 4
    np.testing.assert_allclose(losses(out), losses(uncached_run), rtol=0, atol=1e-5)


def test_resume_reuses_the_cache_and_continues_exactly(synth_corpus, cached_run, tmp_path):
    out, _ = cached_run
    files = sorted((out / "features").rglob("*.safetensors"))
    mtimes = [f.stat().st_mtime_ns for f in files]
    proc = run_train(synth_corpus, tmp_path, *TRAIN, "optim.grad_accum_steps=2", "data.feature_cache.enabled=true",
                     f"data.feature_cache.dir={out / 'features'}",
                     resume=str(out / "run" / "checkpoints" / "step_2"))
    assert "feature cache: 12 reused, 0 computed" in proc.stderr
    assert [(r["step"], r["reused"]) for r in metrics(tmp_path / "run", "feature_cache")] == [(2, 12)]
    assert [f.stat().st_mtime_ns for f in files] == mtimes
    np.testing.assert_allclose(losses(tmp_path), losses(out)[2:], rtol=0, atol=1e-6)


@pytest.mark.parametrize("overrides, message", [
    (["model.freeze_feature_encoder=false"], "needs model.freeze_feature_encoder=true"),
    (["model.freeze_feature_encoder=true", "data.feature_cache.max_gb=1e-6"], "over data.feature_cache.max_gb=1e-06"),
])
def test_bad_cache_configs_fail_with_one_line(synth_corpus, tmp_path, overrides, message):
    proc = run_train(synth_corpus, tmp_path, "train.max_steps=1", "data.feature_cache.enabled=true",
                     f"data.feature_cache.dir={tmp_path / 'features'}", *overrides, check=False)
    assert proc.returncode == 2, proc.stderr[-2000:]
    assert [line for line in proc.stderr.splitlines() if message in line], proc.stderr[-2000:]
    assert "Traceback" not in proc.stderr
    assert not list((tmp_path / "features").rglob("*.safetensors"))


@pytest.mark.slow
def test_two_processes_share_the_fill_and_match_one_process(synth_corpus, uncached_run, tmp_path):
    """2 ranks x 1 batch == 1 rank x 2 accumulated batches (data.shuffle=false), each rank filling half."""
    proc = run_train(synth_corpus, tmp_path, *TRAIN, "data.feature_cache.enabled=true",
                     f"data.feature_cache.dir={tmp_path / 'features'}", kind="ddp2")
    assert "feature cache: 0 reused, 6 computed by this process (2 processes)" in proc.stderr  # rank 0's half
    assert len(list((tmp_path / "features").rglob("*.safetensors"))) == 12
    np.testing.assert_allclose(losses(tmp_path), losses(uncached_run), rtol=0, atol=1e-5)
    description = json.loads(next((tmp_path / "features").glob("*/encoder.json")).read_text())
    assert description["feat_extract_norm"] == "layer" and description["dtype"] == "float32"
