"""CTC segmentation (asr.align, scripts/align.py) on real synthesised speech joined into one recording.

The recording is 4 held-out utterances read by voices assets/base_model knows (conftest.base_heldout_corpus),
back to back, so every boundary is known exactly; the shipped base model gives the log-probs (the tiny
trained fixture is retrained whenever asr/ changes and knows one voice only). Its output is computed once
per module (about 10 s of audio in 6 s chunks, so chunk stitching is part of what is tested).
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf

from asr.align import (AlignOptions, JoinedRecording, align_log_probs, boundary_errors,
                       cut_segments, join_recordings, prepare_lines, recording_log_probs, split_text)
from asr.audio import load_audio
from asr.audio import stream_audio
from asr.constants import EXIT_USAGE, SAMPLE_RATE
from asr.defaults import DEFAULT_MIN_SCORE
from asr.inference import load_model
from asr.sources import SourceConfig, load_source

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "scripts"))
import align as align_script  # noqa: E402  (scripts/align.py)

BASE_MODEL = ROOT / "assets" / "base_model"
COUNT = 4  # utterances joined: ~10 s, several chunks of OPTIONS.chunk_seconds
OPTIONS = AlignOptions(chunk_seconds=6.0, overlap_seconds=2.0)
# A found boundary lies in the pause between two files, not at its middle exactly: the base model measured
# within 0.15 s on 80 boundaries of 40 Piper utterances (bench/align.py); TTS pauses are 0.1-0.4 s on
# each side, so 0.25 s still fails any boundary put inside the neighbouring utterance's speech.
TOLERANCE_SECONDS = 0.25
# Where the speech really is: a boundary must fall in the silence between two utterances' voiced audio (10 ms
# frames within 40 dB of the loudest), give or take SPEECH_MARGIN_SECONDS: a CTC model fires an utterance's first
# letter at a spike some frames after the sound begins (the stage-5 base put one cut 0.18 s after a voiced onset),
# so up to one phone (~0.2 s) of onset can fall on the wrong side; a cut inside a word would be far beyond it.
SPEECH_MARGIN_SECONDS = 0.2
WRONG_LINE = "seven purple elephants quietly repaired the broken submarine engine"


@pytest.fixture(scope="module")
def joined(base_heldout_corpus: Path, tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, JoinedRecording, list[str]]:
    """(the joined WAV, its true spans, its lines)."""
    rows = [json.loads(line) for line in (base_heldout_corpus / "test.jsonl").read_text().splitlines()][:COUNT]
    path = tmp_path_factory.mktemp("align") / "joined.wav"
    recording = join_recordings([base_heldout_corpus / r["audio_filepath"] for r in rows], path, [0.0] * COUNT)
    return path, recording, [r["text"] for r in rows]


@pytest.fixture(scope="module")
def loaded():
    return load_model(BASE_MODEL)


@pytest.fixture(scope="module")
def log_probs(joined, loaded) -> np.ndarray:
    """[T, V] of the joined recording, streamed in 1.3 s blocks."""
    return recording_log_probs(loaded, stream_audio(joined[0], block_seconds=1.3), OPTIONS)[0]


def _align(lines: list[str], log_probs: np.ndarray, loaded):
    usable, _ = prepare_lines(lines, loaded.normalizer, loaded.vocab)
    return align_log_probs(log_probs, usable, loaded.blank_id, loaded.seconds_per_frame, OPTIONS)


def test_segments_follow_the_text_at_the_known_boundaries(joined, loaded, log_probs):
    path, recording, lines = joined
    segments = _align(lines, log_probs, loaded)
    assert [s.line.index for s in segments] == list(range(COUNT))
    assert [s.line.normalized for s in segments] == [loaded.normalizer(line) for line in lines]
    starts = [s.start for s in segments]
    assert starts == sorted(starts) and all(s.end > s.start for s in segments)
    voiced = voiced_extents(load_audio(path), recording)
    for k in range(1, COUNT):  # each cut between two utterances lies in the pause between their speech
        low, high = voiced[k - 1][1] - SPEECH_MARGIN_SECONDS, voiced[k][0] + SPEECH_MARGIN_SECONDS
        assert low <= segments[k - 1].end <= high and low <= segments[k].start <= high, (k, voiced, segments)
    errors = boundary_errors(segments, recording.true_boundaries())
    # the middle of the pause is the reference point; a cut elsewhere in a long pause is still a right cut
    pauses = [0.0] + [voiced[k][0] - voiced[k - 1][1] for k in range(1, COUNT)] + [0.0]
    allowed = [TOLERANCE_SECONDS + max(pauses[k], pauses[k + 1]) / 2 for k in range(COUNT) for _ in (0, 1)]
    assert (errors <= np.array(allowed)).all(), (errors, allowed)
    assert all(s.score >= DEFAULT_MIN_SCORE for s in segments), [s.score for s in segments]


def voiced_extents(audio: np.ndarray, recording) -> list[tuple[float, float]]:
    """(first, last) second of voiced audio in each utterance's span of the joined recording."""
    frames = len(audio) // 160
    rms = np.sqrt((audio[:frames * 160].reshape(frames, 160).astype(np.float64) ** 2).mean(axis=1))
    voiced = rms > rms.max() * 10 ** (-40 / 20)
    extents = []
    for start, end in recording.spans:
        inside = np.flatnonzero(voiced[int(start * 100):int(end * 100)]) + int(start * 100)
        extents.append((inside[0] / 100, (inside[-1] + 1) / 100))
    return extents


