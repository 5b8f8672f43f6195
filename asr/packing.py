"""The one packing rule and the one padding measure, shared by training, streaming and inference.

A batch costs what the model computes: ``len(batch) * longest item`` (padding included). Items
taken in ascending length go greedily into the current batch until the next one would push that
cost over the budget (or the batch is full); the next item then starts a new batch. Ascending
order makes the newest item the longest, so its length sets the cost. Lengths may be in any unit
(seconds for the training sampler, samples for streaming and inference) as long as the budget
uses the same one:

    batches = pack_by_length(lengths, budget)  # or pack_ascending(order, lengths, budget) for your own sort
    padding_fraction(batches, lengths)  # share of the packed input that is padding
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence

import numpy as np


def pack_ascending(order: Iterable[int], lengths: Sequence[float], budget: float,
                   max_size: int | None = None) -> list[list[int]]:
    """Cut indices in ascending length into greedy batches of at most `budget` padded length.

    Args:
        order: Indices into `lengths`, sorted by ascending length (the caller's sort decides ties).
        lengths: Length of each item (any unit).
        budget: Most padded length per batch, ``len(batch) * longest`` (same unit); an item longer
            than the budget gets a batch of its own.
        max_size: Most items per batch; None for no cap.

    Returns:
        The indices of `order`, in order, cut into batches.
    """
    batches: list[list[int]] = []
    current: list[int] = []
    for index in order:
        # ascending order makes this item the batch's longest, so this is its padded cost
        full = max_size is not None and len(current) >= max_size
        if current and (full or (len(current) + 1) * lengths[index] > budget):
            batches.append(current)
            current = []
        current.append(index)
    if current:
        batches.append(current)
    return batches


def pack_by_length(lengths: Sequence[float], budget: float, max_size: int | None = None) -> list[list[int]]:
    """`pack_ascending` over all indices sorted by length; equal lengths keep their index order (stable sort)."""
    return pack_ascending(sorted(range(len(lengths)), key=lambda i: lengths[i]), lengths, budget, max_size)


def padding_fraction(batches: Iterable[Sequence[float]] | Iterable[Sequence[int]],
                     lengths: Sequence[float] | None = None) -> float:
    """Share of padded input that is padding: ``1 - real length / padded length`` over all batches.

    Each batch is padded to its longest item.

    Args:
        batches: Batches of lengths (any unit), or of indices into `lengths` when it is given.
        lengths: Length of each item, when `batches` hold indices.

    Returns:
        Padding divided by the total padded length, in [0, 1); 0.0 for no batches.
    """
    table = None if lengths is None else np.asarray(lengths, dtype=np.float64)
    padded = real = 0.0
    for batch in batches:
        if table is None:
            values = np.asarray(batch, dtype=np.float64)
        else:
            values = table[np.asarray(batch, dtype=np.int64)]
        if values.size:
            padded += values.size * float(values.max())
            real += float(values.sum())
    return (padded - real) / padded if padded > 0 else 0.0
