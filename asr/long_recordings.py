"""Long recordings of known text for testing long-file transcription: utterances joined with pauses, in noise.

Synthesised utterances (asr.corpus) are short and clean. A meeting or lecture is long, pauses for
0.2-1.5 s between sentences, and has noise under everything: a fan (stationary coloured noise) or other
people talking (babble). `join_utterances` builds such a recording from a manifest's utterances, with
the reference text and where each utterance lies, so that segmenters and chunking can be measured
(bench/chunking.py) and tested (tests/test_segmenters.py):

    >>> rows = read_manifest(Path("data/longrec/test.jsonl"))
    >>> rec = join_utterances(rows, RecordingOptions(minutes=4, noise="babble", snr_db=10))
    >>> rec.audio, rec.text, rec.speech            # [n] float32 16 kHz; "the ... "; ((start, end), ...) samples
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from asr.audio import load_audio
from asr.augment import NOISE_SLOPES, colored_noise, rms
from asr.constants import SAMPLE_RATE

NOISES = ("none", "babble", *NOISE_SLOPES)  # babble: BABBLE_TALKERS other voices; white/pink/brown: stationary
BABBLE_TALKERS = 4  # voices in the babble: few enough that words stand out (harder for a VAD than a crowd's hum)
LEAD_SECONDS = 0.5  # noise before the first and after the last utterance, as a recording starts before the talk
SPEECH_LEVEL = 10 ** (-60 / 20)  # an utterance's speech runs from its first to its last sample above -60 dBFS


@dataclass(frozen=True)
class Utterance:
    """One line of a manifest: the audio (16 kHz float32 [n]) and its text."""

    audio: np.ndarray
    text: str


@dataclass(frozen=True)
class RecordingOptions:
    """How the utterances are joined; every check is here, one sentence each."""

    minutes: float = 4.0  # utterances are joined (repeated from the start if needed) until this long
    pause_seconds: tuple[float, float] = (0.2, 1.5)  # each pause drawn uniformly from this range
    noise: str = "none"  # one of NOISES
    snr_db: float = 15.0  # speech power (over the utterances) to noise power
    seed: int = 0  # pauses, noise and babble talkers

    def __post_init__(self) -> None:
        if self.minutes <= 0:
            raise ValueError(f"minutes is {self.minutes}; use a positive length, e.g. 4.")
        if not 0 <= self.pause_seconds[0] <= self.pause_seconds[1]:
            raise ValueError(f"pause_seconds is {self.pause_seconds}; use (low, high) with 0 <= low <= high.")
        if self.noise not in NOISES:
            raise ValueError(f"noise {self.noise!r} is unknown; use one of {', '.join(NOISES)}.")


@dataclass(frozen=True)
class LongRecording:
    """A joined recording and what it holds.

    Attributes:
        audio: Samples [n] at 16 kHz, float32.
        text: The reference: the utterances' texts in order, joined by spaces.
        speech: (start, end) samples of each utterance's speech in `audio` (from its first to its last sample
            above SPEECH_LEVEL: the engines' leading and trailing silence is pause), in order.
    """

    audio: np.ndarray
    text: str
    speech: tuple[tuple[int, int], ...]

    @property
    def pauses(self) -> list[tuple[int, int]]:
        """(start, end) samples of the pauses between consecutive utterances."""
        return [(end, start) for (_, end), (start, _) in zip(self.speech, self.speech[1:])]


def read_manifest(manifest: Path) -> list[Utterance]:
    """The utterances of a JSONL manifest (audio_filepath relative to it, text), e.g. a corpus split."""
    rows = [json.loads(line) for line in manifest.read_text(encoding="utf-8").splitlines() if line.strip()]
    if not rows:
        raise ValueError(f"{manifest} lists no utterances; pass a JSONL manifest with audio_filepath and text.")
    return [Utterance(load_audio(manifest.parent / row["audio_filepath"]), row["text"]) for row in rows]


def join_utterances(utterances: Sequence[Utterance], options: RecordingOptions) -> LongRecording:
    """One recording of about `options.minutes`: the utterances in order with drawn pauses, then the noise added.

    Raises:
        ValueError: No utterances.
    """
    if not utterances:
        raise ValueError("join_utterances got no utterances; pass at least one (e.g. from read_manifest).")
    rng = np.random.default_rng(options.seed)
    lead = int(LEAD_SECONDS * SAMPLE_RATE)
    parts, texts, speech = [np.zeros(lead, np.float32)], [], []
    position = lead
    while position < options.minutes * 60 * SAMPLE_RATE:
        utterance = utterances[len(texts) % len(utterances)]
        if texts:
            pause = np.zeros(int(rng.uniform(*options.pause_seconds) * SAMPLE_RATE), np.float32)
            parts.append(pause)
            position += len(pause)
        parts.append(utterance.audio)
        loud = np.flatnonzero(np.abs(utterance.audio) > SPEECH_LEVEL)
        speech.append((position + int(loud[0]), position + int(loud[-1]) + 1) if len(loud) else (position, position))
        texts.append(utterance.text)
        position += len(utterance.audio)
    parts.append(np.zeros(lead, np.float32))
    clean = np.concatenate(parts)
    audio = clean if options.noise == "none" else _add_noise(clean, speech, utterances, options, rng)
    return LongRecording(audio.astype(np.float32), " ".join(texts), tuple(speech))


def _add_noise(clean: np.ndarray, speech: list[tuple[int, int]], utterances: Sequence[Utterance],
               options: RecordingOptions, rng: np.random.Generator) -> np.ndarray:
    """`clean` plus noise at `options.snr_db` under its speech (float64 [n])."""
    n = len(clean)
    if options.noise == "babble":
        noise = np.zeros(n)
        for _ in range(BABBLE_TALKERS):  # each talker reads random utterances back to back, from a random point
            talk = np.concatenate([utterances[i].audio for i in rng.integers(0, len(utterances), 1 + n // (2 * SAMPLE_RATE))])
            while len(talk) < n:
                talk = np.concatenate([talk, talk])
            offset = int(rng.integers(0, len(talk) - n + 1))
            talk = talk[offset : offset + n].astype(np.float64)
            noise += talk / max(rms(talk), 1e-12)
    else:
        noise = colored_noise(n, options.noise, int(rng.integers(2**31)))
    speech_power = np.mean(np.concatenate([clean[s:e] for s, e in speech]).astype(np.float64) ** 2)
    scale = np.sqrt(speech_power / (rms(noise) ** 2 * 10 ** (options.snr_db / 10)))
    mixed = clean + scale * noise
    peak = np.abs(mixed).max()
    return mixed / peak * 0.99 if peak > 0.99 else mixed  # no clipping in 16-bit files

