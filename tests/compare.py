"""Comparisons several test files share."""

from __future__ import annotations

import numpy as np


def same_transcripts(rows: list[dict], others: list[dict]) -> None:
    """Two runs' transcripts agree: paths, texts and word times exactly; word confidences to float rounding (the
    backends' log-probs agree to ~1e-5, not bit for bit)."""
    timed = lambda rs: [(r["path"], r["text"], [(w["word"], w["start"], w["end"]) for w in r["words"]]) for r in rs]
    assert timed(rows) == timed(others)
    confidences = lambda rs: [w["confidence"] for r in rs for w in r["words"]]
    assert np.allclose(confidences(rows), confidences(others), atol=1e-3)
