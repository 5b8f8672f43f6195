"""Behaviour of DurationBatchSampler: packing budget, coverage across ranks, padding, resume."""

from __future__ import annotations

import json
import logging

import numpy as np
import pytest
import torch
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st
from torch.utils.data import DataLoader, Dataset

from asr.collate import CTCCollator
from asr.sampler import DurationBatchSampler, padding_fraction

FUZZ = settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])


def _lognormal_durations(n: int, seed: int = 0) -> np.ndarray:
    """Common-Voice-like utterance lengths: lognormal around 5 s, clipped to [1, 15] s."""
    rng = np.random.default_rng(seed)
    return np.clip(rng.lognormal(np.log(5.0), 0.5, n), 1.0, 15.0)


def _samplers(durations, max_batch_seconds, num_replicas, **kwargs) -> list[DurationBatchSampler]:
    """One sampler per rank, as each process would build it."""
    return [
        DurationBatchSampler(
            durations, max_batch_seconds, num_replicas=num_replicas, rank=rank, **kwargs
        )
        for rank in range(num_replicas)
    ]


def _epoch(sampler: DurationBatchSampler, epoch: int) -> list[list[int]]:
    sampler.set_epoch(epoch)
    return list(sampler)


def _cost(batch, durations) -> float:
    return len(batch) * max(durations[i] for i in batch)


@st.composite
def _configs(draw):
    durations = draw(
        st.lists(st.floats(0.1, 20.0, allow_nan=False), min_size=1, max_size=150)
    )
    budget = max(durations) * draw(st.floats(1.0, 12.0))
    return {
        "durations": durations,
        "max_batch_seconds": budget,
        "num_replicas": draw(st.integers(1, 3)),
        "shuffle": draw(st.booleans()),
        "seed": draw(st.integers(0, 2**32)),
        "max_batch_size": draw(st.none() | st.integers(1, 8)),
        "bucket_window": draw(st.integers(1, 64)),
    }


def _split_config(config):
    kwargs = dict(config)
    durations, budget = kwargs.pop("durations"), kwargs.pop("max_batch_seconds")
    return durations, budget, kwargs.pop("num_replicas"), kwargs


