"""Word confidence under every decoder, calibrated on a dev set, and how good it is (ECE, errors caught).

Every decoder (greedy, pyctcdecode, flashlight) returns words with their frame spans (`asr.beam.WordSpan`),
so one rule describes them all from the acoustic model's frame posteriors inside the span
(`word_features`): the mean and the minimum over the word's frames of log max_v p(v | frame), and the
word's length in characters. The raw confidence is

    raw = exp(mean over the word's frames of log max_v p(v | frame))   # 1.0: every frame certain

For the beam decoders, which search with a KenLM, a fourth feature is the LM's share: log10 p(word | the
words before it) under the same LM (`WordLM`; pyctcdecode and flashlight give LM scores per hypothesis
only, so it is read from KenLM again). A raw score is not a probability of being right; `Calibration` maps
a word's features to one with a logistic regression (fitted on a dev set's words labelled right/wrong by
alignment with the references), one per decoder, stored beside the model in `confidence.json`:

    features = word_features(log_probs, hypothesis, lm=WordLM.from_dir(model_dir))   # [words, 4]
    calib = fit_calibration(dev_features, correct)                        # on a dev set
    save_calibrations(model_dir, {"greedy": calib, ...}); load_calibrations(model_dir)["beam"](features)

Why three features, not Platt scaling of the raw score alone: on the demo model's dev/test sets (200 + 200
utterances, /work/logs/conf_feat.py in NOTES), the raw score alone calibrated to ECE 0.052 (greedy) and
0.023 (beam); with the minimum frame and the length 0.040 and 0.016, and the least confident 10% of words
held more of the errors (17.6% vs 13.7% of greedy's, 19.7% vs 16.2% of beam's). The LM's share, measured on the
shipped base with a 4-gram from the natural corpus's LM text (fitted on the natural dev set, graded on its test
set; README "How sure is each word?" has the command): errors among the least confident 10% of words 19.6% -> 30.4% (beam) and
17.5% -> 28.5% (flashlight), ECE 0.020 -> 0.032 and 0.035 -> 0.022; for greedy, which decodes without the LM, it
would add little (21.4% -> 23.6%) and is not used.

Quality: expected calibration error (ECE, 10 equal-width bins, weighted by words per bin), a reliability
diagram, and the share of all word errors found by reviewing the lowest-confidence 10% of words.
"""

from __future__ import annotations

import json
import math
import os
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np

from asr.beam import Hypothesis

CONFIDENCE_FILE = "confidence.json"  # beside the model: one calibration per decoder
ECE_BINS = 10
REVIEW_FRACTION = 0.10  # "review the lowest 10% of words": the share of errors that finds


FEATURES = ("mean_log_posterior", "min_log_posterior", "characters")  # per word, in this order
LM_FEATURE = "lm_log10_prob"  # the beam decoders' fourth feature: log10 p(word | words before it) under their LM
KNOWN_FEATURES = {len(FEATURES): FEATURES, len(FEATURES) + 1: (*FEATURES, LM_FEATURE)}  # by column count


class WordLM:
    """A KenLM word LM read for the LM's share of a word's confidence.

    Args:
        kenlm_path: The `.arpa` or binary KenLM file the beam decoders search with.
    """

    def __init__(self, kenlm_path: str | os.PathLike) -> None:
        import kenlm

        self._model = kenlm.Model(str(kenlm_path))

    @classmethod
    def from_dir(cls, lm_dir: str | os.PathLike) -> WordLM:
        """The KenLM of an LM directory (a model directory holding one, or `scripts/build_lm.py`'s output)."""
        from asr.decoders import load_lm_files

        return cls(load_lm_files(lm_dir).kenlm_path)

    def log10_probs(self, words: Sequence[str]) -> np.ndarray:
        """float64 [len(words)]: log10 p(word | <s> and the words before it), KenLM's conditional scores."""
        scores = [score for score, _, _ in self._model.full_scores(" ".join(words), bos=True, eos=False)]
        return np.asarray(scores[: len(words)], dtype=np.float64)


