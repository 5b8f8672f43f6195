"""Audio decoding: any file or in-memory encoded file -> float32 mono numpy at 16 kHz.

libsndfile (through `soundfile`) decodes wav, flac, ogg/vorbis, opus and mp3 in-process; anything
it cannot open (m4a, aac, webm, ...) goes through an `ffmpeg` subprocess when ffmpeg is on PATH.
Resampling uses soxr at high quality so that every format yields the same samples.

Every failure is an `AudioError` (a `ValueError`) whose `reason` says what was wrong, so that a
data pipeline can drop a broken file and count why instead of crashing:

    >>> try:
    ...     audio = load_audio("clip.m4a")       # np.float32, shape [num_samples], 16 kHz
    ... except AudioError as e:
    ...     report[e.reason] += 1
"""

from __future__ import annotations

import io
import logging
import os
import shutil
import subprocess
import tempfile
from pathlib import Path
from typing import Literal, get_args

import numpy as np
import soundfile as sf
import soxr

from asr.constants import SAMPLE_RATE

logger = logging.getLogger(__name__)

AUDIO_EXTENSIONS = (".wav", ".flac", ".ogg", ".opus", ".mp3", ".m4a", ".webm", ".aac")

AudioErrorReason = Literal["missing", "empty", "unreadable", "non_finite", "no_samples"]
AUDIO_ERROR_REASONS: tuple[str, ...] = get_args(AudioErrorReason)

AudioSource = str | os.PathLike | bytes

NORMALIZE_EPSILON = 1e-7  # the variance floor of Wav2Vec2FeatureExtractor's do_normalize
FFMPEG_TIMEOUT_S = 600  # a decode that takes longer than this is a hung ffmpeg, not a long file


class AudioError(ValueError):
    """An audio file that cannot be used, with a machine-readable reason.

    Attributes:
        reason: One of "missing", "empty", "unreadable", "non_finite", "no_samples".
        source: The path, or a description such as "<audio bytes (1234 bytes)>" for in-memory data.
    """

    def __init__(self, message: str, *, reason: AudioErrorReason, source: str) -> None:
        if reason not in AUDIO_ERROR_REASONS:
            raise ValueError(f"AudioError reason {reason!r} is unknown; use one of {AUDIO_ERROR_REASONS}.")
        super().__init__(message)
        self.reason = reason
        self.source = source

    def __reduce__(self):
        # Keyword-only attributes are not in `args`, so the default pickling (used when a
        # worker process reports the error) would lose them.
        return (_rebuild_audio_error, (str(self), self.reason, self.source))


def _rebuild_audio_error(message: str, reason: AudioErrorReason, source: str) -> AudioError:
    """Unpickle an AudioError."""
    return AudioError(message, reason=reason, source=source)


def load_audio(source: AudioSource, sample_rate: int = SAMPLE_RATE) -> np.ndarray:
    """Decode an audio file to mono float32 samples at `sample_rate`.

    Args:
        source: A path, or the bytes of an encoded audio file (as stored in parquet/hub datasets).
        sample_rate: Output rate in Hz.

    Returns:
        np.float32 array of shape [num_samples]; channels are averaged, values are as decoded
        (about [-1, 1] for integer formats), not normalised.

    Raises:
        AudioError: The file is missing, empty, undecodable, has NaN/Inf samples or no samples.
    """
    data, name = _check_source(source)
    try:
        # always_2d gives [frames, channels] for every file, so mono and stereo share one path.
        samples, native_rate = sf.read(_as_file(data), dtype="float32", always_2d=True)
    except (sf.SoundFileError, RuntimeError, TypeError, ValueError) as sf_error:
        samples = _ffmpeg_decode(data, sample_rate, name, sf_error)
        native_rate = sample_rate
    if samples.ndim == 2:
        samples = samples.mean(axis=1, dtype=np.float32) if samples.shape[1] > 1 else samples[:, 0]
    if samples.size == 0:
        raise AudioError(f"Audio file {name} contains no samples; drop it from the dataset.",
                         reason="no_samples", source=name)
    if not np.isfinite(samples).all():
        raise AudioError(f"Audio file {name} contains NaN or infinite samples; re-export it or drop it.",
                         reason="non_finite", source=name)
    if native_rate != sample_rate:
        samples = soxr.resample(samples, native_rate, sample_rate, quality="HQ")
    return np.ascontiguousarray(samples, dtype=np.float32)


