"""asr.model_card and the processor files of a model directory: Hub metadata, LM naming, publishable files.

A model directory is made the way scripts/train.py exports one (processor files, train_config.yaml,
metrics.json) without weights, which the card and the processor files do not need; LMs are real KenLM
builds (lm.build_lm) of a few sentences.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from asr.config import load_config, save_config
from asr.model_card import DEFAULT_LICENSE, CardResult, card_metadata, write_model_card
from asr.text import PROCESSOR_WITH_LM, TextNormalizer, build_vocab, load_processor, make_processor, save_processor
from asr.train import TrainConfig
from lm.build import KENLM_BIN_DIR, LMBuildOptions, build_lm

SENTENCES = ["the cat sat on the mat", "the dog sat on the log", "a cat and a dog", "the mat and the log"] * 3
METRICS = {"step": 40, "wer": 0.31234, "cer": 0.08765, "dev_loss": 1.5,
           "data": {"train": {"source": "data/x/train.jsonl", "utterances": 12, "hours": 0.01, "dropped": 0},
                    "dev": {"source": "data/x/dev.jsonl", "utterances": 4, "hours": 0.0, "dropped": 1}}}
PROCESSOR_FILES = ("processor_config.json", "preprocessor_config.json", "tokenizer_config.json")
needs_kenlm = pytest.mark.skipif(not (KENLM_BIN_DIR / "lmplz").is_file(), reason="run `bash scripts/setup.sh`")


def _model_dir(path: Path, overrides: list[str] = (), filterbank: bool = False) -> Path:
    """A model directory as scripts/train.py exports it, without the weights."""
    processor = make_processor(build_vocab(SENTENCES), return_attention_mask=False, filterbank=filterbank)
    save_processor(processor, TextNormalizer(), path)
    cfg = load_config(TrainConfig, None, ["data.train.path=data/x/train.jsonl", "data.dev.path=data/x/dev.jsonl",
                                          f"train.output_dir={path.parent}", *overrides])
    save_config(cfg, path / "train_config.yaml")
    (path / "metrics.json").write_text(json.dumps(METRICS))
    return path


def _card(path: Path) -> dict:
    return card_metadata((path / "README.md").read_text())


def _processor_classes(path: Path) -> set[str]:
    """Every processor class the files name, the one nested in the feature extractor's settings included."""
    names = set()
    for file in PROCESSOR_FILES:
        data = json.loads((path / file).read_text())
        names.add(data["processor_class"])
        if "feature_extractor" in data:
            names.add(data["feature_extractor"]["processor_class"])
    return names


def test_a_card_written_before_the_atomic_rename_names_the_run(tmp_path):
    """The trainer writes RUN/model.tmp, then renames it to RUN/model: the card names the run, not "model.tmp"."""
    model = _model_dir(tmp_path / "base_natural9" / "model.tmp", [])
    write_model_card(model)
    assert _card(model)["model-index"][0]["name"] == "base_natural9"


def test_card_metadata_from_the_config_and_the_dev_metrics(tmp_path):
    model = _model_dir(tmp_path / "run" / "model", ["model.name_or_path=facebook/wav2vec2-base",
                                                    "card.license=mit", "card.language=[en, fr]"])
    write_model_card(model)
    meta = _card(model)
    assert meta["license"] == "mit" and meta["language"] == ["en", "fr"]
    assert meta["base_model"] == "facebook/wav2vec2-base"
    assert "datasets" not in meta  # a local manifest is not a Hub dataset: the card names none
    assert meta["pipeline_tag"] == "automatic-speech-recognition" and "kenlm" not in meta["tags"]
    [index] = meta["model-index"]
    assert index["name"] == "run"
    [result] = index["results"]
    assert result["task"]["type"] == "automatic-speech-recognition"
    assert result["dataset"] == {"name": "data/x/dev.jsonl", "type": "data/x/dev.jsonl", "split": "dev"}
    assert [(m["type"], m["value"]) for m in result["metrics"]] == [("wer", 31.23), ("cer", 8.77)]
    text = (model / "README.md").read_text()
    assert "| greedy | data/x/dev.jsonl | dev | 4 | 31.23% | 8.77% |" in text
    assert "| train | data/x/train.jsonl | 12 | 0.01 | 0 |" in text  # the data summary kept in metrics.json
    assert "greedy: no language model" in text and "scripts/build_lm.py --model" in text


