"""asr.audio on real speech: one espeak-ng utterance converted to every supported encoding."""

from __future__ import annotations

import pickle
import shutil
import subprocess
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf

from asr import audio
from asr.audio import AUDIO_EXTENSIONS, AudioError, audio_duration, load_audio, normalize_audio
from asr.constants import SAMPLE_RATE

TOOLS = ("espeak-ng", "sox", "ffmpeg", "ffprobe")
pytestmark = pytest.mark.skipif(any(shutil.which(t) is None for t in TOOLS),
                                reason=f"needs {', '.join(TOOLS)} on PATH")

LOSSLESS_TOLERANCE_S = 0.002  # resampling 22.05 -> 16 kHz rounds to the nearest sample
LOSSY_TOLERANCE_S = 0.025  # codecs pad to whole frames (AAC: 1024 samples, +17 ms measured here)
MAX_LAG = SAMPLE_RATE // 20  # 50 ms: codec delays that decoders fail to remove stay well below this

# name -> (command producing {out} from {src}, file name, minimum correlation with the 16-bit wav)
CONVERSIONS = {
    "pcm_u8": (["sox", "{src}", "-e", "unsigned-integer", "-b", "8", "{out}"], "u8.wav", 0.99),
    "pcm_16": (["sox", "{src}", "-b", "16", "{out}"], "s16.wav", 0.999),
    "pcm_24": (["sox", "{src}", "-b", "24", "{out}"], "s24.wav", 0.999),
    "float32": (["sox", "{src}", "-e", "floating-point", "-b", "32", "{out}"], "f32.wav", 0.999),
    "stereo_44k": (["sox", "{src}", "-r", "44100", "-c", "2", "{out}"], "stereo44k.wav", 0.999),
    "flac": (["sox", "{src}", "{out}"], "speech.flac", 0.999),
    "vorbis": (["sox", "{src}", "{out}"], "speech.ogg", 0.98),
    "mp3": (["ffmpeg", "-loglevel", "error", "-i", "{src}", "-c:a", "libmp3lame", "-b:a", "64k", "{out}"],
            "speech.mp3", 0.98),
    "m4a": (["ffmpeg", "-loglevel", "error", "-i", "{src}", "-c:a", "aac", "-b:a", "64k", "{out}"],
            "speech.m4a", 0.98),
    "webm_opus": (["ffmpeg", "-loglevel", "error", "-i", "{src}", "-c:a", "libopus", "{out}"],
                  "speech.webm", 0.98),
}
LOSSY = {"vorbis", "mp3", "m4a", "webm_opus"}
NEEDS_FFMPEG_DECODER = {"m4a", "webm_opus"}  # libsndfile cannot open these containers


@pytest.fixture(scope="module")
def speech(tmp_path_factory) -> dict[str, Path]:
    """Every encoding of one utterance, keyed by CONVERSIONS name, plus "source" (espeak-ng 22.05 kHz)."""
    root = tmp_path_factory.mktemp("speech")
    source = root / "source.wav"
    subprocess.run(["espeak-ng", "-v", "en-us", "-w", str(source), "The quick brown fox jumps over the lazy dog."],
                   check=True, capture_output=True)
    files = {"source": source}
    for name, (command, filename, _) in CONVERSIONS.items():
        out = root / filename
        subprocess.run([arg.format(src=source, out=out) for arg in command], check=True, capture_output=True)
        files[name] = out
    return files


@pytest.fixture(scope="module")
def reference(speech) -> np.ndarray:
    """The 16-bit wav decoded: what every other encoding is compared with."""
    return load_audio(speech["pcm_16"])


def _source_duration(speech) -> float:
    """Duration of the espeak-ng output from its header."""
    info = sf.info(str(speech["source"]))
    return info.frames / info.samplerate


def _aligned_correlation(a: np.ndarray, b: np.ndarray, max_lag: int = MAX_LAG) -> float:
    """Pearson correlation of a and b after shifting b by the best lag within +-max_lag samples."""
    n = min(len(a), len(b)) - 2 * max_lag
    core = a[max_lag:max_lag + n]
    lag = max(range(-max_lag, max_lag + 1), key=lambda k: float(np.dot(core, b[max_lag + k:max_lag + k + n])))
    return float(np.corrcoef(core, b[max_lag + lag:max_lag + lag + n])[0, 1])


