"""Dropping items that cannot train, with a report that says which and why.

Every utterance either becomes a `PreparedItem` (normalised text, label ids, exact duration) or a
`Drop` with a reason. Nothing is lost silently: the drops are written to a JSONL report and
summarised in the log. Checks, in order:

- `missing_audio`: no audio given, or the file does not exist;
- `unreadable_audio`: the file is empty, truncated (shorter than its header says), not audio, or has
  NaN/Inf samples (with `verify_audio`, every file is decoded once; otherwise only its header is read);
- `empty_transcript`: nothing left after normalisation;
- `too_short` / `too_long`: outside `[min_duration, max_duration]` seconds;
- `unknown_chars`: characters outside the vocabulary, with `drop_unknown_chars` (else they become [UNK]);
- `ctc_infeasible`: the model emits fewer frames than CTC needs for the labels (one per label plus
  one blank between each pair of repeated labels), computed with the model's real frame rate.

    kept, drops = apply_filters(utterances, normalizer, vocab, FilterConfig(), frames_fn_for(config))
    write_report(drops, "dropped.jsonl", total=len(utterances))
"""

from __future__ import annotations

import functools
import json
import logging
import os
from collections import Counter
from collections.abc import Callable, Iterable, Sequence
from concurrent.futures import ProcessPoolExecutor
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np

from asr.audio import AudioError, audio_duration, load_audio, truncation
from asr.constants import SAMPLE_RATE
from asr.files import write_text_atomic
from asr.sources import Utterance
from asr.text import TextNormalizer, encode

logger = logging.getLogger(__name__)

FramesFn = Callable[[int], int]  # audio samples -> model output frames

DROP_REASONS = (
    "missing_audio", "unreadable_audio", "empty_transcript", "too_short", "too_long", "unknown_chars", "ctc_infeasible",
)
PARALLEL_MIN_ITEMS = 64  # below this, starting worker processes costs more than it saves
MAX_WORKERS = 8  # decoding is I/O- and memory-bound beyond this


@dataclass
class FilterConfig:
    """Which utterances are kept for training and evaluation."""

    min_duration: float = 0.5  # seconds; shorter clips are mostly silence or clipped words
    max_duration: float = 20.0  # seconds; longer ones dominate memory (attention is quadratic in length)
    verify_audio: bool = True  # decode every file once at preparation (catches truncated/NaN files)
    drop_unknown_chars: bool = False  # drop transcripts with characters outside the vocab instead of [UNK]

    def __post_init__(self) -> None:
        if not 0 <= self.min_duration < self.max_duration:
            raise ValueError(
                f"filters need 0 <= min_duration < max_duration, got {self.min_duration} and {self.max_duration}; "
                "fix filters.min_duration/max_duration"
            )


@dataclass(frozen=True)
class PreparedItem:
    """An utterance ready for training: exact duration and label ids."""

    id: str
    text: str  # normalised
    labels: list[int]
    duration: float  # seconds
    audio_path: str | None
    audio_bytes: bytes | None
    speaker: str | None


@dataclass(frozen=True)
class Drop:
    """An utterance that was left out, and why."""

    id: str
    audio: str | None  # path, or None for in-memory audio
    reason: str  # one of DROP_REASONS
    detail: str

    def to_dict(self) -> dict[str, str | None]:
        """The report line's fields: id, audio, reason, detail."""
        return asdict(self)


def ctc_min_frames(labels: Sequence[int]) -> int:
    """Fewest output frames CTC needs: one per label plus a blank between each repeated pair."""
    repeats = sum(1 for a, b in zip(labels, labels[1:]) if a == b)
    return len(labels) + repeats


def check_utterance(
    utt: Utterance,
    normalizer: TextNormalizer,
    vocab: dict[str, int],
    cfg: FilterConfig,
    frames_fn: FramesFn | None,
) -> PreparedItem | Drop:
    """Applies every filter to one utterance (see the module docstring for the order).

    Never raises for a bad item: any failure to read its audio becomes a `Drop`.

    Args:
        utt: the utterance.
        normalizer: applied to the raw transcript.
        vocab: token -> id; labels are `encode(normalised text, vocab)`.
        cfg: thresholds.
        frames_fn: samples -> model output frames, for the CTC check; None skips it.

    Returns:
        The prepared item, or why it was dropped.
    """
    return check_and_decode(utt, normalizer, vocab, cfg, frames_fn)[0]


