"""Word confidence (asr.confidence): raw scores and features from frame posteriors, logistic calibration, ECE and
errors caught."""

from __future__ import annotations

import json

import numpy as np
import pytest

from asr.beam import GreedyCTC, Hypothesis, WordSpan
from asr.confidence import (
    FEATURES,
    Calibration,
    confidence_quality,
    fit_calibration,
    load_calibrations,
    plot_reliability,
    save_calibrations,
    word_confidences,
    word_correctness,
    word_features,
)


def test_raw_confidence_is_the_geometric_mean_of_the_top_posterior_in_the_span():
    probs = np.full((6, 4), 0.1)
    probs[:3, 1] = 0.7  # frames 0-2: one token at 0.7
    probs[3:, :] = 0.25  # frames 3-5: flat
    hyp = Hypothesis("ab cd", (WordSpan("ab", 0, 3), WordSpan("cd", 3, 6)), 0.0)
    sure, unsure = word_confidences(np.log(probs), hyp)
    assert sure == pytest.approx(0.7) and unsure == pytest.approx(0.25)
    mixed = word_confidences(np.log(probs), Hypothesis("x", (WordSpan("x", 2, 4),), 0.0))[0]
    assert mixed == pytest.approx(np.sqrt(0.7 * 0.25))
    features = word_features(np.log(probs), Hypothesis("xyz", (WordSpan("xyz", 2, 4),), 0.0))
    assert features.shape == (1, len(FEATURES))
    assert features[0] == pytest.approx([np.log(np.sqrt(0.7 * 0.25)), np.log(0.25), 3])  # mean, min, characters


def test_word_correctness_follows_the_alignment():
    assert word_correctness("the cat sat", "the cat sat") == [True, True, True]
    assert word_correctness("the cat sat", "the bat sat") == [True, False, True]
    assert word_correctness("the cat sat", "the cat sat down") == [True, True, True, False]
    assert word_correctness("", "noise") == [False] and word_correctness("the cat", "") == []


def test_logistic_fit_recovers_known_weights_and_lowers_ece():
    rng = np.random.default_rng(0)
    n = 20_000
    mean = rng.uniform(-3.0, 0.0, n)
    features = np.stack([mean, mean - rng.uniform(0.0, 3.0, n), rng.integers(1, 12, n)], axis=1)
    truth = Calibration((1.5, 0.5, -0.1), 0.8)
    correct = rng.random(n) < truth(features)
    fitted = fit_calibration(features, correct)
    assert fitted.weights == pytest.approx(truth.weights, abs=0.1) and fitted.bias == pytest.approx(0.8, abs=0.15)
    raw = np.exp(features[:, 0])
    before, after = confidence_quality(raw, correct), confidence_quality(fitted(features), correct)
    assert before.ece > 0.1 and after.ece < 0.02
    assert fitted.words == n


def test_fit_does_not_diverge_when_many_words_are_certain():
    """Greedy words whose frames are all certain pile up at log-posterior 0; an undamped Newton fit of the demo's
    dev set ran off to a slope of 2e6 (every calibrated confidence 1.0)."""
    rng = np.random.default_rng(1)
    certain = np.zeros((3000, 3))
    certain[:, 2] = 4
    unsure = np.stack([rng.uniform(-2, -0.01, 2000), rng.uniform(-6, -2, 2000), rng.integers(1, 9, 2000)], axis=1)
    features = np.concatenate([certain, unsure])
    correct = np.concatenate([rng.random(3000) < 0.6, rng.random(2000) < 0.3])
    fitted = fit_calibration(features, correct)
    p = fitted(features)
    assert p.mean() == pytest.approx(correct.mean(), abs=0.01)  # a logistic fit with an intercept matches the rate
    assert p[:3000].mean() > p[3000:].mean() + 0.2 and 0.05 < p.min() and p.max() < 0.95
    assert max(abs(w) for w in fitted.weights) < 100


def test_ece_bins_and_errors_caught_by_hand():
    conf = [0.95, 0.95, 0.95, 0.95, 0.15, 0.15, 0.55, 0.55, 0.55, 0.55]
    right = [True, True, True, False, False, False, True, True, False, False]
    q = confidence_quality(conf, right)
    # bins: 0.9-1.0 holds 4 at 0.95 with 3/4 right (0.2 off); 0.1-0.2 2 at 0.15, 0 right (0.15); 0.5-0.6 4, 2/4 (0.05)
    assert q.ece == pytest.approx(0.4 * 0.2 + 0.2 * 0.15 + 0.4 * 0.05)
    assert [b["words"] for b in q.bins] == [0, 2, 0, 0, 0, 4, 0, 0, 0, 4]
    # the lowest 10% (1 word, at 0.15) is wrong: 1 of the 5 errors caught
    assert q.errors_caught_at_10pct == pytest.approx(0.2) and q.accuracy == pytest.approx(0.5)


