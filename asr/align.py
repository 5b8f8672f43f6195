"""CTC segmentation: a long recording and its text -> utterance segments (start, end, text, score).

The pieces `scripts/align.py` puts together, in pipeline order:

    >>> lines = split_text(Path("book.txt").read_text(), "sentences")   # or "lines": one utterance a line
    >>> loaded = load_model("assets/base_model")
    >>> alignment = align_recording(loaded, "book.flac", lines, AlignOptions())
    >>> kept, low = alignment.split(AlignOptions().min_score)            # training manifest / listed apart

The recording is streamed in blocks and run through the model in overlapping chunks whose CTC
log-probs are stitched into one [T, V] array (`asr.chunking`, as `scripts/transcribe.py` does for long
files), so the audio held is one chunk; the log-probs grow by 4 * V bytes per 20 ms frame (22 MB per
hour for 30 tokens). The `ctc-segmentation` package (Kürzinger et al. 2020, the aligner of ESPnet and
SpeechBrain) then finds the best path of the text's tokens through those frames inside a moving window
of `window_seconds`, and scores each utterance by the lowest mean log-prob of its path over any
`SCORE_FRAMES` consecutive frames: one misread or missing stretch is enough to make it low.
Its table is float32 [window frames, text tokens]: 4 * 50 * window_seconds bytes per token of text
(about 0.2 GB per hour of speech at 15 characters a second and the default 20 s window).

Token mapping: the blank is the model's pad id ([PAD], 0), words are separated by the word delimiter
`|`, characters the vocabulary lacks are dropped from the text (logged), as training's tokenizer would
map them to [UNK]. Times are frame index * the model's frame period (`seconds_per_frame`, as the word
times of `asr.transcribe`).
"""

from __future__ import annotations

import logging
import os
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import regex
import soundfile as sf
from ctc_segmentation import (CtcSegmentationParameters, ctc_segmentation, determine_utterance_segments,
                              prepare_token_list)

from asr.audio import stream_audio
from asr.chunking import ChunkSpec, chunked_log_probs
from asr.constants import SAMPLE_RATE, UNK, WORD_DELIMITER
from asr.defaults import (
    ALIGN_SPLITS,
    ALIGN_WINDOW_SECONDS,
    CHUNK_SECONDS,
    DEFAULT_MAX_BATCH_SECONDS,
    DEFAULT_MIN_SCORE,
    OVERLAP_SECONDS,
)
from asr.inference import AcousticModel, log_probs_batch
from asr.text import TextNormalizer, encode

logger = logging.getLogger(__name__)

FULL_TABLE_BYTES = 2 * 2**30  # a failed windowed search is redone over the whole recording when its table fits
MAX_PAD_SECONDS = 1.0  # a segment reaches at most this far into a pause: some silence to train on, not all of it
SCORE_FRAMES = 30  # the score is the worst mean over this many frames (0.6 s at 20 ms): ctc-segmentation's L
_SENTENCE_END_RE = regex.compile(r"(?<=[.!?…][\"'”’)\]]*)\s+|\n\s*\n")  # after . ! ? (and closing quotes), or a blank line


@dataclass(frozen=True)
class AlignOptions:
    """How the recording is run through the model and aligned; every check is here, one sentence each."""

    chunk_seconds: float = CHUNK_SECONDS  # the model sees windows this long (memory bound); 0 runs the whole file at once
    overlap_seconds: float = OVERLAP_SECONDS  # audio shared by neighbouring chunks; half of it is context on each side
    cut_at_pauses: bool = False  # chunks end at the quietest stretch instead (models trained on short utterances)
    max_batch_seconds: float = DEFAULT_MAX_BATCH_SECONDS  # padded audio seconds per forward pass
    window_seconds: float = ALIGN_WINDOW_SECONDS  # ctc-segmentation's search window (doubled on failure)
    min_score: float = DEFAULT_MIN_SCORE  # segments scoring lower are listed apart, not trained on

    def __post_init__(self) -> None:
        if self.chunk_seconds < 0:
            raise ValueError(f"--chunk-seconds is {self.chunk_seconds}; use a positive length, or 0 for one pass.")
        if self.chunk_seconds and not self.cut_at_pauses and not 0 < 2 * self.overlap_seconds <= self.chunk_seconds:
            raise ValueError(f"--overlap-seconds {self.overlap_seconds} must be positive and at most half of "
                             f"--chunk-seconds {self.chunk_seconds}; 5 s of overlap for 30 s chunks works well.")
        if self.max_batch_seconds <= 0:
            raise ValueError(f"--max-batch-seconds is {self.max_batch_seconds}; use a positive number of seconds.")
        if self.window_seconds <= 0:
            raise ValueError(f"--window-seconds is {self.window_seconds}; use a positive number of seconds.")


