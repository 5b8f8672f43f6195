"""Running a trained CTC model over many recordings: batched by length, log-probs cut to valid frames.

Used by evaluation and transcription. Batches are packed by padded audio seconds after sorting by
length, so padding is small; base-style models (group-norm feature encoder, no attention mask)
see zero padding, which shifts their first normalisation slightly; `padding_report` measures it.

Two backends share everything but the forward pass (`AcousticModel.logits`): PyTorch (`LoadedModel`,
a training run's model directory) and ONNX Runtime (`asr.onnx_model.OnnxModel`, a directory written
by `scripts/export.py`). `load_acoustic_model(path, backend)` picks one; batching, padding,
normalisation, log-softmax and frame counts are the same code for both.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

import numpy as np
import torch

from asr.audio import normalize_audio
from asr.collate import filterbank_inputs
from asr.constants import SAMPLE_RATE
from asr.defaults import BACKENDS
from asr.hardware import inference_dtype
from asr.model import (WEIGHT_SUFFIXES, output_frames, seconds_per_frame, takes_filterbank,
                       use_fast_relative_key_attention)
from asr.onnx_model import load_onnx_model
from asr.packing import pack_by_length
from asr.text import TextNormalizer, load_processor

logger = logging.getLogger(__name__)



class AcousticModel(Protocol):
    """What inference needs from a model, whichever backend runs it."""

    vocab: dict[str, int]
    normalizer: TextNormalizer
    return_attention_mask: bool  # the model takes `attention_mask` (else it sees zero padding)
    do_normalize: bool  # inputs are normalised to zero mean, unit variance per utterance
    path: Path

    @property
    def blank_id(self) -> int: ...

    @property
    def seconds_per_frame(self) -> float: ...

    def frames(self, num_samples: int) -> int: ...

    def logits(self, input_values: np.ndarray, attention_mask: np.ndarray | None) -> np.ndarray: ...


@dataclass
class LoadedModel:
    """A model directory ready for inference."""

    model: torch.nn.Module
    vocab: dict[str, int]
    normalizer: TextNormalizer
    return_attention_mask: bool
    do_normalize: bool
    path: Path
    feature_extractor: Any = None  # filterbank models: makes `input_features` from the audio (else None)
    autocast_dtype: torch.dtype | None = None  # the forward pass under autocast to this dtype (None: float32)

    @property
    def blank_id(self) -> int:
        return int(self.model.config.pad_token_id)

    def frames(self, num_samples: int) -> int:
        """Output frames for an input of `num_samples` samples."""
        return int(output_frames(self.model, torch.tensor(num_samples)))

    @property
    def seconds_per_frame(self) -> float:
        """The model's real frame period (20 ms for wav2vec2 and wav2vec2-bert)."""
        return seconds_per_frame(self.model.config)

    @torch.no_grad()
    def logits(self, input_values: np.ndarray, attention_mask: np.ndarray | None) -> np.ndarray:
        """Raw CTC logits.

        Args:
            input_values: float32 [B, S] padded (and normalised) audio.
            attention_mask: int64 [B, S], 1 on real samples; None for models that take no mask.

        Returns:
            float32 [B, T, V] on the CPU, T = frames(S).
        """
        device = next(self.model.parameters()).device
        if self.feature_extractor is not None:
            inputs = filterbank_inputs(self.feature_extractor, input_values, attention_mask)
        else:
            inputs = {"input_values": input_values}
            if attention_mask is not None:
                inputs["attention_mask"] = attention_mask
        inputs = {k: torch.from_numpy(v).to(device) for k, v in inputs.items()}
        with torch.autocast(device.type, dtype=self.autocast_dtype, enabled=self.autocast_dtype is not None):
            return self.model(**inputs).logits.float().cpu().numpy()


