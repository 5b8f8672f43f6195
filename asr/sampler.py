"""Length-bucketed, rank-aware batch sampler that packs utterances by padded audio seconds.

A batch costs what the GPU computes: ``len(batch) * longest duration in batch`` seconds of
audio, padding included. Sorting by length inside random windows keeps that padding small
while batches still change every epoch.

Every process builds its own sampler with its own rank and passes it as ``batch_sampler=``;
the DataLoader must not be re-sharded by accelerate (the sampler already splits the epoch,
and every rank gets the same number of batches, which DDP needs to avoid hanging)::

    sampler = DurationBatchSampler(durations, max_batch_seconds=200.0,
                                   num_replicas=accelerator.num_processes,
                                   rank=accelerator.process_index, seed=cfg.seed)
    loader = DataLoader(dataset, batch_sampler=sampler, collate_fn=collator, num_workers=4)
    if resuming:
        sampler.load_state_dict(checkpoint["sampler"])
    for epoch in range(sampler.epoch, num_epochs):
        sampler.set_epoch(epoch)  # keeps a just-loaded mid-epoch position
        for batches_done, batch in enumerate(loader, start=sampler.start_batch + 1):
            train_step(batch)
            if time_to_save:
                checkpoint["sampler"] = sampler.state_dict(batches_done=batches_done)

Pass ``batches_done`` explicitly: DataLoader workers prefetch, so the sampler itself has
handed out a few batches more than the loop has trained on. The state is identical on all
ranks, so saving it from the main process is enough. Exact resume also needs the same numpy
version (pinned in requirements/lock.txt): the epoch order comes from ``numpy.random.Generator``,
whose streams numpy does not promise to keep across releases.
"""

from __future__ import annotations

import hashlib
import logging
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
from torch.utils.data import Sampler

from asr.packing import pack_ascending, padding_fraction

logger = logging.getLogger(__name__)

# Items sorted together before packing. A batch spans about batch_size / window of its
# window's length quantiles, so padding falls as the window grows, while batch membership gets
# less random (a window as large as the dataset fixes the batches, as fairseq's global sort
# does). With typical wav2vec2 budgets (100-400 padded seconds, 10-70 utterances a batch),
# 2048 items make 30-200 batches per window: 1-4% padding on Common-Voice-like lengths
# (a third of what 512 gives), and corpora past ~10k utterances still draw several fresh windows
# per epoch.
DEFAULT_BUCKET_WINDOW = 2048

_STATE_KEYS = ("epoch", "batches_done", "seed", "fingerprint")


@dataclass(frozen=True)
class BatchStats:
    """Summary of one epoch's batches over all ranks, for logging.

    Attributes:
        num_batches: batches in the epoch, all ranks together.
        batches_per_rank: batches each rank iterates (``len(sampler)``).
        mean_batch_size: utterances per batch.
        mean_batch_seconds: padded audio seconds per batch (the packing cost).
        padding_fraction: share of the padded audio that is padding, in [0, 1).
    """

    num_batches: int
    batches_per_rank: int
    mean_batch_size: float
    mean_batch_seconds: float
    padding_fraction: float


