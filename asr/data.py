"""From a source config to batches: preparation (cached once per machine) and lazy audio decoding.

`prepare_split` reads a source, normalises and encodes every transcript, applies the filters
(writing the drop report) and caches the result as an arrow table keyed by everything that
affects it. `SpeechDataset` decodes audio on demand in DataLoader workers, so a corpus never has
to fit in memory as float arrays. `StreamingSpeechDataset` reads a `datasets` stream sharded
across ranks, for corpora larger than the disk.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import shutil
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from asr.audio import AudioError, load_audio
from asr.config import to_dict
from asr.filters import Drop, FilterConfig, FramesFn, apply_filters, check_utterance, write_report
from asr.sources import SourceConfig, Utterance, iter_hf, load_source, open_hf_dataset
from asr.text import TextNormalizer

logger = logging.getLogger(__name__)

CACHE_VERSION = 1  # bump when the cached table's columns or meaning change
_FRAMES_PROBE = (400, 16_000, 123_457, 480_000)  # sample counts that fingerprint a model's frame rate


@dataclass
class DataConfig:
    """Where the data comes from and how it is checked and batched."""

    train: SourceConfig = field(default_factory=SourceConfig)
    dev: SourceConfig = field(default_factory=SourceConfig)
    test: SourceConfig | None = None  # only used by evaluation scripts
    normalizer: TextNormalizer = field(default_factory=TextNormalizer)
    vocab: str | None = None  # None: built from the train transcripts; else a tokenizer dir or hub id to reuse
    filters: FilterConfig = field(default_factory=FilterConfig)
    max_batch_seconds: float = 80.0  # padded audio seconds per batch per process (batch_size x longest)
    max_batch_size: int | None = None  # cap on utterances per batch, e.g. for attention memory
    num_workers: int = 2  # DataLoader workers decoding audio; 0 decodes in the training process
    cache_dir: str = "data/cache"  # prepared tables, one folder per (source, normaliser, vocab, filters)


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

    Call it under `accelerator.main_process_first()`: the main process prepares, the others
    then find the cache. The drop report is `<cache entry>/dropped.jsonl`.

    Args:
        utterances: the source's records when already read (saves reading it twice).
    """
    import datasets

    key = _cache_key(source, normalizer, vocab, filters, frames_fn)
    entry = Path(cache_dir) / key
    if (entry / "done.json").exists():
        meta = json.loads((entry / "done.json").read_text())
        table = datasets.load_from_disk(str(entry / "table"))
        return PreparedSplit(table, list(table["duration"]), meta["drop_counts"], entry / "dropped.jsonl")

    utterances = utterances if utterances is not None else load_source(source)
    kept, drops = apply_filters(utterances, normalizer, vocab, filters, frames_fn, num_workers, progress)
    if not kept:
        raise ValueError(
            f"every one of the {len(utterances)} utterances of {source.path} was dropped; "
            f"see {entry / 'dropped.jsonl'} (check filters.min_duration/max_duration and the audio files)"
        )
    tmp = entry.with_name(entry.name + f".tmp{os.getpid()}")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    counts = write_report(drops, tmp / "dropped.jsonl", total=len(utterances))
    columns = {name: [getattr(item, name) for item in kept] for name in
               ("id", "text", "labels", "duration", "audio_path", "audio_bytes", "speaker")}
    features = datasets.Features({
        "id": datasets.Value("string"), "text": datasets.Value("string"),
        "labels": datasets.Sequence(datasets.Value("int32")), "duration": datasets.Value("float64"),
        "audio_path": datasets.Value("string"), "audio_bytes": datasets.Value("binary"),
        "speaker": datasets.Value("string"),
    })
    datasets.Dataset.from_dict(columns, features=features).save_to_disk(str(tmp / "table"))
    meta = {"source": to_dict(source), "kept": len(kept), "dropped": len(drops), "drop_counts": counts}
    (tmp / "done.json").write_text(json.dumps(meta, indent=2))
    shutil.rmtree(entry, ignore_errors=True)
    os.replace(tmp, entry)  # atomic: a half-written entry never has done.json under the final name
    logger.info("prepared %s: %d kept, %d dropped -> %s", source.path, len(kept), len(drops), entry)
    table = datasets.load_from_disk(str(entry / "table"))
    return PreparedSplit(table, list(table["duration"]), counts, entry / "dropped.jsonl")


class SpeechDataset(torch.utils.data.Dataset):
    """Decodes audio on demand: item i -> {"input_values": float32 [T], "labels": [L], "id": str}.

    A file that fails to decode at training time (changed since preparation) yields None, which
    `collate_skip_none` drops with a warning instead of stopping the run.
    """

    def __init__(self, table: Any, do_normalize: bool = True):
        self.table = table
        self.do_normalize = do_normalize

    def __len__(self) -> int:
        return len(self.table)

    def __getitem__(self, index: int) -> dict[str, Any] | None:
        row = self.table[int(index)]
        return _features(row, self.do_normalize)


