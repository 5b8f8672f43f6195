"""Greedy (best-path) CTC decoding on logits; beam search with an n-gram LM is in asr/beam.py."""

from __future__ import annotations

import numpy as np


def greedy_ids(logits: np.ndarray, blank_id: int, length: int | None = None) -> list[int]:
    """Best-path token ids: argmax per frame, merge repeats, drop blanks.

    Args:
        logits: [T, V] scores of one utterance (log-probs or raw logits).
        blank_id: the CTC blank (our `[PAD]`).
        length: valid frames (the rest is padding); None uses all T.
    """
    best = np.asarray(logits)[: length if length is not None else None].argmax(axis=-1)
    if best.size == 0:
        return []
    keep = np.ones(best.shape, dtype=bool)
    keep[1:] = best[1:] != best[:-1]  # a repeat collapses unless a blank separates it
    return [int(t) for t in best[keep] if t != blank_id]


def ids_to_text(ids: list[int], id_to_token: dict[int, str], word_delimiter: str = "|", unk: str = "[UNK]") -> str:
    """Joins token ids into text: the word delimiter becomes a space; spaces are collapsed."""
    pieces = [id_to_token[i] for i in ids]
    text = "".join(" " if p == word_delimiter else ("" if p == unk else p) for p in pieces)
    return " ".join(text.split())


def greedy_decode(logits: np.ndarray, lengths: np.ndarray | None, vocab: dict[str, int], blank_id: int) -> list[str]:
    """Greedy transcripts of a batch.

    Args:
        logits: [B, T, V].
        lengths: [B] valid frames per utterance, or None when nothing is padded.
    """
    id_to_token = {i: t for t, i in vocab.items()}
    return [
        ids_to_text(greedy_ids(logits[b], blank_id, None if lengths is None else int(lengths[b])), id_to_token)
        for b in range(len(logits))
    ]
