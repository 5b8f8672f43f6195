"""WER/CER on known pairs (agreeing with jiwer) and greedy CTC collapse rules on hand-made logits."""

import jiwer
import numpy as np
import pytest

from asr.beam import GreedyCTC
from asr.metrics import error_rates


@pytest.mark.parametrize(
    "refs, hyps, wer, cer",
    [
        (["the cat sat"], ["the cat sat"], 0.0, 0.0),
        (["the cat sat"], ["the bat sat"], 1 / 3, 1 / 11),
        (["the cat sat"], ["the cat"], 1 / 3, 4 / 11),
        (["a b", "c d e"], ["a b x", "c e"], 2 / 5, 4 / 8),
        (["hello world"], [""], 1.0, 1.0),
    ],
)
def test_error_rates_known_pairs(refs, hyps, wer, cer):
    r = error_rates(refs, hyps)
    assert r.wer == pytest.approx(wer)
    assert r.cer == pytest.approx(cer)
    assert r.wer == pytest.approx(jiwer.wer(refs, hyps))
    assert r.cer == pytest.approx(jiwer.cer(refs, hyps))


def test_error_counts():
    r = error_rates(["a b c d"], ["a x c d e"])
    assert (r.substitutions, r.deletions, r.insertions, r.ref_words) == (1, 0, 1, 4)


def test_error_rates_rejects_mismatch():
    with pytest.raises(ValueError, match="pair up"):
        error_rates(["a"], ["a", "b"])


VOCAB = {"[PAD]": 0, "[UNK]": 1, "|": 2, "a": 3, "b": 4, "l": 5}


def onehot(ids, v=len(VOCAB)):
    x = np.full((len(ids), v), -5.0, dtype=np.float32)
    x[np.arange(len(ids)), ids] = 5.0
    return x


@pytest.mark.parametrize(
    "frames, expected",
    [
        ([3, 3, 3], "a"),  # repeats merge
        ([3, 0, 3], "aa"),  # a blank separates a real repeat
        ([0, 0, 0], ""),  # all blank
        ([0, 3, 0, 2, 2, 0, 4, 4], "a b"),
        ([5, 5, 0, 5], "ll"),
    ],
)
def test_greedy_collapse(frames, expected):
    assert GreedyCTC(VOCAB).decode(onehot(frames)).text == expected


def test_greedy_decode_text_and_padding():
    # "ab|ba" then padding frames that would add "a" if not cut by the length
    frames = [3, 4, 2, 2, 4, 0, 3, 3, 3]
    logits = np.stack([onehot(frames), onehot([3, 0, 5, 5, 0, 5, 3, 3, 3])])
    texts = [h.text for h in GreedyCTC(VOCAB).decode_batch(logits, [7, 6])]
    assert texts == ["ab ba", "all"]