@pytest.mark.parametrize("name", list(CONVERSIONS))
def test_every_encoding_decodes_to_16k_mono_float32(speech, reference, name):
    x = load_audio(speech[name])
    assert x.dtype == np.float32 and x.ndim == 1 and x.flags.c_contiguous
    tolerance = LOSSY_TOLERANCE_S if name in LOSSY else LOSSLESS_TOLERANCE_S
    assert len(x) / SAMPLE_RATE == pytest.approx(_source_duration(speech), abs=tolerance)
    assert np.abs(x).max() <= 1.5  # integer formats are scaled to [-1, 1], not left as raw counts
    assert _aligned_correlation(reference, x) > CONVERSIONS[name][2]


def test_lossless_encodings_agree_sample_for_sample(speech, reference):
    # Same samples in, same resampler: only quantisation noise of the container may differ.
    for name in ("pcm_24", "float32", "flac"):
        np.testing.assert_allclose(load_audio(speech[name]), reference, atol=1e-4)


@pytest.mark.parametrize("name", ["pcm_16", "flac", "mp3", "m4a"])
def test_bytes_input_equals_path_input(speech, name):
    path = speech[name]
    np.testing.assert_array_equal(load_audio(path.read_bytes()), load_audio(path))
    np.testing.assert_array_equal(load_audio(bytearray(path.read_bytes())), load_audio(str(path)))


def test_other_sample_rates(speech):
    x8k = load_audio(speech["pcm_16"], sample_rate=8_000)
    assert len(x8k) / 8_000 == pytest.approx(_source_duration(speech), abs=LOSSLESS_TOLERANCE_S)
    x8k_ffmpeg = load_audio(speech["m4a"], sample_rate=8_000)
    assert len(x8k_ffmpeg) / 8_000 == pytest.approx(_source_duration(speech), abs=LOSSY_TOLERANCE_S)


def test_stereo_channels_are_averaged(tmp_path, reference):
    left = reference
    right = np.sin(2 * np.pi * 440 * np.arange(len(left)) / SAMPLE_RATE).astype(np.float32) * 0.25
    path = tmp_path / "two_voices.wav"
    sf.write(str(path), np.stack([left, right], axis=1), SAMPLE_RATE, subtype="FLOAT")
    np.testing.assert_allclose(load_audio(path), (left + right) / 2, atol=1e-7)


def test_ffmpeg_downmix_averages_too(tmp_path, reference):
    left = reference
    right = np.sin(2 * np.pi * 440 * np.arange(len(left)) / SAMPLE_RATE).astype(np.float32) * 0.25
    wav = tmp_path / "two_voices.wav"
    sf.write(str(wav), np.stack([left, right], axis=1), SAMPLE_RATE, subtype="FLOAT")
    mka = tmp_path / "two_voices.mka"  # Matroska with PCM: ffmpeg-only container, lossless codec
    subprocess.run(["ffmpeg", "-loglevel", "error", "-i", str(wav), "-c:a", "pcm_f32le", str(mka)],
                   check=True, capture_output=True)
    np.testing.assert_allclose(load_audio(mka), (left + right) / 2, atol=1e-5)


def test_without_ffmpeg_unsupported_containers_are_unreadable(speech, monkeypatch):
    monkeypatch.setattr(audio.shutil, "which", lambda name: None)
    with pytest.raises(AudioError, match="install ffmpeg") as info:
        load_audio(speech["m4a"])
    assert info.value.reason == "unreadable"
    assert load_audio(speech["flac"]).size > 0  # libsndfile formats need no ffmpeg


@pytest.mark.parametrize("name", list(CONVERSIONS))
def test_audio_duration_from_header(speech, name):
    tolerance = LOSSY_TOLERANCE_S if name in NEEDS_FFMPEG_DECODER else LOSSLESS_TOLERANCE_S
    assert audio_duration(speech[name]) == pytest.approx(_source_duration(speech), abs=tolerance)
    assert audio_duration(speech[name].read_bytes()) == pytest.approx(audio_duration(speech[name]))


