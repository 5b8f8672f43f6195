"""Where to cut a long recording: segmenters that find the pauses between words (energy, WebRTC VAD, Silero VAD).

A long file is read in pieces of at most `chunk_samples` (asr.chunking, `ChunkSpec.segmenter`). For each
piece the chunker hands a segmenter the audio from the previous cut on and asks where, between a third
of the chunk length and its end, to cut next:

    >>> segmenter = make_segmenter("silero")              # "energy" | "webrtc" | "silero"
    >>> cut = segmenter.cut(audio[:size], lo=size // 3, hi=size, frame_samples=320)
    >>> cut.sample, cut.in_silence                        # frame-aligned; a word boundary or not

- `energy`: the middle of the quietest PAUSE_WINDOW_SECONDS (lowest mean energy), in silence when it is
  PAUSE_SILENCE_RATIO under the median frame. No model; right on clean audio, where a pause is quiet.
- `webrtc`: Google's WebRTC voice activity detector (`webrtcvad-wheels`: a GMM on band energies, 30 ms
  frames, C code in the wheel).
- `silero`: the Silero VAD (`silero-vad`: a small neural network whose ONNX file is in the wheel; run by
  onnxruntime on CPU, nothing downloaded), trained on speech in many kinds of noise.

The two detectors give speech regions; the cut goes in the middle of the longest stretch of non-speech
(the latest of equally long ones), a word boundary when it lasts VAD_MIN_PAUSE_SECONDS or more; with
speech throughout (babble: other voices fill the pauses) it goes where the energy rule puts it, not
marked. The longest rather than the latest stretch: on 4 minutes of joined utterances in pink noise at
10 dB SNR, the latest stretch of >= 0.1 s put 16 of 25 WebRTC cuts inside sentences, the longest 1 of 35.
bench/chunking.py compares them on noisy recordings with natural pauses (README: "Where long files are cut");
scripts/transcribe.py uses `silero` unless told otherwise (asr.defaults.DEFAULT_SEGMENTER).
"""

from __future__ import annotations

import functools
import importlib
import logging
from abc import ABC, abstractmethod
from dataclasses import dataclass
from typing import ClassVar

import numpy as np

from asr.constants import SAMPLE_RATE
from asr.defaults import SEGMENTERS

logger = logging.getLogger(__name__)


PAUSE_WINDOW_SECONDS = 0.2  # a cut goes in the middle of the quietest stretch this long (pauses, not stop closures)
PAUSE_SILENCE_RATIO = 10 ** -2.5  # -25 dB under the median frame: silence, so the cut is a word boundary
VAD_MIN_PAUSE_SECONDS = 0.1  # non-speech this long between two speech regions is a pause, not a stop closure
WEBRTC_MODE = 3  # 0-3, how readily a frame is called non-speech; 3 keeps noise-only frames out of speech
WEBRTC_FRAME_SECONDS = 0.03  # the longest frame webrtcvad takes (10, 20 or 30 ms): the steadiest decisions
SILERO_THRESHOLD = 0.5  # speech probability that opens a region (it closes 0.15 lower); Silero's default
SILERO_MIN_SILENCE_MS = 100  # shorter dips below the threshold stay inside the speech region; Silero's default
SILERO_SPEECH_PAD_MS = 30  # each region is widened by this much on both sides; Silero's default

_INSTALL = {"webrtc": ("webrtcvad", "webrtcvad-wheels==2.0.14.post1"), "silero": ("silero_vad", "silero-vad==6.2.3")}


class SegmenterUnavailable(RuntimeError):
    """The package a segmenter needs is not installed (the message names the install command)."""


@dataclass(frozen=True)
class Cut:
    """Where a piece of a recording ends.

    Attributes:
        sample: A multiple of the frame step, from the start of the audio the segmenter was given.
        in_silence: The cut lies in a pause: no word runs across it (the stitcher marks a word boundary).
    """

    sample: int
    in_silence: bool


class Segmenter(ABC):
    """Chooses where to cut the next piece of a long recording."""

    name: ClassVar[str]

    @abstractmethod
    def cut(self, audio: np.ndarray, lo: int, hi: int, frame_samples: int) -> Cut:
        """Where to cut `audio` [n >= hi] (16 kHz, starting at the previous cut): a frame-aligned sample in [lo, hi)
        (lo rounded up to the frame step)."""


class EnergySegmenter(Segmenter):
    """The quietest stretch (see `quietest_cut`)."""

    name = "energy"

    def cut(self, audio: np.ndarray, lo: int, hi: int, frame_samples: int) -> Cut:
        return Cut(*quietest_cut(audio, lo, hi, frame_samples))