def test_calibrations_are_stored_beside_the_model(tmp_path):
    greedy, beam = Calibration((0.5, 0.1, -0.2), 0.1, 10), Calibration((0.7, 0.2, 0.0), -0.2, 12)
    save_calibrations(tmp_path, {"greedy": greedy})
    save_calibrations(tmp_path, {"beam": beam}, extra={"data": "dev.jsonl"})
    loaded = load_calibrations(tmp_path)
    assert loaded == {"greedy": greedy, "beam": beam}
    assert json.loads((tmp_path / "confidence.json").read_text())["data"] == "dev.jsonl"
    assert load_calibrations(tmp_path / "elsewhere") == {}
    (tmp_path / "confidence.json").write_text("[1, 2]")
    with pytest.raises(ValueError, match="is not a word-confidence calibration"):
        load_calibrations(tmp_path)


def test_the_lm_share_is_kenlms_conditional_word_score(tmp_path):
    """word_features(..., lm=WordLM): a fourth column, log10 p(word | words before it) from the real KenLM; a
    calibration fitted on four columns reads them (and says so in confidence.json), one fitted on three ignores it."""
    import kenlm

    from asr.confidence import LM_FEATURE, WordLM
    from asr.text import build_vocab
    from lm.build import LMBuildOptions, build_lm

    text = ["the cat sat on the mat", "the dog sat on the mat", "a cat ate the rat"] * 20
    build_lm(text, tmp_path / "lm", vocab=build_vocab(text), options=LMBuildOptions(order=3, discount_fallback=True))
    lm = WordLM.from_dir(tmp_path / "lm")
    words = ["the", "cat", "sat", "zebra"]
    hypothesis = Hypothesis(" ".join(words), tuple(WordSpan(w, 2 * i, 2 * i + 2) for i, w in enumerate(words)), 0.0)
    log_probs = np.log(np.full((8, 5), 0.2))
    features = word_features(log_probs, hypothesis, lm)
    assert features.shape == (4, 4)
    np.testing.assert_array_equal(features[:, :3], word_features(log_probs, hypothesis))
    model = kenlm.Model(str(next((tmp_path / "lm" / "language_model").glob("lm.*"))))
    state, expected = kenlm.State(), []
    model.BeginSentenceWrite(state)
    for w in words:
        out = kenlm.State()
        expected.append(model.BaseScore(state, w, out))
        state = out
    np.testing.assert_allclose(features[:, 3], expected)
    assert features[1, 3] > features[3, 3]  # "cat" after "the" is likely; "zebra" is unknown
    four = fit_calibration(np.tile(features, (5, 1)), [True, True, True, False] * 5)
    assert four.uses_lm and four.features[-1] == LM_FEATURE
    save_calibrations(tmp_path, {"beam": four})
    assert load_calibrations(tmp_path) == {"beam": four}
    three = Calibration((2.0, 0.0, 0.0), 1.0)
    assert not three.uses_lm and three(features) == pytest.approx(three(features[:, :3]))
    with pytest.raises(ValueError, match="pass lm= to word_features"):
        four(features[:, :3])


def test_calibrated_greedy_confidence_of_the_shipped_base_on_real_speech(synth_corpus, tmp_path):
    """The real thing: the shipped base's greedy words on synthesised speech, calibrated on one half, judged on the
    other; confidence must separate right from wrong words and calibration must not make ECE worse."""
    from asr.audio import load_audio
    from asr.inference import iter_log_probs, load_model

    rows = [json.loads(line) for split in ("train", "dev", "test")
            for line in (synth_corpus / f"{split}.jsonl").read_text().splitlines()]
    loaded = load_model("assets/base_model")
    greedy = GreedyCTC(loaded.vocab)
    audios = [load_audio(synth_corpus / r["audio_filepath"]) for r in rows]
    features, right = [], []
    for i, log_probs in iter_log_probs(loaded, audios):
        hyp = greedy.decode(log_probs)
        features.append(word_features(log_probs, hyp))
        right.append(word_correctness(loaded.normalizer(rows[i]["text"]), hyp.text))
    half = len(rows) // 2
    fit_features, fit_right = np.concatenate(features[:half]), sum(right[:half], [])
    test_features, test_right = np.concatenate(features[half:]), np.array(sum(right[half:], []))
    test_raw = np.exp(test_features[:, 0])
    assert 0.2 < test_right.mean() < 0.95  # a model that makes errors, so there is something to predict
    assert test_raw[test_right].mean() > test_raw[~test_right].mean()  # right words are more confident
    # reviewing the least confident 10% of words finds more than the 10% of errors a random 10% would
    assert confidence_quality(test_raw, test_right).errors_caught_at_10pct > 0.10
    calibration = fit_calibration(fit_features, fit_right)
    before, after = confidence_quality(test_raw, test_right), confidence_quality(calibration(test_features), test_right)
    assert after.ece <= before.ece + 0.02
    png = plot_reliability({"greedy raw": before, "greedy calibrated": after}, tmp_path / "reliability.png")
    assert png.read_bytes()[:4] == b"\x89PNG"
