"""lm.build and scripts/build_lm.py: real lmplz/build_binary on fortunes sentences, pyctcdecode's layout, reports."""

from __future__ import annotations

import json
import logging
import random
from pathlib import Path

import kenlm
import pytest

from asr.corpus import load_sentences
from asr.decoders import ALPHABET_FILE, INFO_FILE, LM_SUBDIR, load_lm_files, load_lm_info
from asr.sources import read_source_texts
from asr.text import TextNormalizer, build_vocab
from lm.build import (
    LMBuildOptions,
    build_lm,
    evaluate_heldout,
    find_kenlm_tool,
    prepare_corpus,
    read_text_files,
    split_heldout,
)

REPO = Path(__file__).resolve().parents[1]
NUM_TRAIN = 15_000  # fortunes sentences for the LM (lmplz takes ~0.5 s); the last 200 are held out
NUM_HELDOUT = 200


@pytest.fixture(scope="module")
def corpus() -> tuple[list[str], list[str], dict[str, int]]:
    """(train, held-out, vocab): disjoint fortunes sentences and their character vocabulary."""
    sentences = load_sentences()
    return sentences[:NUM_TRAIN], sentences[-NUM_HELDOUT:], build_vocab(sentences)


@pytest.fixture(scope="module")
def binary_lm(tmp_path_factory, corpus):
    train, heldout, vocab = corpus
    out = tmp_path_factory.mktemp("binary_lm")
    return build_lm(train, out, vocab=vocab, heldout=heldout, options=LMBuildOptions(order=4))


def _shuffled_words(sentences: list[str], seed: int = 0) -> list[str]:
    """Each sentence with its words in random order: same words, no word order."""
    rng = random.Random(seed)
    out = []
    for sentence in sentences:
        words = sentence.split()
        rng.shuffle(words)
        out.append(" ".join(words))
    return out


def test_binary_lm_loads_with_end_of_sentence(binary_lm):
    model = kenlm.Model(str(binary_lm.kenlm_path))
    assert model.order == 4
    assert "</s>" in model and "the" in model
    assert binary_lm.format == "probing" and binary_lm.kenlm_path.suffix == ".bin"
    assert set(binary_lm.ngram_counts) == {1, 2, 3, 4} and all(n > 0 for n in binary_lm.ngram_counts.values())
    assert binary_lm.size_bytes == binary_lm.kenlm_path.stat().st_size


def test_heldout_perplexity_far_below_shuffled_words(binary_lm, corpus):
    _, heldout, _ = corpus
    real = binary_lm.heldout
    assert real.num_sentences == NUM_HELDOUT and 0 < real.oov_rate < 0.3
    shuffled = evaluate_heldout(binary_lm.kenlm_path, _shuffled_words(heldout))
    # Same words (same OOVs), broken order: an n-gram LM that learned anything must be far more surprised.
    assert shuffled.oov_rate == pytest.approx(real.oov_rate)
    assert real.perplexity * 2 < shuffled.perplexity


def test_pyctcdecode_layout_loads(binary_lm, corpus):
    from pyctcdecode import BeamSearchDecoderCTC

    _, _, vocab = corpus
    out = Path(binary_lm.directory)
    # pyctcdecode refuses a language_model/ with anything but these three files.
    assert sorted(p.name for p in (out / LM_SUBDIR).iterdir()) == ["attrs.json", "lm.bin", "unigrams.txt"]
    decoder = BeamSearchDecoderCTC.load_from_dir(str(out))
    labels = json.loads((out / ALPHABET_FILE).read_text())["labels"]
    assert labels[:3] == ["", "\u2047", " "] and len(labels) == len(vocab)
    assert decoder._language_model.order == 4
    files = load_lm_files(out)
    assert len(files.unigrams) == binary_lm.num_unigrams and "</s>" not in files.unigrams
    info = load_lm_info(out)
    assert info["heldout"]["perplexity"] == pytest.approx(binary_lm.heldout.perplexity)
    assert info["corpus"]["num_sentences"] == NUM_TRAIN and info["vocab_size"] == len(vocab)


