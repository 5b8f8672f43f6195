"""asr.significance and asr.breakdown: paired bootstrap intervals and WER by group, on hand-made error counts.

The end-to-end run of scripts/eval.py on real speech (intervals and breakdowns in results.json) is in
test_eval.py.
"""

from __future__ import annotations

import json
import tracemalloc

import numpy as np
import pytest

from asr.breakdown import (MISSING, breakdown_figure, breakdowns, duration_bucket, plot_breakdowns,
                           utterance_groups)
from asr.metrics import UtteranceErrors, error_rates, utterance_errors
from asr.significance import paired_bootstrap, percentile_interval, resample_counts, resampled_rates
from asr.sources import read_manifest

WORDS = np.array([8, 5, 12, 3, 9, 7, 10, 4, 6, 11, 5, 8, 9, 6, 7, 10, 4, 12, 3, 9])  # reference words of 20 utterances
BASE = np.array([1, 0, 2, 0, 1, 1, 3, 0, 0, 2, 1, 0, 1, 0, 2, 1, 0, 2, 0, 1])  # a decoder's word errors on them


def errors(word_errors, ref_words=WORDS) -> UtteranceErrors:
    """Hand-made counts: characters are words x 5 with the same share of errors."""
    word_errors, ref_words = np.asarray(word_errors), np.asarray(ref_words)
    return UtteranceErrors(word_errors, ref_words, 2 * word_errors, 5 * ref_words)


def width(interval) -> float:
    return interval.high - interval.low


def test_counts_are_draws_with_replacement():
    counts = resample_counts(20, 3000, seed=3)
    assert counts.shape == (3000, 20) and (counts.sum(axis=1) == 20).all() and counts.min() >= 0
    assert 0.9 < counts.mean(axis=0).min() and counts.mean(axis=0).max() < 1.1  # every utterance about once
    # an utterance is left out of a draw of 20 with probability (19/20)^20 = 0.358 (a permutation: never)
    assert (counts == 0).mean() == pytest.approx((19 / 20) ** 20, abs=0.02)


def test_vectorised_rates_are_the_corpus_wer_of_each_drawn_set():
    counts = resample_counts(len(WORDS), 50, seed=1)
    rates = resampled_rates(np.stack([BASE, BASE + 1]), WORDS, counts)
    for r, row in enumerate(counts):
        drawn = np.repeat(np.arange(len(WORDS)), row)  # the resample as a list of utterance indices
        assert rates[r, 0] == pytest.approx(BASE[drawn].sum() / WORDS[drawn].sum())
        assert rates[r, 1] == pytest.approx((BASE[drawn] + 1).sum() / WORDS[drawn].sum())


def test_interval_holds_the_point_estimate_which_is_the_corpus_wer():
    result = paired_bootstrap({"a": errors(BASE), "b": errors(BASE + 1)}, resamples=1000, seed=0)
    for name, errs in (("a", BASE), ("b", BASE + 1)):
        wer, cer = result.wer[name], result.cer[name]
        assert wer.estimate == pytest.approx(errs.sum() / WORDS.sum())
        assert cer.estimate == pytest.approx(2 * errs.sum() / (5 * WORDS.sum()))
        assert wer.low < wer.estimate < wer.high and cer.low < cer.estimate < cer.high
    assert result.resamples == 1000 and result.utterances == len(WORDS)


def test_interval_narrows_with_more_utterances():
    small = paired_bootstrap({"a": errors(BASE)}, resamples=1000, seed=0).wer["a"]
    large = paired_bootstrap({"a": errors(np.tile(BASE, 16), np.tile(WORDS, 16))}, resamples=1000, seed=0).wer["a"]
    assert large.estimate == pytest.approx(small.estimate)  # the same error rate, 16x the evidence
    assert width(large) < 0.4 * width(small)  # ~1/sqrt(16) = 0.25 in theory


def test_a_real_difference_is_significant_and_identical_decoders_are_not():
    worse = BASE + (np.arange(len(WORDS)) % 2)  # one more error on every other utterance
    result = paired_bootstrap({"good": errors(BASE), "worse": errors(worse), "copy": errors(BASE)}, seed=0)
    diff = {(d.a, d.b, d.metric): d for d in result.differences}
    assert [(d.a, d.b) for d in result.differences][::2] == [("good", "worse"), ("good", "copy"), ("worse", "copy")]
    real = diff["good", "worse", "wer"]
    assert real.significant and real.high < 0 and real.low < real.estimate < real.high
    assert real.estimate == pytest.approx((BASE.sum() - worse.sum()) / WORDS.sum())
    same = diff["good", "copy", "wer"]
    assert (same.estimate, same.low, same.high, same.significant) == (0.0, 0.0, 0.0, False)
    assert diff["worse", "copy", "cer"].significant and diff["worse", "copy", "cer"].low > 0