def word_features(log_probs: np.ndarray, hypothesis: Hypothesis, lm: WordLM | None = None) -> np.ndarray:
    """What calibration reads of each word of `hypothesis`: see FEATURES (and LM_FEATURE with `lm`).

    Args:
        log_probs: float [T, V] log-softmax frames of one utterance (the decoders' input).
        hypothesis: any decoder's output; word spans index `log_probs`' frames (an empty span reads the
            frame at its start).
        lm: The LM the decoder searched with; adds the LM_FEATURE column.

    Returns:
        float64 [num_words, len(FEATURES)] (+1 column with `lm`).
    """
    top = np.asarray(log_probs, dtype=np.float64).max(axis=-1)
    rows = []
    for word in hypothesis.words:
        start = max(0, min(word.start, len(top) - 1))
        end = min(len(top), max(word.end, start + 1))
        span = top[start:end]
        rows.append((span.mean(), span.min(), len(word.word)) if len(span) else (-np.inf, -np.inf, len(word.word)))
    features = np.asarray(rows, dtype=np.float64).reshape(len(rows), len(FEATURES))
    if lm is None:
        return features
    return np.hstack([features, lm.log10_probs([w.word for w in hypothesis.words])[:, None]])


def raw_confidence(features: np.ndarray) -> np.ndarray:
    """The uncalibrated confidence of each word: exp of its mean log top-posterior, in (0, 1]."""
    return np.exp(_as_rows(features)[:, 0])


def _as_rows(features: np.ndarray) -> np.ndarray:
    """float64 [words, columns] of `features` (a flat array is read as rows of FEATURES)."""
    f = np.asarray(features, dtype=np.float64)
    return f if f.ndim == 2 else f.reshape(-1, len(FEATURES))


def word_confidences(log_probs: np.ndarray, hypothesis: Hypothesis) -> list[float]:
    """Raw confidence of each word of `hypothesis`: the geometric mean of the frames' top posterior in its span."""
    return raw_confidence(word_features(log_probs, hypothesis)).tolist()


def word_correctness(reference: str, hypothesis: str) -> list[bool]:
    """For each hypothesis word, whether the minimum-edit alignment with `reference` matches it to the same word."""
    import jiwer

    words = hypothesis.split()
    if not words:
        return []
    if not reference.split():
        return [False] * len(words)
    correct = [False] * len(words)
    for chunk in jiwer.process_words(reference, hypothesis).alignments[0]:
        if chunk.type == "equal":
            for i in range(chunk.hyp_start_idx, chunk.hyp_end_idx):
                correct[i] = True
    return correct


def labelled_words(references: Sequence[str], texts: Sequence[str],
                   features: Sequence[np.ndarray]) -> tuple[np.ndarray, np.ndarray]:
    """Every hypothesis word of a set: its features and whether it is right (`word_correctness`).

    An utterance whose features do not count its words (a decoder whose text and word spans disagree)
    is left out rather than mislabelled.

    Returns:
        (float64 [words, feature columns], bool [words]).
    """
    rows: list[np.ndarray] = []
    labels: list[bool] = []
    for reference, text, f in zip(references, texts, features):
        correct = word_correctness(reference, text)
        if len(correct) == len(f):
            rows.append(_as_rows(f))
            labels.extend(correct)
    stacked = np.concatenate(rows) if rows else np.zeros((0, len(FEATURES)))
    return stacked, np.asarray(labels, dtype=bool)


@dataclass(frozen=True)
class DecoderConfidence:
    """How well one decoder's word confidences predict its errors on a set, raw and after calibration."""

    decoder: str
    raw: ConfidenceQuality
    calibrated: ConfidenceQuality | None  # None: no calibration stored for this decoder
    calibration: Calibration | None

    def to_dict(self) -> dict[str, Any]:
        return {"decoder": self.decoder, "raw": self.raw.to_dict(),
                "calibrated": self.calibrated.to_dict() if self.calibrated else None,
                "calibration": self.calibration.to_dict() if self.calibration else None}


def decoder_confidence(decoder: str, references: Sequence[str], texts: Sequence[str],
                       features: Sequence[np.ndarray],
                       calibration: Calibration | None = None) -> DecoderConfidence | None:
    """The raw (and calibrated) quality of one decoder's confidences on a set; None when it produced no word."""
    rows, labels = labelled_words(references, texts, features)
    if not len(labels):
        return None
    calibrated = confidence_quality(calibration(rows), labels) if calibration is not None else None
    return DecoderConfidence(decoder, confidence_quality(raw_confidence(rows), labels), calibrated, calibration)