def test_arpa_output_replaces_previous_build(tmp_path, corpus):
    train, _, vocab = corpus
    build_lm(train[:500], tmp_path, vocab=vocab, options=LMBuildOptions(order=3))
    info = build_lm(train, tmp_path, vocab=vocab, options=LMBuildOptions(order=3, binary=False))
    assert sorted(p.name for p in (tmp_path / LM_SUBDIR).iterdir()) == ["attrs.json", "lm.arpa", "unigrams.txt"]
    text = info.kenlm_path.read_text()
    assert text.startswith("\n\\data\\") or text.lstrip().startswith("\\data\\")
    assert "\t</s>" in text
    model = kenlm.Model(str(info.kenlm_path))
    assert model.order == 3 and "</s>" in model
    assert info.heldout is None and info.format == "arpa"
    assert not any(p.name.startswith(".") for p in tmp_path.iterdir())  # work and staging dirs are cleaned up


def test_heldout_fraction_is_kept_out_of_training(tmp_path, corpus):
    train, _, vocab = corpus
    info = build_lm(train, tmp_path, vocab=vocab, options=LMBuildOptions(order=3, heldout_fraction=0.1, seed=1))
    assert info.heldout.num_sentences == NUM_TRAIN // 10
    assert info.num_train_sentences == NUM_TRAIN - NUM_TRAIN // 10
    kept, held = split_heldout(train, 0.1, seed=1)
    assert not set(kept) & set(held) and len(kept) + len(held) == len(train)


def test_small_corpus_falls_back_to_fixed_discounts(tmp_path, corpus, caplog):
    _, _, vocab = corpus
    tiny = ["the cat sat", "the cat ran", "a dog sat"]
    with caplog.at_level(logging.WARNING, logger="lm.build"):
        info = build_lm(tiny, tmp_path / "auto", vocab=vocab, options=LMBuildOptions(order=3))
    assert info.discount_fallback and "--discount_fallback" in info.lmplz_command
    assert "retrying with --discount_fallback" in caplog.text
    with pytest.raises(RuntimeError, match="discount"):
        build_lm(tiny, tmp_path / "never", vocab=vocab, options=LMBuildOptions(order=3, discount_fallback=False))


def test_missing_tools_say_how_to_build_them(tmp_path, monkeypatch, corpus):
    train, _, vocab = corpus
    with pytest.raises(RuntimeError, match=r"lmplz was not found.*bash scripts/setup\.sh"):
        build_lm(train[:100], tmp_path, vocab=vocab, options=LMBuildOptions(kenlm_bin=str(tmp_path)))
    monkeypatch.setenv("PATH", str(tmp_path))
    monkeypatch.setattr("lm.build.KENLM_BIN_DIR", tmp_path / "nowhere")
    with pytest.raises(RuntimeError, match=r"build_binary was not found.*setup\.sh"):
        find_kenlm_tool("build_binary")
    monkeypatch.undo()
    assert find_kenlm_tool("lmplz").name == "lmplz"  # PATH, then tools/kenlm/bin of the repo


def test_corpus_report_normalises_dedupes_and_checks_vocab(caplog):
    vocab = build_vocab(["the cafe is open"])
    texts = ["The café is open!", "the cafe is open", "THE CAFE IS OPEN.", "   ", "?!", "Ça va", "the café"]
    with caplog.at_level(logging.WARNING, logger="lm.build"):
        kept, report = prepare_corpus(texts, TextNormalizer(), vocab, dedupe=True, drop_unemittable=True)
    assert kept == ["the cafe is open"]
    assert (report.num_input, report.num_empty, report.num_duplicates) == (7, 2, 1)
    assert report.num_unemittable == 3 and report.unemittable_dropped
    chars = {c.char: c for c in report.unemittable_chars}
    assert chars["é"].count == 2 and chars["é"].name == "LATIN SMALL LETTER E WITH ACUTE"
    assert chars["é"].example == "the café is open"
    assert {"ç", "v"} <= set(chars)
    assert "cannot emit" in caplog.text and "'é'" in caplog.text

    kept, report = prepare_corpus(texts, TextNormalizer(), vocab, dedupe=False, drop_unemittable=False)
    assert len(kept) == 5 and report.num_duplicates == 0 and not report.unemittable_dropped
    with pytest.raises(ValueError, match="No LM sentence"):
        prepare_corpus(["?!", ""], TextNormalizer(), vocab)