# ---------------------------------------------------------------------------------------------- text
@dataclass(frozen=True)
class TextLine:
    """One utterance of the text as the model will be aligned to it.

    Attributes:
        index: Position among the given lines (0-based), also for lines dropped before alignment.
        text: The line as given (whitespace collapsed).
        normalized: `text` through the model's normaliser, without characters its vocabulary lacks.
        ids: Token ids of `normalized` (`|` between words) [num_tokens].
    """

    index: int
    text: str
    normalized: str
    ids: tuple[int, ...]


def split_text(text: str, mode: str) -> list[str]:
    """Utterances of a text: each non-empty line ("lines"), or sentences of free text ("sentences").

    Sentences end after . ! ? or … (closing quotes and brackets stay with them) and at blank lines; line
    breaks inside a paragraph are spaces. Whitespace inside an utterance is collapsed.

    Raises:
        ValueError: Unknown mode.
    """
    if mode not in ALIGN_SPLITS:
        raise ValueError(f"--split {mode!r} is unknown; use one of {', '.join(ALIGN_SPLITS)}.")
    pieces = text.splitlines() if mode == "lines" else _SENTENCE_END_RE.split(text)
    return [" ".join(p.split()) for p in pieces if p and p.strip()]


def prepare_lines(lines: Sequence[str], normalizer: TextNormalizer,
                  vocab: Mapping[str, int]) -> tuple[list[TextLine], list[TextLine]]:
    """Normalise and tokenise utterances for alignment.

    Returns:
        (lines with at least one token the model knows, in order; lines with none, which cannot be aligned).

    Raises:
        ValueError: No line at all, or no line with a character in the vocabulary.
    """
    if not lines:
        raise ValueError("The text has no utterance (it is empty or only whitespace); pass the recording's text.")
    unk = vocab.get(UNK)
    usable, unusable, unknown = [], [], set()
    for index, text in enumerate(lines):
        normalized = normalizer(text)
        unknown.update(c for c in normalized if c != " " and c not in vocab)
        kept = " ".join("".join(c for c in normalized if c == " " or c in vocab).split())  # unknown-only words go
        ids = tuple(i for i in encode(kept, vocab) if i != unk)
        (usable if ids else unusable).append(TextLine(index, text, kept, ids))
    if unknown:
        logger.warning("The model's vocabulary lacks %d character(s) of the text, dropped before aligning: %s",
                       len(unknown), "".join(sorted(unknown))[:80])
    if not usable:
        raise ValueError(f"None of the {len(lines)} utterance(s) has a character in the model's vocabulary "
                         f"(e.g. {lines[0][:60]!r}); pass text in the model's language and script.")
    return usable, unusable


