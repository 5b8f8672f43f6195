"""asr.beam: pyctcdecode and flashlight beam search with a real KenLM model on hand-made and noisy log-probs.

The LM is a 4-gram built by the real lmplz from fortunes sentences; test utterances are other
fortunes sentences, turned into CTC log-probs: a few frames per character, blanks between, Gaussian
noise on every score, and some characters confused with a random letter about as strongly.
"""

from __future__ import annotations

import json
import logging
import math
import shutil
import time

import numpy as np
import pytest

from asr.beam import (
    FlashlightBeam,
    FlashlightOptions,
    GreedyCTC,
    HotwordLM,
    Hypothesis,
    IdleFrames,
    PyCTCDecodeBeam,
    PyCTCDecodeOptions,
    WordSpan,
    oracle_texts,
    pyctcdecode_labels,
)
from bench.common import noisy_log_probs
from asr.corpus import load_sentences
from asr.decoders import DecoderSettings, build_decoder, load_lm_files
from asr.metrics import error_rates, word_edits
from asr.text import build_vocab, encode
from lm.build import LMBuildOptions, build_lm

logger = logging.getLogger(__name__)

NUM_LM_SENTENCES = 15_000  # fortunes sentences the LM is trained on (~1 s for lmplz); the last 100 are held out
NUM_NOISY = 100  # held-out sentences decoded from noisy log-probs
# Domain text so the hand-made utterance's words are known to the LM, as a user's LM text would be.
DOMAIN_TEXT = ["the cat sat on the mat", "a cat sat on a mat", "the dog sat on the mat", "my cat sat on my hat"]
FRAMES_PER_CHAR = 2  # then one blank frame


@pytest.fixture(scope="module")
def sentences() -> list[str]:
    return load_sentences()


@pytest.fixture(scope="module")
def vocab(sentences) -> dict[str, int]:
    return build_vocab(sentences + DOMAIN_TEXT)


@pytest.fixture(scope="module")
def lm_dir(tmp_path_factory, sentences, vocab):
    out = tmp_path_factory.mktemp("beam_lm")
    build_lm(sentences[:NUM_LM_SENTENCES] + DOMAIN_TEXT, out, vocab=vocab, options=LMBuildOptions(order=4))
    return out


@pytest.fixture(scope="module")
def decoders(lm_dir, vocab):
    """Greedy, pyctcdecode and flashlight decoders on the same LM, with the module's default options."""
    return {
        "greedy": GreedyCTC(vocab),
        "pyctcdecode": build_decoder("beam", vocab, lm_dir),
        "flashlight": build_decoder("flashlight", vocab, lm_dir),
    }


def spelled_log_probs(text: str, vocab: dict[str, int], ambiguous: dict[int, tuple[str, float]] | None = None,
                      ) -> np.ndarray:
    """[T, V] log-probs that spell `text`: FRAMES_PER_CHAR frames per character, then a blank frame.

    `ambiguous` maps a character position to (rival character, rival probability): those frames give
    the rival that probability and the true character a little less.
    """
    ambiguous = ambiguous or {}
    rows = []
    for position, token in enumerate(encode(text, vocab)):
        for _ in range(FRAMES_PER_CHAR):
            p = np.full(len(vocab), 1e-4)
            if position in ambiguous:
                rival, p_rival = ambiguous[position]
                p[vocab[rival]] = p_rival
                p[token] = p_rival - 0.05
            else:
                p[token] = 0.95
            rows.append(p)
        blank = np.full(len(vocab), 1e-4)
        blank[vocab["[PAD]"]] = 0.95
        rows.append(blank)
    probs = np.array(rows)
    return np.log(probs / probs.sum(axis=1, keepdims=True)).astype(np.float32)


# ------------------------------------------------------------------------------- hand-made logits
def test_labels_follow_pyctcdecode_conventions(vocab):
    labels = pyctcdecode_labels(vocab)
    assert labels[:3] == ["", "\u2047", " "]  # blank, unk, word delimiter
    assert labels[vocab["a"]] == "a" and len(labels) == len(vocab)


@pytest.mark.parametrize("name", ["pyctcdecode", "flashlight"])
def test_lm_resolves_ambiguous_word_that_greedy_gets_wrong(decoders, vocab, name):
    text = "the cat sat on the mat"
    # Every frame of the "a" of "cat" says "e" slightly more often: greedy hears "cet".
    log_probs = spelled_log_probs(text, vocab, ambiguous={text.index("cat") + 1: ("e", 0.5)})
    assert decoders["greedy"].decode(log_probs).text == "the cet sat on the mat"
    hyp = decoders[name].decode(log_probs)
    assert hyp.text == text


