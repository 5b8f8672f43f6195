"""The one packing rule (asr.packing) and its three callers: the training sampler, streaming, inference.

Each caller's batches are compared with the greedy loop each of them carried before the rule was
shared, on random length lists with ties: exact resume depends on batches staying the same.
"""

from __future__ import annotations

import numpy as np
import pytest

from asr.datasets import StreamingBatches
from asr.inference import plan_batches
from asr.packing import pack_ascending, pack_by_length, padding_fraction
from asr.sampler import DurationBatchSampler


def _reference_pack(order, lengths, budget, cap=None):
    """The greedy loop as written in each caller before it was shared."""
    batches, current = [], []
    for i in order:
        full = cap is not None and len(current) >= cap
        if current and (full or (len(current) + 1) * lengths[i] > budget):
            batches.append(current)
            current = []
        current.append(i)
    if current:
        batches.append(current)
    return batches


def _random_lengths(seed: int) -> list[float]:
    rng = np.random.default_rng(seed)
    n = int(rng.integers(1, 400))
    return np.round(rng.uniform(0.6, 15.0, n), int(rng.integers(0, 3))).tolist()  # rounding makes ties


@pytest.mark.parametrize("seed", range(8))
@pytest.mark.parametrize("cap", [None, 1, 5])
def test_pack_ascending_is_the_greedy_rule(seed, cap):
    lengths = _random_lengths(seed)
    order = sorted(range(len(lengths)), key=lambda i: lengths[i])
    batches = pack_ascending(order, lengths, 40.0, cap)
    assert batches == _reference_pack(order, lengths, 40.0, cap)
    assert [i for b in batches for i in b] == order
    for batch in batches:
        assert len(batch) == 1 or len(batch) * max(lengths[i] for i in batch) <= 40.0
        assert cap is None or len(batch) <= cap
    assert pack_by_length(lengths, 40.0, cap) == batches


def test_an_item_longer_than_the_budget_gets_a_batch_of_its_own():
    assert pack_by_length([1, 50, 2], 10) == [[0, 2], [1]]


@pytest.mark.parametrize("seed", range(6))
def test_inference_batches_are_the_rule_over_the_length_order(seed):
    lengths = [int(d * 16000) for d in _random_lengths(seed)]
    order = sorted(range(len(lengths)), key=lambda i: lengths[i])
    for budget in (1, 16000 * 7, 16000 * 60):
        assert plan_batches(lengths, budget) == _reference_pack(order, lengths, budget)


@pytest.mark.parametrize("seed", range(6))
def test_sampler_batches_are_the_rule_over_each_sorted_window(seed):
    lengths = _random_lengths(seed + 100)
    cap = None if seed % 2 else 4
    sampler = DurationBatchSampler(lengths, 30.0, shuffle=False, max_batch_size=cap)
    order = np.argsort(np.asarray(lengths), kind="stable").tolist()
    assert list(sampler) == _reference_pack(order, lengths, 30.0, cap)


@pytest.mark.parametrize("seed", range(6))
def test_streaming_batches_are_the_rule_over_the_sorted_buffer(seed):
    lengths = [int(d * 100) for d in _random_lengths(seed + 200)]
    items = [{"input_values": np.zeros(n, dtype=np.float32), "index": i} for i, n in enumerate(lengths)]
    batches = StreamingBatches(dataset=None, collate=None, max_batch_seconds=0.1, max_batch_size=3, seed=seed)
    packed = batches._pack(items, stream_pass=1, chunk=2)
    expected = _reference_pack(sorted(range(len(lengths)), key=lambda i: lengths[i]), lengths,
                               int(0.1 * 16000), 3)
    expected = [expected[i] for i in np.random.default_rng([seed, 1, 2]).permutation(len(expected))]
    assert [[item["index"] for item in batch] for batch in packed] == expected


def test_padding_fraction_takes_lengths_or_indices():
    durations = [1.0, 2.0, 3.0, 3.0]
    assert padding_fraction([[0, 1]], durations) == pytest.approx(1.0 / 4.0)
    assert padding_fraction([[1.0, 2.0]]) == pytest.approx(1.0 / 4.0)
    assert padding_fraction([[2, 3], [1]], durations) == 0.0
    assert padding_fraction([[3.0, 3.0], [2.0], []]) == 0.0
    assert padding_fraction([]) == 0.0
