"""The one audio reader: any file or in-memory encoded file -> float32 mono numpy at 16 kHz.

libsndfile (through `soundfile`) decodes wav, flac, ogg/vorbis, opus and mp3 in-process; anything
it cannot open (m4a, aac, webm, ...) goes through an `ffmpeg` subprocess when ffmpeg is on PATH.
Resampling uses soxr at high quality so that every format yields the same samples. `load_audio`
decodes a whole file; `stream_audio` reads a long one block by block in bounded memory (the same
samples); `truncation` tells whether a file that decoded is shorter than its header says.

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
import struct
import subprocess
import tempfile
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import BinaryIO, Literal, get_args

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
BLOCK_SECONDS = 10.0  # audio read per decoder call; small enough to bound memory, big enough to be fast
# Formats whose header states the exact sample count, so that fewer decoded samples mean a cut-off file.
EXACT_LENGTH_FORMATS = frozenset({"FLAC"})
WAV_FORMATS = frozenset({"WAV", "WAVEX"})
UNKNOWN_WAV_SIZES = frozenset({0, 0xFFFFFFFF})  # data sizes streaming writers leave when they never seek back
TRUNCATION_TOLERANCE = 0.01  # decoded length may fall this fraction short of a FLAC header's (codec rounding)


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


def stream_audio(source: AudioSource, block_seconds: float = BLOCK_SECONDS) -> Iterator[np.ndarray]:
    """Decode a file incrementally into mono float32 blocks at 16 kHz.

    The concatenated blocks equal `load_audio(source)` for files libsndfile reads (same channel
    average, same soxr resampler run as a stream), but at most one block is in memory.

    Args:
        source: An audio file (or its encoded bytes); libsndfile formats are read in-process, others
            through ffmpeg.
        block_seconds: Seconds of source audio per yielded block (the last one may be shorter).

    Yields:
        np.float32 arrays of shape [num_samples] (possibly empty while the resampler fills up).

    Raises:
        AudioError: Missing, empty, undecodable, truncated (fewer samples than a WAV/FLAC header
            declares), NaN/Inf samples, or no samples at all.
    """
    data, name = _check_source(source)
    try:
        handle = sf.SoundFile(_as_file(data))
    except (sf.SoundFileError, RuntimeError, TypeError, ValueError) as sf_error:
        blocks = _ffmpeg_blocks(data, name, SAMPLE_RATE, block_seconds, sf_error)
    else:
        blocks = _soundfile_blocks(handle, data, name, block_seconds)
    total = 0
    for block in blocks:
        if not np.isfinite(block).all():
            raise AudioError(f"Audio file {name} contains NaN or infinite samples; re-export it or remove it.",
                             reason="non_finite", source=name)
        total += len(block)
        yield block
    if total == 0:
        raise AudioError(f"Audio file {name} contains no samples; remove it or re-export it.", reason="no_samples",
                         source=name)


def truncation(source: AudioSource, num_samples: int) -> str | None:
    """Why a file that decoded is shorter than its header says, or None.

    libsndfile decodes the readable part of a cut-off wav or flac without an error, which would
    pair a transcript with part of its audio. A WAV is cut off when its data chunk declares more
    bytes than the file holds; a FLAC when fewer samples decoded than its STREAMINFO states (less
    TRUNCATION_TOLERANCE). Other codecs' headers give estimates, not exact lengths: None.

    Args:
        source: A path, or the bytes of an encoded audio file.
        num_samples: Samples `load_audio(source)` decoded (at 16 kHz).

    Returns:
        A one-line reason starting with "truncated:", or None.
    """
    data = bytes(source) if isinstance(source, (bytes, bytearray, memoryview)) else Path(source)
    with _open_binary(data) as f:
        wav = _wav_data_chunk(f)
        f.seek(0)
        flac = f.read(4) == b"fLaC"
    if wav is not None:
        size, available, _ = wav
        if size not in UNKNOWN_WAV_SIZES and size > available:
            return f"truncated: the data chunk declares {size} bytes but the file holds {available}"
        return None
    if not flac:
        return None
    info = sf.info(_as_file(data))
    expected = info.frames * SAMPLE_RATE / info.samplerate if info.samplerate else 0
    if expected and num_samples < expected * (1 - TRUNCATION_TOLERANCE):
        return f"truncated: decoded {num_samples} samples but the header says {round(expected)}"
    return None


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


@contextmanager
def _input_path(data: bytes | Path) -> Iterator[Path]:
    """A real file holding the input, for ffmpeg and ffprobe.

    In-memory data goes to a temporary file rather than a pipe: containers such as mp4/m4a keep
    their index at the end and cannot be demuxed from a non-seekable stream.
    """
    if isinstance(data, Path):
        yield data
        return
    with tempfile.TemporaryDirectory(prefix="asr_audio_") as tmp:
        path = Path(tmp) / "input"
        path.write_bytes(data)
        yield path


def _run_on_path(data: bytes | Path, command: list[str]) -> subprocess.CompletedProcess:
    """Run an ffmpeg-family command whose input placeholder "{input}" is a real file; stdout (bytes) and stderr captured."""
    with _input_path(data) as path:
        command = [arg.replace("{input}", str(path)) for arg in command]
        return subprocess.run(command, capture_output=True, check=False, timeout=FFMPEG_TIMEOUT_S)


def _ffmpeg_decode(data: bytes | Path, sample_rate: int, name: str, sf_error: BaseException) -> np.ndarray:
    """Decode a whole file with ffmpeg to mono float32 at `sample_rate`; shape [num_samples]."""
    blocks = list(_ffmpeg_blocks(data, name, sample_rate, BLOCK_SECONDS, sf_error, timeout=FFMPEG_TIMEOUT_S))
    return np.concatenate(blocks) if blocks else np.zeros(0, dtype=np.float32)


def _ffmpeg_blocks(data: bytes | Path, name: str, sample_rate: int, block_seconds: float, sf_error: BaseException,
                   timeout: float | None = None) -> Iterator[np.ndarray]:
    """Blocks [n] of mono float32 at `sample_rate` from an ffmpeg pipe, for formats libsndfile cannot open.

    A decode still running after `timeout` seconds (None: no limit) is killed and reported as unreadable.
    """
    ffmpeg = shutil.which("ffmpeg")
    if ffmpeg is None:
        raise _unreadable(name, f"libsndfile: {_one_line(sf_error)}; install ffmpeg for more formats")
    logger.debug("libsndfile cannot read %s (%s); decoding with ffmpeg.", name, _one_line(sf_error))
    block_bytes = 4 * max(1, int(block_seconds * sample_rate))
    # stderr goes to a file: a pipe nobody reads could fill up and stall ffmpeg.
    with _input_path(data) as path, tempfile.TemporaryFile() as stderr:
        # ffmpeg downmixes and resamples itself so the pipe carries a known layout. Its default
        # stereo -> mono weights are 0.707 each; rematrix_maxval=1 scales them to sum to 1, which is
        # the plain average for stereo (surround gets ffmpeg's weighted downmix). -vn skips cover art.
        command = [ffmpeg, "-nostdin", "-hide_banner", "-loglevel", "error", "-i", str(path), "-vn",
                   "-af", "aresample=rematrix_maxval=1", "-ac", "1", "-ar", str(sample_rate),
                   "-f", "f32le", "-acodec", "pcm_f32le", "pipe:1"]
        process = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=stderr)
        timed_out = threading.Event()

        def kill() -> None:
            timed_out.set()
            process.kill()

        timer = threading.Timer(timeout, kill) if timeout is not None else None
        if timer is not None:
            timer.daemon = True
            timer.start()
        try:
            pending = b""
            while True:
                chunk = process.stdout.read(block_bytes)
                if not chunk:
                    break
                chunk, usable = pending + chunk, (len(pending) + len(chunk)) // 4 * 4
                chunk, pending = chunk[:usable], chunk[usable:]
                yield np.frombuffer(chunk, dtype="<f4").astype(np.float32)
            returncode = process.wait()
        finally:
            if timer is not None:
                timer.cancel()
            if process.poll() is None:  # the consumer stopped early: do not leave ffmpeg running
                process.kill()
                process.wait()
            process.stdout.close()
        if timed_out.is_set():
            raise _unreadable(name, f"ffmpeg did not finish within {timeout:g} s")
        if returncode != 0:
            stderr.seek(0)
            detail = _one_line(stderr.read().decode(errors="replace") or f"exit code {returncode}")
            raise _unreadable(name, f"libsndfile: {_one_line(sf_error)}; ffmpeg: {detail}")


def _soundfile_blocks(handle: sf.SoundFile, data: bytes | Path, name: str,
                      block_seconds: float) -> Iterator[np.ndarray]:
    """Blocks from an open libsndfile handle, down-mixed and resampled to 16 kHz; checks the header's length."""
    with handle:
        rate, declared = handle.samplerate, _declared_frames(handle, data)
        resampler = soxr.ResampleStream(rate, SAMPLE_RATE, 1, dtype="float32", quality="HQ") \
            if rate != SAMPLE_RATE else None
        block_frames = max(1, int(block_seconds * rate))
        read = 0
        while True:
            try:
                samples = handle.read(block_frames, dtype="float32", always_2d=True)
            except (sf.SoundFileError, RuntimeError) as e:
                raise _undecodable(name, read, declared, f"libsndfile: {_one_line(e)}") from e
            if len(samples) == 0:
                break
            read += len(samples)
            mono = samples.mean(axis=1, dtype=np.float32) if samples.shape[1] > 1 else samples[:, 0]
            yield resampler.resample_chunk(mono, last=False) if resampler else np.ascontiguousarray(mono)
        if declared is not None and read < declared:
            raise _undecodable(name, read, declared, "the file ends early")
        if resampler is not None:
            yield resampler.resample_chunk(np.zeros(0, dtype=np.float32), last=True)