def test_card_licence_defaults_to_the_base_directorys_then_apache(tmp_path):
    scratch = _model_dir(tmp_path / "scratch" / "model")
    write_model_card(scratch)
    assert _card(scratch)["license"] == DEFAULT_LICENSE == "apache-2.0"
    assert "base_model" not in _card(scratch)  # trained from scratch: no base to name
    base = tmp_path / "base"
    base.mkdir()
    (base / "README.md").write_text("---\nlicense: cc-by-nc-4.0\n---\n# a base checkpoint\n")
    tuned = _model_dir(tmp_path / "tuned" / "model", [f"model.name_or_path={base}"])
    write_model_card(tuned)
    assert _card(tuned)["license"] == "cc-by-nc-4.0"
    assert "base_model" not in _card(tuned)  # a local directory: the Hub would link a model page that is not there


def test_card_names_hub_ids_only(tmp_path):
    """base_model and datasets are Hub links: hub ids are kept, local paths and files never are."""
    from asr.model_card import hub_id

    assert hub_id("facebook/wav2vec2-base") and hub_id("mozilla-foundation/common_voice_17_0")
    assert not any(hub_id(name) for name in (None, "", "./model", "/abs/model", "a/b/c", "data/x/train.jsonl",
                                             "runs/x.csv", "~/model", str(tmp_path)))
    model = _model_dir(tmp_path / "run" / "model", ["model.name_or_path=facebook/wav2vec2-base",
                                                    "data.train.path=mozilla-foundation/common_voice_17_0"])
    write_model_card(model)
    meta = _card(model)
    assert meta["base_model"] == "facebook/wav2vec2-base"
    assert meta["datasets"] == ["mozilla-foundation/common_voice_17_0"]


def test_a_card_not_written_by_training_is_left_alone(tmp_path):
    (tmp_path / "README.md").write_text("someone else's card\n")
    assert write_model_card(tmp_path) is None
    assert (tmp_path / "README.md").read_text() == "someone else's card\n"


def test_saved_tokenizer_config_carries_no_loading_options(tmp_path):
    """Training saves the processor, loads it back (offline: local_files_only) and saves it into model/."""
    save_processor(make_processor(build_vocab(SENTENCES), return_attention_mask=False), TextNormalizer(),
                   tmp_path / "processor")
    processor, normalizer = load_processor(tmp_path / "processor")
    assert processor.tokenizer.init_kwargs.get("local_files_only") is True  # what loading offline adds
    save_processor(processor, normalizer, tmp_path / "model")
    config = json.loads((tmp_path / "model" / "tokenizer_config.json").read_text())
    assert "local_files_only" not in config and "is_local" not in config
    assert _processor_classes(tmp_path / "model") == {"Wav2Vec2Processor"}


@needs_kenlm
@pytest.mark.parametrize("filterbank", [False, True])
def test_a_word_lm_beside_the_model_is_named_in_the_processor_files_and_the_card(tmp_path, filterbank):
    model = _model_dir(tmp_path / "run" / "model", filterbank=filterbank)
    plain = "Wav2Vec2BertProcessor" if filterbank else "Wav2Vec2Processor"
    assert _processor_classes(model) == {plain}
    vocab = json.loads((model / "vocab.json").read_text())
    build_lm(SENTENCES, model, vocab=vocab, options=LMBuildOptions(order=2, discount_fallback=True))
    assert _processor_classes(model) == {PROCESSOR_WITH_LM}
    processor, _ = load_processor(model)  # our loader keeps the plain processor: the decoders load the LM
    assert type(processor).__name__ == plain
    write_model_card(model)  # what build_lm.py does next
    meta = _card(model)
    assert {"kenlm", "pyctcdecode"} <= set(meta["tags"])
    text = (model / "README.md").read_text()
    assert "KenLM 2-gram over words" in text and "BeamSearchDecoderCTC.load_from_dir" in text
    # eval.py --tune's results join the dev row
    write_model_card(model, [CardResult("beam", "data/x/test.jsonl", 0.2, 0.05, 4, None, "alpha=0.5 beta=1")])
    results = _card(model)["model-index"][0]["results"]
    assert [r["metrics"][0]["name"] for r in results] == ["WER (greedy)", "WER (KenLM beam search (pyctcdecode))"]
    assert results[1]["metrics"][0]["value"] == 20.0 and results[1]["dataset"]["name"] == "data/x/test.jsonl"


@needs_kenlm
def test_a_token_lm_keeps_the_plain_processor(tmp_path):
    """pyctcdecode cannot decode with a token-level LM, so the pipeline must not be sent to it."""
    model = _model_dir(tmp_path / "run" / "model")
    vocab = json.loads((model / "vocab.json").read_text())
    build_lm(SENTENCES, model, vocab=vocab, options=LMBuildOptions(order=4, unit="token"))
    assert _processor_classes(model) == {"Wav2Vec2Processor"}
