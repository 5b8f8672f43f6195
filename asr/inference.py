"""Running a trained CTC model over many recordings: batched by length, log-probs cut to valid frames.

Used by evaluation and transcription. Batches are packed by padded audio seconds after sorting by
length, so padding is small; base-style models (group-norm feature encoder, no attention mask)
see zero padding, which shifts their first normalisation slightly; `padding_report` measures it.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from asr.audio import normalize_audio
from asr.constants import SAMPLE_RATE
from asr.text import TextNormalizer, load_processor

logger = logging.getLogger(__name__)


@dataclass
class LoadedModel:
    """A model directory ready for inference."""

    model: torch.nn.Module
    vocab: dict[str, int]
    normalizer: TextNormalizer
    return_attention_mask: bool
    do_normalize: bool
    path: Path

    @property
    def blank_id(self) -> int:
        return int(self.model.config.pad_token_id)

    def frames(self, num_samples: int) -> int:
        """Output frames for an input of `num_samples` samples."""
        return int(self.model._get_feat_extract_output_lengths(torch.tensor(num_samples)))

    @property
    def seconds_per_frame(self) -> float:
        """The model's real frame period (20 ms for wav2vec2: 320 samples per frame)."""
        return float(np.prod(self.model.config.conv_stride)) / SAMPLE_RATE


def load_model(path: str | Path, device: str | torch.device = "cpu") -> LoadedModel:
    """Loads a model directory written by training (model + processor + normalizer.json).

    Raises:
        ValueError: the directory is missing or not a CTC model directory.
    """
    from transformers import AutoModelForCTC

    path = Path(path)
    if not (path / "config.json").exists():
        raise ValueError(f"{path} is not a model directory (no config.json); pass the model/ folder of a training run")
    try:
        processor, normalizer = load_processor(path)
    except (OSError, FileNotFoundError) as e:
        raise ValueError(f"{path} has no processor/normalizer files ({e}); use a directory written by scripts/train.py") from e
    model = AutoModelForCTC.from_pretrained(path).to(device).eval()
    vocab = processor.tokenizer.get_vocab()
    if model.config.vocab_size != len(vocab):
        raise ValueError(f"{path}: the model emits {model.config.vocab_size} tokens but vocab.json has {len(vocab)}")
    fe = processor.feature_extractor
    return LoadedModel(model, vocab, normalizer, bool(fe.return_attention_mask), bool(fe.do_normalize), path)


def plan_batches(lengths: Sequence[int], max_batch_samples: int) -> list[list[int]]:
    """Indices grouped into batches by ascending length, each at most `max_batch_samples` padded samples."""
    order = sorted(range(len(lengths)), key=lambda i: lengths[i])
    batches: list[list[int]] = []
    current: list[int] = []
    for i in order:
        # sorted ascending: the newest item is the longest, so it sets the padded size
        if current and (len(current) + 1) * lengths[i] > max_batch_samples:
            batches.append(current)
            current = []
        current.append(i)
    if current:
        batches.append(current)
    return batches


@torch.no_grad()
def log_probs_batch(loaded: LoadedModel, audios: Sequence[np.ndarray]) -> list[np.ndarray]:
    """CTC log-probabilities of a batch: one float32 array [frames_i, V] per input, padding cut off."""
    device = next(loaded.model.parameters()).device
    lengths = [len(a) for a in audios]
    batch = np.zeros((len(audios), max(lengths)), dtype=np.float32)
    mask = np.zeros(batch.shape, dtype=np.int64)
    for row, audio in enumerate(audios):
        batch[row, : len(audio)] = normalize_audio(audio) if loaded.do_normalize else audio
        mask[row, : len(audio)] = 1
    inputs = {"input_values": torch.from_numpy(batch).to(device)}
    if loaded.return_attention_mask:
        inputs["attention_mask"] = torch.from_numpy(mask).to(device)
    logits = loaded.model(**inputs).logits.float()
    log_probs = torch.log_softmax(logits, dim=-1).cpu().numpy()
    return [log_probs[row, : loaded.frames(n)] for row, n in enumerate(lengths)]


def iter_log_probs(
    loaded: LoadedModel, audios: Sequence[np.ndarray], max_batch_seconds: float = 60.0
) -> Iterator[tuple[int, np.ndarray]]:
    """Yields (index, log-probs [T, V]) for every input, batched by length (order: ascending length)."""
    max_samples = int(max_batch_seconds * SAMPLE_RATE)
    lengths = [len(a) for a in audios]
    for batch in plan_batches(lengths, max_samples):
        for i, lp in zip(batch, log_probs_batch(loaded, [audios[i] for i in batch])):
            yield i, lp
