"""Paired bootstrap confidence intervals for corpus WER/CER and for the differences between decoders.

    errors = {run.decoder: utterance_errors(references, run.texts) for run in runs}
    result = paired_bootstrap(errors, resamples=1000, seed=0)
    result.wer["beam"].to_text()            # '12.3 [10.1, 14.6]' (percent)
    [d for d in result.differences if d.significant]

A resample draws N utterances with replacement from the N evaluated; its WER is the corpus WER of
that draw (sum of word errors / sum of reference words), not a mean of per-utterance rates. Every
decoder is scored on the same draws, so a difference is measured utterance for utterance (paired):
decoders that err on the same hard utterances get a narrow difference interval even when each
one's own interval is wide. The interval is the percentile one: the middle 95% of the resampled
values. A difference is significant when its interval excludes 0. The draws come from a seeded
generator, so the same inputs, seed and resample count give the same intervals.

Koehn (2004), "Statistical significance tests for machine translation evaluation", and Bisani & Ney
(2004), "Bootstrap estimates for confidence intervals in ASR performance evaluation", describe the method.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass

import numpy as np

from asr.defaults import BOOTSTRAP_RESAMPLES, BOOTSTRAP_SEED
from asr.metrics import UtteranceErrors

CONFIDENCE = 0.95  # the middle 95% of the resampled values
# Resamples are drawn and scored in chunks of at most this many utterance draws: the [chunk, N] count matrix
# stays at ~32 MB whatever the set size, instead of 800 MB for 1000 resamples of 100k utterances.
_MAX_DRAWS_PER_CHUNK = 4_000_000
METRICS = ("wer", "cer")


@dataclass(frozen=True)
class Interval:
    """A rate on the whole set and its bootstrap confidence interval (fractions, not percent)."""

    estimate: float
    low: float
    high: float

    def to_text(self) -> str:
        """`12.3 [10.1, 14.6]`: percent, one decimal."""
        return f"{100 * self.estimate:.1f} [{100 * self.low:.1f}, {100 * self.high:.1f}]"


@dataclass(frozen=True)
class Difference:
    """`a`'s rate minus `b`'s on the same utterances, with its paired bootstrap interval."""

    a: str
    b: str
    metric: str  # wer or cer
    estimate: float
    low: float
    high: float
    significant: bool  # the interval excludes 0: the sign of the difference is not an accident of the sample

    def to_text(self) -> str:
        """`+2.1 [+0.4, +3.9]`: percentage points, signed."""
        return f"{100 * self.estimate:+.1f} [{100 * self.low:+.1f}, {100 * self.high:+.1f}]"


@dataclass(frozen=True)
class BootstrapResult:
    """Intervals of every row's WER and CER, and of every pair's differences, from one set of draws."""

    resamples: int
    seed: int
    confidence: float
    utterances: int
    wer: dict[str, Interval]
    cer: dict[str, Interval]
    differences: list[Difference]  # for each pair (a, b) in row order: WER then CER


def resample_counts(n: int, resamples: int, seed: int = BOOTSTRAP_SEED) -> np.ndarray:
    """How often each of `n` utterances is drawn in each resample (with replacement).

    Holds all draws at once (8 * resamples * n bytes); `paired_bootstrap` streams the same draws in chunks.

    Returns:
        int64 [resamples, n]; every row sums to n.
    """
    _check_draws(n, resamples)
    return np.concatenate(list(_count_chunks(n, resamples, seed)))


def _check_draws(n: int, resamples: int) -> None:
    """Raise ValueError unless there is something to resample."""
    if n < 1 or resamples < 1:
        raise ValueError(f"resampling needs at least one utterance and one resample; got n={n}, "
                         f"resamples={resamples}")


def _count_chunks(n: int, resamples: int, seed: int) -> Iterator[np.ndarray]:
    """`resample_counts`'s rows, int64 [<= chunk, n] at a time, so no [resamples, n] matrix is ever held."""
    rng = np.random.default_rng(seed)
    chunk = max(1, _MAX_DRAWS_PER_CHUNK // n)
    for start in range(0, resamples, chunk):
        rows = min(chunk, resamples - start)
        draws = rng.integers(0, n, size=(rows, n))
        draws += n * np.arange(rows)[:, None]  # row r's draws in [r*n, (r+1)*n), in place: one buffer fewer
        yield np.bincount(draws.ravel(), minlength=rows * n).reshape(rows, n)


def resampled_rates(errors: np.ndarray, lengths: np.ndarray, counts: np.ndarray) -> np.ndarray:
    """Corpus error rates of each resample: sum of drawn errors / sum of drawn reference lengths.

    Args:
        errors: [D, N] edit counts of D rows (decoders) on N utterances.
        lengths: [N] reference lengths (words or characters), shared by the rows.
        counts: [R, N] draws per utterance (`resample_counts`).

    Returns:
        float64 [R, D]; NaN where a resample drew only empty references (its rate is undefined).
    """
    errors = np.atleast_2d(np.asarray(errors, dtype=np.float64))
    if errors.shape[1] != len(lengths) or counts.shape[1] != len(lengths):
        raise ValueError(f"errors {errors.shape}, lengths {np.shape(lengths)} and counts {counts.shape} must all "
                         "cover the same utterances (the last axis)")
    weights = counts.astype(np.float64)
    drawn_errors = weights @ errors.T  # [R, D]
    drawn_lengths = weights @ np.asarray(lengths, dtype=np.float64)  # [R]
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(drawn_lengths[:, None] > 0, drawn_errors / drawn_lengths[:, None], np.nan)


def percentile_interval(samples: np.ndarray, confidence: float = CONFIDENCE) -> tuple[np.ndarray, np.ndarray]:
    """The percentile interval of `samples` ([R] or [R, D] along axis 0), NaNs ignored."""
    tail = 100 * (1 - confidence) / 2
    low, high = np.nanpercentile(samples, [tail, 100 - tail], axis=0)
    return low, high


def paired_bootstrap(errors: Mapping[str, UtteranceErrors], resamples: int = BOOTSTRAP_RESAMPLES,
                     seed: int = BOOTSTRAP_SEED, confidence: float = CONFIDENCE,
                     pairs: Sequence[tuple[str, str]] | None = None) -> BootstrapResult:
    """Intervals of each row's WER/CER and of each pair's differences, every row scored on the same draws.

    Args:
        errors: Row name -> its per-utterance errors on the same references (`asr.metrics.utterance_errors`).
        resamples: Number of resamples (R).
        seed: Seed of the draws.
        confidence: Coverage of the intervals.
        pairs: (a, b) rows to compare as a - b; None compares every pair in the mapping's order.

    Raises:
        ValueError: no rows, rows of different lengths or references, a bad confidence, a pair naming an
            unknown row, or every reference empty.
    """
    names = list(errors)
    if not names:
        raise ValueError("no rows to bootstrap; pass at least one decoder's errors")
    if not 0 < confidence < 1:
        raise ValueError(f"confidence is {confidence}; use a fraction such as 0.95")
    first = errors[names[0]]
    for name in names[1:]:
        e = errors[name]
        if not (np.array_equal(e.ref_words, first.ref_words) and np.array_equal(e.ref_chars, first.ref_chars)):
            raise ValueError(f"{name!r} was scored on other references than {names[0]!r}; a paired bootstrap needs "
                             "every row on the same utterances, in the same order")
    if first.ref_words.sum() == 0:
        raise ValueError("every reference is empty; WER is undefined")
    pairs = list(pairs) if pairs is not None else [(a, b) for i, a in enumerate(names) for b in names[i + 1:]]
    unknown = sorted({name for pair in pairs for name in pair} - set(names))
    if unknown:
        raise ValueError(f"pairs name {', '.join(map(repr, unknown))}, which have no errors; compare rows among "
                         f"{', '.join(map(repr, names))}")
    n = len(first.ref_words)
    _check_draws(n, resamples)
    index = {name: i for i, name in enumerate(names)}
    columns = {"wer": ("word_errors", "ref_words"), "cer": ("char_errors", "ref_chars")}
    tables = {metric: np.stack([getattr(errors[name], errs) for name in names])  # [D, N]
              for metric, (errs, _) in columns.items()}
    lengths = {metric: getattr(first, length) for metric, (_, length) in columns.items()}
    parts: dict[str, list[np.ndarray]] = {metric: [] for metric in METRICS}
    for counts in _count_chunks(n, resamples, seed):  # every metric and row on each chunk of draws: paired
        for metric in METRICS:
            parts[metric].append(resampled_rates(tables[metric], lengths[metric], counts))
    intervals: dict[str, dict[str, Interval]] = {}
    differences: list[Difference] = []
    by_metric: dict[str, tuple[np.ndarray, np.ndarray]] = {}  # metric -> (estimates [D], resampled rates [R, D])
    for metric in METRICS:
        estimates = tables[metric].sum(axis=1) / max(lengths[metric].sum(), 1)
        rates = np.concatenate(parts[metric])  # [R, D]
        low, high = percentile_interval(rates, confidence)
        intervals[metric] = {name: Interval(float(estimates[i]), float(low[i]), float(high[i]))
                             for i, name in enumerate(names)}
        by_metric[metric] = (estimates, rates)
    for a, b in pairs:
        for metric in METRICS:
            estimates, rates = by_metric[metric]
            i, j = index[a], index[b]
            low, high = percentile_interval(rates[:, i] - rates[:, j], confidence)
            differences.append(Difference(a, b, metric, float(estimates[i] - estimates[j]), float(low), float(high),
                                          significant=bool(low > 0 or high < 0)))
    return BootstrapResult(resamples=resamples, seed=seed, confidence=confidence, utterances=len(first.ref_words),
                           wer=intervals["wer"], cer=intervals["cer"], differences=differences)
