"""Pad a list of (audio, label ids) items into CTC training tensors.

Audio is padded with 0.0 and labels with -100, the id ``Wav2Vec2ForCTC`` leaves out of the
loss. The attention mask is returned only when the feature extractor makes one
(``return_attention_mask=True``, e.g. wav2vec2-large-lv60 and XLS-R); base-style models
(group-norm feature encoder) were pre-trained on zero-padded audio without a mask, and
transformers documents that passing one to them degrades accuracy.

The batch also carries ``input_lengths`` (samples per item) for statistics and CTC
feasibility checks; the model does not accept it, so call ``model(**model_inputs(batch))``.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

# Batch keys for bookkeeping only; model_inputs() removes them before the forward pass.
NON_MODEL_KEYS = ("input_lengths",)


def model_inputs(batch: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """The batch without the bookkeeping keys in ``NON_MODEL_KEYS``, ready for ``model(**...)``.

    Args:
        batch: output of ``CTCCollator``.

    Returns:
        A new dict with ``input_values``, ``labels`` and ``attention_mask`` where present.
    """
    return {key: value for key, value in batch.items() if key not in NON_MODEL_KEYS}


@dataclass(frozen=True)
class CTCCollator:
    """Pad utterances and their label ids into a batch for a CTC model.

    Attributes:
        return_attention_mask: also return ``attention_mask``; True only for feature
            extractors that return one (``processor.feature_extractor.return_attention_mask``).
        pad_to_multiple_of: round the padded audio length up to a multiple of this many
            samples (tensor-core friendly shapes); None pads to the longest item.
        label_pad_id: label value for padding positions; -100 is ignored by the CTC loss.
    """

    return_attention_mask: bool
    pad_to_multiple_of: int | None = None
    label_pad_id: int = -100

    def __post_init__(self) -> None:
        if self.pad_to_multiple_of is not None and self.pad_to_multiple_of < 1:
            raise ValueError(
                f"pad_to_multiple_of must be None or >= 1, got {self.pad_to_multiple_of}; "
                "use None to pad to the longest item."
            )

    def __call__(self, features: Sequence[Mapping[str, Any]]) -> dict[str, torch.Tensor]:
        """Pad a list of items into tensors.

        Args:
            features: B items, each with ``input_values`` (float32 array [T_i], normalised
                audio) and optionally ``labels`` (label ids [L_i]); either all items have
                labels or none.

        Returns:
            ``input_values``: float32 [B, T], zero-padded, T = max T_i (rounded up to
            ``pad_to_multiple_of``);
            ``attention_mask``: int64 [B, T], 1 on audio, 0 on padding (only if
            ``return_attention_mask``);
            ``labels``: int64 [B, L], padded with ``label_pad_id``, L = max L_i (only if
            the items have labels);
            ``input_lengths``: int64 [B], T_i in samples (not a model input, see
            ``model_inputs``).

        Raises:
            ValueError: on an empty list, non 1-D audio or labels, or labels on only some items.
        """
        if not features:
            raise ValueError("features is empty; the batch sampler must not yield empty batches.")
        audio = [np.asarray(item["input_values"], dtype=np.float32) for item in features]
        for i, values in enumerate(audio):
            if values.ndim != 1:
                raise ValueError(
                    f"item {i} has input_values of shape {values.shape}; expected mono audio "
                    "of shape [num_samples], so squeeze or downmix it in the dataset."
                )
        lengths = np.fromiter((values.size for values in audio), dtype=np.int64, count=len(audio))
        width = int(lengths.max())
        if self.pad_to_multiple_of is not None:
            width = -(-width // self.pad_to_multiple_of) * self.pad_to_multiple_of

        input_values = np.zeros((len(audio), width), dtype=np.float32)
        for row, values in zip(input_values, audio):
            row[: values.size] = values
        batch = {"input_values": torch.from_numpy(input_values)}
        if self.return_attention_mask:
            mask = np.arange(width, dtype=np.int64)[None, :] < lengths[:, None]
            batch["attention_mask"] = torch.from_numpy(mask.astype(np.int64))

        labelled = sum("labels" in item for item in features)
        if labelled not in (0, len(features)):
            raise ValueError(
                f"{labelled} of {len(features)} items have labels; give every item labels "
                "(training) or none (inference)."
            )
        if labelled:
            batch["labels"] = torch.from_numpy(pad_labels([item["labels"] for item in features], self.label_pad_id))
        batch["input_lengths"] = torch.from_numpy(lengths)
        return batch


@dataclass(frozen=True)
class FilterbankCollator:
    """Like `CTCCollator`, for filterbank models: the batch's audio becomes log-mel `input_features`.

    The features are computed here, in the DataLoader workers, by the processor's feature extractor
    (SeamlessM4TFeatureExtractor for wav2vec2-bert), so training, evaluation and a
    `transformers.pipeline` all see the same input.

    Attributes:
        feature_extractor: the processor's feature extractor (picklable).
        label_pad_id: label value for padding positions; -100 is ignored by the CTC loss.
    """

    feature_extractor: Any
    label_pad_id: int = -100

    def __call__(self, features: Sequence[Mapping[str, Any]]) -> dict[str, torch.Tensor]:
        """Items as for `CTCCollator` -> ``input_features`` float32 [B, T, 160], ``attention_mask``
        int64 [B, T], ``labels`` (if any) and ``input_lengths`` (samples) int64 [B]."""
        audio_batch = CTCCollator(return_attention_mask=True, label_pad_id=self.label_pad_id)(features)
        fbank = filterbank_inputs(self.feature_extractor, audio_batch.pop("input_values").numpy(),
                                  audio_batch.pop("attention_mask").numpy())
        return {**{k: torch.from_numpy(v) for k, v in fbank.items()}, **audio_batch}


def filterbank_inputs(feature_extractor, input_values: np.ndarray, attention_mask: np.ndarray) -> dict[str, np.ndarray]:
    """A filterbank model's inputs for padded audio: `input_features` float32 [B, T, 160] and its
    int64 [B, T] `attention_mask`, each row's features computed from its real samples only."""
    lengths = attention_mask.sum(axis=1)
    audio = [row[:n] for row, n in zip(input_values, lengths)]
    out = feature_extractor(audio, sampling_rate=feature_extractor.sampling_rate, padding=True,
                            return_attention_mask=True, return_tensors="np")
    return {"input_features": np.ascontiguousarray(out["input_features"], dtype=np.float32),
            "attention_mask": out["attention_mask"].astype(np.int64)}


def make_collator(processor: Any, return_attention_mask: bool) -> CTCCollator | FilterbankCollator:
    """The collator for a processor: waveform models pad audio, filterbank models get log-mel features."""
    if type(processor.feature_extractor).__name__ == "SeamlessM4TFeatureExtractor":
        return FilterbankCollator(processor.feature_extractor)
    return CTCCollator(return_attention_mask=return_attention_mask)


def pad_labels(labels: Sequence[Any], pad_id: int = -100) -> np.ndarray:
    """Label id sequences padded with ``pad_id`` into int64 [B, max L_i] (also used for cached-feature batches)."""
    arrays = [np.asarray(ids, dtype=np.int64) for ids in labels]
    for i, ids in enumerate(arrays):
        if ids.ndim != 1:
            raise ValueError(
                f"item {i} has labels of shape {ids.shape}; expected a flat list of "
                "token ids, as the tokenizer returns for one transcript."
            )
    width = max(ids.size for ids in arrays)
    padded = np.full((len(arrays), width), pad_id, dtype=np.int64)
    for row, ids in zip(padded, arrays):
        row[: ids.size] = ids
    return padded