# -------------------------------------------------------------------------------------------- audio
def recording_log_probs(loaded: AcousticModel, blocks: Iterable[np.ndarray],
                        options: AlignOptions) -> tuple[np.ndarray, int]:
    """CTC log-probs of a whole recording, run in overlapping chunks and stitched (`asr.chunking`).

    Args:
        loaded: The model.
        blocks: The recording as consecutive 16 kHz sample arrays, e.g. `stream_audio(path)`.
        options: Chunk geometry and batch size.

    Returns:
        (log-probs [T, V] with T = loaded.frames(num_samples), num_samples).
    """
    forward = lambda audios: log_probs_batch(loaded, audios)  # noqa: E731
    if not options.chunk_seconds:
        parts = [b for b in blocks if len(b)]
        audio = np.concatenate(parts) if parts else np.zeros(0, dtype=np.float32)
        return forward([audio])[0], len(audio)
    frame_samples = round(loaded.seconds_per_frame * SAMPLE_RATE)
    spec = ChunkSpec.from_seconds(options.chunk_seconds, options.overlap_seconds, frame_samples,
                                  "energy" if options.cut_at_pauses else None)
    per_batch = max(1, int(options.max_batch_seconds * SAMPLE_RATE // spec.chunk_samples))
    return chunked_log_probs(blocks, spec, forward, per_batch, loaded.vocab.get(WORD_DELIMITER))


# ------------------------------------------------------------------------------------------ aligning
@dataclass(frozen=True)
class Segment:
    """Where one utterance of the text is spoken in the recording.

    Attributes:
        line: The utterance.
        start: Seconds from the start of the recording.
        end: Seconds from the start of the recording (> start).
        score: The lowest mean log-prob of its aligned path over SCORE_FRAMES frames (<= 0; higher is better).
    """

    line: TextLine
    start: float
    end: float
    score: float

    @property
    def duration(self) -> float:
        """Seconds."""
        return self.end - self.start

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready: index, text (normalised, as training reads it), original text, start, end, score."""
        return {"index": self.line.index, "text": self.line.normalized, "original_text": self.line.text,
                "start": round(self.start, 3), "end": round(self.end, 3), "score": round(self.score, 4)}


@dataclass(frozen=True)
class Alignment:
    """A recording aligned with its text.

    Attributes:
        segments: One per alignable line, in text order (= time order).
        unaligned: Lines without a character the model knows (not in `segments`).
        duration: Seconds of audio.
    """

    segments: tuple[Segment, ...]
    unaligned: tuple[TextLine, ...]
    duration: float

    def split(self, min_score: float) -> tuple[list[Segment], list[Segment]]:
        """(segments scoring at least `min_score`, those scoring lower)."""
        return [s for s in self.segments if s.score >= min_score], [s for s in self.segments if s.score < min_score]


def align_log_probs(log_probs: np.ndarray, lines: Sequence[TextLine], blank_id: int, seconds_per_frame: float,
                    options: AlignOptions = AlignOptions()) -> list[Segment]:
    """Align utterances to a recording's CTC log-probs with ctc-segmentation.

    Args:
        log_probs: [T, V] log-softmax output of the whole recording.
        lines: Utterances in spoken order, each with at least one token.
        blank_id: The CTC blank (the model's pad id).
        seconds_per_frame: The model's frame period.
        options: The search window.

    Returns:
        One Segment per line, in order; times in seconds, clipped to the recording.

    Raises:
        ValueError: The recording has fewer frames than the text has tokens (plus one blank between utterances).
    """
    frames = len(log_probs)
    window = max(1, round(options.window_seconds / seconds_per_frame))
    # ctc-segmentation doubles a window that fails; one between half the recording and all of it gave wrong
    # paths at the end (measured: 4,000 of 5,448 frames), so windows stay under half, else are the whole.
    params = CtcSegmentationParameters(
        char_list=[str(i) for i in range(log_probs.shape[1])],  # only read for naming states in its debug output
        blank=blank_id, index_duration=seconds_per_frame, score_min_mean_over_L=SCORE_FRAMES,
        min_window_size=window if 2 * window < frames else frames, max_window_size=max(frames // 2, window + 1))
    ground_truth, begins = prepare_token_list(params, [np.asarray(line.ids, dtype=np.int64) for line in lines])
    if len(ground_truth) > frames:
        raise ValueError(f"The recording ({frames * seconds_per_frame:.2f} s, {frames} frames) is too short for its "
                         f"text ({len(ground_truth)} tokens with the blanks between utterances, one frame each); "
                         "check that the text belongs to this recording.")
    lpz = log_probs.astype(np.float32, copy=False)
    try:
        timings, char_probs, _ = ctc_segmentation(params, lpz, ground_truth)
    except IndexError as e:  # no path within the largest window tried
        if frames * len(ground_truth) * 4 > FULL_TABLE_BYTES:
            raise ValueError(f"No alignment found within a {options.window_seconds:g} s search window (doubled up to "
                             f"{params.max_window_size * seconds_per_frame:.0f} s); check that the text is what is "
                             "spoken, or raise --window-seconds.") from e
        params.min_window_size = frames  # the whole recording: always finds the best path
        timings, char_probs, _ = ctc_segmentation(params, lpz, ground_truth)
    # The package's scores; its times are not used: it ends a segment right after its last token and starts the
    # next up to 0.5 s before its first, so pauses went to the second utterance (40 Piper utterances with 0-1 s
    # gaps, bench/align.py: median error 0.155 s, p90 0.46 s; cutting in the middle: 0.074 s, 0.33 s).
    scored = determine_utterance_segments(params, begins, char_probs, timings, [line.normalized for line in lines])
    times = _cut_in_pauses(timings, begins, seconds_per_frame, frames * seconds_per_frame)
    return [Segment(line, start, end, float(score)) for line, (start, end), (_, _, score) in zip(lines, times, scored)]


def _cut_in_pauses(timings: np.ndarray, begins: Sequence[int], frame_seconds: float,
                   duration: float) -> list[tuple[float, float]]:
    """(start, end) seconds per utterance: cut in the middle of the pause between neighbours, but at most
    MAX_PAD_SECONDS from their speech; `timings` [tokens] are when the path entered each ground-truth state."""
    # Utterance i's tokens are states begins[i] + 1 .. begins[i + 1] - 1, each entered at a frame that emits it.
    onsets = [float(timings[b + 1]) for b in begins[:-1]]
    offsets = [float(timings[b - 1]) + frame_seconds for b in begins[1:]]
    cuts = [(a + b) / 2 for a, b in zip(offsets, onsets[1:])]
    starts = [max(0.0, onsets[0] - MAX_PAD_SECONDS)] + [max(c, o - MAX_PAD_SECONDS) for c, o in zip(cuts, onsets[1:])]
    ends = [min(c, o + MAX_PAD_SECONDS) for c, o in zip(cuts, offsets)] + [min(duration, offsets[-1] + MAX_PAD_SECONDS)]
    return list(zip(starts, ends))


def align_recording(loaded: AcousticModel, audio: str | os.PathLike | Iterable[np.ndarray], lines: Sequence[str],
                    options: AlignOptions = AlignOptions()) -> Alignment:
    """Align a recording with its utterances.

    Args:
        loaded: The model (`asr.inference.load_model`); its normaliser and vocabulary prepare the text.
        audio: An audio file (streamed in blocks) or the recording as consecutive 16 kHz sample arrays.
        lines: Utterances in spoken order (`split_text`).
        options: Chunking and the search window.

    Raises:
        asr.audio.AudioError: The file is missing or unreadable.
        ValueError: No usable text, or a recording too short for it.
    """
    usable, unusable = prepare_lines(lines, loaded.normalizer, loaded.vocab)
    for line in unusable:
        logger.warning("Utterance %d has no character the model knows, not aligned: %r", line.index, line.text[:80])
    blocks = stream_audio(audio) if isinstance(audio, (str, os.PathLike)) else audio
    log_probs, num_samples = recording_log_probs(loaded, blocks, options)
    segments = align_log_probs(log_probs, usable, loaded.blank_id, loaded.seconds_per_frame, options)
    return Alignment(tuple(segments), tuple(unusable), num_samples / SAMPLE_RATE)


# ------------------------------------------------------------------------------------------- cutting
def cut_segments(blocks: Iterable[np.ndarray], segments: Sequence[Segment], paths: Sequence[Path]) -> None:
    """Write each segment's audio as a 16 kHz mono 16-bit WAV, in one pass over the recording.

    Args:
        blocks: The recording as consecutive 16 kHz sample arrays (e.g. `stream_audio(path)`).
        segments: In time order (they may touch; each is written whole even where neighbours overlap).
        paths: One output file per segment.
    """
    bounds = [(round(s.start * SAMPLE_RATE), round(s.end * SAMPLE_RATE)) for s in segments]
    writers: dict[int, sf.SoundFile] = {}
    first = 0  # segments before this one are finished
    position = 0  # global sample index of the current block's start
    try:
        for block in blocks:
            stop = position + len(block)
            for i in _active(bounds, first, position, stop):
                start, end = bounds[i]
                if i not in writers:
                    paths[i].parent.mkdir(parents=True, exist_ok=True)
                    writers[i] = sf.SoundFile(paths[i], "w", SAMPLE_RATE, 1, "PCM_16")
                writers[i].write(block[max(start, position) - position : min(end, stop) - position])
                if end <= stop:
                    writers.pop(i).close()
            while first < len(bounds) and bounds[first][1] <= stop:
                first += 1
            position = stop
    finally:
        for writer in writers.values():
            writer.close()
    for i in range(len(bounds)):  # a segment past the decoded end (rounding) still gets its (short) file
        if not paths[i].exists():
            sf.write(paths[i], np.zeros(0, dtype=np.float32), SAMPLE_RATE, subtype="PCM_16")


def _active(bounds: Sequence[tuple[int, int]], first: int, lo: int, hi: int) -> Iterator[int]:
    """Indices from `first` on of the spans [start, end) that overlap [lo, hi)."""
    for i in range(first, len(bounds)):
        start, end = bounds[i]
        if start >= hi:
            return
        if end > lo:
            yield i


# ----------------------------------------------------------------------------------------- measuring
@dataclass(frozen=True)
class JoinedRecording:
    """Utterances joined into one recording, with where each one's audio lies (the true boundaries).

    Attributes:
        spans: (start, end) seconds of each utterance's file inside the recording.
        duration: Seconds.
    """

    spans: tuple[tuple[float, float], ...]
    duration: float

    def true_boundaries(self) -> list[tuple[float, float]]:
        """Per utterance, the (start, end) an aligner should find: the middle of the pause on each side (the
        recording's ends for the first and last)."""
        cuts = [0.0] + [(a[1] + b[0]) / 2 for a, b in zip(self.spans, self.spans[1:])] + [self.duration]
        return list(zip(cuts[:-1], cuts[1:]))


def join_recordings(files: Sequence[str | os.PathLike], out: str | os.PathLike, gaps: Sequence[float]) -> JoinedRecording:
    """Write `files` one after another as one 16 kHz WAV, with `gaps[i]` seconds of silence after file i.

    Returns:
        Where each file lies in the result (for measuring an aligner against known boundaries).
    """
    spans, position = [], 0
    with sf.SoundFile(out, "w", SAMPLE_RATE, 1, "PCM_16") as writer:
        for i, file in enumerate(files):
            length = 0
            for block in stream_audio(file):
                writer.write(block)
                length += len(block)
            spans.append((position / SAMPLE_RATE, (position + length) / SAMPLE_RATE))
            position += length
            if i < len(files) - 1 and gaps[i] > 0:
                silence = round(gaps[i] * SAMPLE_RATE)
                writer.write(np.zeros(silence, dtype=np.float32))
                position += silence
    return JoinedRecording(tuple(spans), position / SAMPLE_RATE)


def boundary_errors(segments: Sequence[Segment], truth: Sequence[tuple[float, float]]) -> np.ndarray:
    """|found - true| seconds of every start and end, [2 * len(segments)] (segments and truth in the same order)."""
    if len(segments) != len(truth):
        raise ValueError(f"{len(segments)} segments for {len(truth)} true spans; align every utterance to compare.")
    return np.array([abs(x - y) for s, (a, b) in zip(segments, truth) for x, y in ((s.start, a), (s.end, b))])