def load_model(path: str | Path, device: str | torch.device = "cpu", precision: str = "float32") -> LoadedModel:
    """Loads a model directory written by training (model + processor + normalizer.json).

    Args:
        path: the model directory.
        device: where the model runs.
        precision: the forward pass's arithmetic (asr.defaults.INFERENCE_PRECISIONS); the weights stay float32.

    Raises:
        ValueError: the directory is missing or not a CTC model directory, or the precision does not run on
            the device.
    """
    autocast_dtype = inference_dtype(precision, torch.device(device).type)
    from transformers import AutoModelForCTC

    path = Path(path)
    if not (path / "config.json").exists():
        raise ValueError(f"{path} is not a model directory (no config.json); pass the model/ folder of a training run")
    try:
        processor, normalizer = load_processor(path)
    except (OSError, FileNotFoundError) as e:
        raise ValueError(f"{path} has no processor/normalizer files ({e}); use a directory written by scripts/train.py") from e
    if (path / "model.onnx").is_file() and not any(p.suffix in WEIGHT_SUFFIXES for p in path.iterdir()):
        raise ValueError(f"{path} holds an ONNX export without PyTorch weights; run it with --backend onnx")
    use_fast_relative_key_attention()
    try:
        model = AutoModelForCTC.from_pretrained(path).to(device).eval()
    except OSError as e:
        raise ValueError(f"{path} cannot be loaded as a CTC model ({str(e).splitlines()[0]}); pass the model/ "
                         "folder of a training run") from e
    vocab = processor.tokenizer.get_vocab()
    if model.config.vocab_size != len(vocab):
        raise ValueError(f"{path}: the model emits {model.config.vocab_size} tokens but vocab.json has {len(vocab)}")
    fe = processor.feature_extractor
    if takes_filterbank(model.config):  # the mask gives each row's length; features are made per row
        return LoadedModel(model, vocab, normalizer, True, False, path, feature_extractor=fe,
                           autocast_dtype=autocast_dtype)
    return LoadedModel(model, vocab, normalizer, bool(fe.return_attention_mask), bool(fe.do_normalize), path,
                       autocast_dtype=autocast_dtype)


def plan_batches(lengths: Sequence[int], max_batch_samples: int) -> list[list[int]]:
    """Indices grouped into batches by ascending length, each at most `max_batch_samples` padded samples."""
    return pack_by_length(lengths, max_batch_samples)


def load_acoustic_model(path: str | Path, backend: str = "torch", device: str | torch.device = "cpu",
                        precision: str = "float32") -> AcousticModel:
    """A model directory run by `backend`: "torch" (a training run's model/) or "onnx" (scripts/export.py's output).

    Raises:
        ValueError: unknown backend, the directory is not a model for that backend, or a precision the backend
            or device does not run (ONNX runs the exported graph's own arithmetic: float32 or int8).
    """
    if backend == "torch":
        return load_model(path, device, precision)
    if backend == "onnx":
        if precision != "float32":
            raise ValueError(f"--precision {precision} applies to --backend torch; an ONNX export runs its own "
                             "arithmetic (float32, or int8 with scripts/export.py --quantize int8)")
        return load_onnx_model(path)
    raise ValueError(f"backend {backend!r} is unknown; use one of {', '.join(BACKENDS)}")


def prepare_batch(loaded: AcousticModel, audios: Sequence[np.ndarray]) -> tuple[np.ndarray, np.ndarray | None]:
    """Zero-padded (and normalised, if the model wants it) float32 [B, S] audio and its int64 [B, S] mask.

    The mask is None for models that take none (they see the zero padding).
    """
    lengths = [len(a) for a in audios]
    batch = np.zeros((len(audios), max(lengths)), dtype=np.float32)
    mask = np.zeros(batch.shape, dtype=np.int64)
    for row, audio in enumerate(audios):
        batch[row, : len(audio)] = normalize_audio(audio) if loaded.do_normalize else audio
        mask[row, : len(audio)] = 1
    return batch, mask if loaded.return_attention_mask else None


def log_probs_batch(loaded: AcousticModel, audios: Sequence[np.ndarray]) -> list[np.ndarray]:
    """CTC log-probabilities of a batch: one float32 array [frames_i, V] per input, padding cut off."""
    logits = loaded.logits(*prepare_batch(loaded, audios))
    log_probs = torch.log_softmax(torch.from_numpy(logits), dim=-1).numpy()
    return [log_probs[row, : loaded.frames(len(audio))] for row, audio in enumerate(audios)]


def iter_log_probs(
    loaded: AcousticModel, audios: Sequence[np.ndarray], max_batch_seconds: float = 60.0
) -> Iterator[tuple[int, np.ndarray]]:
    """Yields (index, log-probs [T, V]) for every input, batched by length (order: ascending length)."""
    max_samples = int(max_batch_seconds * SAMPLE_RATE)
    lengths = [len(a) for a in audios]
    for batch in plan_batches(lengths, max_samples):
        for i, lp in zip(batch, log_probs_batch(loaded, [audios[i] for i in batch])):
            yield i, lp
