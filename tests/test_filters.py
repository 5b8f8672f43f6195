"""asr.filters: every kind of broken item on real audio is dropped with its reason, and nothing else is."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
from transformers import Wav2Vec2Config

import asr.filters
from asr.constants import SAMPLE_RATE, UNK
from asr.filters import (
    Drop,
    FilterConfig,
    PreparedItem,
    apply_filters,
    check_utterance,
    ctc_min_frames,
    write_report,
)
from asr.model import frames_fn_for
from asr.sources import SourceConfig, Utterance, load_source
from asr.text import TextNormalizer, build_vocab, encode

NORMALIZE = TextNormalizer()
FILTERS = FilterConfig(min_duration=0.5, max_duration=6.0)
FRAMES = frames_fn_for(Wav2Vec2Config())  # the real wav2vec2 feature encoder: 320 samples per frame


@pytest.fixture(scope="module")
def good(synth_corpus: Path) -> list[Utterance]:
    """The real train utterances (1-6 s each)."""
    return load_source(SourceConfig(path=str(synth_corpus / "train.jsonl")))


@pytest.fixture(scope="module")
def vocab(good: list[Utterance]) -> dict[str, int]:
    """Character vocabulary of the train transcripts (a-z, apostrophe)."""
    return build_vocab(NORMALIZE(u.text) for u in good)


@pytest.fixture(scope="module")
def broken(good: list[Utterance], tmp_path_factory: pytest.TempPathFactory) -> dict[str, tuple[Utterance, str]]:
    """name -> (utterance made from real audio, the reason it must be dropped for)."""
    d = tmp_path_factory.mktemp("broken")
    src = Path(good[0].audio_path)
    samples, rate = sf.read(src, dtype="float32")
    (d / "empty.wav").write_bytes(b"")
    (d / "truncated.wav").write_bytes(src.read_bytes()[: src.stat().st_size // 3])
    sf.write(d / "truncated_src.flac", samples, rate, subtype="PCM_16")
    (d / "truncated.flac").write_bytes((d / "truncated_src.flac").read_bytes()[:4000])
    (d / "text.wav").write_text("this is a text file, not audio\n" * 20)
    nan = samples.copy()
    nan[1000] = np.nan
    sf.write(d / "nan.wav", nan, rate, subtype="FLOAT")
    sf.write(d / "short.wav", samples[: int(0.3 * rate)], rate, subtype="PCM_16")
    sf.write(d / "long.wav", np.tile(samples, 4)[: int(6.5 * rate)], rate, subtype="PCM_16")
    sf.write(d / "ctc.wav", samples[: int(0.8 * rate)], rate, subtype="PCM_16")
    text = good[0].text
    return {
        "missing": (Utterance("missing", text, str(d / "nope.wav")), "missing_audio"),
        "no_audio": (Utterance("no_audio", text), "missing_audio"),
        "empty": (Utterance("empty", text, str(d / "empty.wav")), "unreadable_audio"),
        "truncated_wav": (Utterance("truncated_wav", text, str(d / "truncated.wav")), "unreadable_audio"),
        "truncated_flac": (Utterance("truncated_flac", text, str(d / "truncated.flac")), "unreadable_audio"),
        "truncated_bytes": (Utterance("truncated_bytes", text, audio_bytes=(d / "truncated.wav").read_bytes()),
                            "unreadable_audio"),
        "text_as_wav": (Utterance("text_as_wav", text, str(d / "text.wav")), "unreadable_audio"),
        "nan": (Utterance("nan", text, str(d / "nan.wav")), "unreadable_audio"),
        "punctuation_only": (Utterance("punctuation_only", " ?! ... -- ", str(src)), "empty_transcript"),
        "too_short": (Utterance("too_short", "hi", str(d / "short.wav")), "too_short"),
        "too_long": (Utterance("too_long", text, str(d / "long.wav")), "too_long"),
        # 0.8 s -> 39 frames at 20 ms; two sentences of 40+ characters need far more.
        "ctc_infeasible": (Utterance("ctc_infeasible", f"{text} {text}",
                                     str(d / "ctc.wav")), "ctc_infeasible"),
        "unknown_chars": (Utterance("unknown_chars", "naïve café", str(src)), "unknown_chars"),
    }


def test_ctc_min_frames_counts_a_blank_between_repeats():
    assert ctc_min_frames([]) == 0
    assert ctc_min_frames([5, 6, 7]) == 3
    assert ctc_min_frames([5, 5, 6, 6, 6]) == 8


@pytest.mark.parametrize("name", [
    "missing", "no_audio", "empty", "truncated_wav", "truncated_flac", "truncated_bytes", "text_as_wav", "nan",
    "punctuation_only", "too_short", "too_long", "ctc_infeasible", "unknown_chars",
])
def test_each_broken_item_is_dropped_with_its_reason(name, broken, vocab):
    utt, reason = broken[name]
    result = check_utterance(utt, NORMALIZE, vocab, FilterConfig(0.5, 6.0, drop_unknown_chars=True), FRAMES)
    assert isinstance(result, Drop), result
    assert (result.id, result.reason) == (name, reason), result.detail
    assert result.audio == utt.audio_path and result.detail


def test_ctc_check_uses_the_real_frame_rate(broken, vocab):
    utt, _ = broken["ctc_infeasible"]
    frames = FRAMES(int(0.8 * SAMPLE_RATE))
    assert frames == 39  # (12800 - 400) // 320 + 1 after the 7 conv layers
    drop = check_utterance(utt, NORMALIZE, vocab, FILTERS, FRAMES)
    assert f"{frames} output frames" in drop.detail
    # Without a frame function (or with enough audio) the same transcript is kept.
    assert isinstance(check_utterance(utt, NORMALIZE, vocab, FILTERS, None), PreparedItem)


def test_unknown_chars_become_unk_unless_dropped(broken, vocab):
    utt, _ = broken["unknown_chars"]
    item = check_utterance(utt, NORMALIZE, vocab, FILTERS, FRAMES)
    assert isinstance(item, PreparedItem)
    assert item.text == "naïve café" and item.labels.count(vocab[UNK]) == 2


def test_good_items_are_kept_with_exact_duration_and_labels(good, vocab):
    for utt in good:
        item = check_utterance(utt, NORMALIZE, vocab, FILTERS, FRAMES)
        assert isinstance(item, PreparedItem), item
        assert item.labels == encode(NORMALIZE(utt.text), vocab)
        assert item.duration == pytest.approx(sf.info(utt.audio_path).duration)
        assert item.duration == pytest.approx(utt.duration, abs=1e-3)  # the manifest's rounded value


def test_without_verify_audio_only_headers_are_read(good, broken, vocab):
    cfg = FilterConfig(0.5, 6.0, verify_audio=False)
    assert check_utterance(broken["nan"][0], NORMALIZE, vocab, cfg, FRAMES).__class__ is PreparedItem
    assert check_utterance(broken["text_as_wav"][0], NORMALIZE, vocab, cfg, FRAMES).reason == "unreadable_audio"
    assert isinstance(check_utterance(good[0], NORMALIZE, vocab, cfg, FRAMES), PreparedItem)


def test_a_crashing_decoder_costs_one_item_not_the_run(good, vocab, monkeypatch):
    def explode(source):
        raise RuntimeError("decoder crashed")

    monkeypatch.setattr(asr.filters, "load_audio", explode)
    drop = check_utterance(good[0], NORMALIZE, vocab, FILTERS, FRAMES)
    assert (drop.reason, drop.detail) == ("unreadable_audio", "RuntimeError: decoder crashed")


def test_report_lists_every_drop_and_counts_add_up(good, broken, vocab, tmp_path):
    utterances = [u for u, _ in broken.values()] + good
    cfg = FilterConfig(0.5, 6.0, drop_unknown_chars=True)
    kept, dropped = apply_filters(utterances, NORMALIZE, vocab, cfg, FRAMES, num_workers=1)
    assert len(kept) + len(dropped) == len(utterances)
    assert [k.id for k in kept] == [u.id for u in good]
    counts = write_report(dropped, tmp_path / "r" / "dropped.jsonl", total=len(utterances))
    lines = [json.loads(line) for line in (tmp_path / "r" / "dropped.jsonl").read_text().splitlines()]
    assert [set(line) for line in lines] == [{"id", "audio", "reason", "detail"}] * len(broken)
    assert {line["id"]: line["reason"] for line in lines} == {name: reason for name, (_, reason) in broken.items()}
    assert sum(counts.values()) == len(broken) and counts["unreadable_audio"] == 6
    assert not list((tmp_path / "r").glob("*.tmp"))


def test_parallel_filtering_matches_serial(good, broken, vocab):
    base = [u for u, _ in broken.values()] + good
    # >= 64 items so that the process pool is really used.
    utterances = [Utterance(f"{u.id}#{k}", u.text, u.audio_path, u.audio_bytes) for k in range(3) for u in base]
    assert len(utterances) >= asr.filters.PARALLEL_MIN_ITEMS
    serial = apply_filters(utterances, NORMALIZE, vocab, FILTERS, FRAMES, num_workers=1)
    parallel = apply_filters(utterances, NORMALIZE, vocab, FILTERS, FRAMES, num_workers=2)
    assert parallel == serial
    assert len(serial[0]) == 3 * (len(good) + 1)  # the unknown_chars item is kept as [UNK] here


def test_filter_config_rejects_impossible_ranges():
    with pytest.raises(ValueError, match=r"0 <= min_duration < max_duration, got 5.0 and 2.0"):
        FilterConfig(min_duration=5.0, max_duration=2.0)
