"""Long recordings in bounded memory: cut a stream of audio into overlapping chunks, stitch the CTC output.

A recording of any length, read block by block (`asr.audio.stream_audio`: 16 kHz, bit-identical to
decoding the whole file at once), is cut into chunks of `chunk_samples` that overlap by
`overlap_samples`. Each chunk's log-probs keep only their centre: half the overlap is dropped on
each inner side, so every output frame comes from the chunk where it has at least half an overlap of
context on both sides. The kept frames are concatenated into one [T, V] array for the whole file,
which a decoder then searches once (so words and LM context run across chunk edges):

    chunk 0  |==========keep==========|....|
    chunk 1                      |....|==========keep==========|....|
    chunk 2 (last, pulled back to full length)          |.......|====keep====|
                                      ^ boundary = chunk start + chunk - overlap / 2

Chunk starts and boundaries are multiples of the model's frame step (320 samples for wav2vec2), so
frame t of a chunk starting at sample s is global frame s / step + t and the stitched array has
exactly `frames(num_samples)` rows, as the unchunked forward pass would.

Cutting at pauses (`ChunkSpec.segmenter`) instead gives the model utterance-like pieces: each chunk
runs from the previous cut to the pause a segmenter (asr.segmenters: the energy rule, WebRTC's or
Silero's voice activity detector) finds between a third of `chunk_samples` and its end, plus
PAUSE_PAD_SECONDS, and keeps everything up to that cut. No chunk sees audio across a pause, which suits
models fine-tuned on short utterances: they read such pieces better than long windows (bench/chunking.py
measures it for a model). A cut the segmenter places in a pause is also a word boundary: the stitched
log-probs get the word delimiter at the cut frame, so a model that marks word ends weakly does not run
the last word of one piece into the first of the next.

Memory: the audio held is at most one chunk plus one stride plus one read block (about 3 MB for
30 s chunks); what grows with the file is the stitched log-probs, 4 * V bytes per 20 ms frame
(about 22 MB per hour of audio for a 30-token vocabulary).
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass

import numpy as np

from asr.constants import SAMPLE_RATE
from asr.segmenters import SEGMENTERS, make_segmenter

logger = logging.getLogger(__name__)

PAUSE_PAD_SECONDS = 0.2  # audio past a cut given to the chunk before it: covers the conv receptive field
PAUSE_MIN_FRACTION = 1 / 3  # a pause cut comes no earlier than this share of --chunk-seconds into a chunk


# ----------------------------------------------------------------------------------------- chunking
@dataclass(frozen=True)
class ChunkSpec:
    """Chunk geometry in samples, aligned to the model's frame step.

    Attributes:
        chunk_samples: Samples per chunk (a multiple of `frame_samples`).
        overlap_samples: Samples shared by neighbouring chunks (a multiple of 2 * `frame_samples`, >= that).
        frame_samples: The model's frame step (the product of its conv strides; 320 for wav2vec2).
    """

    chunk_samples: int
    overlap_samples: int
    frame_samples: int
    segmenter: str | None = None  # cut at pauses this one finds (asr.segmenters) instead of the fixed grid (no overlap)

    @classmethod
    def from_seconds(cls, chunk_seconds: float, overlap_seconds: float, frame_samples: int,
                     segmenter: str | None = None) -> ChunkSpec:
        """Round seconds to the frame grid: chunk to a whole number of frames, overlap to an even one (>= 2)."""
        if frame_samples < 1:
            raise ValueError(f"frame_samples is {frame_samples}; pass the model's frame step (e.g. 320).")
        chunk = max(1, round(chunk_seconds * SAMPLE_RATE / frame_samples)) * frame_samples
        overlap = max(1, round(overlap_seconds * SAMPLE_RATE / (2 * frame_samples))) * 2 * frame_samples
        return cls(chunk, overlap, frame_samples, segmenter)

    def __post_init__(self) -> None:
        if self.segmenter is not None and self.segmenter not in SEGMENTERS:
            raise ValueError(f"Segmenter {self.segmenter!r} is unknown; use one of {', '.join(SEGMENTERS)}, or None "
                             "for the fixed grid.")
        if self.chunk_samples % self.frame_samples or self.overlap_samples % (2 * self.frame_samples):
            raise ValueError(f"Chunk {self.chunk_samples} and overlap {self.overlap_samples} samples must be multiples "
                             f"of the frame step {self.frame_samples} (overlap of twice it); use "
                             "ChunkSpec.from_seconds.")
        if not self.at_pauses and (self.overlap_samples <= 0 or self.chunk_samples < 2 * self.overlap_samples):
            raise ValueError(f"Overlap {self.overlap_samples / SAMPLE_RATE:g} s must be positive and at most half the "
                             f"chunk ({self.chunk_samples / SAMPLE_RATE:g} s); lower --overlap-seconds or raise "
                             "--chunk-seconds.")

    @property
    def at_pauses(self) -> bool:
        """Whether pieces are cut at pauses (by `segmenter`) rather than on the fixed overlapping grid."""
        return self.segmenter is not None

    @property
    def stride_samples(self) -> int:
        """Samples between the starts of neighbouring chunks."""
        return self.chunk_samples - self.overlap_samples


@dataclass(frozen=True)
class Chunk:
    """One window of a recording and the part of it whose frames are kept.

    Attributes:
        audio: Samples [chunk_samples] (the last chunk may be shorter only when the file is).
        start: Global sample index of audio[0] (a multiple of the frame step).
        keep_start: Global sample where this chunk's kept frames begin (a multiple of the frame step).
        keep_end: Global sample where they end; None for the last chunk (to the end of the file).
        ends_in_silence: keep_end lies in a pause (pause cuts only): the words on either side are apart.
    """

    audio: np.ndarray
    start: int
    keep_start: int
    keep_end: int | None
    ends_in_silence: bool = False

    @property
    def last(self) -> bool:
        """Whether this chunk ends the recording."""
        return self.keep_end is None


def iter_chunks(blocks: Iterable[np.ndarray], spec: ChunkSpec) -> Iterator[Chunk]:
    """Cut a stream of samples into overlapping chunks without knowing its length in advance.

    A chunk is emitted once samples beyond its end have arrived (so it is certainly not the last);
    at the end of the stream the last chunk is pulled back to full length where the audio allows,
    for more left context, while its kept region still starts where the previous one's ended.

    Args:
        blocks: Consecutive sample arrays [n_i] (16 kHz mono), e.g. from `stream_audio`.
        spec: Chunk geometry.

    Yields:
        Chunks in order; a recording of at most one chunk yields a single chunk keeping everything.
    """
    if spec.at_pauses:
        yield from _iter_pause_chunks(blocks, spec)
        return
    size, stride, half = spec.chunk_samples, spec.stride_samples, spec.overlap_samples // 2
    buffer = np.zeros(0, dtype=np.float32)
    buffer_start = 0  # global index of buffer[0]
    next_start = 0
    for block in blocks:
        if len(block):
            buffer = np.concatenate([buffer, np.asarray(block, dtype=np.float32)])
        while buffer_start + len(buffer) > next_start + size:
            offset = next_start - buffer_start
            keep_start = next_start + half if next_start else 0
            yield Chunk(buffer[offset : offset + size].copy(), next_start, keep_start, next_start + size - half)
            # Keep from this chunk's start on: the last chunk may be pulled back that far.
            buffer, buffer_start = buffer[offset:], next_start
            next_start += stride
    total = buffer_start + len(buffer)
    if total == 0:
        return
    aligned_back = (total - size) // spec.frame_samples * spec.frame_samples
    start = max(0, min(next_start, aligned_back), buffer_start)
    keep_start = next_start + half if next_start else 0
    yield Chunk(buffer[start - buffer_start :].copy(), start, keep_start, None)


def _iter_pause_chunks(blocks: Iterable[np.ndarray], spec: ChunkSpec) -> Iterator[Chunk]:
    """`iter_chunks` for `spec.at_pauses`: consecutive pieces cut where `spec.segmenter` finds a pause."""
    segmenter = make_segmenter(spec.segmenter)
    size, step = spec.chunk_samples, spec.frame_samples
    pad = -(-int(PAUSE_PAD_SECONDS * SAMPLE_RATE) // step) * step
    buffer = np.zeros(0, dtype=np.float32)
    start = 0  # global index of buffer[0], the next chunk's start
    for block in blocks:
        if len(block):
            buffer = np.concatenate([buffer, np.asarray(block, dtype=np.float32)])
        while len(buffer) > size + pad:
            cut = segmenter.cut(buffer[:size], int(size * PAUSE_MIN_FRACTION), size, step)
            yield Chunk(buffer[: cut.sample + pad].copy(), start, start, start + cut.sample, cut.in_silence)
            buffer, start = buffer[cut.sample :], start + cut.sample
    if start + len(buffer) == 0:
        return
    yield Chunk(buffer.copy(), start, start, None)


class Stitcher:
    """Concatenates the kept frames of consecutive chunks into one [T, V] log-prob array.

    Args:
        frame_samples: The model's frame step in samples (ChunkSpec.frame_samples).
        delimiter: The word delimiter's token id: the first frame after a cut in silence is made that
            token (certain), so no word runs across the pause. None leaves every frame as the model gave it.
    """

    def __init__(self, frame_samples: int, delimiter: int | None = None) -> None:
        self.frame_samples = frame_samples
        self.delimiter = delimiter
        self._parts: list[np.ndarray] = []
        self._next_frame = 0  # global frame the next kept part must start at
        self._boundary_in_silence = False  # the previous part ended at a cut in silence
        self._done = False

    def add(self, chunk: Chunk, log_probs: np.ndarray) -> None:
        """Keep the frames of `chunk`'s kept region; `log_probs` [frames(len(chunk.audio)), V]."""
        if self._done:
            raise ValueError("Stitcher got a chunk after the last one; use one Stitcher per recording.")
        first = (chunk.keep_start - chunk.start) // self.frame_samples
        if chunk.keep_start // self.frame_samples != self._next_frame:
            raise ValueError(f"Chunk kept region starts at frame {chunk.keep_start // self.frame_samples}, expected "
                             f"{self._next_frame}; add the chunks of one recording in order.")
        if chunk.last:
            stop = len(log_probs)
            self._done = True
        else:
            stop = (chunk.keep_end - chunk.start) // self.frame_samples
            if stop > len(log_probs):
                raise ValueError(f"A chunk gave {len(log_probs)} frames but its kept region needs {stop}: the model's "
                                 "receptive field is wider than half the overlap; raise --overlap-seconds.")
        part = np.asarray(log_probs[first:stop], dtype=np.float32)
        if self._parts and self.delimiter is not None and self._boundary_in_silence and len(part):
            part = part.copy()  # only a marked part is copied: the model's output is not ours to change
            part[0] = _certain(self.delimiter, part.shape[1])
        self._parts.append(part)
        self._boundary_in_silence = chunk.ends_in_silence
        self._next_frame += stop - first

    def result(self) -> np.ndarray:
        """The stitched log-probs [T, V] of the whole recording (after its last chunk)."""
        if not self._done:
            raise ValueError("Stitcher.result() called before the last chunk was added; add every chunk first.")
        return np.concatenate(self._parts) if len(self._parts) > 1 else self._parts[0]


