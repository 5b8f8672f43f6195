"""Word confidence under every decoder, calibrated on a dev set, and how good it is (ECE, errors caught).

Every decoder (greedy, pyctcdecode, flashlight) returns words with their frame spans (`asr.beam.WordSpan`),
so one rule scores them all from the acoustic model's frame posteriors inside the span:

    raw = exp(mean over the word's frames of log max_v p(v | frame))   # 1.0: every frame certain

(the decoders' LM scores are only given per hypothesis, not per word, so the LM's share is not in it).
A raw score is not a probability of being right; `Calibration` maps it to one with Platt scaling (a
logistic curve in logit(raw), 2 parameters, fitted on a dev set's words labelled right/wrong by alignment
with the references), one per decoder, stored beside the model in `confidence.json`:

    words = word_confidences(log_probs, hypothesis)                       # raw scores
    calib = fit_calibration(raw_scores, correct)                          # on a dev set
    save_calibrations(model_dir, {"greedy": calib, ...}); load_calibrations(model_dir)["beam"](raw)

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
_EPS = 1e-6


def word_confidences(log_probs: np.ndarray, hypothesis: Hypothesis) -> list[float]:
    """Raw confidence of each word of `hypothesis`: the geometric mean of the frames' top posterior in its span.

    Args:
        log_probs: float [T, V] log-softmax frames of one utterance (the decoders' input).
        hypothesis: any decoder's output; word spans index `log_probs`' frames.

    Returns:
        One value in (0, 1] per word, in order.
    """
    top = np.asarray(log_probs, dtype=np.float64).max(axis=-1)
    scores = []
    for word in hypothesis.words:
        start, end = max(0, word.start), min(len(top), max(word.end, word.start + 1))
        span = top[start:end] if end > start else top[max(0, min(start, len(top) - 1)):][:1]
        scores.append(float(np.exp(span.mean())) if len(span) else 0.0)
    return scores


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


@dataclass(frozen=True)
class Calibration:
    """Platt scaling: p(correct) = sigmoid(a * logit(raw) + b). The identity is a=1, b=0."""

    a: float = 1.0
    b: float = 0.0
    words: int = 0  # the dev words it was fitted on (0: not fitted)

    def __call__(self, raw: Sequence[float] | np.ndarray) -> np.ndarray:
        """Calibrated probabilities of the raw scores."""
        x = _logit(np.asarray(raw, dtype=np.float64))
        return 1.0 / (1.0 + np.exp(-(self.a * x + self.b)))

    def to_dict(self) -> dict[str, Any]:
        return {"method": "platt", **asdict(self)}


def fit_calibration(raw: Sequence[float], correct: Sequence[bool], iterations: int = 50) -> Calibration:
    """Fits Platt scaling by Newton's method on the log-loss (with a tiny ridge so one-class sets stay finite).

    Args:
        raw: raw word confidences from `word_confidences`, dev set.
        correct: whether each word was right.

    Raises:
        ValueError: no words, or lengths differ.
    """
    x, y = _logit(np.asarray(raw, dtype=np.float64)), np.asarray(correct, dtype=np.float64)
    if len(x) == 0 or len(x) != len(y):
        raise ValueError(f"calibration needs one label per word and at least one word, got {len(x)} and {len(y)}")
    features = np.stack([x, np.ones_like(x)], axis=1)
    w = np.array([1.0, 0.0])
    ridge = 1e-3 * np.eye(2)
    for _ in range(iterations):
        p = 1.0 / (1.0 + np.exp(-features @ w))
        gradient = features.T @ (p - y) + ridge @ w
        hessian = (features * (p * (1 - p))[:, None]).T @ features + ridge
        step = np.linalg.solve(hessian, gradient)
        w -= step
        if np.abs(step).max() < 1e-9:
            break
    return Calibration(float(w[0]), float(w[1]), len(x))


def _logit(p: np.ndarray) -> np.ndarray:
    p = np.clip(p, _EPS, 1 - _EPS)
    return np.log(p) - np.log1p(-p)


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
        return {name: Calibration(float(d["a"]), float(d["b"]), int(d.get("words", 0))) for name, d in decoders.items()
                if d.get("method") == "platt"}
    except (ValueError, KeyError, TypeError) as e:
        raise ValueError(f"{path} is not a word-confidence calibration ({e}); delete it or re-run "
                         "scripts/eval.py --calibrate") from e