class StreamingSpeechDataset(torch.utils.data.IterableDataset):
    """Streams a `datasets` source, sharded across ranks, filtering on the fly.

    Every rank reads a disjoint shard (`split_dataset_by_node`); within a rank, DataLoader workers
    split it again. Dropped items are appended to `report_path` (one file per rank).
    """

    def __init__(
        self,
        source: SourceConfig,
        normalizer: TextNormalizer,
        vocab: dict[str, int],
        filters: FilterConfig,
        frames_fn: FramesFn | None,
        rank: int = 0,
        world_size: int = 1,
        report_path: str | Path | None = None,
        do_normalize: bool = True,
    ):
        if source.kind not in ("hf", "auto"):
            raise ValueError(f"streaming needs a datasets source (kind: hf), got kind: {source.kind}")
        self.source = SourceConfig(**{**to_dict(source), "streaming": True, "kind": "hf"})
        self.args = (normalizer, vocab, filters, frames_fn)
        self.rank, self.world_size = rank, world_size
        self.report_path = Path(report_path) if report_path else None
        self.do_normalize = do_normalize

    def __iter__(self) -> Iterator[dict[str, Any]]:
        from datasets.distributed import split_dataset_by_node

        info = torch.utils.data.get_worker_info()
        worker, num_workers = (info.id, info.num_workers) if info else (0, 1)
        # Ranks get whole files when the file count allows it (else every rank skips the others' rows);
        # the DataLoader workers of a rank then take every num_workers-th row of its shard.
        ds = split_dataset_by_node(open_hf_dataset(self.source), rank=self.rank, world_size=self.world_size)
        report = open(self.report_path, "a", encoding="utf-8") if self.report_path else None
        try:
            for i, utt in enumerate(iter_hf(self.source, ds)):
                if i % num_workers != worker:
                    continue
                checked = check_utterance(utt, *self.args)
                if isinstance(checked, Drop):
                    if report:
                        report.write(json.dumps(checked.to_dict(), ensure_ascii=False) + "\n")
                        report.flush()
                    continue
                features = _features(
                    {"id": checked.id, "labels": checked.labels, "audio_path": checked.audio_path,
                     "audio_bytes": checked.audio_bytes}, self.do_normalize)
                if features is not None:
                    yield features
        finally:
            if report:
                report.close()


def collate_skip_none(collator):
    """Wraps a collator so items that failed to decode (None) are dropped from the batch."""

    def collate(items: list[dict[str, Any] | None]) -> dict[str, Any] | None:
        good = [item for item in items if item is not None]
        if len(good) < len(items):
            logger.warning("skipped %d unreadable item(s) in a batch", len(items) - len(good))
        return collator(good) if good else None

    return collate


def _features(row: dict[str, Any], do_normalize: bool) -> dict[str, Any] | None:
    """Decodes one row's audio into model inputs; None (with a warning) if it cannot be read."""
    try:
        audio = load_audio(row["audio_bytes"] if row.get("audio_bytes") is not None else row["audio_path"])
    except AudioError as e:
        logger.warning("skipping %s: %s", row["id"], e)
        return None
    if do_normalize:
        # Same as Wav2Vec2FeatureExtractor(do_normalize=True): zero mean, unit variance per utterance.
        audio = (audio - audio.mean()) / np.sqrt(audio.var() + 1e-7)
    return {"input_values": audio.astype(np.float32), "labels": list(row["labels"]), "id": row["id"]}


def _cache_key(source, normalizer, vocab, filters, frames_fn) -> str:
    """Hash of everything that changes a prepared table, including the source files' sizes and times."""
    parts = {
        "version": CACHE_VERSION,
        "source": to_dict(source),
        "normalizer": to_dict(normalizer),
        "vocab": vocab,
        "filters": to_dict(filters),
        "frames": [frames_fn(n) for n in _FRAMES_PROBE] if frames_fn else None,
        "files": _fingerprint(source.path),
    }
    digest = hashlib.sha256(json.dumps(parts, sort_keys=True, default=str).encode()).hexdigest()[:16]
    return f"{Path(source.path).name or 'source'}-{digest}"


def _fingerprint(path: str) -> str:
    """Sizes and modification times of the files under `path` (a hub name fingerprints as itself)."""
    p = Path(path)
    if not p.exists():
        return path
    files = [p] if p.is_file() else sorted(f for f in p.rglob("*") if f.is_file())
    h = hashlib.sha256()
    for f in files:
        st = f.stat()
        h.update(f"{f}:{st.st_size}:{st.st_mtime_ns}\n".encode())
    return h.hexdigest()