@pytest.mark.parametrize("kwargs, match", [
    (dict(order=0), "order"), (dict(order=7), "order"), (dict(prune=(0, 2, 1)), "prune"),
    (dict(memory="lots"), "memory"), (dict(binary_type="hash"), "binary_type"),
    (dict(quantize_bits=8), "quantize_bits"), (dict(heldout_fraction=1.0), "heldout_fraction"),
    (dict(unit="char"), "unit"),
])
def test_bad_options_are_rejected(kwargs, match):
    with pytest.raises(ValueError, match=match):
        LMBuildOptions(**kwargs)


def test_script_builds_beside_the_model_from_text_and_sources(tmp_path, corpus, monkeypatch):
    import datasets

    train, heldout, vocab = corpus
    model = tmp_path / "model"
    TextNormalizer().save(model)
    (model / "vocab.json").write_text(json.dumps(vocab))
    text_file = tmp_path / "lm.txt"
    text_file.write_text("\n".join(train[:7500]) + "\n")
    manifest = tmp_path / "train.jsonl"
    manifest.write_text("".join(json.dumps({"id": f"u{i}", "audio_filepath": f"{i}.wav", "duration": 1.0,
                                            "text": s.upper() + "."}) + "\n" for i, s in enumerate(train[7500:])))
    dataset = tmp_path / "texts"
    datasets.Dataset.from_dict({"text": heldout}).save_to_disk(str(dataset))

    monkeypatch.syspath_prepend(str(REPO / "scripts"))
    import build_lm as script

    assert script.main(["--model", str(model), "--text", str(text_file), "--source", str(manifest),
                        "--heldout-source", str(dataset), "--order", "3", "--prune", "0", "0", "1"]) == 0
    info = load_lm_info(model)
    assert info["corpus"]["num_sentences"] == NUM_TRAIN  # manifest transcripts were normalised like the text
    assert info["heldout"]["num_sentences"] == NUM_HELDOUT
    assert info["options"]["prune"] == [0, 0, 1]
    assert (model / INFO_FILE).is_file() and (model / ALPHABET_FILE).is_file()
    assert kenlm.Model(str(model / info["kenlm_file"])).order == 3


@pytest.mark.skipif(not Path("/usr/share/wordnet/data.noun").is_file(), reason="wordnet-base is needed; run setup")
def test_wordnet_text_widens_the_vocabulary_and_lowers_held_out_oov(tmp_path, corpus, monkeypatch):
    """--text-source wordnet adds WordNet's usage examples to the LM text: its words join the unigrams, and the
    held-out fortunes sentences meet fewer unknown words (the demo's test sentences are such sentences)."""
    train, heldout, vocab = corpus
    text_file, heldout_file = tmp_path / "lm.txt", tmp_path / "heldout.txt"
    text_file.write_text("\n".join(train) + "\n")
    heldout_file.write_text("\n".join(heldout) + "\n")
    monkeypatch.syspath_prepend(str(REPO / "scripts"))
    import build_lm as script

    common = ["--text", str(text_file), "--heldout", str(heldout_file), "--order", "3"]
    assert script.main([*common, "--output", str(tmp_path / "fortunes")]) == 0
    assert script.main([*common, "--text-source", "wordnet", "--output", str(tmp_path / "both")]) == 0
    alone, both = load_lm_info(tmp_path / "fortunes"), load_lm_info(tmp_path / "both")
    wordnet = load_sentences(None, min_words=1, max_words=10_000, source="wordnet")
    assert both["corpus"]["num_sentences"] == alone["corpus"]["num_sentences"] + len(wordnet)
    assert both["heldout"]["oov_rate"] < 0.7 * alone["heldout"]["oov_rate"]  # 6.2% -> 3.2% on the demo's test set
    unigrams = {name: set((tmp_path / name / LM_SUBDIR / "unigrams.txt").read_text().split())
                for name in ("fortunes", "both")}
    assert len(unigrams["both"] - unigrams["fortunes"]) > 15_000  # 14,503 words -> 36,592
    assert {word for sentence in wordnet[:200] for word in sentence.split()} <= unigrams["both"]