@pytest.mark.parametrize("name", ["greedy", "pyctcdecode", "flashlight"])
def test_word_frames(decoders, vocab, name):
    log_probs = spelled_log_probs("the cat", vocab)
    step = FRAMES_PER_CHAR + 1
    # "the" spans characters 0-2, "|" is character 3, "cat" characters 4-6; each ends before its blank.
    expected = (WordSpan("the", 0, 2 * step + FRAMES_PER_CHAR), WordSpan("cat", 4 * step, 6 * step + FRAMES_PER_CHAR))
    assert decoders[name].decode(log_probs).words == expected


@pytest.mark.parametrize("name", ["greedy", "pyctcdecode", "flashlight"])
def test_length_padding_and_raw_logits(decoders, vocab, name):
    log_probs = spelled_log_probs("the dog sat", vocab)
    decoder = decoders[name]
    reference = decoder.decode(log_probs)
    garbage = np.random.default_rng(0).normal(0, 5, (7, len(vocab))).astype(np.float32)
    padded = np.concatenate([log_probs, garbage])
    assert decoder.decode(padded, length=len(log_probs)).text == reference.text == "the dog sat"
    # Unnormalised logits (log-probs plus a per-frame offset) decode the same: they are log-softmaxed.
    assert decoder.decode(log_probs + 3.0).text == reference.text
    batch = decoder.decode_batch([padded, log_probs[:0]], [len(log_probs), None])
    assert [h.text for h in batch] == ["the dog sat", ""]
    padded_batch = np.stack([padded, padded])  # [B, T, V] as a model's forward pass gives it
    assert [h.text for h in decoder.decode_batch(padded_batch, [len(log_probs)] * 2)] == ["the dog sat"] * 2
    with pytest.raises(ValueError, match="vocabulary"):
        decoder.decode(log_probs[:, :-1])


@pytest.mark.parametrize("name", ["beam", "flashlight"])
def test_hotword_overrides_the_lm(lm_dir, vocab, name):
    text = "the cat sat on the mat"
    log_probs = spelled_log_probs(text, vocab, ambiguous={text.index("cat") + 1: ("e", 0.5)})
    boosted = build_decoder(name, vocab, lm_dir, DecoderSettings().with_overrides(hotwords=("cet",)))
    assert boosted.decode(log_probs).text == "the cet sat on the mat"


@pytest.mark.parametrize("name", ["beam", "flashlight"])
@pytest.mark.parametrize("hotwords", [["zork"], ["the zork"], ["kestrel", "zork"]])
def test_a_boosted_rare_word_outside_the_lm_is_recovered(decoders, lm_dir, vocab, name, hotwords):
    """"zork" is outside the LM and its "z" sounds a little more like "w": without hotwords both decoders write
    the LM's "work", with it "zork" (flashlight adds it to its lexicon). A phrase is boosted word by word."""
    text = "the zork sat on the mat"
    assert "zork" not in load_lm_files(lm_dir).unigrams
    log_probs = spelled_log_probs(text, vocab, ambiguous={text.index("zork"): ("w", 0.5)})
    plain = decoders["pyctcdecode" if name == "beam" else name]
    assert plain.decode(log_probs).text == "the work sat on the mat"
    # 20, not the default 10: pyctcdecode also charges a word outside the LM its unk_score_offset (-10)
    settings = DecoderSettings().with_overrides(hotwords=hotwords, hotword_weight=20.0)  # both decoders' options
    assert settings.pyctcdecode.hotwords == settings.flashlight.hotwords == tuple(hotwords)
    boosted = build_decoder(name, vocab, lm_dir, settings)
    assert boosted.decode(log_probs).text == text
    assert boosted.decode_nbest(log_probs, n=3)[0].text == text
    # Elsewhere the boost changes nothing: an utterance without the hotword decodes as before.
    other = spelled_log_probs("my cat sat on my hat", vocab, ambiguous={3: ("e", 0.5)})
    assert boosted.decode(other).text == plain.decode(other).text == "my cat sat on my hat"