class DurationBatchSampler(Sampler[list[int]]):
    """Batches of dataset indices packed by padded audio seconds, split across ranks.

    Each epoch, deterministically from ``(seed, epoch)``: shuffle all indices, sort each window
    of ``bucket_window`` items by duration, pack greedily so that
    ``len(batch) * max(durations[batch]) <= max_batch_seconds``, halve the largest batches
    until their count is a multiple of ``num_replicas``, group batches of similar cost into
    steps of ``num_replicas`` and shuffle the steps. Rank ``r`` takes batch ``r`` of
    every step, so all ranks see disjoint data, the union is the whole dataset once, and all
    ranks iterate the same number of batches. With ``shuffle=False`` the whole dataset is
    sorted by duration and the order is the same every epoch.

    Args:
        durations: seconds per dataset item (``durations[i]`` belongs to ``dataset[i]``).
        max_batch_seconds: budget of padded audio seconds per batch (on one rank).
        num_replicas: number of processes (the world size).
        rank: this process's index in ``[0, num_replicas)``.
        shuffle: randomise the epoch; ``False`` gives batches in ascending duration.
        seed: base of the per-epoch random order; identical on all ranks.
        max_batch_size: optional cap on utterances per batch (bounds per-item overheads).
        bucket_window: items sorted together before packing; see ``DEFAULT_BUCKET_WINDOW``.

    Raises:
        ValueError: on empty or non-positive durations, an utterance longer than
            ``max_batch_seconds``, fewer items than replicas, or invalid settings.
    """

    def __init__(
        self,
        durations: Sequence[float],
        max_batch_seconds: float,
        *,
        num_replicas: int = 1,
        rank: int = 0,
        shuffle: bool = True,
        seed: int = 0,
        max_batch_size: int | None = None,
        bucket_window: int = DEFAULT_BUCKET_WINDOW,
    ) -> None:
        super().__init__()
        dur = np.asarray(durations, dtype=np.float64)
        if dur.ndim != 1 or dur.size == 0:
            raise ValueError(
                f"durations must be a non-empty 1-D sequence of seconds, got shape {dur.shape}; "
                "pass one duration per dataset item."
            )
        bad = np.flatnonzero(~np.isfinite(dur) | (dur <= 0))
        if bad.size:
            raise ValueError(
                f"durations must be finite and > 0, got {dur[bad[0]]!r} at index {bad[0]} "
                f"({bad.size} such items); filter empty or broken audio before batching."
            )
        if not np.isfinite(max_batch_seconds) or max_batch_seconds <= 0:
            raise ValueError(
                f"max_batch_seconds must be a positive number, got {max_batch_seconds!r}; "
                "set it to the padded audio seconds one GPU can process per step."
            )
        longest = int(dur.argmax())
        if dur[longest] > max_batch_seconds:
            raise ValueError(
                f"utterance {longest} lasts {dur[longest]:.2f} s, longer than "
                f"max_batch_seconds={max_batch_seconds}; raise max_batch_seconds or filter "
                "with max_duration."
            )
        if num_replicas < 1 or not 0 <= rank < num_replicas:
            raise ValueError(
                f"need num_replicas >= 1 and 0 <= rank < num_replicas, got "
                f"num_replicas={num_replicas}, rank={rank}; pass the world size and this "
                "process's index."
            )
        if dur.size < num_replicas:
            raise ValueError(
                f"{dur.size} items cannot give every one of num_replicas={num_replicas} ranks "
                "a batch; use fewer processes or more data."
            )
        if max_batch_size is not None and max_batch_size < 1:
            raise ValueError(
                f"max_batch_size must be None or >= 1, got {max_batch_size}; use None for "
                "no cap."
            )
        if bucket_window < 1:
            raise ValueError(
                f"bucket_window must be >= 1, got {bucket_window}; the default is "
                f"{DEFAULT_BUCKET_WINDOW}."
            )
        if seed < 0:
            raise ValueError(f"seed must be >= 0, got {seed}; use a non-negative integer.")

        self._durations = dur
        self._duration_list: list[float] = dur.tolist()  # python floats: fast in the packing loop
        self.max_batch_seconds = float(max_batch_seconds)
        self.num_replicas = num_replicas
        self.rank = rank
        self.shuffle = shuffle
        self.seed = seed
        self.max_batch_size = max_batch_size
        self.bucket_window = bucket_window
        self._fingerprint = {
            "num_items": int(dur.size),
            "durations_sha1": hashlib.sha1(dur.tobytes()).hexdigest()[:16],
            "max_batch_seconds": self.max_batch_seconds,
            "num_replicas": num_replicas,
            "max_batch_size": max_batch_size,
            "bucket_window": bucket_window,
            "shuffle": shuffle,
        }

        self._epoch = 0
        self._resume_at = 0  # where the next __iter__ starts in the epoch (set by load_state_dict)
        self._yielded = 0  # position in the epoch of the batches __iter__ has handed out
        self._cache: tuple[int, list[list[int]]] | None = None
        self._plan(0)  # fail at construction if this data cannot be split over the ranks

    # ------------------------------------------------------------------ epoch & iteration

    @property
    def epoch(self) -> int:
        """The epoch that ``__iter__`` yields."""
        return self._epoch

    @property
    def start_batch(self) -> int:
        """Batches of the epoch the next ``__iter__`` skips (non-zero only after a resume)."""
        return self._resume_at

    def set_epoch(self, epoch: int) -> None:
        """Select the epoch whose batches ``__iter__`` yields.

        Setting the epoch already selected is a no-op, so a loop may call it right after
        ``load_state_dict`` without losing the resumed position.

        Args:
            epoch: epoch number, >= 0.
        """
        if epoch < 0:
            raise ValueError(f"epoch must be >= 0, got {epoch}; count epochs from 0.")
        if epoch == self._epoch:
            return
        if self._resume_at:
            logger.warning(
                "set_epoch(%d) discards the resumed position (epoch %d, batch %d) loaded by "
                "load_state_dict; epoch %d starts from its first batch.",
                epoch, self._epoch, self._resume_at, epoch,
            )
        self._epoch = epoch
        self._resume_at = 0
        self._yielded = 0

    def __len__(self) -> int:
        """Batches per rank in the current epoch (including any skipped by a resume)."""
        return len(self._plan(self._epoch)) // self.num_replicas

    def __iter__(self) -> Iterator[list[int]]:
        """Yield this rank's batches of the current epoch, as lists of dataset indices.

        The body runs at the first ``next()``: DataLoader calls ``iter()`` on its sampler
        twice when it starts workers, and only the iterator it actually uses may consume a
        resumed position.
        """
        start, self._resume_at = self._resume_at, 0
        batches = self._plan(self._epoch)[self.rank :: self.num_replicas]
        self._yielded = start
        for position in range(start, len(batches)):
            # count before yielding: the consumer holds the batch once next() returns
            self._yielded = position + 1
            yield list(batches[position])

    # ------------------------------------------------------------------ resume

    def state_dict(self, batches_done: int | None = None) -> dict[str, Any]:
        """Position in the epoch, seed and configuration fingerprint, for checkpoints.

        Args:
            batches_done: batches of the current epoch the training loop has trained on,
                counting those before a resume (the same on every rank). Defaults to the
                number ``__iter__`` has handed out, which runs ahead of the loop by the
                DataLoader's prefetch (``num_workers * prefetch_factor``) when workers are used.

        Returns:
            A dict of plain Python values: ``epoch``, ``batches_done``, ``seed`` and
            ``fingerprint``; the same on every rank.
        """
        done = self._yielded if batches_done is None else int(batches_done)
        if not 0 <= done <= len(self):
            raise ValueError(
                f"batches_done={done} is outside [0, {len(self)}] for epoch "
                f"{self._epoch}; pass the number of batches of this epoch trained so far."
            )
        return {
            "epoch": self._epoch,
            "batches_done": done,
            "seed": self.seed,
            "fingerprint": dict(self._fingerprint),
        }

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        """Continue at the batch after ``state["batches_done"]`` of ``state["epoch"]``.

        The next ``__iter__`` yields the rest of that epoch; ``set_epoch`` with a later epoch
        then proceeds normally.

        Args:
            state: a dict from ``state_dict``.

        Raises:
            ValueError: if the state is malformed or was saved with a different dataset,
                world size or batching configuration.
        """
        missing = [key for key in _STATE_KEYS if key not in state]
        if missing:
            raise ValueError(
                f"sampler state lacks {missing}; pass the dict returned by "
                "DurationBatchSampler.state_dict()."
            )
        saved = dict(state["fingerprint"])
        diffs = [
            f"{key} saved {saved.get(key)!r} now {value!r}"
            for key, value in self._fingerprint.items()
            if saved.get(key) != value
        ]
        if diffs:
            raise ValueError(
                f"sampler state was saved for a different configuration ({'; '.join(diffs)}); "
                "resume with the same data, batching settings and number of processes, or "
                "start without loading the sampler state."
            )
        epoch, done, seed = int(state["epoch"]), int(state["batches_done"]), int(state["seed"])
        if epoch < 0 or seed < 0:
            raise ValueError(
                f"sampler state has epoch={epoch}, seed={seed}; both must be >= 0, "
                "pass an unmodified state_dict()."
            )
        previous_seed, self.seed, self._cache = self.seed, seed, None
        try:
            per_rank = len(self._plan(epoch)) // self.num_replicas
            if not 0 <= done <= per_rank:
                raise ValueError(
                    f"sampler state has batches_done={done} but epoch {epoch} has {per_rank} "
                    "batches per rank; pass an unmodified state_dict()."
                )
        except ValueError:
            self.seed, self._cache = previous_seed, None  # leave the sampler as it was
            raise
        if seed != previous_seed:
            logger.warning(
                "Sampler seed %d replaced by the checkpoint's seed %d to continue its order.",
                previous_seed, seed,
            )
        self._epoch = epoch
        self._resume_at = done
        self._yielded = done

    # ------------------------------------------------------------------ stats

    def batch_stats(self) -> BatchStats:
        """Summary of the current epoch's batches over all ranks (same on every rank)."""
        plan = self._plan(self._epoch)
        sizes = np.fromiter((len(b) for b in plan), dtype=np.float64, count=len(plan))
        costs = self._costs(plan)
        return BatchStats(
            num_batches=len(plan),
            batches_per_rank=len(plan) // self.num_replicas,
            mean_batch_size=float(sizes.mean()),
            mean_batch_seconds=float(costs.mean()),
            padding_fraction=padding_fraction(plan, self._durations),
        )

    # ------------------------------------------------------------------ planning

    def _plan(self, epoch: int) -> list[list[int]]:
        """All ranks' batches of ``epoch`` in step order (rank r takes every r-th); cached."""
        if self._cache is not None and self._cache[0] == epoch:
            return self._cache[1]
        if self.shuffle:
            rng = np.random.default_rng([self.seed, epoch])
            order = rng.permutation(self._durations.size)
            window = self.bucket_window
        else:
            rng = None
            order = np.arange(self._durations.size)
            window = self._durations.size
        batches: list[list[int]] = []
        for begin in range(0, order.size, window):
            chunk = order[begin : begin + window]
            # stable sort: equal durations keep their (random or index) order -> reproducible
            chunk = chunk[np.argsort(self._durations[chunk], kind="stable")]
            batches.extend(pack_ascending(chunk.tolist(), self._duration_list, self.max_batch_seconds,
                                          self.max_batch_size))
        batches = self._split_to_multiple(batches)
        if rng is not None and self.num_replicas > 1:
            # Neighbours in cost order form one step, so ranks finish a step at about the same
            # time (under-filled window tails and split halves end up together).
            steps = np.argsort(self._costs(batches), kind="stable").reshape(-1, self.num_replicas)
            steps = steps[rng.permutation(len(steps))]
            batches = [batches[i] for i in steps.ravel().tolist()]
        elif rng is not None:
            batches = [batches[i] for i in rng.permutation(len(batches)).tolist()]
        self._cache = (epoch, batches)
        return batches

    def _split_to_multiple(self, batches: list[list[int]]) -> list[list[int]]:
        """Halve the largest batches until the batch count is a multiple of num_replicas."""
        # DDP needs every rank to run the same number of steps. Repeating items (as
        # DistributedSampler pads) would count them twice per epoch and dropping loses data;
        # halving a batch keeps every item exactly once, both halves stay within the budget,
        # and taking the batch with the most items keeps the halves reasonably full. Each
        # split adds one batch, so at most num_replicas - 1 splits are needed.
        missing = -len(batches) % self.num_replicas
        for _ in range(missing):
            largest = max(range(len(batches)), key=lambda i: len(batches[i]))
            batch = batches[largest]
            if len(batch) < 2:
                raise ValueError(
                    f"{self._durations.size} items packed into single-item batches cannot be "
                    f"split into a multiple of num_replicas={self.num_replicas} batches; use "
                    "fewer processes or more data."
                )
            half = len(batch) // 2
            # halves of a duration-sorted batch: the short half pads less than before
            batches[largest : largest + 1] = [batch[:half], batch[half:]]
        if missing:
            logger.debug("Split %d batches so %d ranks get equally many.", missing,
                         self.num_replicas)
        return batches

    def _costs(self, batches: Sequence[Sequence[int]]) -> np.ndarray:
        """Padded seconds of each batch, shape [num_batches]."""
        durations = self._duration_list
        return np.fromiter(
            (len(b) * max(durations[i] for i in b) for b in batches),
            dtype=np.float64,
            count=len(batches),
        )


class EpochTaggedBatches(Sampler[list[tuple[int, int]]]):
    """A batch sampler's batches with the epoch in every index: ``[i, j]`` becomes ``[(epoch, i), (epoch, j)]``.

    For datasets whose items change with the epoch (``asr.augment``): the epoch travels with the index
    from the main process to the DataLoader workers, where an attribute set on the dataset would not
    arrive once persistent workers hold their own copies. Iteration, length and resume stay the wrapped
    sampler's (``set_epoch``, ``state_dict`` and ``load_state_dict`` are called on it, not on this).

    Args:
        sampler: a batch sampler with an ``epoch`` attribute, e.g. ``DurationBatchSampler``.
    """

    def __init__(self, sampler: DurationBatchSampler) -> None:
        super().__init__()
        self.sampler = sampler

    def __len__(self) -> int:
        return len(self.sampler)

    def __iter__(self) -> Iterator[list[tuple[int, int]]]:
        epoch = self.sampler.epoch  # read when iteration starts: after the loop's set_epoch or a resume
        for batch in self.sampler:
            yield [(epoch, index) for index in batch]
