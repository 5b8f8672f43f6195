"""Lazy audio for training: datasets that decode on demand, and duration-packed batches of a stream.

`SpeechDataset` decodes a prepared table's audio in DataLoader workers, so a corpus never has to
fit in memory as float arrays. `StreamingSpeechDataset` reads a `datasets` stream sharded across
ranks and DataLoader workers, filtering on the fly, for corpora larger than the disk; `StreamingBatches`
packs it. Preparing the tables these read is `asr.data`'s job.

    loader = DataLoader(SpeechDataset(split.table), batch_sampler=..., collate_fn=collate_skip_none(collator))
"""

from __future__ import annotations

import itertools
import json
import logging
import os
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import numpy as np
import torch

from asr.audio import load_audio, normalize_audio
from asr.augment import Augmenter
from asr.config import to_dict
from asr.constants import SAMPLE_RATE
from asr.filters import Drop, FilterConfig, FramesFn, check_and_decode
from asr.packing import pack_by_length
from asr.sources import SourceConfig, detect_kind, iter_hf, open_hf_dataset
from asr.text import TextNormalizer

logger = logging.getLogger(__name__)

class SpeechDataset(torch.utils.data.Dataset):
    """Decodes audio on demand: item i -> {"input_values": float32 [T], "labels": [L], "id": str}.

    A file that fails to decode at training time (changed since preparation) yields None, which
    `collate_skip_none` drops with a warning instead of stopping the run.

    With `augment`, items are keyed by (epoch, index) pairs (`asr.sampler.EpochTaggedBatches`) and the
    audio goes through the augmenter before normalisation; babble draws from this dataset's own items.

    Args:
        table: a prepared table (`PreparedSplit.table`).
        do_normalize: zero mean and unit variance per utterance, as the feature extractor does.
        augment: training-time augmentation (`asr.augment.Augmenter`); None leaves the audio as it is.
    """

    def __init__(self, table: Any, do_normalize: bool = True, augment: Augmenter | None = None):
        self.table = table
        self.do_normalize = do_normalize
        self.augment = augment

    def __len__(self) -> int:
        return len(self.table)

    def __getitem__(self, key: int | tuple[int, int]) -> dict[str, Any] | None:
        if self.augment is None:
            return _features(self.table[int(key)], self.do_normalize)
        if not isinstance(key, tuple):
            raise TypeError(f"an augmented SpeechDataset takes (epoch, index) keys, got {key!r}; wrap its batch "
                            "sampler in asr.sampler.EpochTaggedBatches")
        epoch, index = key
        row = self.table[int(index)]
        samples = _decode(row)
        if samples is None:
            return None
        return _features(row, self.do_normalize, self.augment(samples, row["id"], epoch, pool=self))

    def utterance_audio(self, index: int) -> tuple[str, np.ndarray | None]:
        """(id, decoded samples before normalisation, None when unreadable) of item `index`; babble reads these."""
        row = self.table[int(index)]
        return row["id"], _decode(row)