def test_equal_error_totals_on_different_utterances_are_not_significant():
    """Two decoders that err as often, on different utterances: the difference's interval straddles 0."""
    first, second = BASE.copy(), np.roll(BASE, 7)
    result = paired_bootstrap({"a": errors(first), "b": errors(second)}, seed=0)
    wer = result.differences[0]
    assert wer.metric == "wer" and wer.low < 0 < wer.high and not wer.significant


def test_the_pairing_narrows_the_difference():
    """Decoders that err on the same hard utterances: their difference is surer than their own intervals suggest."""
    result = paired_bootstrap({"a": errors(2 * BASE), "b": errors(2 * BASE + (BASE > 0))}, seed=0)
    diff = result.differences[0]
    assert diff.significant
    assert result.wer["a"].high > result.wer["b"].low  # the rows' own intervals overlap


def test_seeded_draws_are_reproducible():
    rows = {"a": errors(BASE), "b": errors(np.roll(BASE, 3))}
    assert paired_bootstrap(rows, seed=5) == paired_bootstrap(rows, seed=5)
    assert paired_bootstrap(rows, seed=5).wer != paired_bootstrap(rows, seed=6).wer


def test_rows_must_share_the_references():
    with pytest.raises(ValueError, match="same utterances"):
        paired_bootstrap({"a": errors(BASE), "b": errors(BASE, WORDS + 1)})
    with pytest.raises(ValueError, match="every reference is empty"):
        paired_bootstrap({"a": errors([1, 2], [0, 0])})


