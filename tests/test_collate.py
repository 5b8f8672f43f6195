"""Behaviour of CTCCollator: shapes, padding values, masks, labels and model_inputs."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from asr.collate import CTCCollator, model_inputs


def _items(lengths, label_lengths=None):
    """Audio item i holds samples i+1, i+1, ... so padding zeros are unambiguous."""
    rng = np.random.default_rng(0)
    items = []
    for i, n in enumerate(lengths):
        item = {"input_values": np.full(n, i + 1, dtype=np.float32)}
        if label_lengths is not None:
            item["labels"] = rng.integers(3, 30, label_lengths[i]).tolist()
        items.append(item)
    return items


def test_pads_audio_with_zeros_to_the_longest_item():
    batch = CTCCollator(return_attention_mask=False)(_items([5, 3, 8]))
    values = batch["input_values"]
    assert values.dtype == torch.float32 and values.shape == (3, 8)
    assert values[1, :3].tolist() == [2.0] * 3
    assert values[1, 3:].tolist() == [0.0] * 5
    assert values[2].tolist() == [3.0] * 8
    assert batch["input_lengths"].dtype == torch.int64
    assert batch["input_lengths"].tolist() == [5, 3, 8]


def test_attention_mask_only_when_asked():
    items = _items([4, 2])
    assert "attention_mask" not in CTCCollator(return_attention_mask=False)(items)
    mask = CTCCollator(return_attention_mask=True)(items)["attention_mask"]
    assert mask.dtype == torch.int64
    assert mask.tolist() == [[1, 1, 1, 1], [1, 1, 0, 0]]


def test_labels_padded_with_minus_100():
    items = _items([4, 4, 4], label_lengths=[3, 1, 0])
    items[1]["labels"] = np.array(items[1]["labels"], dtype=np.int32)  # arrays work too
    labels = CTCCollator(return_attention_mask=False)(items)["labels"]
    assert labels.dtype == torch.int64 and labels.shape == (3, 3)
    assert labels[0].tolist() == list(items[0]["labels"])
    assert labels[1].tolist() == [int(items[1]["labels"][0]), -100, -100]
    assert labels[2].tolist() == [-100, -100, -100]


def test_custom_label_pad_id():
    labels = CTCCollator(False, label_pad_id=0)(_items([2, 2], [2, 1]))["labels"]
    assert labels[1, 1].item() == 0


def test_no_labels_key_without_labels():
    batch = CTCCollator(return_attention_mask=True)(_items([3]))
    assert set(batch) == {"input_values", "attention_mask", "input_lengths"}


@pytest.mark.parametrize("longest, multiple, width", [(8, 4, 8), (9, 4, 12), (1, 320, 320)])
def test_pad_to_multiple_of(longest, multiple, width):
    batch = CTCCollator(True, pad_to_multiple_of=multiple)(_items([longest, 1]))
    assert batch["input_values"].shape == (2, width)
    assert batch["attention_mask"].sum(dim=1).tolist() == [longest, 1]
    assert batch["input_values"][0, longest:].abs().sum().item() == 0.0
    assert batch["input_lengths"].tolist() == [longest, 1]


def test_model_inputs_drops_bookkeeping_only():
    batch = CTCCollator(True)(_items([3, 2], [1, 2]))
    inputs = model_inputs(batch)
    assert set(inputs) == {"input_values", "attention_mask", "labels"}
    assert "input_lengths" in batch  # the batch itself is untouched


def test_collator_is_frozen():
    collator = CTCCollator(False)
    with pytest.raises(dataclasses.FrozenInstanceError):
        collator.pad_to_multiple_of = 8  # type: ignore[misc]


@pytest.mark.parametrize(
    "features, match",
    [
        ([], "empty"),
        ([{"input_values": np.zeros((2, 3), np.float32)}], "mono"),
        (
            [{"input_values": np.zeros(3), "labels": [1]}, {"input_values": np.zeros(2)}],
            "1 of 2",
        ),
        ([{"input_values": np.zeros(3, np.float32), "labels": [[1, 2]]}], "labels of shape"),
    ],
)
def test_bad_batches_raise(features, match):
    with pytest.raises(ValueError, match=match):
        CTCCollator(False)(features)


def test_bad_pad_multiple_raises():
    with pytest.raises(ValueError, match="pad_to_multiple_of"):
        CTCCollator(False, pad_to_multiple_of=0)


@settings(max_examples=100, deadline=None)
@given(
    st.lists(st.tuples(st.integers(1, 300), st.integers(0, 20)), min_size=1, max_size=12),
    st.none() | st.integers(1, 64),
)
def test_round_trip_of_random_batches(shapes, multiple):
    rng = np.random.default_rng(len(shapes))
    items = [
        {
            "input_values": rng.standard_normal(n).astype(np.float32),
            "labels": rng.integers(0, 40, k).tolist(),
        }
        for n, k in shapes
    ]
    batch = CTCCollator(True, pad_to_multiple_of=multiple)(items)
    width = batch["input_values"].shape[1]
    assert width >= max(n for n, _ in shapes)
    assert width % (multiple or 1) == 0 and width - max(n for n, _ in shapes) < (multiple or 1)
    for i, item in enumerate(items):
        n, k = len(item["input_values"]), len(item["labels"])
        np.testing.assert_array_equal(batch["input_values"][i, :n].numpy(), item["input_values"])
        assert not batch["input_values"][i, n:].any()
        assert batch["attention_mask"][i].sum().item() == n == batch["input_lengths"][i].item()
        assert batch["labels"][i, :k].tolist() == item["labels"]
        assert (batch["labels"][i, k:] == -100).all()