def test_a_wrong_line_scores_low_and_the_others_stay(joined, loaded, log_probs):
    _, recording, lines = joined
    lines = lines[:2] + [WRONG_LINE] + lines[3:]
    segments = _align(lines, log_probs, loaded)
    low = [s.line.index for s in segments if s.score < DEFAULT_MIN_SCORE]
    assert low == [2], [s.score for s in segments]
    errors = boundary_errors(segments, recording.true_boundaries())
    assert errors[:4].max() <= TOLERANCE_SECONDS  # the utterances before it keep their boundaries


def test_reading_in_blocks_gives_what_reading_whole_gives(joined, loaded, log_probs):
    whole = recording_log_probs(loaded, [load_audio(joined[0])], OPTIONS)[0]
    np.testing.assert_array_equal(whole, log_probs)


def test_cut_segments_write_a_trainable_manifest(joined, loaded, log_probs, tmp_path):
    path, _, lines = joined
    segments = _align(lines, log_probs, loaded)
    wavs = [tmp_path / "audio" / f"seg-{i}.wav" for i in range(len(segments))]
    cut_segments(stream_audio(path, block_seconds=0.7), segments, wavs)
    audio = load_audio(path)
    for segment, wav in zip(segments, wavs):
        start, end = round(segment.start * SAMPLE_RATE), round(segment.end * SAMPLE_RATE)
        np.testing.assert_allclose(sf.read(wav, dtype="float32")[0], audio[start:end], atol=1 / 2**15)
    manifest = tmp_path / "segments.jsonl"
    manifest.write_text("".join(json.dumps({"id": f"seg-{i}", "audio_filepath": f"audio/seg-{i}.wav",
                                            "duration": s.duration, "text": s.line.normalized}) + "\n"
                                for i, s in enumerate(segments)))
    utterances = load_source(SourceConfig(path=str(manifest)))
    assert [u.text for u in utterances] == [s.line.normalized for s in segments]
    assert all(Path(u.audio_path).is_file() for u in utterances)


@pytest.mark.parametrize(("mode", "text", "expected"), [
    ("lines", "first line\n\n  second   line \n", ["first line", "second line"]),
    ("sentences", "One. Two words!\nStill two? \"Three.\" Four\n\nFive", ["One.", "Two words!", "Still two?",
                                                                        "\"Three.\"", "Four", "Five"]),
])
def test_split_text(mode, text, expected):
    assert split_text(text, mode) == expected


def _errors(argv: list[str], capsys) -> str:
    """Run scripts/align.py in-process; assert exit 2 with one line on stderr; return it."""
    assert align_script.main(argv) == EXIT_USAGE
    err = [line for line in capsys.readouterr().err.splitlines() if line.startswith("error:")]
    assert len(err) == 1, err
    return err[0]


def test_script_errors_are_one_line(joined, tmp_path, capsys):
    path = joined[0]
    text = tmp_path / "text.txt"
    text.write_text("hello there\n")
    base = ["--model", str(BASE_MODEL), "--out", str(tmp_path / "out")]
    assert "does not exist" in _errors([str(tmp_path / "missing.wav"), "--text", str(text), *base], capsys)
    assert "does not exist" in _errors([str(path), "--text", str(tmp_path / "missing.txt"), *base], capsys)
    empty = tmp_path / "empty.txt"
    empty.write_text("\n  \n")
    assert "no utterance" in _errors([str(path), "--text", str(empty), *base], capsys)
    greek = tmp_path / "greek.txt"
    greek.write_text("καλημέρα κόσμε\n")
    assert "vocabulary" in _errors([str(path), "--text", str(greek), *base], capsys)
    short = tmp_path / "short.wav"
    sf.write(short, np.zeros(SAMPLE_RATE // 2, dtype=np.float32), SAMPLE_RATE)
    long_text = tmp_path / "long.txt"
    long_text.write_text("a sentence far too long to be said in half a second of audio\n")
    assert "too short" in _errors([str(short), "--text", str(long_text), *base], capsys)
    broken = tmp_path / "broken.wav"
    broken.write_bytes(b"RIFF not really a wav")
    assert "error:" in _errors([str(broken), "--text", str(text), *base], capsys)


@pytest.mark.slow
def test_script_writes_kept_and_low_score_manifests(joined, tmp_path):
    path, _, lines = joined
    text = tmp_path / "text.txt"
    text.write_text("\n".join(lines[:2] + [WRONG_LINE] + lines[3:]) + "\n")
    out = tmp_path / "out"
    assert align_script.main([str(path), "--text", str(text), "--model", str(BASE_MODEL), "--out", str(out),
                              "--cut", "--chunk-seconds", "6", "--overlap-seconds", "2"]) == 0
    kept = [json.loads(line) for line in (out / "segments.jsonl").read_text().splitlines()]
    low = [json.loads(line) for line in (out / "low_score.jsonl").read_text().splitlines()]
    assert [r["index"] for r in kept] == [0, 1, *range(3, COUNT)] and [r["index"] for r in low] == [2]
    utterances = load_source(SourceConfig(path=str(out / "segments.jsonl")))
    assert [u.id for u in utterances] == [r["id"] for r in kept]
    for u, r in zip(utterances, kept):
        assert sf.info(u.audio_path).duration == pytest.approx(r["duration"], abs=1e-3)
