"""Word and character error rates (jiwer), corpus-level: total edits over total reference length."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import asdict, dataclass

import jiwer


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
