"""Dropping items that cannot train, with a report that says which and why.

Every utterance either becomes a `PreparedItem` (normalised text, label ids, exact duration) or a
`Drop` with a reason. Nothing is lost silently: the drops are written to a JSONL report and
summarised in the log. Checks, in order:

- `missing_audio` / `unreadable_audio`: the file is absent, empty, truncated, not audio, or has
  NaN/Inf samples (with `verify_audio`, every file is decoded once; otherwise only its header is read);
- `empty_transcript`: nothing left after normalisation;
- `too_short` / `too_long`: outside `[min_duration, max_duration]` seconds;
- `ctc_infeasible`: the model emits fewer frames than CTC needs for the labels (one per label plus
  one blank between each pair of repeated labels), computed with the model's real frame rate.
"""

from __future__ import annotations

import json
import logging
import os
from collections import Counter
from collections.abc import Callable, Sequence
from concurrent.futures import ProcessPoolExecutor
from dataclasses import asdict, dataclass
from pathlib import Path

from asr.audio import AudioError, audio_duration, load_audio
from asr.constants import SAMPLE_RATE
from asr.sources import Utterance
from asr.text import TextNormalizer, encode

logger = logging.getLogger(__name__)

FramesFn = Callable[[int], int]  # audio samples -> model output frames


@dataclass
class FilterConfig:
    """Which utterances are kept for training and evaluation."""

    min_duration: float = 0.5  # seconds; shorter clips are mostly silence or clipped words
    max_duration: float = 20.0  # seconds; longer ones dominate memory (attention is quadratic in length)
    verify_audio: bool = True  # decode every file once at preparation (catches truncated/NaN files)
    drop_unknown_chars: bool = False  # drop transcripts with characters outside the vocab instead of [UNK]


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
    reason: str
    detail: str

    def to_dict(self) -> dict[str, str | None]:
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
    """Applies every filter to one utterance (see the module docstring for the order)."""
    audio_ref = utt.audio_path
    if utt.audio_path is None and utt.audio_bytes is None:
        return Drop(utt.id, None, "missing_audio", "no audio path or bytes")
    try:
        if cfg.verify_audio:
            duration = len(load_audio(utt.audio)) / SAMPLE_RATE
        else:
            duration = utt.duration if utt.duration is not None else audio_duration(utt.audio)
    except AudioError as e:
        reason = "missing_audio" if e.reason == "missing" else "unreadable_audio"
        return Drop(utt.id, audio_ref, reason, str(e))
    text = normalizer(utt.text)
    if not text:
        return Drop(utt.id, audio_ref, "empty_transcript", f"transcript {utt.text!r} is empty after normalisation")
    if duration < cfg.min_duration:
        return Drop(utt.id, audio_ref, "too_short", f"{duration:.2f} s < min_duration {cfg.min_duration} s")
    if duration > cfg.max_duration:
        return Drop(utt.id, audio_ref, "too_long", f"{duration:.2f} s > max_duration {cfg.max_duration} s")
    unknown = sorted({c for c in text.replace(" ", "") if c not in vocab})
    if unknown and cfg.drop_unknown_chars:
        return Drop(utt.id, audio_ref, "unknown_chars", f"characters not in the vocabulary: {''.join(unknown)}")
    labels = encode(text, vocab)
    if frames_fn is not None:
        frames = frames_fn(round(duration * SAMPLE_RATE))
        needed = ctc_min_frames(labels)
        if frames < needed:
            return Drop(
                utt.id, audio_ref, "ctc_infeasible",
                f"{frames} output frames for {len(labels)} labels needing {needed} frames ({duration:.2f} s)",
            )
    return PreparedItem(utt.id, text, labels, duration, utt.audio_path, utt.audio_bytes, utt.speaker)


def apply_filters(
    utterances: Sequence[Utterance],
    normalizer: TextNormalizer,
    vocab: dict[str, int],
    cfg: FilterConfig,
    frames_fn: FramesFn | None = None,
    num_workers: int | None = None,
    progress: bool = False,
) -> tuple[list[PreparedItem], list[Drop]]:
    """Checks every utterance, in parallel when decoding audio; returns (kept, dropped) in input order."""
    workers = num_workers if num_workers is not None else min(os.cpu_count() or 1, 8)
    args = (normalizer, vocab, cfg, frames_fn)
    if workers <= 1 or len(utterances) < 64:
        results = [check_utterance(u, *args) for u in _progress(utterances, progress)]
    else:
        with ProcessPoolExecutor(workers) as pool:
            chunk = max(1, len(utterances) // (workers * 8))
            futures = pool.map(_check_star, ((u, *args) for u in utterances), chunksize=chunk)
            results = list(_progress(futures, progress, total=len(utterances)))
    kept = [r for r in results if isinstance(r, PreparedItem)]
    dropped = [r for r in results if isinstance(r, Drop)]
    return kept, dropped


def write_report(drops: Sequence[Drop], path: str | Path, total: int) -> dict[str, int]:
    """Writes one JSONL line per dropped item (atomically) and returns counts by reason."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(path.suffix + ".tmp")
    with open(tmp, "w", encoding="utf-8") as f:
        for d in drops:
            f.write(json.dumps(d.to_dict(), ensure_ascii=False) + "\n")
    os.replace(tmp, path)
    counts = dict(Counter(d.reason for d in drops))
    if drops:
        summary = ", ".join(f"{n} {reason}" for reason, n in sorted(counts.items()))
        logger.warning("dropped %d of %d utterances (%s); see %s", len(drops), total, summary, path)
    return counts


def _check_star(args: tuple) -> PreparedItem | Drop:
    """`check_utterance` for `ProcessPoolExecutor.map`."""
    return check_utterance(*args)


def _progress(items, enabled: bool, total: int | None = None):
    """Wraps an iterable in a tqdm bar when enabled."""
    if not enabled:
        return items
    from tqdm.auto import tqdm

    return tqdm(items, total=total, desc="checking audio", unit="utt", dynamic_ncols=True)
