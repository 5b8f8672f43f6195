"""Word and character error rates (jiwer), corpus-level: total edits over total reference length, and the
per-utterance edit counts they are sums of."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import asdict, dataclass

import jiwer
import numpy as np


@dataclass(frozen=True)
class ErrorRates:
    """Corpus-level error rates and the edit counts behind them."""

    wer: float
    cer: float
    substitutions: int  # word level
    deletions: int
    insertions: int
    ref_words: int
    ref_chars: int

    def to_dict(self) -> dict[str, float | int]:
        return asdict(self)


def error_rates(references: Sequence[str], hypotheses: Sequence[str]) -> ErrorRates:
    """WER and CER over a whole set (not the mean of per-utterance rates).

    Empty references are allowed only if some reference is non-empty; an empty hypothesis
    counts every reference word as deleted.
    """
    if len(references) != len(hypotheses):
        raise ValueError(f"{len(references)} references but {len(hypotheses)} hypotheses; they must pair up")
    refs = [r.strip() for r in references]
    hyps = [h.strip() for h in hypotheses]
    if not any(refs):
        raise ValueError("every reference is empty; WER is undefined")
    words = jiwer.process_words(refs, hyps)
    chars = jiwer.process_characters(refs, hyps)
    ref_words = sum(len(r.split()) for r in refs)
    ref_chars = sum(len(r) for r in refs)
    return ErrorRates(
        wer=words.wer,
        cer=chars.cer,
        substitutions=words.substitutions,
        deletions=words.deletions,
        insertions=words.insertions,
        ref_words=ref_words,
        ref_chars=ref_chars,
    )


@dataclass(frozen=True)
class UtteranceErrors:
    """Edit counts per utterance, the parts of corpus WER and CER: `word_errors.sum() / ref_words.sum()`.

    Each array is int64 [N], one entry per utterance in input order; errors are substitutions +
    deletions + insertions, as jiwer aligns them.
    """

    word_errors: np.ndarray
    ref_words: np.ndarray
    char_errors: np.ndarray
    ref_chars: np.ndarray


def utterance_errors(references: Sequence[str], hypotheses: Sequence[str]) -> UtteranceErrors:
    """Per-utterance word and character edit counts, from the same jiwer alignments as `error_rates`.

    Their sums give `error_rates`'s corpus WER and CER exactly; resampling them is what
    `asr.significance` does.
    """
    if len(references) != len(hypotheses):
        raise ValueError(f"{len(references)} references but {len(hypotheses)} hypotheses; they must pair up")
    refs = [r.strip() for r in references]
    hyps = [h.strip() for h in hypotheses]
    if not refs:
        raise ValueError("no utterances given; per-utterance errors need at least one")
    words = jiwer.process_words(refs, hyps)
    chars = jiwer.process_characters(refs, hyps)
    word_errors, ref_words = _edits_and_lengths(words.alignments, words.references)
    char_errors, ref_chars = _edits_and_lengths(chars.alignments, chars.references)
    return UtteranceErrors(word_errors, ref_words, char_errors, ref_chars)


def word_edits(reference: str, hypothesis: str) -> int:
    """Word-level edit distance of one pair (substitutions + deletions + insertions, jiwer's alignment)."""
    words = jiwer.process_words(reference, hypothesis)
    return words.substitutions + words.deletions + words.insertions


def _edits_and_lengths(alignments: Sequence[Sequence[jiwer.AlignmentChunk]],
                       references: Sequence[Sequence[str]]) -> tuple[np.ndarray, np.ndarray]:
    """Edits (int64 [N]) and reference lengths (int64 [N]) of jiwer's per-sentence alignments."""
    edits = np.zeros(len(alignments), dtype=np.int64)
    for i, chunks in enumerate(alignments):
        for c in chunks:
            if c.type == "insert":
                edits[i] += c.hyp_end_idx - c.hyp_start_idx
            elif c.type != "equal":  # substitute, delete: one edit per reference token
                edits[i] += c.ref_end_idx - c.ref_start_idx
    return edits, np.array([len(r) for r in references], dtype=np.int64)