def audio_duration(source: AudioSource) -> float:
    """Duration in seconds, read from the file header without decoding the samples.

    Uses libsndfile's header (exact for wav/flac/ogg/mp3 with a Xing/LAME header) and falls back to
    ffprobe for other formats, whose container duration may include a few ms of codec padding.

    Args:
        source: A path, or the bytes of an encoded audio file.

    Returns:
        Duration in seconds (> 0).

    Raises:
        AudioError: Same reasons as `load_audio`, except that samples are not checked for NaN/Inf;
            a zero duration is "no_samples".
    """
    data, name = _check_source(source)
    try:
        info = sf.info(_as_file(data))
        duration = info.frames / info.samplerate if info.samplerate else 0.0
    except (sf.SoundFileError, RuntimeError, TypeError, ValueError) as sf_error:
        duration = _ffprobe_duration(data, name, sf_error)
    if not duration > 0:
        raise AudioError(f"Audio file {name} contains no samples; drop it from the dataset.",
                         reason="no_samples", source=name)
    return float(duration)


def normalize_audio(x: np.ndarray) -> np.ndarray:
    """Zero-mean, unit-variance samples, exactly as Wav2Vec2FeatureExtractor(do_normalize=True).

    Args:
        x: Samples of shape [num_samples] (one unpadded utterance; padding would bias the statistics).

    Returns:
        np.float32 array of the same shape.
    """
    x = np.asarray(x, dtype=np.float32)
    return ((x - x.mean()) / np.sqrt(x.var() + NORMALIZE_EPSILON)).astype(np.float32)


def _describe(source: AudioSource) -> str:
    """Name of the source for error messages."""
    if isinstance(source, (bytes, bytearray, memoryview)):
        return f"<audio bytes ({len(source)} bytes)>"
    return repr(os.fspath(source))


def _check_source(source: AudioSource) -> tuple[bytes | Path, str]:
    """Reject missing and empty inputs before any decoder sees them; return (bytes or Path, name)."""
    if not isinstance(source, (bytes, bytearray, memoryview, str, os.PathLike)):
        raise TypeError(f"Audio source must be a path or bytes, got {type(source).__name__}; "
                        "pass the file path or its encoded bytes.")
    name = _describe(source)
    if isinstance(source, (bytes, bytearray, memoryview)):
        data = bytes(source)
        if not data:
            raise AudioError("Audio bytes are empty (0 bytes); check how the dataset column was written.",
                             reason="empty", source=name)
        return data, name
    path = Path(source)
    if not path.is_file():
        raise AudioError(f"Audio file {name} does not exist; check the path and the manifest's directory.",
                         reason="missing", source=name)
    if path.stat().st_size == 0:
        raise AudioError(f"Audio file {name} is empty (0 bytes); re-create or drop it.",
                         reason="empty", source=name)
    return path, name


def _as_file(data: bytes | Path) -> io.BytesIO | str:
    """What soundfile accepts: a path (as bytes, so that a name that is not UTF-8 opens) or a seekable in-memory file."""
    return io.BytesIO(data) if isinstance(data, bytes) else os.fsencode(data)


def _unreadable(name: str, detail: str) -> AudioError:
    """The error for a file no decoder could read."""
    return AudioError(f"Audio file {name} could not be decoded ({detail}); check that it is a complete "
                      "audio file in a supported format.", reason="unreadable", source=name)


def _one_line(error: BaseException | str) -> str:
    """The last non-empty line of a decoder's error message."""
    lines = [line.strip() for line in str(error).splitlines() if line.strip()]
    return lines[-1] if lines else type(error).__name__