def _bad_files(directory: Path, speech: dict[str, Path]) -> dict[str, tuple[Path, str]]:
    """Broken inputs -> (path, expected AudioError.reason)."""
    wav = speech["pcm_16"].read_bytes()
    files = {
        "empty": (b"", "empty"),
        "header_only": (wav[:44], "no_samples"),  # a valid header whose data chunk holds nothing
        "cut_in_header": (wav[:20], "unreadable"),
        "text_named_wav": (b"this is a transcript, not audio\n" * 4, "unreadable"),
        "random_bytes": (np.random.default_rng(0).bytes(4096), "unreadable"),
    }
    out = {}
    for name, (data, reason) in files.items():
        path = directory / f"{name}.wav"
        path.write_bytes(data)
        out[name] = (path, reason)
    for name, value in (("nan", np.nan), ("inf", np.inf)):
        x = load_audio(speech["pcm_16"])
        x[1000] = value
        path = directory / f"{name}.wav"
        sf.write(str(path), x, SAMPLE_RATE, subtype="FLOAT")
        out[name] = (path, "non_finite")
    path = directory / "zero_length.wav"
    sf.write(str(path), np.zeros((0, 2), np.float32), SAMPLE_RATE, subtype="FLOAT")
    out["zero_length"] = (path, "no_samples")
    out["missing"] = (directory / "does_not_exist.wav", "missing")
    out["directory"] = (directory, "missing")
    return out


def test_bad_files_raise_audio_error_with_reason(tmp_path, speech):
    for name, (path, reason) in _bad_files(tmp_path, speech).items():
        for source in ([path] if reason == "missing" else [path, path.read_bytes()]):
            with pytest.raises(AudioError) as info:
                load_audio(source)
            error = info.value
            assert error.reason == reason, f"{name}: {error}"
            assert isinstance(error, ValueError)
            message = str(error)
            assert "\n" not in message and message.endswith("."), message
            if isinstance(source, Path):
                assert str(path) in message and error.source == repr(str(path))
            else:
                assert "bytes" in message


def test_audio_duration_bad_files(tmp_path, speech):
    for name, (path, reason) in _bad_files(tmp_path, speech).items():
        if reason == "non_finite":
            assert audio_duration(path) > 0  # the header is fine; only decoding sees the samples
            continue
        with pytest.raises(AudioError) as info:
            audio_duration(path)
        assert info.value.reason == reason, f"{name}: {info.value}"


def test_truncated_data_yields_the_samples_that_are_there(tmp_path, speech):
    data = speech["pcm_16"].read_bytes()
    path = tmp_path / "cut_in_data.wav"
    path.write_bytes(data[: len(data) // 2])
    full, half = load_audio(speech["pcm_16"]), load_audio(path)
    assert 0.4 * len(full) < len(half) < 0.6 * len(full)


def test_audio_error_survives_pickling():
    error = AudioError("Audio file 'x.wav' is empty (0 bytes); re-create or drop it.", reason="empty", source="'x.wav'")
    copy = pickle.loads(pickle.dumps(error))
    assert (str(copy), copy.reason, copy.source) == (str(error), error.reason, error.source)


def test_unknown_reason_is_rejected():
    with pytest.raises(ValueError, match="reason"):
        AudioError("message.", reason="broken", source="x")


def test_non_path_source_is_a_type_error():
    with pytest.raises(TypeError, match="path or bytes"):
        load_audio(np.zeros(10))


def test_extensions_are_lowercase_with_dot():
    assert set(AUDIO_EXTENSIONS) >= {".wav", ".flac", ".ogg", ".opus", ".mp3", ".m4a", ".webm", ".aac"}
    assert all(ext.startswith(".") and ext == ext.lower() for ext in AUDIO_EXTENSIONS)


def test_normalize_audio_matches_feature_extractor(reference):
    from transformers import Wav2Vec2FeatureExtractor

    extractor = Wav2Vec2FeatureExtractor(feature_size=1, sampling_rate=SAMPLE_RATE, padding_value=0.0,
                                         do_normalize=True)
    expected = extractor(reference, sampling_rate=SAMPLE_RATE).input_values[0]
    normalized = normalize_audio(reference)
    assert normalized.dtype == np.float32
    np.testing.assert_allclose(normalized, expected, atol=1e-5)
    assert abs(normalized.mean()) < 1e-5 and normalized.std() == pytest.approx(1.0, abs=1e-3)
    assert np.all(normalize_audio(np.zeros(100, np.float32)) == 0)  # silence: epsilon avoids 0/0