LATIN1_TEXT = "the cafe is open\nthe café is open\nwe met at the café\n"  # é is one byte (0xe9) in Latin-1


def test_text_that_is_not_utf8_is_refused_with_file_line_and_byte(tmp_path):
    path = tmp_path / "lm.txt"
    path.write_bytes(LATIN1_TEXT.encode("latin-1"))
    with pytest.raises(ValueError) as e:
        list(read_text_files([path]))
    offset = LATIN1_TEXT.encode("latin-1").index(b"\xe9")  # the first é: line 2, its 8th byte
    assert str(e.value).startswith(f"{path}:2: byte {offset} of the file (0xe9, column 8 of the line's bytes) is "
                                   "not valid utf-8 text")
    assert list(read_text_files([path], "latin-1")) == LATIN1_TEXT.splitlines()
    utf16 = tmp_path / "utf16.txt"
    utf16.write_text(LATIN1_TEXT, encoding="utf-16")
    assert list(read_text_files([utf16], "utf-16")) == LATIN1_TEXT.splitlines()
    with pytest.raises(ValueError, match="after line 0, the text is not valid utf-16 .UTF-16 stream does not start"):
        list(read_text_files([path], "utf-16"))
    with pytest.raises(ValueError, match="encoding 'klingon' is unknown"):
        list(read_text_files([path], "klingon"))


def test_script_refuses_undecodable_text_in_one_line_or_reads_it_with_encoding(tmp_path):
    """The real script: exit 2 and nothing built, where it built an LM of "caf\ufffd" before; --encoding reads it."""
    import subprocess
    import sys

    from trainrun import env

    text = tmp_path / "lm.txt"
    text.write_bytes((LATIN1_TEXT * 20).encode("latin-1"))
    command = [sys.executable, str(REPO / "scripts" / "build_lm.py"), "--text", str(text), "--order", "2"]
    refused = subprocess.run([*command, "--output", str(tmp_path / "refused")], capture_output=True, text=True,
                             env=env(), timeout=300)
    assert refused.returncode == 2, refused.stderr[-3000:]
    assert refused.stderr.startswith(f"error: {text}:2: byte 24 of the file (0xe9")
    assert refused.stderr.count("\n") == 1 and not (tmp_path / "refused").exists()
    built = subprocess.run([*command, "--output", str(tmp_path / "built"), "--encoding", "latin-1"],
                           capture_output=True, text=True, env=env(), timeout=300)
    assert built.returncode == 0, built.stderr[-3000:]
    assert "café" in load_lm_files(tmp_path / "built").unigrams


def test_dataset_text_column_is_read_without_audio(tmp_path):
    import datasets

    from asr.sources import SourceConfig

    texts = ["Hello there.", "General Kenobi!"]
    datasets.Dataset.from_dict({"id": ["a", "b"], "line": texts}).save_to_disk(str(tmp_path / "d"))
    assert read_source_texts(SourceConfig(kind="auto", path=str(tmp_path / "d"), text_column="line")) == texts
    with pytest.raises(ValueError, match="text column"):
        read_source_texts(SourceConfig(kind="hf", path=str(tmp_path / "d")))