def _certain(token: int, vocab_size: int) -> np.ndarray:
    """A log-prob row [V] that is `token` for certain (the others at a large finite negative)."""
    row = np.full(vocab_size, -1e4, dtype=np.float32)
    row[token] = 0.0
    return row


def chunked_log_probs(blocks: Iterable[np.ndarray], spec: ChunkSpec,
                      forward: Callable[[list[np.ndarray]], list[np.ndarray]],
                      chunks_per_batch: int, delimiter: int | None = None,
                      on_batch: Callable[[int], None] | None = None) -> tuple[np.ndarray, int]:
    """Run a model over a stream chunk by chunk and stitch its output.

    Args:
        blocks: The recording as consecutive 16 kHz sample arrays.
        spec: Chunk geometry.
        forward: Audios -> log-probs [frames_i, V] per audio (e.g. `asr.inference.log_probs_batch`).
        chunks_per_batch: Chunks per `forward` call.
        delimiter: The word delimiter's id, to mark cuts in silence as word boundaries (see Stitcher).
        on_batch: Called after each `forward` call with the samples of the recording covered so far
            (the end of its last chunk), e.g. for progress within a long file.

    Returns:
        (log-probs [frames(num_samples), V], num_samples).
    """
    stitcher = Stitcher(spec.frame_samples, delimiter)
    pending: list[Chunk] = []
    num_samples = 0

    def flush() -> None:
        for chunk, log_probs in zip(pending, forward([c.audio for c in pending])):
            stitcher.add(chunk, log_probs)
        if on_batch is not None:
            on_batch(pending[-1].start + len(pending[-1].audio))
        pending.clear()

    for chunk in iter_chunks(blocks, spec):
        num_samples = chunk.start + len(chunk.audio)
        pending.append(chunk)
        if len(pending) >= chunks_per_batch:
            flush()
    if pending:
        flush()
    return stitcher.result(), num_samples
