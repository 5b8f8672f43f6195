"""From a source config to batches: preparation (cached once per machine) and lazy audio decoding.

`prepare_split` reads a source, normalises and encodes every transcript, applies the filters
(writing the drop report) and caches the result as an arrow table keyed by everything that
affects it. The datasets that read the prepared tables (and streams) live in `asr.datasets`.

    split = prepare_split(cfg.data.train, normalizer, vocab, cfg.data.filters, frames_fn, cfg.data.cache_dir)
    loader = DataLoader(SpeechDataset(split.table), batch_sampler=..., collate_fn=collate_skip_none(collator))  # asr.datasets
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import shutil
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from asr.augment import AugmentConfig
from asr.config import to_dict
from asr.feature_cache import FeatureCacheConfig
from asr.filters import FilterConfig, FramesFn, apply_filters, summarize, write_report
from asr.sources import SourceConfig, Utterance, load_source
from asr.text import TextNormalizer

logger = logging.getLogger(__name__)

CACHE_VERSION = 2  # bump when the cached table's columns or meaning change
_FRAMES_PROBE = (400, 16_000, 123_457, 480_000)  # sample counts that fingerprint a model's frame rate


def _table_features() -> dict[str, Any]:
    """Column types of a prepared table."""
    import datasets

    return {
        "id": datasets.Value("string"), "text": datasets.Value("string"),
        "labels": datasets.List(datasets.Value("int32")), "duration": datasets.Value("float64"),
        "audio_path": datasets.Value("string"), "audio_bytes": datasets.Value("binary"),
        "speaker": datasets.Value("string"),
    }


@dataclass
class DataConfig:
    """Where the data comes from and how it is checked and batched."""

    train: SourceConfig = field(default_factory=SourceConfig)  # the training split: a manifest, a folder, a dataset
    dev: SourceConfig = field(default_factory=SourceConfig)  # evaluated every train.eval_every steps; picks model/
    test: SourceConfig | None = None  # only used by evaluation scripts
    normalizer: TextNormalizer = field(default_factory=TextNormalizer)  # every transcript; saved with the model
    vocab: str | None = None  # None: built from the train transcripts; else a tokenizer dir or hub id to reuse
    filters: FilterConfig = field(default_factory=FilterConfig)  # what is dropped from train and dev, with a report
    max_batch_seconds: float = 80.0  # padded audio seconds per batch per process (batch_size x longest)
    max_batch_size: int | None = None  # cap on utterances per batch, e.g. for attention memory
    shuffle: bool = True  # False: batches in ascending length, same every epoch (debugging, equivalence tests)
    num_workers: int = 2  # DataLoader workers decoding audio; 0 decodes in the training process
    cache_dir: str = "data/cache"  # prepared tables, one folder per (source, normaliser, vocab, filters)
    # the frozen conv encoder's output computed once per utterance: steps skip the encoder (off by default)
    feature_cache: FeatureCacheConfig = field(default_factory=FeatureCacheConfig)
    # speaker and channel changes to training audio, per (seed, epoch, utterance) (off by default)
    augment: AugmentConfig = field(default_factory=AugmentConfig)


@dataclass
class PreparedSplit:
    """A split after filtering: the cached table, its durations and what was dropped."""

    table: Any  # datasets.Dataset with columns id, text, labels, duration, audio_path, audio_bytes, speaker
    durations: list[float]
    drop_counts: dict[str, int]
    report_path: Path

    def __len__(self) -> int:
        return len(self.durations)

    @property
    def hours(self) -> float:
        """Audio kept, in hours."""
        return sum(self.durations) / 3600


def prepare_split(
    source: SourceConfig,
    normalizer: TextNormalizer,
    vocab: dict[str, int],
    filters: FilterConfig,
    frames_fn: FramesFn | None,
    cache_dir: str | Path,
    num_workers: int | None = None,
    progress: bool = False,
    utterances: list[Utterance] | None = None,
) -> PreparedSplit:
    """Reads, normalises, encodes and filters one split, or loads it from the cache.

    The cache entry `<cache_dir>/<name>-<hash>` is keyed by the source config, the sizes and
    modification times of its files, the normaliser, the vocabulary, the filters and the model's
    frame rate; changing any of them prepares the split again. An entry counts only once its
    `done.json` exists (it is renamed into place whole), so an interrupted run is redone.

    Call it under `accelerator.main_process_first()`: the main process prepares, the others
    then find the cache. The drop report is `<cache entry>/dropped.jsonl`.

    Args:
        source: where the split comes from.
        normalizer: applied to every transcript.
        vocab: token -> id for the labels.
        filters: what to drop.
        frames_fn: samples -> model output frames, for the CTC feasibility check; None skips it.
        cache_dir: root of the cache.
        num_workers: filter processes (see `apply_filters`).
        progress: show a tqdm bar while checking audio.
        utterances: the source's records when already read (saves reading it twice).

    Returns:
        The prepared split (memory-mapped table, durations, drop counts, report path).

    Raises:
        ValueError: the source cannot be read, or every utterance was dropped (the report says why).
    """
    import datasets

    entry = Path(cache_dir) / _cache_key(source, normalizer, vocab, filters, frames_fn)
    cached = _load_entry(entry)
    if cached is not None:
        logger.info("using the prepared %s from %s", source.path, entry)
        return cached

    utterances = utterances if utterances is not None else load_source(source)
    kept, drops = apply_filters(utterances, normalizer, vocab, filters, frames_fn, num_workers, progress)
    if not kept:
        # The report goes where it would have been; without done.json the entry is redone next time.
        counts = write_report(drops, entry / "dropped.jsonl", total=len(utterances))
        raise ValueError(
            f"all {len(utterances)} utterances of {source.path} were dropped ({summarize(counts)}); "
            f"see {entry / 'dropped.jsonl'} and fix the audio files or filters.min_duration/max_duration"
        )
    tmp = entry.with_name(f".{entry.name}.tmp{os.getpid()}")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    counts = write_report(drops, tmp / "dropped.jsonl", total=len(utterances))
    features = datasets.Features(_table_features())
    columns = {name: [getattr(item, name) for item in kept] for name in features}
    datasets.Dataset.from_dict(columns, features=features).save_to_disk(str(tmp / "table"))
    meta = {
        "version": CACHE_VERSION, "source": to_dict(source), "total": len(utterances),
        "kept": len(kept), "dropped": len(drops), "drop_counts": counts,
    }
    (tmp / "done.json").write_text(json.dumps(meta, indent=2))
    shutil.rmtree(entry, ignore_errors=True)  # a half-written or all-dropped entry from an earlier run
    try:
        os.replace(tmp, entry)  # atomic: a half-written entry never has done.json under the final name
    except OSError:
        if not (entry / "done.json").exists():
            raise
        shutil.rmtree(tmp, ignore_errors=True)  # another process finished the same entry first
    logger.info("prepared %s: %d kept, %d dropped -> %s", source.path, len(kept), len(drops), entry)
    prepared = _load_entry(entry)
    if prepared is None:
        raise RuntimeError(f"the cache entry {entry} vanished right after it was written; check {cache_dir}")
    return prepared


def _load_entry(entry: Path) -> PreparedSplit | None:
    """The prepared split of a complete cache entry, None when there is none (or it is unreadable)."""
    import datasets

    if not (entry / "done.json").is_file():
        return None
    try:
        meta = json.loads((entry / "done.json").read_text())
        if meta.get("version") != CACHE_VERSION:
            return None
        table = datasets.load_from_disk(str(entry / "table"))
    except (OSError, ValueError) as e:  # a damaged entry is redone, not fatal
        logger.warning("ignoring the unreadable cache entry %s (%s); preparing it again", entry, e)
        return None
    return PreparedSplit(table, [float(d) for d in table["duration"]], meta["drop_counts"], entry / "dropped.jsonl")


def _cache_key(
    source: SourceConfig,
    normalizer: TextNormalizer,
    vocab: dict[str, int],
    filters: FilterConfig,
    frames_fn: FramesFn | None,
) -> str:
    """Hash of everything that changes a prepared table, including the source files' sizes and times."""
    parts = {
        "version": CACHE_VERSION,
        "source": to_dict(source),
        "normalizer": to_dict(normalizer),
        "vocab": vocab,
        "filters": to_dict(filters),
        "frames": [frames_fn(n) for n in _FRAMES_PROBE] if frames_fn else None,
        "files": _fingerprint(source),
    }
    digest = hashlib.sha256(json.dumps(parts, sort_keys=True, default=str).encode()).hexdigest()[:16]
    return f"{Path(source.path).name or 'source'}-{digest}"


def _fingerprint(source: SourceConfig) -> str:
    """Sizes and modification times of the source's files (a hub name fingerprints as itself)."""
    root = Path(source.path)
    if source.split and (root / source.split).is_dir():
        root = root / source.split  # only this split's files: editing dev must not invalidate train
    if not root.exists():
        return source.path
    files = [root] if root.is_file() else sorted(f for f in root.rglob("*") if f.is_file())
    if source.transcript_file and Path(source.transcript_file).is_file():
        files.append(Path(source.transcript_file))
    h = hashlib.sha256()
    for f in files:
        st = f.stat()
        h.update(f"{f}:{st.st_size}:{st.st_mtime_ns}\n".encode())
    return h.hexdigest()