def _declared_frames(handle: sf.SoundFile, data: bytes | Path) -> int | None:
    """Sample frames the header promises, when that number is exact (WAV data size, FLAC STREAMINFO)."""
    if handle.format in WAV_FORMATS:
        # libsndfile silently shrinks a WAV's frame count to what the file holds, so read the header.
        with _open_binary(data) as f:
            wav = _wav_data_chunk(f)
        if wav is None:
            return None
        size, _, block_align = wav
        return None if not block_align or size in UNKNOWN_WAV_SIZES else size // block_align
    if handle.format in EXACT_LENGTH_FORMATS and handle.frames > 0:
        return int(handle.frames)
    return None


def _wav_data_chunk(f: BinaryIO) -> tuple[int, int, int | None] | None:
    """A RIFF/WAVE file's `data` chunk: (declared bytes, bytes the file holds after its header, block
    align from the `fmt ` chunk before it or None); None if `f` (at its start) is not a WAV or has no data chunk."""
    head = f.read(12)
    if len(head) < 12 or head[:4] != b"RIFF" or head[8:12] != b"WAVE":
        return None
    total = f.seek(0, io.SEEK_END)
    offset, block_align = 12, None
    while offset + 8 <= total:
        f.seek(offset)
        chunk_id, size = struct.unpack("<4sI", f.read(8))
        if chunk_id == b"fmt ":
            fmt = f.read(min(size, 14))
            block_align = struct.unpack("<H", fmt[12:14])[0] if len(fmt) >= 14 else None
        elif chunk_id == b"data":
            return size, total - offset - 8, block_align
        offset += 8 + size + (size & 1)  # RIFF chunks are padded to even sizes
    return None


def _undecodable(name: str, read: int, declared: int | None, detail: str) -> AudioError:
    """The error for a file that stopped decoding part-way, naming a truncation when the header shows one."""
    if declared is not None and read < declared:
        return AudioError(f"Audio file {name} is truncated: its header declares {declared} samples but only {read} "
                          f"could be decoded ({detail}); re-copy or re-export it.", reason="unreadable", source=name)
    return _unreadable(name, detail)


def _open_binary(data: bytes | Path) -> BinaryIO:
    """A binary file object over a path or in-memory bytes."""
    return io.BytesIO(data) if isinstance(data, bytes) else open(data, "rb")


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