class StreamingSpeechDataset(torch.utils.data.IterableDataset):
    """Streams a `datasets` source, sharded across ranks and DataLoader workers, filtering on the fly.

    Rank r of R with worker w of W reads part r * W + w of R * W (`split_dataset_by_node`): whole
    files when the file count is a multiple of R * W, else every (R * W)-th row. So every row is
    read by exactly one worker of one rank, for any number of workers (including 0). Dropped
    items are appended to `report_path` (one JSONL line per drop per pass; give each rank its
    own file); the audio of kept items is decoded once.

    Args:
        source: a `datasets` source (kind `hf`, or `auto` resolving to it).
        normalizer, vocab, filters, frames_fn: as for `prepare_split`.
        rank, world_size: this process's rank and the number of ranks.
        report_path: where drops are appended; None only logs them at debug level.
        do_normalize: as for `SpeechDataset`.

    Raises:
        ValueError: the source is not a `datasets` source, or rank is not in [0, world_size).
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
        kind = detect_kind(source.path, source.split) if source.kind == "auto" else source.kind
        if kind != "hf":
            raise ValueError(
                f"streaming needs a datasets source (kind: hf), but {source.path} is kind: {kind}; "
                "prepare it with prepare_split instead, or convert it to parquet"
            )
        if not 0 <= rank < world_size:
            raise ValueError(f"rank {rank} is not in [0, world_size={world_size}); pass the process index and count")
        self.source = SourceConfig(**{**to_dict(source), "streaming": True, "kind": "hf"})
        self.args = (normalizer, vocab, filters, frames_fn)
        self.rank, self.world_size = rank, world_size
        self.report_path = Path(report_path) if report_path else None
        self.do_normalize = do_normalize

    def __iter__(self) -> Iterator[dict[str, Any]]:
        from datasets.distributed import split_dataset_by_node

        info = torch.utils.data.get_worker_info()
        worker, num_workers = (info.id, info.num_workers) if info else (0, 1)
        ds = split_dataset_by_node(
            open_hf_dataset(self.source),
            rank=self.rank * num_workers + worker,
            world_size=self.world_size * num_workers,
        )
        for utt in iter_hf(self.source, ds):
            checked, samples = check_and_decode(utt, *self.args)
            if isinstance(checked, Drop):
                self._report(checked)
                continue
            row = {"id": checked.id, "labels": checked.labels, "audio_path": checked.audio_path,
                   "audio_bytes": checked.audio_bytes}
            features = _features(row, self.do_normalize, samples)
            if features is not None:
                yield features

    def _report(self, drop: Drop) -> None:
        """Appends one drop to the report; one write() with O_APPEND, so workers' lines never interleave."""
        logger.debug("dropped %s: %s (%s)", drop.id, drop.reason, drop.detail)
        if self.report_path is None:
            return
        self.report_path.parent.mkdir(parents=True, exist_ok=True)
        line = (json.dumps(drop.to_dict(), ensure_ascii=False) + "\n").encode("utf-8")
        fd = os.open(self.report_path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
        try:
            os.write(fd, line)
        finally:
            os.close(fd)


def collate_skip_none(
    collator: Callable[[list[dict[str, Any]]], dict[str, Any]],
) -> Callable[[list[dict[str, Any] | None]], dict[str, Any] | None]:
    """Wraps a collator so items that failed to decode (None) are dropped from the batch.

    Args:
        collator: e.g. `CTCCollator`.

    Returns:
        A collate function returning the collated good items, or None when none is left.
    """

    def collate(items: list[dict[str, Any] | None]) -> dict[str, Any] | None:
        good = [item for item in items if item is not None]
        if len(good) < len(items):
            logger.warning("skipped %d unreadable item(s) in a batch", len(items) - len(good))
        return collator(good) if good else None

    return collate


def _decode(row: dict[str, Any]) -> np.ndarray | None:
    """The row's audio at 16 kHz; None (with a warning) if it cannot be decoded."""
    audio = row["audio_bytes"] if row.get("audio_bytes") is not None else row["audio_path"]
    try:
        return load_audio(audio)
    except Exception as e:  # a file changed since preparation costs one item, not the run
        logger.warning("skipping %s: %s", row["id"], e)
        return None


def _features(row: dict[str, Any], do_normalize: bool, samples: np.ndarray | None = None) -> dict[str, Any] | None:
    """Model inputs of one row, decoding its audio unless `samples` are given; None (with a warning) if unreadable."""
    if samples is None:
        samples = _decode(row)
        if samples is None:
            return None
    samples = normalize_audio(samples) if do_normalize else samples.astype(np.float32, copy=False)
    return {"input_values": samples, "labels": list(row["labels"]), "id": row["id"]}


class StreamingBatches:
    """Duration-packed batches from a rank-sharded stream, repeated pass after pass.

    For corpora too large to prepare: items arrive from `StreamingSpeechDataset`, are buffered
    `buffer_size` at a time, sorted by length, packed so that `len(batch) * longest <= max_batch_seconds`
    and shuffled (seeded by `(seed, pass, buffer)`). The stream never ends: a run is bounded by its
    step count, which also keeps every rank stepping together (a rank whose shard ran out would
    otherwise leave the others waiting in an all-reduce).

    Resume: `state_dict(batches_done)` records how many batches the loop trained on; after
    `load_state_dict` the next iteration re-reads the stream and skips that many batches, which gives
    the same batches as an uninterrupted run (at the cost of reading the skipped audio again).
    """

    def __init__(self, dataset: StreamingSpeechDataset, collate, max_batch_seconds: float,
                 max_batch_size: int | None = None, buffer_size: int = 512, seed: int = 0, num_workers: int = 0):
        if max_batch_seconds <= 0 or buffer_size < 1:
            raise ValueError(f"max_batch_seconds ({max_batch_seconds}) and buffer_size ({buffer_size}) must be positive")
        self.dataset, self.collate = dataset, collate
        self.max_samples = int(max_batch_seconds * SAMPLE_RATE)
        self.max_batch_size = max_batch_size
        self.buffer_size, self.seed, self.num_workers = buffer_size, seed, num_workers
        self._skip = 0

    def state_dict(self, batches_done: int) -> dict[str, int]:
        return {"batches_done": int(batches_done), "seed": self.seed}

    def load_state_dict(self, state: dict[str, int]) -> None:
        if state.get("seed") != self.seed:
            raise ValueError(f"streaming state was saved with seed {state.get('seed')}, this run uses {self.seed}")
        self._skip = int(state["batches_done"])

    def set_epoch(self, epoch: int) -> None:
        """Passes over the stream are counted internally; kept for the loop's common interface."""

    def __len__(self) -> int:
        raise TypeError("a stream has no length; bound the run with train.max_steps")

    def __iter__(self) -> Iterator[dict[str, Any] | None]:
        skip, self._skip = self._skip, 0
        produced = 0
        for stream_pass in itertools.count():
            # Its own generator: a DataLoader draws a seed at every pass, which must not move the global
            # RNG (dropout, SpecAugment), or a resumed run would diverge from an uninterrupted one.
            loader = torch.utils.data.DataLoader(self.dataset, batch_size=None, num_workers=self.num_workers,
                                                 generator=torch.Generator().manual_seed(self.seed + stream_pass))
            buffer: list[dict[str, Any]] = []
            chunk = 0
            seen = 0
            for item in loader:
                seen += 1
                buffer.append(item)
                if len(buffer) >= self.buffer_size:
                    for batch in self._pack(buffer, stream_pass, chunk):
                        produced += 1
                        if produced > skip:
                            yield self.collate(batch)
                    buffer, chunk = [], chunk + 1
            for batch in self._pack(buffer, stream_pass, chunk):
                produced += 1
                if produced > skip:
                    yield self.collate(batch)
            if seen == 0:
                raise ValueError("this rank's share of the stream has no usable item; use fewer processes or more data")

    def _pack(self, items: list[dict[str, Any]], stream_pass: int, chunk: int) -> list[list[dict[str, Any]]]:
        """Sorted-by-length greedy packing of one buffer (`asr.packing`), batches in seeded random order."""
        lengths = [len(item["input_values"]) for item in items]
        batches = [[items[i] for i in batch] for batch in pack_by_length(lengths, self.max_samples, self.max_batch_size)]
        order = np.random.default_rng([self.seed, stream_pass, chunk]).permutation(len(batches))
        return [batches[i] for i in order]