def _assert_truly_unsplittable(config, epoch: int, error: ValueError) -> None:
    """An uneven split may fail only if even single-item batches cannot fill every rank."""
    durations, budget, replicas, kwargs = _split_config(config)
    single = DurationBatchSampler(durations, budget, **kwargs)
    single.set_epoch(epoch)
    needed = -(-len(single) // replicas) * replicas
    assert len(durations) < needed, error


def _all_ranks_epoch(config, epoch: int) -> list[list[list[int]]] | None:
    """Each rank's batches of one epoch (fresh samplers), or None if legitimately unsplittable."""
    durations, budget, replicas, kwargs = _split_config(config)
    try:
        return [_epoch(s, epoch) for s in _samplers(durations, budget, replicas, **kwargs)]
    except ValueError as error:
        _assert_truly_unsplittable(config, epoch, error)
        return None


@FUZZ
@given(_configs())
def test_batches_respect_budget_and_size(config):
    cap = config["max_batch_size"] or len(config["durations"])
    for epoch in (0, 1):
        per_rank = _all_ranks_epoch(config, epoch)
        assume(per_rank is not None)
        for batch in (batch for batches in per_rank for batch in batches):
            assert 1 <= len(batch) <= cap
            assert _cost(batch, config["durations"]) <= config["max_batch_seconds"]


@FUZZ
@given(_configs())
def test_every_item_exactly_once_and_equal_batch_counts(config):
    durations, budget, replicas, kwargs = _split_config(config)
    try:
        samplers = _samplers(durations, budget, replicas, **kwargs)
    except ValueError as error:
        _assert_truly_unsplittable(config, 0, error)
        return
    for epoch in (0, 1, 7):
        try:
            per_rank = [_epoch(sampler, epoch) for sampler in samplers]
        except ValueError as error:
            _assert_truly_unsplittable(config, epoch, error)
            continue
        assert len({len(batches) for batches in per_rank}) == 1
        assert [len(s) for s in samplers] == [len(b) for b in per_rank]
        seen = sorted(i for batches in per_rank for batch in batches for i in batch)
        assert seen == list(range(len(durations)))


@pytest.mark.parametrize("num_items", [2000, 20000])
def test_padding_is_small_on_realistic_lengths(num_items, record_property):
    durations = _lognormal_durations(num_items)
    sampler = DurationBatchSampler(durations, max_batch_seconds=200.0, seed=3)
    bucketed = padding_fraction(list(sampler), durations)
    assert sampler.batch_stats().padding_fraction == pytest.approx(bucketed)

    # Random batches of the same mean size, as a plain shuffled DataLoader would make.
    size = round(sampler.batch_stats().mean_batch_size)
    order = np.random.default_rng(0).permutation(num_items)
    random = padding_fraction([order[i : i + size] for i in range(0, num_items, size)], durations)
    record_property("padding_fraction", bucketed)
    record_property("random_padding_fraction", random)
    assert bucketed < 0.05, f"padding {bucketed:.1%} (random batching {random:.1%})"
    assert bucketed < random / 10, f"padding {bucketed:.1%} vs random batching {random:.1%}"


def test_batch_stats_summarise_the_epoch():
    durations = _lognormal_durations(500)
    samplers = _samplers(durations, 60.0, 2)
    stats = samplers[0].batch_stats()
    assert stats == samplers[1].batch_stats()
    batches = list(samplers[0]) + list(samplers[1])
    assert stats.num_batches == len(batches) == 2 * stats.batches_per_rank
    assert stats.mean_batch_size == pytest.approx(len(durations) / len(batches))
    mean_cost = np.mean([_cost(b, durations) for b in batches])
    assert stats.mean_batch_seconds == pytest.approx(mean_cost)
    assert 0.0 <= stats.padding_fraction < 0.05


def test_padding_fraction_counts_padded_frames():
    durations = [1.0, 3.0, 2.0, 2.0]
    assert padding_fraction([[0, 1]], durations) == pytest.approx(2.0 / 6.0)
    assert padding_fraction([[2, 3], [1]], durations) == 0.0
    assert padding_fraction([], durations) == 0.0


def test_ranks_get_batches_of_similar_cost_at_each_step():
    durations = _lognormal_durations(3000)
    budget = 100.0
    for replicas in (2, 4):
        per_rank = [list(s) for s in _samplers(durations, budget, replicas)]
        costs = np.array([[_cost(b, durations) for b in batches] for batches in per_rank]).T
        spread = costs.max(axis=1) - costs.min(axis=1)  # per step: the slowest rank's lead
        # the same batches dealt to ranks at random, as a baseline
        dealt = np.random.default_rng(0).permutation(costs.ravel()).reshape(costs.shape)
        random_spread = dealt.max(axis=1) - dealt.min(axis=1)
        assert np.median(spread) < 0.01 * budget
        assert spread.mean() < random_spread.mean() / 3


def test_uneven_batch_count_is_fixed_by_splitting_the_largest_batches():
    # 10 items of 1 s with a 3 s budget pack into 3+3+3+1: 4 batches, 6 needed for 3 ranks.
    durations = [1.0] * 10
    per_rank = [list(s) for s in _samplers(durations, 3.0, 3, shuffle=False)]
    assert [len(b) for b in per_rank] == [2, 2, 2]
    sizes = sorted(len(batch) for batches in per_rank for batch in batches)
    assert sizes == [1, 1, 1, 2, 2, 3]
    assert sorted(i for b in per_rank for batch in b for i in batch) == list(range(10))


def test_unsplittable_data_raises():
    # 4 items that each fill a batch cannot make 6 batches for 3 ranks.
    with pytest.raises(ValueError, match="num_replicas=3"):
        DurationBatchSampler([1.0] * 4, 1.5, num_replicas=3)
    with pytest.raises(ValueError, match="num_replicas=4"):
        DurationBatchSampler([1.0] * 3, 10.0, num_replicas=4)


def test_same_seed_and_epoch_give_the_same_batches_and_others_differ():
    durations = _lognormal_durations(1000)
    first = DurationBatchSampler(durations, 60.0, seed=5, bucket_window=256)
    again = DurationBatchSampler(durations, 60.0, seed=5, bucket_window=256)
    other_seed = DurationBatchSampler(durations, 60.0, seed=6, bucket_window=256)
    assert _epoch(first, 0) == _epoch(again, 0)
    assert _epoch(first, 3) == _epoch(again, 3)
    assert _epoch(first, 0) != _epoch(first, 1)
    assert _epoch(first, 0) != _epoch(other_seed, 0)
    assert list(first) == list(first)  # re-iterating an epoch repeats it


def test_no_shuffle_is_sorted_by_duration_and_fixed():
    durations = _lognormal_durations(300)
    sampler = DurationBatchSampler(durations, 40.0, shuffle=False)
    batches = _epoch(sampler, 0)
    flat = [durations[i] for batch in batches for i in batch]
    assert flat == sorted(flat)
    assert _epoch(sampler, 1) == batches


def test_too_long_utterance_raises_with_the_fix():
    fix = r"31\.50 s.*raise max_batch_seconds or filter with max_duration"
    with pytest.raises(ValueError, match=fix):
        DurationBatchSampler([2.0, 31.5, 4.0], max_batch_seconds=30.0)


@pytest.mark.parametrize(
    "durations, kwargs",
    [
        ([], {}),
        ([1.0, 0.0], {}),
        ([1.0, float("nan")], {}),
        ([1.0], {"max_batch_seconds": 0.0}),
        ([1.0, 2.0], {"num_replicas": 2, "rank": 2}),
        ([1.0], {"max_batch_size": 0}),
        ([1.0], {"bucket_window": 0}),
        ([1.0], {"seed": -1}),
    ],
)
def test_invalid_arguments_raise(durations, kwargs):
    kwargs = {"max_batch_seconds": 10.0, **kwargs}
    with pytest.raises(ValueError):
        DurationBatchSampler(durations, **kwargs)


# ---------------------------------------------------------------------- resume


def _run(sampler: DurationBatchSampler, first_epoch: int, last_epoch: int) -> list[list[int]]:
    """Batches of epochs first..last as a loop calling set_epoch(epoch) would see them."""
    out = []
    for epoch in range(first_epoch, last_epoch + 1):
        sampler.set_epoch(epoch)
        out.extend(sampler)
    return out


@pytest.mark.parametrize("num_replicas", [1, 2])
@pytest.mark.parametrize("stop_epoch", [0, 1])
@pytest.mark.parametrize("where", ["start", "one", "middle", "end"])
def test_resume_continues_the_uninterrupted_sequence(num_replicas, stop_epoch, where):
    durations = _lognormal_durations(400)
    kwargs = {"num_replicas": num_replicas, "seed": 11, "bucket_window": 128}
    for rank in range(num_replicas):
        reference = DurationBatchSampler(durations, 50.0, rank=rank, **kwargs)
        uninterrupted = _run(reference, 0, 2)

        interrupted = DurationBatchSampler(durations, 50.0, rank=rank, **kwargs)
        done_before = len(_run(interrupted, 0, stop_epoch - 1)) if stop_epoch else 0
        interrupted.set_epoch(stop_epoch)
        per_epoch = len(interrupted)
        k = {"start": 0, "one": 1, "middle": per_epoch // 2, "end": per_epoch}[where]
        iterator = iter(interrupted)
        trained = [next(iterator) for _ in range(k)]
        state = interrupted.state_dict()  # num_workers=0: the own count is exact
        assert state == interrupted.state_dict(batches_done=k)
        assert state["epoch"] == stop_epoch and state["batches_done"] == k

        fresh = DurationBatchSampler(durations, 50.0, rank=rank, **kwargs)
        fresh.load_state_dict(state)
        assert fresh.epoch == stop_epoch and fresh.start_batch == k
        resumed = _run(fresh, stop_epoch, 2)
        assert uninterrupted[done_before : done_before + k] == trained
        assert uninterrupted[done_before + k :] == resumed


def test_state_is_the_same_on_every_rank():
    durations = _lognormal_durations(200)
    states = [s.state_dict(batches_done=3) for s in _samplers(durations, 30.0, 2)]
    assert states[0] == states[1]


def test_state_round_trips_through_json():
    durations = _lognormal_durations(200)
    sampler = DurationBatchSampler(durations, 30.0, num_replicas=2, max_batch_size=None)
    state = json.loads(json.dumps(sampler.state_dict(batches_done=2)))
    fresh = DurationBatchSampler(durations, 30.0, num_replicas=2)
    fresh.load_state_dict(state)
    assert list(fresh) == list(sampler)[2:]


def test_state_survives_a_second_save_before_iterating():
    durations = _lognormal_durations(200)
    sampler = DurationBatchSampler(durations, 30.0)
    sampler.set_epoch(2)
    state = sampler.state_dict(batches_done=4)
    fresh = DurationBatchSampler(durations, 30.0)
    fresh.load_state_dict(state)
    assert fresh.state_dict() == state


def test_resume_adopts_the_checkpoint_seed(caplog):
    durations = _lognormal_durations(200)
    saved = DurationBatchSampler(durations, 30.0, seed=1)
    state = saved.state_dict(batches_done=2)
    other = DurationBatchSampler(durations, 30.0, seed=2)
    with caplog.at_level(logging.WARNING, logger="asr.sampler"):
        other.load_state_dict(state)
    assert "seed" in caplog.text
    assert list(other) == list(saved)[2:]


def test_set_epoch_to_another_epoch_discards_a_loaded_position(caplog):
    durations = _lognormal_durations(200)
    sampler = DurationBatchSampler(durations, 30.0)
    sampler.set_epoch(1)
    state = sampler.state_dict(batches_done=2)
    fresh = DurationBatchSampler(durations, 30.0)
    fresh.load_state_dict(state)
    fresh.set_epoch(1)  # same epoch: position kept
    assert fresh.start_batch == 2
    with caplog.at_level(logging.WARNING, logger="asr.sampler"):
        fresh.set_epoch(2)
    assert "discards" in caplog.text
    assert fresh.start_batch == 0 and len(list(fresh)) == len(fresh)


def test_resumed_position_is_used_once():
    durations = _lognormal_durations(200)
    sampler = DurationBatchSampler(durations, 30.0)
    full = list(sampler)
    sampler.load_state_dict(sampler.state_dict(batches_done=3))
    assert list(sampler) == full[3:]
    assert list(sampler) == full  # a second pass over the same epoch starts from its beginning


@pytest.mark.parametrize(
    "change",
    [
        {"num_replicas": 4},
        {"max_batch_seconds": 31.0},
        {"max_batch_size": 4},
        {"bucket_window": 64},
        {"shuffle": False},
        {"durations": "other"},
        {"durations": "shorter"},
    ],
)
def test_loading_a_state_from_another_configuration_raises(change):
    durations = _lognormal_durations(200)
    base = {"durations": durations, "max_batch_seconds": 30.0, "num_replicas": 2}
    state = DurationBatchSampler(**base).state_dict(batches_done=1)
    changed = {**base, **change}
    if change.get("durations") == "other":
        changed["durations"] = _lognormal_durations(200, seed=1)
    elif change.get("durations") == "shorter":
        changed["durations"] = durations[:-1]
    with pytest.raises(ValueError, match="different configuration"):
        DurationBatchSampler(**changed).load_state_dict(state)


def test_malformed_states_raise():
    durations = _lognormal_durations(100)
    sampler = DurationBatchSampler(durations, 30.0)
    state = sampler.state_dict()
    with pytest.raises(ValueError, match="lacks"):
        sampler.load_state_dict({"epoch": 0})
    with pytest.raises(ValueError, match="batches_done"):
        sampler.load_state_dict({**state, "batches_done": len(sampler) + 1})
    with pytest.raises(ValueError, match="batches_done"):
        sampler.state_dict(batches_done=-1)


# ---------------------------------------------------------------------- DataLoader


class _FakeAudio(Dataset):
    """Item i is i/1000 s of audio at 1 kHz whose samples all equal i (tiny, checkable)."""

    def __init__(self, durations):
        self.lengths = [max(1, round(d * 1000)) for d in durations]

    def __len__(self):
        return len(self.lengths)

    def __getitem__(self, index):
        return {
            "input_values": np.full(self.lengths[index], index, dtype=np.float32),
            "labels": [index % 7 + 3] * (index % 5 + 1),
        }


def _indices(batch) -> list[int]:
    return batch["input_values"][:, 0].to(torch.int64).tolist()


@pytest.mark.parametrize("num_workers", [0, 2])
def test_works_inside_a_dataloader(num_workers):
    durations = _lognormal_durations(300) / 10  # keep the fake audio small
    dataset = _FakeAudio(durations)
    seen = []
    for rank in range(2):
        sampler = DurationBatchSampler(durations, 5.0, num_replicas=2, rank=rank, seed=4)
        loader = DataLoader(
            dataset,
            batch_sampler=sampler,
            collate_fn=CTCCollator(return_attention_mask=True),
            num_workers=num_workers,
        )
        assert len(loader) == len(sampler)
        sampler.set_epoch(1)
        batches = list(loader)
        assert [_indices(b) for b in batches] == list(sampler)
        for batch in batches:
            assert batch["attention_mask"].sum(dim=1).tolist() == batch["input_lengths"].tolist()
            assert batch["labels"].shape[0] == batch["input_values"].shape[0]
        seen += [i for b in batches for i in _indices(b)]
    assert sorted(seen) == list(range(len(durations)))


def test_resume_through_a_prefetching_dataloader():
    durations = _lognormal_durations(300) / 10
    dataset = _FakeAudio(durations)

    def loader_for(sampler):
        return DataLoader(
            dataset, batch_sampler=sampler, collate_fn=CTCCollator(False), num_workers=2
        )

    reference = DurationBatchSampler(durations, 5.0, seed=9)
    reference.set_epoch(1)
    expected = list(reference)

    sampler = DurationBatchSampler(durations, 5.0, seed=9)
    sampler.set_epoch(1)
    trained = []
    for batches_done, batch in enumerate(loader_for(sampler), start=sampler.start_batch + 1):
        trained.append(_indices(batch))
        if batches_done == 5:
            state = sampler.state_dict(batches_done=batches_done)
            assert sampler.state_dict()["batches_done"] > 5  # workers prefetched ahead
            break
    assert trained == expected[:5]

    fresh = DurationBatchSampler(durations, 5.0, seed=9)
    fresh.load_state_dict(state)
    fresh.set_epoch(1)
    assert fresh.start_batch == 5
    # DataLoader calls iter() on the sampler twice when it starts workers: the position must
    # survive the discarded first iterator.
    resumed = [_indices(batch) for batch in loader_for(fresh)]
    assert resumed == expected[5:]