@dataclass(frozen=True)
class Calibration:
    """Logistic regression on a word's features: p(correct) = sigmoid(weights . features + bias)."""

    weights: tuple[float, ...]  # one per feature
    bias: float
    words: int = 0  # the dev words it was fitted on
    features: tuple[str, ...] = FEATURES  # FEATURES, or FEATURES + (LM_FEATURE,) for a beam decoder

    @property
    def uses_lm(self) -> bool:
        """Whether it reads the LM's share: pass `lm=` to `word_features`."""
        return LM_FEATURE in self.features

    def __call__(self, features: np.ndarray) -> np.ndarray:
        """Calibrated probabilities: float [words] for features [words, columns], the first len(weights) read."""
        f = _as_rows(features)[:, : len(self.weights)]
        if f.shape[1] != len(self.weights):
            raise ValueError(f"this calibration reads {', '.join(self.features)}; the words have {f.shape[1]} "
                             "feature columns (pass lm= to word_features)")
        z = np.clip(np.where(np.isfinite(f), f, -1e3) @ np.asarray(self.weights) + self.bias, -500, 500)
        return 1.0 / (1.0 + np.exp(-z))

    def to_dict(self) -> dict[str, Any]:
        return {"method": "logistic", "features": list(self.features), "weights": list(self.weights),
                "bias": self.bias, "words": self.words}


def fit_calibration(features: np.ndarray, correct: Sequence[bool], iterations: int = 100) -> Calibration:
    """Fits the logistic regression by damped Newton steps on the log-loss (a small ridge keeps one-class
    sets finite).

    Args:
        features: [words, len(FEATURES)] from `word_features`, dev set (+ the LM_FEATURE column).
        correct: whether each word was right.

    Raises:
        ValueError: no words, or lengths differ.
    """
    x = np.asarray(features, dtype=np.float64)
    x = np.where(np.isfinite(x), x, -1e3).reshape(len(x), -1) if x.size else x.reshape(0, len(FEATURES))
    y = np.asarray(correct, dtype=np.float64)
    if len(x) == 0 or len(x) != len(y):
        raise ValueError(f"calibration needs one label per word and at least one word, got {len(x)} and {len(y)}")
    design = np.hstack([x, np.ones((len(x), 1))])
    w = np.zeros(design.shape[1])
    ridge = 1e-3 * np.eye(len(w))

    def loss(weights: np.ndarray) -> float:
        z = design @ weights
        return float(np.sum(np.logaddexp(0.0, z) - y * z) + 0.5 * weights @ ridge @ weights)

    current = loss(w)
    for _ in range(iterations):
        p = 1.0 / (1.0 + np.exp(-np.clip(design @ w, -500, 500)))
        gradient = design.T @ (p - y) + ridge @ w
        hessian = (design * (p * (1 - p))[:, None]).T @ design + ridge
        step = np.linalg.solve(hessian, gradient)
        # damped: a full Newton step can overshoot when many words sit at the same extreme (greedy words whose
        # frames are all certain); undamped, Platt scaling diverged to a slope of 2e6 on the demo's dev set
        scale = 1.0
        while scale > 1e-6 and loss(w - scale * step) > current:
            scale /= 2
        w = w - scale * step
        previous, current = current, loss(w)
        if np.abs(scale * step).max() < 1e-9 or previous - current < 1e-10:
            break
    return Calibration(tuple(float(v) for v in w[:-1]), float(w[-1]), len(x), KNOWN_FEATURES[x.shape[1]])