def test_flashlight_without_hotwords_keeps_the_plain_search(decoders, lm_dir, vocab, noisy_set):
    """No hotwords: KenLM alone scores the search, in C++, as before hotwords existed. The Python wrapper that adds
    the bonus changes nothing else: with a zero bonus on a word the LM knows, texts, frames and scores are equal."""
    _, log_probs = noisy_set
    plain = decoders["flashlight"]
    assert not isinstance(plain._lm, HotwordLM)
    wrapped = build_decoder("flashlight", vocab, lm_dir, FlashlightOptions(hotwords=("the",), hotword_weight=0.0))
    assert isinstance(wrapped._lm, HotwordLM) and wrapped.lexicon_size == plain.lexicon_size
    a, b = plain.decode_batch(log_probs[:40]), wrapped.decode_batch(log_probs[:40])
    assert [(h.text, h.words) for h in a] == [(h.text, h.words) for h in b]
    assert [h.score for h in a] == pytest.approx([h.score for h in b], rel=1e-6)


def test_bad_hotwords_are_refused_or_warned(lm_dir, vocab, caplog):
    for name in ("beam", "flashlight"):  # a word the model cannot spell could never be output
        with pytest.raises(ValueError, match="hotword 'Zork' has characters the model cannot spell"):
            build_decoder(name, vocab, lm_dir, DecoderSettings().with_overrides(hotwords=["Zork"]))
    with caplog.at_level(logging.WARNING, logger="asr.beam"):  # the bonus rides on the lexicon's word scores
        decoder = build_decoder("flashlight", vocab, lm_dir, FlashlightOptions(lexicon_free=True, hotwords=("zork",)))
    assert "hotwords ['zork'] are ignored" in caplog.text and not isinstance(decoder._lm, HotwordLM)


def test_lexicon_free_joins_tokens(lm_dir, vocab, caplog):
    with caplog.at_level(logging.WARNING, logger="asr.beam"):
        decoder = build_decoder("flashlight", vocab, lm_dir, FlashlightOptions(lexicon_free=True))
    assert "word-level LM" in caplog.text  # works, but the word LM cannot help a lexicon-free search
    hyp = decoder.decode(spelled_log_probs("the zqx sat", vocab))
    assert hyp.text == "the zqx sat"  # words outside the LM are possible without a lexicon
    assert [w.word for w in hyp.words] == ["the", "zqx", "sat"]


def test_lexicon_excludes_unspellable_words(lm_dir, vocab, caplog):
    small_vocab = {t: i for t, i in vocab.items() if t != "z"}
    small_vocab = {t: i for i, t in enumerate(sorted(small_vocab, key=small_vocab.get))}
    files = load_lm_files(lm_dir)
    with caplog.at_level(logging.WARNING, logger="asr.beam"):
        decoder = FlashlightBeam(small_vocab, files.kenlm_path, files.unigrams)
    assert "left out of the lexicon" in caplog.text
    assert 0 < decoder.lexicon_size < len(files.unigrams)


@pytest.mark.parametrize("decoder", ["beam", "flashlight"])
def test_an_lm_for_another_alphabet_is_refused(greek_lm, vocab, decoder):
    """A Greek LM (with some English words) for an English model: refused in one line, before KenLM loads."""
    files = load_lm_files(greek_lm)
    spellable = [w for w in files.unigrams if all(c in vocab for c in w)]
    assert 0 < len(spellable) < 0.5 * len(files.unigrams)  # some words fit: "none fit" would be too weak a check
    with pytest.raises(ValueError) as e:
        build_decoder(decoder, vocab, greek_lm)
    message = str(e.value)
    assert f"only {len(spellable)} of the {len(files.unigrams)} words of {files.kenlm_path}" in message
    assert "another alphabet" in message and "scripts/build_lm.py --model" in message and "\n" not in message


def test_binary_lm_needs_unigrams(lm_dir, vocab):
    files = load_lm_files(lm_dir)
    with pytest.raises(ValueError, match="unigrams="):
        PyCTCDecodeBeam(vocab, files.kenlm_path)
    with pytest.raises(ValueError, match="unigrams="):
        FlashlightBeam(vocab, files.kenlm_path)


def test_word_edits_and_oracle():
    assert word_edits("a b c d", "a x c d e") == 2
    assert word_edits("", "a b") == 2
    nbest = [[Hypothesis("a b", (), -1.0), Hypothesis("a c", (), -2.0)], [Hypothesis("x", (), 0.0)]]
    assert oracle_texts(["a c", "y"], nbest) == ["a c", "x"]