def large_set(n: int) -> dict[str, UtteranceErrors]:
    """Two decoders on `n` utterances: BASE's pattern repeated, the second one error worse on every third."""
    reps = -(-n // len(WORDS))
    base, words = np.tile(BASE, reps)[:n], np.tile(WORDS, reps)[:n]
    return {"a": errors(base, words), "b": errors(base + (np.arange(n) % 3 == 0), words)}


def test_streamed_draws_give_the_intervals_of_the_whole_count_matrix():
    """paired_bootstrap scores the draws chunk by chunk (20k utterances: 200 resamples a chunk); the chunk
    boundaries change nothing: its intervals are those of resample_counts' full matrix."""
    rows, resamples = large_set(20_000), 450  # two full chunks and a partial one
    result = paired_bootstrap(rows, resamples=resamples, seed=4)
    counts = resample_counts(20_000, resamples, seed=4)
    for metric, errs, lengths in (("wer", "word_errors", "ref_words"), ("cer", "char_errors", "ref_chars")):
        rates = resampled_rates(np.stack([getattr(rows[n], errs) for n in "ab"]), getattr(rows["a"], lengths), counts)
        low, high = percentile_interval(rates)
        got = getattr(result, metric)
        assert [(got[n].low, got[n].high) for n in "ab"] == [(low[0], high[0]), (low[1], high[1])]
        diff = next(d for d in result.differences if d.metric == metric)
        assert (diff.low, diff.high) == tuple(percentile_interval(rates[:, 0] - rates[:, 1]))


def test_memory_does_not_grow_with_the_resamples():
    """1000 resamples of 20k utterances as a matrix of counts would take 160 MB (int64), more again as float64;
    streamed, the peak is that of one chunk whatever the number of resamples."""
    rows = large_set(20_000)

    def peak(resamples: int) -> int:
        tracemalloc.start()  # numpy reports its array buffers to tracemalloc
        try:
            paired_bootstrap(rows, resamples=resamples, seed=0)
            return tracemalloc.get_traced_memory()[1]
        finally:
            tracemalloc.stop()

    one_chunk, five_chunks = peak(200), peak(1000)
    assert five_chunks < 1.25 * one_chunk, (one_chunk, five_chunks)
    assert five_chunks < 8 * 1000 * 20_000  # below the full int64 count matrix alone


def test_pairs_must_name_rows():
    with pytest.raises(ValueError, match="'c', which have no errors"):
        paired_bootstrap({"a": errors(BASE), "b": errors(BASE)}, resamples=10, pairs=[("a", "c")])


def test_utterance_errors_sum_to_the_corpus_rates():
    refs = ["the cat sat on the mat", "a dog", "hello there", "", "one two three"]
    hyps = ["the cat sat on mat", "the dog barked", "", "noise", "one two three"]
    counts, rates = utterance_errors(refs, hyps), error_rates(refs, hyps)
    assert counts.word_errors.tolist() == [1, 2, 2, 1, 0] and counts.ref_words.tolist() == [6, 2, 2, 0, 3]
    assert counts.word_errors.sum() / counts.ref_words.sum() == pytest.approx(rates.wer)
    assert counts.char_errors.sum() / counts.ref_chars.sum() == pytest.approx(rates.cer)
    assert counts.ref_chars.sum() == rates.ref_chars


# -------------------------------------------------------------------------------------------- breakdowns
def test_groupings_keep_category_like_columns_only():
    metadata = [{"channel": "phone" if i % 3 else "studio", "note": f"take {i}", "seen_voice": "true"}
                for i in range(6)]
    metadata[5].pop("channel")
    groups = utterance_groups(["b", "a", "b", None, "a", "b"], [0.5, 1.9, 2.0, 4.99, 12.0, 30.0], metadata)
    assert list(groups) == ["speaker", "duration", "channel"]  # `note`: one value per utterance; `seen_voice`: one
    assert groups["speaker"][3] == MISSING
    assert groups["duration"] == ["< 2 s", "< 2 s", "2-5 s", "2-5 s", "10-20 s", ">= 20 s"]
    assert groups["channel"] == ["studio", "phone", "phone", "studio", "phone", MISSING]
    assert duration_bucket(7.5) == "5-10 s"
    only_durations = utterance_groups([None] * 3, [1.0, 3.0, 3.5])
    assert list(only_durations) == ["duration"]


def test_group_wer_is_the_corpus_wer_of_its_utterances(tmp_path):
    refs = ["the cat sat on the mat", "a dog ran", "hello there friend", "one two three four", "good morning",
            "it is late"]
    hyps = {"greedy": ["the cat sat on mat", "the dog", "hello their friend", "one two three four", "good mourning",
                       "it is"],
            "beam": ["the cat sat on the mat", "a dog ran", "hello there friend", "one two three for", "good morning",
                     "it is late"]}
    speakers = ["spk10", "spk2", "spk10", "spk2", "spk10", "spk2"]
    errs = {name: utterance_errors(refs, h) for name, h in hyps.items()}
    tables = breakdowns(utterance_groups(speakers, [1.0] * 3 + [3.0] * 3), errs, resamples=300, seed=0)
    by_speaker, by_duration = tables
    assert by_speaker.by == "speaker" and [g.value for g in by_speaker.groups] == ["spk2", "spk10"]  # natural order
    for table in tables:
        labels = speakers if table.by == "speaker" else ["< 2 s"] * 3 + ["2-5 s"] * 3
        assert sum(g.utterances for g in table.groups) == len(refs)
        for group in table.groups:
            picked = [i for i, label in enumerate(labels) if label == group.value]
            for name, h in hyps.items():
                expected = error_rates([refs[i] for i in picked], [h[i] for i in picked]).wer
                interval = group.wer[name]
                assert interval.estimate == pytest.approx(expected)
                assert interval.low <= interval.estimate <= interval.high
    markdown = "\n".join(by_speaker.to_markdown(["greedy", "beam"]))
    assert "| speaker | utterances | words | greedy | beam |" in markdown
    png = plot_breakdowns(tables, tmp_path / "breakdown.png")
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    json.dumps([t.groups[0].wer["beam"].__dict__ for t in tables])  # plain numbers, JSON-ready
    points = breakdowns({"speaker": speakers}, errs, resamples=0)[0]  # eval --bootstrap 0: estimates alone
    assert [g.wer["greedy"].estimate for g in points.groups] == [g.wer["greedy"].estimate for g in by_speaker.groups]
    assert "[" not in "\n".join(points.to_markdown(["greedy", "beam"])[2:])


def test_breakdown_figure_puts_the_title_above_the_panels():
    """The run's title (data set, utterance count) is drawn above the first panel, not over its bars."""
    speakers = [f"spk{i}" for i in range(len(WORDS))]  # 20 groups: a tall figure, where the overlap showed
    durations = [1.0 + 0.6 * i for i in range(len(WORDS))]
    tables = breakdowns(utterance_groups(speakers, durations), {"a": errors(BASE), "b": errors(BASE + 1)},
                        resamples=50)
    fig = breakdown_figure(tables, title="test-clean (20 utterances)")
    fig.canvas.draw()
    renderer = fig.canvas.get_renderer()
    title = next(t for t in fig.texts if t.get_text() == "test-clean (20 utterances)")
    top = title.get_window_extent(renderer)
    panels = [ax.get_tightbbox(renderer) for ax in fig.axes]  # each panel with its own title and labels
    assert len(panels) == 2 and all(top.y0 >= panel.y1 for panel in panels), (top, panels)
    for ax, table in zip(fig.axes, tables):  # one bar per row and group, groups in the table's order
        assert len(ax.patches) == 2 * len(table.groups)
        assert [t.get_text() for t in ax.get_yticklabels()] == [f"{g.value} ({g.utterances})" for g in table.groups]


def test_manifest_columns_reach_utterance_metadata(tmp_path):
    rows = [{"id": "a", "audio_filepath": "a.wav", "text": "hi", "duration": 1.5, "speaker": "s1",
             "seen_voice": False, "accent": "scottish ", "snr": 12.5, "tags": ["x"], "empty": ""},
            {"id": "b", "audio_filepath": "b.wav", "text": "yo"}]
    path = tmp_path / "m.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    a, b = read_manifest(path)
    assert dict(a.metadata) == {"seen_voice": "false", "accent": "scottish"}  # strings and booleans, not the rest
    assert dict(b.metadata) == {} and a.to_dict()["metadata"] == {"seen_voice": "false", "accent": "scottish"}