@dataclass(frozen=True)
class ConfidenceQuality:
    """How well confidences predict correctness on a set of words."""

    words: int
    accuracy: float  # share of hypothesis words that are right
    mean_confidence: float
    ece: float  # expected calibration error over ECE_BINS equal-width bins
    errors_caught_at_10pct: float  # share of wrong words among the lowest-confidence 10% of all words
    bins: list[dict[str, float]]  # per bin: lower, upper, words, confidence, accuracy (the reliability diagram)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def confidence_quality(confidence: Sequence[float], correct: Sequence[bool]) -> ConfidenceQuality:
    """ECE, reliability bins and errors caught by reviewing the least confident `REVIEW_FRACTION` of words."""
    c, y = np.asarray(confidence, dtype=np.float64), np.asarray(correct, dtype=bool)
    if len(c) == 0 or len(c) != len(y):
        raise ValueError(f"confidence quality needs one label per word and at least one word, got {len(c)}, {len(y)}")
    edges = np.linspace(0.0, 1.0, ECE_BINS + 1)
    index = np.clip(np.digitize(c, edges[1:-1], right=True), 0, ECE_BINS - 1)
    bins, ece = [], 0.0
    for k in range(ECE_BINS):
        members = index == k
        n = int(members.sum())
        conf = float(c[members].mean()) if n else math.nan
        acc = float(y[members].mean()) if n else math.nan
        if n:
            ece += n / len(c) * abs(acc - conf)
        bins.append({"lower": float(edges[k]), "upper": float(edges[k + 1]), "words": n, "confidence": conf,
                     "accuracy": acc})
    errors = int((~y).sum())
    review = max(1, math.ceil(REVIEW_FRACTION * len(c)))
    lowest = np.argsort(c, kind="stable")[:review]
    caught = float((~y[lowest]).sum() / errors) if errors else 1.0
    return ConfidenceQuality(len(c), float(y.mean()), float(c.mean()), float(ece), caught, bins)


def plot_reliability(qualities: Mapping[str, ConfidenceQuality], path: str | os.PathLike, title: str = "") -> Path:
    """Reliability diagram: accuracy against confidence per bin, one line per decoder, the diagonal for reference."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from asr.files import atomic_path

    fig, ax = plt.subplots(figsize=(4.8, 4.4))
    ax.plot([0, 1], [0, 1], ":", color="gray", label="perfectly calibrated")
    for name, quality in qualities.items():
        filled = [b for b in quality.bins if b["words"]]
        ax.plot([b["confidence"] for b in filled], [b["accuracy"] for b in filled], "o-",
                label=f"{name}: ECE {quality.ece:.3f}, {100 * quality.errors_caught_at_10pct:.0f}% of errors "
                      f"in lowest 10%")
    ax.set(xlim=(0, 1), ylim=(0, 1), xlabel="word confidence", ylabel="share of words right", title=title)
    ax.legend(fontsize=7, loc="upper left")
    ax.grid(alpha=0.3)
    fig.tight_layout()
    path = Path(path)
    with atomic_path(path) as tmp:
        fig.savefig(tmp, dpi=110)
    plt.close(fig)
    return path


def save_calibrations(model_dir: str | os.PathLike, calibrations: Mapping[str, Calibration],
                      extra: Mapping[str, Any] | None = None) -> Path:
    """Writes (merges) `confidence.json` in the model directory: one calibration per decoder name."""
    from asr.files import write_text_atomic

    path = Path(model_dir) / CONFIDENCE_FILE
    stored = json.loads(path.read_text(encoding="utf-8")) if path.is_file() else {}
    stored.setdefault("decoders", {}).update({name: c.to_dict() for name, c in calibrations.items()})
    stored.update(extra or {})
    write_text_atomic(path, json.dumps(stored, indent=1) + "\n")
    return path


def load_calibrations(model_dir: str | os.PathLike) -> dict[str, Calibration]:
    """The calibrations in `confidence.json` (an empty dict when the model has none: raw scores are used).

    Raises:
        ValueError: the file is not what `save_calibrations` writes.
    """
    path = Path(model_dir) / CONFIDENCE_FILE
    if not path.is_file():
        return {}
    try:
        decoders = json.loads(path.read_text(encoding="utf-8"))["decoders"]
        known = {names: names for names in KNOWN_FEATURES.values()}
        return {name: Calibration(tuple(float(v) for v in d["weights"]), float(d["bias"]), int(d.get("words", 0)),
                                  known[tuple(d["features"])])
                for name, d in decoders.items() if d.get("method") == "logistic" and tuple(d.get("features", ()))
                in known and len(d["weights"]) == len(d["features"])}
    except (ValueError, KeyError, TypeError) as e:
        raise ValueError(f"{path} is not a word-confidence calibration ({e}); delete it or re-run "
                         "scripts/eval.py --calibrate") from e