# ---------------------------------------------------------------------------------- noisy logits
@pytest.fixture(scope="module")
def noisy_set(sentences, vocab):
    """(references, log-probs) of held-out sentences, none of them in the LM text."""
    refs = sentences[-NUM_NOISY:]
    rng = np.random.default_rng(0)
    return refs, [noisy_log_probs(ref, vocab, rng) for ref in refs]


def test_beams_beat_greedy_and_agree(decoders, lm_dir, vocab, noisy_set):
    refs, log_probs = noisy_set
    texts, speed = {}, {}
    for name, decoder in decoders.items():
        if name == "pyctcdecode":  # the fork pool is part of what is tested
            decoder = build_decoder("beam", vocab, lm_dir, PyCTCDecodeOptions(num_processes=2))
        started = time.perf_counter()
        texts[name] = [h.text for h in decoder.decode_batch(log_probs)]
        speed[name] = len(refs) / (time.perf_counter() - started)
    wer = {name: error_rates(refs, hyps).wer for name, hyps in texts.items()}
    identical = np.mean([a == b for a, b in zip(texts["pyctcdecode"], texts["flashlight"])])
    cross_wer = error_rates(texts["flashlight"], texts["pyctcdecode"]).wer  # how far apart the two beams are
    logger.warning("noisy set of %d: WER %s; utt/s %s; pyctcdecode vs flashlight: %.0f%% identical, cross-WER %.3f, "
                   "WER diff %.3f", len(refs), {k: round(v, 3) for k, v in wer.items()},
                   {k: round(v, 1) for k, v in speed.items()}, 100 * identical, cross_wer,
                   wer["pyctcdecode"] - wer["flashlight"])
    assert 0.4 < wer["greedy"] < 1.0  # the set is hard enough to need the LM
    for name in ("pyctcdecode", "flashlight"):
        assert wer[name] < 0.6 * wer["greedy"], name
    # Loose: they differ by design on words outside the LM (~12% of these held-out words), which
    # pyctcdecode can output at a penalty and the lexicon cannot, and in pyctcdecode's weaker pruning.
    assert abs(wer["pyctcdecode"] - wer["flashlight"]) < 0.1
    assert cross_wer < 0.35 and identical > 0.1


def test_lexicon_free_with_token_lm_beats_greedy(tmp_path, sentences, vocab, noisy_set):
    refs, log_probs = noisy_set
    refs, log_probs = refs[:30], log_probs[:30]
    build_lm(sentences[:NUM_LM_SENTENCES], tmp_path, vocab=vocab, options=LMBuildOptions(order=6, unit="token"))
    decoder = build_decoder("flashlight", vocab, tmp_path, FlashlightOptions(lexicon_free=True))
    greedy = error_rates(refs, [h.text for h in GreedyCTC(vocab).decode_batch(log_probs)]).wer
    lexicon_free = error_rates(refs, [h.text for h in decoder.decode_batch(log_probs)]).wer
    assert lexicon_free < 0.6 * greedy
    # A token LM's "words" are characters: pyctcdecode and the lexicon refuse it.
    with pytest.raises(ValueError, match="token-level"):
        build_decoder("beam", vocab, tmp_path)
    with pytest.raises(ValueError, match="token-level"):
        build_decoder("flashlight", vocab, tmp_path)


def test_fork_pool_matches_in_process(lm_dir, vocab, noisy_set):
    _, log_probs = noisy_set
    sequential = build_decoder("beam", vocab, lm_dir).decode_batch(log_probs[:8])
    pooled = build_decoder("beam", vocab, lm_dir, PyCTCDecodeOptions(num_processes=2)).decode_batch(log_probs[:8])
    assert [h.text for h in pooled] == [h.text for h in sequential]


def test_flashlight_fork_pool_gives_the_in_process_hypotheses(lm_dir, vocab, noisy_set):
    """Same texts, word spans and scores, in input order (9 utterances: 8 interleaved chunks, one holds two)."""
    _, log_probs = noisy_set
    sequential = build_decoder("flashlight", vocab, lm_dir).decode_batch(log_probs[:9])
    pooled = build_decoder("flashlight", vocab, lm_dir, FlashlightOptions(num_processes=2)).decode_batch(log_probs[:9])
    assert pooled == sequential
    assert len({h.text for h in pooled}) > 5  # distinct utterances: an order mix-up would show
    with pytest.raises(ValueError, match="num_processes"):
        FlashlightOptions(num_processes=-1)


