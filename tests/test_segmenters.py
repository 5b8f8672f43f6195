"""Segmenters (asr/segmenters.py) on real synthesised speech joined with known pauses (asr/long_recordings.py)."""

from __future__ import annotations

import subprocess
import sys

import numpy as np
import pytest

from asr.chunking import ChunkSpec, iter_chunks
from asr.long_recordings import LongRecording, RecordingOptions, join_utterances, read_manifest
from asr.segmenters import SEGMENTERS, SegmenterUnavailable, make_segmenter

from trainrun import env

FRAME = 320  # samples per wav2vec2 frame


@pytest.fixture(scope="module")
def utterances(synth_corpus):
    return read_manifest(synth_corpus / "train.jsonl")


def recording(utterances, noise: str, snr_db: float = 15.0) -> LongRecording:
    # pauses longer than any inside a synthesised sentence, so that every right cut is between utterances
    return join_utterances(utterances, RecordingOptions(minutes=1.0, pause_seconds=(0.6, 1.2), noise=noise,
                                                        snr_db=snr_db, seed=3))


def test_joined_recording_holds_the_utterances_at_their_places_with_the_drawn_pauses(utterances):
    rec = recording(utterances, "none")
    assert rec.text.startswith(" ".join(u.text for u in utterances)) and len(rec.audio) >= 60 * 16_000
    for (start, end), utterance in zip(rec.speech, utterances):  # speech: the utterance without its silent ends
        loud = np.flatnonzero(np.abs(utterance.audio) > 1e-3)
        np.testing.assert_array_equal(rec.audio[start:end], utterance.audio[loud[0] : loud[-1] + 1])
    assert all(0.6 * 16_000 <= end - start for start, end in rec.pauses)
    assert np.abs(rec.audio[rec.pauses[0][0] : rec.pauses[0][1]]).max() <= 1e-3  # clean: a pause is silence
    noisy = recording(utterances, "pink", 10.0)
    start, end = noisy.speech[0]
    noise = noisy.audio[: noisy.speech[0][0]]
    speech_power = np.mean(np.square(noisy.audio[start:end], dtype=np.float64))
    assert noise.std() > 0 and 8 < 10 * np.log10(speech_power / np.mean(np.square(noise, dtype=np.float64))) < 14
    with pytest.raises(ValueError, match="unknown"):
        RecordingOptions(noise="fan")


@pytest.mark.parametrize("noise, snr_db", [("none", 0.0), ("pink", 15.0)])
@pytest.mark.parametrize("segmenter", SEGMENTERS)
def test_every_segmenter_cuts_inside_the_pauses(utterances, segmenter, noise, snr_db):
    rec = recording(utterances, noise, snr_db)
    spec = ChunkSpec.from_seconds(8, 0, FRAME, segmenter)
    chunks = list(iter_chunks([rec.audio], spec))
    cuts = [c.keep_end for c in chunks[:-1]]
    assert len(cuts) >= 60 / 8
    outside = [round(c / 16_000, 2) for c in cuts if not any(s <= c <= e for s, e in rec.pauses)]
    assert not outside, f"{segmenter} cut inside speech at {outside} s"
    assert all(c.keep_end - c.start <= spec.chunk_samples for c in chunks[:-1])
    if segmenter != "energy" or noise == "none":  # the energy rule marks only digital-quiet pauses
        assert all(c.ends_in_silence for c in chunks[:-1])


@pytest.mark.parametrize("segmenter", ["webrtc", "silero"])
def test_without_a_pause_a_detector_cuts_where_the_energy_rule_does_and_marks_no_word_boundary(utterances, segmenter):
    # three talkers at once (the utterances back to back, three stretches of them summed): speech throughout
    talk = np.concatenate([u.audio for u in utterances])
    n = 8 * 16_000
    crowd = talk[:n] + talk[n : 2 * n] + talk[2 * n : 3 * n]
    vad = make_segmenter(segmenter)
    assert vad.speech_regions(crowd) and sum(e - s for s, e in vad.speech_regions(crowd)) > 0.95 * n
    cut = vad.cut(crowd, n // 3, n, FRAME)
    assert cut == type(cut)(make_segmenter("energy").cut(crowd, n // 3, n, FRAME).sample, False)


def test_unknown_and_missing_segmenters_name_the_fix(tmp_path):
    with pytest.raises(ValueError, match="use one of energy, webrtc, silero"):
        make_segmenter("pyannote")
    # a Python where silero_vad cannot be imported (a package of that name whose import fails, first on the path)
    (tmp_path / "silero_vad").mkdir()
    (tmp_path / "silero_vad" / "__init__.py").write_text("raise ImportError('No module named silero_vad')\n")
    code = ("from asr.segmenters import make_segmenter\n"
            "try:\n    make_segmenter('silero')\nexcept RuntimeError as e:\n    print(type(e).__name__, e)\n")
    environment = env()
    environment["PYTHONPATH"] = f"{tmp_path}:{environment['PYTHONPATH']}"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=environment).stdout
    assert out.startswith(SegmenterUnavailable.__name__)
    assert "pip install silero-vad==6.2.3" in out and len(out.strip().splitlines()) == 1


def test_loading_silero_leaves_torch_threads_as_they_were():
    # importing silero_vad sets torch to one thread for the whole process; the acoustic model must keep its threads
    code = ("import torch\ntorch.set_num_threads(2)\nfrom asr.segmenters import make_segmenter\n"
            "make_segmenter('silero')\nprint(torch.get_num_threads())\n")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env(), check=True).stdout
    assert out.split() == ["2"]