def check_and_decode(
    utt: Utterance,
    normalizer: TextNormalizer,
    vocab: dict[str, int],
    cfg: FilterConfig,
    frames_fn: FramesFn | None,
) -> tuple[PreparedItem | Drop, np.ndarray | None]:
    """`check_utterance`, also returning the decoded samples when `cfg.verify_audio` decoded them.

    Streaming uses it to decode each file once. Samples are float32 [num_samples] at 16 kHz, not
    normalised; None when audio was not decoded or the item was dropped for its audio.
    """
    audio_ref = utt.audio_path if utt.audio_bytes is None else None
    if utt.audio is None:
        return Drop(utt.id, None, "missing_audio", "no audio path or bytes"), None
    samples = None
    try:
        if cfg.verify_audio:
            samples = load_audio(utt.audio)
            reason = truncation(utt.audio, len(samples))
            if reason:
                return Drop(utt.id, audio_ref, "unreadable_audio", reason), None
            duration = len(samples) / SAMPLE_RATE
        else:
            duration = utt.duration if utt.duration is not None else audio_duration(utt.audio)
    except AudioError as e:
        reason = "missing_audio" if e.reason == "missing" else "unreadable_audio"
        return Drop(utt.id, audio_ref, reason, str(e)), None
    except Exception as e:  # a decoder failing in an unforeseen way must not end a run over one file
        logger.debug("unexpected error reading %s", utt.id, exc_info=True)
        return Drop(utt.id, audio_ref, "unreadable_audio", f"{type(e).__name__}: {e}"), None
    text = normalizer(utt.text)
    if not text:
        detail = f"transcript {utt.text!r} is empty after normalisation"
        return Drop(utt.id, audio_ref, "empty_transcript", detail), None
    if duration < cfg.min_duration:
        return Drop(utt.id, audio_ref, "too_short", f"{duration:.2f} s < min_duration {cfg.min_duration} s"), None
    if duration > cfg.max_duration:
        return Drop(utt.id, audio_ref, "too_long", f"{duration:.2f} s > max_duration {cfg.max_duration} s"), None
    unknown = sorted({c for c in text.replace(" ", "") if c not in vocab})
    if unknown and cfg.drop_unknown_chars:
        detail = f"characters not in the vocabulary: {''.join(unknown)!r}"
        return Drop(utt.id, audio_ref, "unknown_chars", detail), None
    labels = encode(text, vocab)
    if frames_fn is not None:
        frames = frames_fn(round(duration * SAMPLE_RATE))
        needed = ctc_min_frames(labels)
        if frames < needed:
            detail = f"{frames} output frames for {len(labels)} labels needing {needed} frames ({duration:.2f} s)"
            return Drop(utt.id, audio_ref, "ctc_infeasible", detail), None
    item = PreparedItem(utt.id, text, labels, duration, utt.audio_path, utt.audio_bytes, utt.speaker)
    return item, samples


def apply_filters(
    utterances: Sequence[Utterance],
    normalizer: TextNormalizer,
    vocab: dict[str, int],
    cfg: FilterConfig,
    frames_fn: FramesFn | None = None,
    num_workers: int | None = None,
    progress: bool = False,
) -> tuple[list[PreparedItem], list[Drop]]:
    """Checks every utterance, in worker processes for large inputs.

    Args:
        utterances: the source's records.
        normalizer, vocab, cfg, frames_fn: as for `check_utterance` (all must pickle).
        num_workers: processes; None uses min(cores, MAX_WORKERS); <= 1, or fewer than
            PARALLEL_MIN_ITEMS utterances, checks in this process.
        progress: show a tqdm bar.

    Returns:
        (kept, dropped), each in input order; `len(kept) + len(dropped) == len(utterances)`.
    """
    workers = num_workers if num_workers is not None else min(os.cpu_count() or 1, MAX_WORKERS)
    check = functools.partial(check_utterance, normalizer=normalizer, vocab=vocab, cfg=cfg, frames_fn=frames_fn)
    if workers <= 1 or len(utterances) < PARALLEL_MIN_ITEMS:
        results = [check(u) for u in _progress(utterances, progress, len(utterances))]
    else:
        with ProcessPoolExecutor(min(workers, len(utterances))) as pool:
            # A few chunks per worker: big enough to amortise pickling, small enough to balance.
            chunk = max(1, len(utterances) // (workers * 8))
            results = list(_progress(pool.map(check, utterances, chunksize=chunk), progress, len(utterances)))
    kept = [r for r in results if isinstance(r, PreparedItem)]
    dropped = [r for r in results if isinstance(r, Drop)]
    return kept, dropped


def write_report(drops: Sequence[Drop], path: str | Path, total: int) -> dict[str, int]:
    """Writes one JSONL line per dropped item (atomically) and returns counts by reason.

    Args:
        drops: the dropped items.
        path: the report file (`dropped.jsonl`), replaced if it exists.
        total: utterances checked, for the log summary.

    Returns:
        Reason -> count.
    """
    path = Path(path)
    write_text_atomic(path, "".join(json.dumps(d.to_dict(), ensure_ascii=False) + "\n" for d in drops))
    counts = dict(Counter(d.reason for d in drops))
    if drops:
        logger.warning("dropped %d of %d utterances (%s); see %s", len(drops), total, summarize(counts), path)
    return counts


def summarize(counts: dict[str, int]) -> str:
    """`3 too_short, 1 missing_audio`: drop counts, most frequent first."""
    return ", ".join(f"{n} {reason}" for reason, n in sorted(counts.items(), key=lambda kv: (-kv[1], kv[0])))


def _progress(items: Iterable[Any], enabled: bool, total: int) -> Iterable[Any]:
    """Wraps an iterable in a tqdm bar when enabled."""
    if not enabled:
        return items
    from tqdm.auto import tqdm

    return tqdm(items, total=total, desc="checking audio", unit="utt", dynamic_ncols=True)