@pytest.mark.parametrize("name", ["pyctcdecode", "flashlight"])
def test_nbest_and_oracle_wer(decoders, noisy_set, name):
    refs, log_probs = noisy_set
    refs, log_probs = refs[:20], log_probs[:20]
    decoder = decoders[name]
    nbest = [decoder.decode_nbest(x, n=8) for x in log_probs]
    for hyps in nbest:
        assert 1 <= len(hyps) <= 8
        assert len({h.text for h in hyps}) == len(hyps)
        assert all(a.score >= b.score for a, b in zip(hyps, hyps[1:]))
    one_best = error_rates(refs, [hyps[0].text for hyps in nbest]).wer
    oracle = error_rates(refs, oracle_texts(refs, nbest)).wer
    assert oracle <= one_best
    if name == "flashlight":
        assert [hyps[0].text for hyps in nbest] == [decoder.decode(x).text for x in log_probs]


def test_empty_and_silent_input(decoders, vocab):
    silence = np.log(np.full((5, len(vocab)), 1e-4))
    silence[:, vocab["[PAD]"]] = 0.0
    for decoder in decoders.values():
        assert decoder.decode(np.zeros((0, len(vocab)), np.float32)) == Hypothesis("", (), 0.0)
        assert decoder.decode(silence).text == ""
        assert math.isfinite(decoder.decode(silence).score)


# ------------------------------------------------------------------------------- idle-frame skipping
def test_idle_frames_are_the_later_frames_of_blank_only_runs(vocab):
    a, blank = vocab["a"], vocab["[PAD]"]
    tokens = [a, blank, blank, blank, a, a, blank, blank]
    probs = np.full((len(tokens), len(vocab)), 1e-4)
    probs[np.arange(len(tokens)), tokens] = 0.9
    probs[3, a] = 0.05  # a blank frame where "a" is still possible (log 0.05 > -5): not idle
    log_probs = np.log(probs / probs.sum(axis=1, keepdims=True))
    idle = IdleFrames.drop(log_probs, blank, token_min_logp=-5.0)
    assert idle.kept.tolist() == [0, 1, 3, 4, 5, 6]  # frames 2 and 7 follow a blank-only frame
    np.testing.assert_array_equal(idle.log_probs, log_probs[[0, 1, 3, 4, 5, 6]])
    assert idle.dropped_blank_logp == pytest.approx(log_probs[2, blank] + log_probs[7, blank])
    assert (idle.original_start(3), idle.original_end(5)) == (4, 6)  # the "aa" held at frames 4-5


def paused_log_probs(refs: list[str], vocab: dict[str, int], seed: int = 1, floor: float = 1e-5) -> list[np.ndarray]:
    """Spelled log-probs of `refs` with long blank runs (other tokens at `floor`) before, between and after the
    words, as real CTC output."""
    rng = np.random.default_rng(seed)
    silence = np.log(np.full((1, len(vocab)), floor))
    silence[0, vocab["[PAD]"]] = 0.0
    space = np.log(np.full((2, len(vocab)), 1e-5))
    space[:, vocab["|"]] = 0.0
    paused = []
    for ref in refs:
        parts = [np.repeat(silence, rng.integers(5, 40), axis=0)]
        for word in ref.split():
            parts += [spelled_log_probs(word, vocab), space, np.repeat(silence, rng.integers(3, 25), axis=0)]
        paused.append(np.concatenate(parts).astype(np.float32))
    return paused


def test_skipping_idle_frames_changes_nothing_but_speed(lm_dir, vocab, noisy_set):
    """Same texts, word frames and scores with and without skipping, on speech with pauses between words."""
    refs, noisy = noisy_set
    paused = paused_log_probs(refs[:12], vocab)
    log_probs = paused + noisy[:12]
    dropped = [1 - len(IdleFrames.drop(x, vocab["[PAD]"], -5.0).kept) / len(x) for x in paused]
    assert np.mean(dropped) > 0.3
    fast = build_decoder("beam", vocab, lm_dir)
    full = build_decoder("beam", vocab, lm_dir, PyCTCDecodeOptions(skip_idle_frames=False))
    for x in log_probs:
        a, b = fast.decode(x), full.decode(x)
        assert (a.text, a.words) == (b.text, b.words)
        assert a.score == pytest.approx(b.score, rel=1e-6)
        nbest_a, nbest_b = fast.decode_nbest(x, n=5), full.decode_nbest(x, n=5)
        assert [(h.text, h.words) for h in nbest_a] == [(h.text, h.words) for h in nbest_b]
        assert [h.score for h in nbest_a] == pytest.approx([h.score for h in nbest_b], rel=1e-6)
    pooled = build_decoder("beam", vocab, lm_dir, PyCTCDecodeOptions(num_processes=2)).decode_batch(log_probs)
    assert [(h.text, h.words) for h in pooled] == [(h.text, h.words) for h in full.decode_batch(log_probs)]
    assert error_rates(refs[:12], [h.text for h in pooled[:12]]).wer < 0.2