def _run_on_path(data: bytes | Path, command: list[str]) -> subprocess.CompletedProcess:
    """Run an ffmpeg-family command whose input placeholder "{input}" is a real file.

    In-memory data goes to a temporary file rather than a pipe: containers such as mp4/m4a keep
    their index at the end and cannot be demuxed from a non-seekable stream.
    """
    if isinstance(data, Path):
        return _run([arg.replace("{input}", str(data)) for arg in command])
    with tempfile.TemporaryDirectory(prefix="asr_audio_") as tmp:
        path = Path(tmp) / "input"
        path.write_bytes(data)
        return _run([arg.replace("{input}", str(path)) for arg in command])


def _run(command: list[str]) -> subprocess.CompletedProcess:
    """Run a command, capturing stdout (bytes) and stderr."""
    return subprocess.run(command, capture_output=True, check=False, timeout=FFMPEG_TIMEOUT_S)


def _ffmpeg_decode(data: bytes | Path, sample_rate: int, name: str, sf_error: BaseException) -> np.ndarray:
    """Decode with an ffmpeg subprocess to mono float32 at `sample_rate`; shape [num_samples]."""
    ffmpeg = shutil.which("ffmpeg")
    if ffmpeg is None:
        raise _unreadable(name, f"libsndfile: {_one_line(sf_error)}; install ffmpeg for more formats")
    logger.debug("libsndfile cannot read %s (%s); decoding with ffmpeg.", name, _one_line(sf_error))
    # ffmpeg downmixes and resamples itself so the pipe carries a known layout. Its default
    # stereo -> mono weights are 0.707 each; rematrix_maxval=1 scales them to sum to 1, which is
    # the plain average for stereo (surround gets ffmpeg's weighted downmix). -vn skips cover art.
    command = [ffmpeg, "-nostdin", "-hide_banner", "-loglevel", "error", "-i", "{input}", "-vn",
               "-af", "aresample=rematrix_maxval=1", "-ac", "1", "-ar", str(sample_rate),
               "-f", "f32le", "-acodec", "pcm_f32le", "pipe:1"]
    try:
        result = _run_on_path(data, command)
    except subprocess.TimeoutExpired as e:
        raise _unreadable(name, f"ffmpeg did not finish within {FFMPEG_TIMEOUT_S} s") from e
    if result.returncode != 0:
        detail = _one_line(result.stderr.decode(errors="replace") or f"exit code {result.returncode}")
        raise _unreadable(name, f"libsndfile: {_one_line(sf_error)}; ffmpeg: {detail}")
    return np.frombuffer(result.stdout[: len(result.stdout) // 4 * 4], dtype="<f4").astype(np.float32)


def _ffprobe_duration(data: bytes | Path, name: str, sf_error: BaseException) -> float:
    """Container duration in seconds from ffprobe."""
    ffprobe = shutil.which("ffprobe")
    if ffprobe is None:
        raise _unreadable(name, f"libsndfile: {_one_line(sf_error)}; install ffmpeg for more formats")
    command = [ffprobe, "-v", "error", "-select_streams", "a:0", "-show_entries", "format=duration",
               "-of", "default=noprint_wrappers=1:nokey=1", "{input}"]
    try:
        result = _run_on_path(data, command)
    except subprocess.TimeoutExpired as e:
        raise _unreadable(name, f"ffprobe did not finish within {FFMPEG_TIMEOUT_S} s") from e
    output = result.stdout.decode(errors="replace").strip()
    if result.returncode != 0:
        detail = _one_line(result.stderr.decode(errors="replace") or f"exit code {result.returncode}")
        raise _unreadable(name, f"libsndfile: {_one_line(sf_error)}; ffprobe: {detail}")
    try:
        return float(output.splitlines()[0])
    except (ValueError, IndexError) as e:
        # ffprobe prints "N/A" for inputs it opens but cannot time, such as a stray text file.
        raise _unreadable(name, f"libsndfile: {_one_line(sf_error)}; ffprobe found no duration") from e
