"""asr.Recognizer: the one-call Python API gives what scripts/transcribe.py gives, for files and arrays.

Real speech and a real trained model (conftest's `trained_model`), with a KenLM 3-gram built into a
copy of its directory, so the beam decoders find their LM where `from_pretrained` looks for it.
"""

from __future__ import annotations

import importlib.util
import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
import soxr

from asr.audio import load_audio

ROOT = Path(__file__).resolve().parents[1]
CHUNKING = ("--chunk-seconds", "4", "--overlap-seconds", "1", "--segmenter", "grid")  # the joined file (~8 s) is chunked
RECOGNIZER_CHUNKING = {"chunk_seconds": 4.0, "overlap_seconds": 1.0, "segmenter": "grid"}


def load_script():
    """scripts/transcribe.py as a module, to call its main() in this process."""
    spec = importlib.util.spec_from_file_location("transcribe_script", ROOT / "scripts" / "transcribe.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def model_with_lm(trained_model: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A copy of the trained model directory holding a KenLM 3-gram of its corpus's text."""
    from asr.text import load_model_text_config
    from lm.build import LMBuildOptions, build_lm

    out = tmp_path_factory.mktemp("model_with_lm") / "model"
    shutil.copytree(trained_model, out)
    normalizer, vocab = load_model_text_config(out)
    sentences = (trained_model.parents[1] / "corpus" / "lm.txt").read_text(encoding="utf-8").splitlines()
    build_lm(sentences, out, normalizer=normalizer, vocab=vocab, options=LMBuildOptions(order=3))
    return out


@pytest.fixture(scope="module")
def speech_dir(trained_model: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Three utterances of the model's corpus and one ~8 s file joining three others (chunked at 4 s)."""
    wavs = sorted((trained_model.parents[1] / "corpus" / "audio").rglob("*.wav"))
    out = tmp_path_factory.mktemp("speech")
    for wav in wavs[:3]:
        shutil.copy(wav, out / wav.name)
    joined = np.concatenate([load_audio(w) for w in wavs[3:6]])
    sf.write(out / "joined.wav", joined, 16000, subtype="FLOAT")
    return out


def script_texts(model: Path, inputs: Path, out: Path, decoder: str) -> dict[str, dict]:
    """transcripts.jsonl of scripts/transcribe.py's main() by file name."""
    code = load_script().main([str(inputs), "--model", str(model), "--decoder", decoder, "--output", str(out),
                               *CHUNKING])
    assert code == 0
    rows = [json.loads(line) for line in (out / "transcripts.jsonl").read_text().splitlines()]
    return {row["path"]: row for row in rows}


@pytest.mark.parametrize("decoder", ["greedy", "beam", "flashlight"])
def test_recognizer_gives_the_scripts_transcripts_with_word_times_in_seconds(model_with_lm, speech_dir, tmp_path,
                                                                            decoder):
    from asr import Recognizer

    expected = script_texts(model_with_lm, speech_dir, tmp_path / "out", decoder)
    files = sorted(speech_dir.glob("*.wav"))
    recognizer = Recognizer.from_pretrained(model_with_lm, **RECOGNIZER_CHUNKING)
    results = recognizer.transcribe(files, decoder=decoder)  # a list: batched, in input order
    assert [r.text for r in results] == [expected[f.name]["text"] for f in files]
    assert sum(len(r.words) for r in results) >= 20
    for file, result in zip(files, results):
        assert result.decoder == decoder and result.path == file.name
        assert result.duration == pytest.approx(sf.info(file).duration, abs=1e-3)
        times = [t for w in result.words for t in (w.start, w.end)]
        assert times == sorted(times) and 0 <= times[0] and times[-1] <= result.duration, times
        assert [w.word for w in result.words] == result.text.split()
        assert [(w.word, w.start, w.end) for w in result.words] == [
            (w["word"], w["start"], w["end"]) for w in expected[file.name]["words"]]
    one = recognizer.transcribe(str(files[0]), decoder=decoder)  # one path in: one Transcript out
    assert one.text == results[0].text


def test_array_input_equals_path_input_and_other_rates_are_resampled(model_with_lm, speech_dir, tmp_path):
    from asr import Recognizer

    recognizer = Recognizer.from_pretrained(model_with_lm, **RECOGNIZER_CHUNKING)
    files = [speech_dir / "joined.wav", *sorted(speech_dir.glob("train-*.wav"))[:1]]  # chunked, and batched
    arrays = [sf.read(f, dtype="float32")[0] for f in files]
    for decoder in ("beam", "greedy"):
        by_path = recognizer.transcribe(files, decoder=decoder)
        by_array = recognizer.transcribe(arrays, decoder=decoder)
        assert [(r.text, r.words, r.duration) for r in by_array] == [(r.text, r.words, r.duration) for r in by_path]
        assert by_array[0].path == "<array 0>"
    mixed = recognizer.transcribe([arrays[1], files[0]])  # greedy, the default
    assert [r.text for r in mixed] == [by_path[1].text, by_path[0].text]
    # 8 kHz: an array with sample_rate=8000 reads like the same samples in an 8 kHz file
    at_8k = soxr.resample(arrays[1], 16000, 8000)
    sf.write(tmp_path / "8k.wav", at_8k, 8000, subtype="FLOAT")
    from_file = recognizer.transcribe(tmp_path / "8k.wav")
    from_array = recognizer.transcribe(at_8k, sample_rate=8000)
    assert from_array.text == from_file.text and from_array.words == from_file.words
    assert len(from_array.text.split()) >= 4


def test_bad_calls_are_one_line_errors(trained_model, model_with_lm, speech_dir):
    from asr import Recognizer

    bare = Recognizer.from_pretrained(trained_model)  # no language_model/ in it
    wav = sorted(speech_dir.glob("train-*.wav"))[0]
    cases = [
        (lambda: bare.transcribe(wav, decoder="beam"), "needs a KenLM language model"),
        (lambda: bare.transcribe(wav, decoder="flashlight"), "scripts/build_lm.py"),
        (lambda: bare.transcribe(wav, decoder="viterbi"), "use one of greedy, beam, flashlight"),
        (lambda: bare.transcribe(np.zeros((100, 2), np.float32)), "must be mono"),
        (lambda: bare.transcribe(np.zeros(16000, np.int16)), "int16: audio / 32768"),
        (lambda: bare.transcribe(np.full(16000, np.nan, np.float32)), "NaN"),
        (lambda: bare.transcribe(np.ones(100, np.float32)), "too_short"),
        (lambda: bare.transcribe(speech_dir / "missing.wav"), "does not exist"),
        (lambda: bare.transcribe(speech_dir), "is a directory"),
        (lambda: Recognizer.from_pretrained(trained_model, chunk_size=3), "unknown option"),
    ]
    for call, message in cases:
        with pytest.raises(ValueError, match=None) as info:
            call()
        assert message in str(info.value) and "\n" not in str(info.value), str(info.value)


def test_tuning_shows_a_progress_bar_over_the_grid(model_with_lm, speech_dir, capsys):
    from asr import Recognizer
    from asr.inference import log_probs_batch
    from asr.tuning import TuneGrid, tune

    recognizer = Recognizer.from_pretrained(model_with_lm)
    audios = [load_audio(f) for f in sorted(speech_dir.glob("train-*.wav"))]
    log_probs = log_probs_batch(recognizer.model, audios)
    references = [recognizer.transcribe(a).text for a in audios]
    capsys.readouterr()
    result = tune(log_probs, references, recognizer.model.vocab, model_with_lm, decoders=["beam"],
                  grid=TuneGrid((0.5, 1.0), (0.0, 1.0, 2.0)), nbest=2, progress=True)
    assert len(result.points) == 6
    err = capsys.readouterr().err
    assert "tune: 100%" in err and "6/6" in err, err[-2000:]
    assert "beam 2-best: 100%" in err


def test_words_carry_a_confidence_raw_or_calibrated_beside_the_model(model_with_lm, speech_dir, tmp_path):
    """Issue 17: each word of a transcript has a confidence; with the decoder's calibration in the model directory
    (eval.py --calibrate writes confidence.json) it is the calibrated probability, in the script and in Python."""
    from asr import Recognizer
    from asr.confidence import Calibration, save_calibrations

    raw = script_texts(model_with_lm, speech_dir, tmp_path / "raw", "greedy")
    words = [w for row in raw.values() for w in row["words"]]
    assert words and all(row["confidence"] == "raw" for row in raw.values())
    assert all(0 < w["confidence"] <= 1 for w in words) and len({w["confidence"] for w in words}) > 1
    model = tmp_path / "model"
    shutil.copytree(model_with_lm, model)
    calibration = Calibration((2.0, 0.0, 0.0), 1.0, 10)  # reads only the mean log-posterior, i.e. log(raw)
    save_calibrations(model, {"greedy": calibration})
    calibrated = script_texts(model, speech_dir, tmp_path / "calibrated", "greedy")
    for name, row in calibrated.items():
        assert row["confidence"] == "calibrated" and row["text"] == raw[name]["text"]
        for w, r in zip(row["words"], raw[name]["words"]):
            expected = 1 / (1 + np.exp(-(2.0 * np.log(r["confidence"]) + 1.0)))
            assert w["confidence"] == pytest.approx(expected, abs=2e-3)
    file = sorted(speech_dir.glob("*.wav"))[0]
    result = Recognizer.from_pretrained(model, **RECOGNIZER_CHUNKING).transcribe(file, decoder="greedy")
    assert result.confidence == "calibrated"
    assert [w.confidence for w in result.words] == [w["confidence"] for w in calibrated[file.name]["words"]]