def quietest_cut(audio: np.ndarray, lo: int, hi: int, frame_samples: int) -> tuple[int, bool]:
    """The frame-aligned sample in [lo, hi) at the middle of `audio`'s lowest-energy stretch.

    Args:
        audio: Samples [n], n >= hi.
        lo, hi: Where the cut may go (samples from audio[0]).
        frame_samples: The model's frame step; energies are per frame, the cut is a multiple of it.

    Returns:
        (the cut, a multiple of `frame_samples` in [lo, hi) (lo rounded up); whether the stretch there is
        silence: PAUSE_SILENCE_RATIO or more below the median frame energy of audio[:hi]).
    """
    frames = hi // frame_samples
    energy = np.square(audio[: frames * frame_samples].reshape(frames, frame_samples), dtype=np.float64).mean(1)
    width = max(1, round(PAUSE_WINDOW_SECONDS * SAMPLE_RATE / frame_samples))
    padded = np.pad(energy, (width // 2, width - 1 - width // 2), mode="edge")  # no false quiet at the ends
    smoothed = np.convolve(padded, np.ones(width) / width, mode="valid")  # [frames]: the window centred on each
    first = -(-lo // frame_samples)
    if first >= frames:
        return first * frame_samples, False
    # the latest of equally quiet places: longer pieces, fewer cuts in long silences
    best = frames - 1 - int(np.argmin(smoothed[first:][::-1]))
    return best * frame_samples, bool(smoothed[best] <= PAUSE_SILENCE_RATIO * np.median(energy))


class VadSegmenter(Segmenter):
    """A voice activity detector's speech regions -> a cut in the longest pause (see the module doc)."""

    @abstractmethod
    def speech_regions(self, audio: np.ndarray) -> list[tuple[int, int]]:
        """[(start, end), ...] sample ranges of `audio` [n] (16 kHz) that hold speech, in order."""

    def cut(self, audio: np.ndarray, lo: int, hi: int, frame_samples: int) -> Cut:
        frames = hi // frame_samples
        first = -(-lo // frame_samples)
        if first >= frames:
            return Cut(first * frame_samples, False)
        speech = np.zeros(frames, dtype=bool)  # a frame touched by a speech region is speech
        for start, end in self.speech_regions(audio[: frames * frame_samples]):
            speech[start // frame_samples : -(-end // frame_samples)] = True
        runs = _false_runs(speech[first:])
        if not runs:
            return Cut(quietest_cut(audio, lo, hi, frame_samples)[0], False)
        # the longest pause: a detector also hears short gaps inside words in noise; the latest of equal ones
        start, end = max(reversed(runs), key=lambda run: run[1] - run[0])
        in_pause = end - start >= round(VAD_MIN_PAUSE_SECONDS * SAMPLE_RATE / frame_samples)
        return Cut((first + (start + end) // 2) * frame_samples, in_pause)


def _false_runs(mask: np.ndarray) -> list[tuple[int, int]]:
    """[(start, end), ...] of the runs of False in a boolean array [n], in order."""
    edges = np.flatnonzero(np.diff(np.concatenate([[True], mask, [True]]).astype(np.int8)))
    return list(zip(edges[::2].tolist(), edges[1::2].tolist()))


class WebRtcSegmenter(VadSegmenter):
    """WebRTC's VAD on 30 ms frames of 16-bit audio, in mode WEBRTC_MODE."""

    name = "webrtc"

    def __init__(self) -> None:
        self._webrtcvad = _import("webrtc")

    def speech_regions(self, audio: np.ndarray) -> list[tuple[int, int]]:
        vad = self._webrtcvad.Vad(WEBRTC_MODE)  # a fresh one: it adapts its noise estimate to what it has heard
        size = round(WEBRTC_FRAME_SECONDS * SAMPLE_RATE)
        pcm = (np.clip(audio, -1.0, 1.0) * 32767).astype("<i2").tobytes()
        speech = np.array([vad.is_speech(pcm[2 * i : 2 * (i + size)], SAMPLE_RATE)
                           for i in range(0, len(audio) - size + 1, size)], dtype=bool)
        # the last partial frame (< 30 ms) goes with the frame before it
        return [(start * size, len(audio) if end == len(speech) else end * size)
                for start, end in _false_runs(~speech)]


class SileroSegmenter(VadSegmenter):
    """Silero VAD's speech timestamps (its ONNX model on onnxruntime, one thread)."""

    name = "silero"

    def __init__(self) -> None:
        import torch

        threads = torch.get_num_threads()
        silero_vad = _import("silero")
        torch.set_num_threads(threads)  # importing silero_vad sets torch to 1 thread for the whole process
        self._torch = torch
        self._model = silero_vad.load_silero_vad(onnx=True)
        self._timestamps = silero_vad.get_speech_timestamps

    def speech_regions(self, audio: np.ndarray) -> list[tuple[int, int]]:
        found = self._timestamps(self._torch.from_numpy(np.ascontiguousarray(audio, dtype=np.float32)), self._model,
                                 threshold=SILERO_THRESHOLD, sampling_rate=SAMPLE_RATE,
                                 min_silence_duration_ms=SILERO_MIN_SILENCE_MS, speech_pad_ms=SILERO_SPEECH_PAD_MS)
        return [(int(region["start"]), int(region["end"])) for region in found]


def _import(name: str):
    """The module a segmenter needs, or SegmenterUnavailable naming the install command."""
    module, requirement = _INSTALL[name]
    try:
        return importlib.import_module(module)
    except ImportError as e:
        raise SegmenterUnavailable(f"--segmenter {name} needs the {requirement.split('==')[0]} package, which is not "
                                   f"installed; run `.venv/bin/pip install {requirement}` (or bash scripts/setup.sh)."
                                   ) from e


@functools.cache
def make_segmenter(name: str) -> Segmenter:
    """The segmenter called `name` (one of SEGMENTERS), made once per process (Silero loads a model).

    Raises:
        ValueError: An unknown name.
        SegmenterUnavailable: Its package is not installed.
    """
    classes = {cls.name: cls for cls in (EnergySegmenter, WebRtcSegmenter, SileroSegmenter)}
    if name not in classes:
        raise ValueError(f"Segmenter {name!r} is unknown; use one of {', '.join(SEGMENTERS)}.")
    return classes[name]()