def test_flashlight_skipping_idle_frames_keeps_texts_and_word_times(lm_dir, vocab, noisy_set):
    """flashlight with `idle_token_logp` well below -beam_threshold (25): every token it drops would be pruned by the
    threshold anyway, so texts, word frames (on the original frames) and scores equal the full search. (Nearer 0 it
    is an approximation: a token at -11.5 is inside the threshold and may take a beam slot; bench/decode.py measures
    what that costs in WER.)"""
    refs, noisy = noisy_set
    paused = paused_log_probs(refs[:12], vocab, floor=1e-16)  # non-blank tokens at -36.8 in the pauses
    full = build_decoder("flashlight", vocab, lm_dir)
    fast = build_decoder("flashlight", vocab, lm_dir, FlashlightOptions(idle_token_logp=-30.0))
    assert np.mean([1 - len(IdleFrames.drop(x, vocab["[PAD]"], -30.0).kept) / len(x) for x in paused]) > 0.3
    tied = 0
    for x in paused + noisy[:12]:
        a, b = fast.decode(x), full.decode(x)
        assert a.score == pytest.approx(b.score, rel=1e-5)
        nbest_a, nbest_b = fast.decode_nbest(x, n=5), full.decode_nbest(x, n=5)
        assert [h.score for h in nbest_a] == pytest.approx([h.score for h in nbest_b], rel=1e-5)
        # Hypotheses of exactly equal score (flashlight orders such ties arbitrarily, even between two calls of
        # one decoder) may swap places; every other text is the same.
        best_b = {h.text: h for h in nbest_b if h.score == pytest.approx(b.score, rel=1e-9)}
        assert a.text in best_b and {h.text for h in nbest_a} == {h.text for h in nbest_b}
        tied += len(best_b) > 1
        # Where a blank and a repeated token score alike, flashlight may keep either path: a word boundary may move
        # by a frame, never more.
        b = best_b[a.text]
        assert [w.word for w in a.words] == [w.word for w in b.words]
        assert all(abs(u.start - v.start) <= 1 and abs(u.end - v.end) <= 1 for u, v in zip(a.words, b.words))
    assert tied <= 2


def test_build_decoder_is_the_one_way_in(lm_dir, vocab, tmp_path, noisy_set):
    """asr.decoders.build_decoder: every name in DECODERS, the options of one decoder or both, the vocabulary read
    from a model directory when not given, and one-line refusals naming the fix."""
    from asr.decoders import DECODERS

    refs, log_probs = noisy_set
    assert DECODERS == ("greedy", "beam", "flashlight")
    model_dir = tmp_path / "model"  # a model directory: vocab.json beside the LM
    shutil.copytree(lm_dir, model_dir)
    (model_dir / "vocab.json").write_text(json.dumps(vocab))
    for name in DECODERS:
        given, read = build_decoder(name, vocab, lm_dir), build_decoder(name, None, model_dir)
        assert [h.text for h in given.decode_batch(log_probs[:5])] == [h.text for h in read.decode_batch(log_probs[:5])]
    narrow = PyCTCDecodeOptions(beam_width=4)
    assert build_decoder("beam", vocab, lm_dir, narrow).options == narrow
    assert build_decoder("beam", vocab, lm_dir, DecoderSettings(pyctcdecode=narrow)).options == narrow
    assert build_decoder("flashlight", vocab, lm_dir, FlashlightOptions(beam_size=7)).options.beam_size == 7
    with pytest.raises(ValueError, match="unknown; use one of greedy, beam, flashlight"):
        build_decoder("viterbi", vocab, lm_dir)
    with pytest.raises(FileNotFoundError, match="scripts/build_lm.py"):
        build_decoder("beam", vocab, tmp_path / "nothing")
