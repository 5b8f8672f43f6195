"""Running an exported CTC model with ONNX Runtime: the `--backend onnx` side of `asr.inference`.

    >>> model = load_onnx_model("runs/tiny/onnx")        # written by scripts/export.py
    >>> log_probs_batch(model, [audio1, audio2])           # same batching, padding and frame counts as PyTorch

An export directory holds `model.onnx` (inputs `input_values` float32 [batch, samples] and, when the
processor uses one, `attention_mask` int64 [batch, samples]; output `logits` float32
[batch, frames, vocab]), the model's config, processor and `normalizer.json`, an optional KenLM
directory (`alphabet.json`, `language_model/`), and `export_report.json` (the parity check).
Frame counts come from the config's conv kernels and strides, so neither PyTorch nor the weights
are needed to serve it.
"""

from __future__ import annotations

import json
import logging
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from asr.collate import filterbank_inputs
from asr.model import frames_fn_for, seconds_per_frame, takes_filterbank
from asr.text import TextNormalizer, load_processor

logger = logging.getLogger(__name__)

ONNX_FILE = "model.onnx"
REPORT_FILE = "export_report.json"
INPUT_VALUES, ATTENTION_MASK, LOGITS = "input_values", "attention_mask", "logits"  # graph input/output names
INPUT_FEATURES = "input_features"  # filterbank models' input instead of INPUT_VALUES


@dataclass
class OnnxModel:
    """An exported model directory ready for inference; the same interface as `asr.inference.LoadedModel`."""

    session: Any  # onnxruntime.InferenceSession
    vocab: dict[str, int]
    normalizer: TextNormalizer
    return_attention_mask: bool
    do_normalize: bool
    path: Path
    blank_id: int
    frames_fn: Any  # samples -> output frames (asr.model.frames_fn_for)
    frame_seconds: float  # the model's output frame period
    feature_extractor: Any = None  # filterbank models: makes the graph's `input_features` from the audio

    def frames(self, num_samples: int) -> int:
        """Output frames for an input of `num_samples` samples."""
        return self.frames_fn(num_samples)

    @property
    def seconds_per_frame(self) -> float:
        """The model's real frame period (20 ms for wav2vec2 and wav2vec2-bert)."""
        return self.frame_seconds

    def logits(self, input_values: np.ndarray, attention_mask: np.ndarray | None) -> np.ndarray:
        """Raw CTC logits.

        Args:
            input_values: float32 [B, S] padded (and normalised) audio.
            attention_mask: int64 [B, S], 1 on real samples; None for models that take no mask.

        Returns:
            float32 [B, T, V], T = frames(S).
        """
        if self.feature_extractor is not None:
            return self.session.run([LOGITS], filterbank_inputs(self.feature_extractor, input_values, attention_mask))[0]
        feeds = {INPUT_VALUES: np.ascontiguousarray(input_values, dtype=np.float32)}
        if self.return_attention_mask:
            if attention_mask is None:
                raise ValueError(f"{self.path} takes an attention mask; pass one with the batch")
            feeds[ATTENTION_MASK] = np.ascontiguousarray(attention_mask, dtype=np.int64)
        return self.session.run([LOGITS], feeds)[0]


def load_onnx_model(path: str | os.PathLike, threads: int = 0) -> OnnxModel:
    """Loads a directory written by `asr.onnx_export.export_onnx` (scripts/export.py).

    Args:
        path: The export directory.
        threads: ONNX Runtime intra-op threads; 0 lets it choose (one per physical core).

    Raises:
        ValueError: the directory is missing, holds no model.onnx, or its files disagree.
        RuntimeError: onnxruntime is not installed.
    """
    path = Path(path)
    if not path.is_dir():
        raise ValueError(f"{path} does not exist; pass a directory written by scripts/export.py")
    if not (path / ONNX_FILE).is_file():
        hint = ("it is a PyTorch model directory: export it with `scripts/export.py --model "
                f"{path} --output DIR`, or use --backend torch") if (path / "config.json").is_file() else (
                "export a model with scripts/export.py")
        raise ValueError(f"{path} has no {ONNX_FILE}; {hint}")
    from transformers import AutoConfig

    try:
        import onnxruntime as ort
    except ImportError as e:
        raise RuntimeError("onnxruntime is not installed; run `bash scripts/setup.sh` (it installs "
                           "requirements/lock.txt)") from e
    try:
        config = json.loads((path / "config.json").read_text(encoding="utf-8"))
        processor, normalizer = load_processor(path)
    except (OSError, ValueError) as e:
        raise ValueError(f"{path} lacks the model's config/processor files ({str(e).splitlines()[0]}); export "
                         "again with scripts/export.py") from e
    options = ort.SessionOptions()
    options.intra_op_num_threads = threads
    options.log_severity_level = 3  # errors only: its shape-inference warnings are noise for dynamic axes
    session = ort.InferenceSession(str(path / ONNX_FILE), options, providers=["CPUExecutionProvider"])
    inputs = {i.name for i in session.get_inputs()}
    vocab = processor.tokenizer.get_vocab()
    fe = processor.feature_extractor
    model_config = AutoConfig.from_pretrained(path)  # config.json, read locally
    frames_fn, frame_seconds = frames_fn_for(model_config), seconds_per_frame(model_config)
    if takes_filterbank(model_config):
        if inputs != {INPUT_FEATURES, ATTENTION_MASK}:
            raise ValueError(f"{path / ONNX_FILE} takes inputs {sorted(inputs)}, not a filterbank model's "
                             f"{INPUT_FEATURES} and {ATTENTION_MASK}; export again with scripts/export.py")
        return OnnxModel(session, vocab, normalizer, True, False, path, blank_id=int(config["pad_token_id"]),
                         frames_fn=frames_fn, frame_seconds=frame_seconds, feature_extractor=fe)
    wants_mask = bool(fe.return_attention_mask)
    if INPUT_VALUES not in inputs or wants_mask != (ATTENTION_MASK in inputs):
        raise ValueError(f"{path / ONNX_FILE} takes inputs {sorted(inputs)} but the processor "
                         f"{'uses' if wants_mask else 'uses no'} attention mask; export again with scripts/export.py")
    vocab_out = session.get_outputs()[0].shape[-1]
    if isinstance(vocab_out, int) and vocab_out != len(vocab):
        raise ValueError(f"{path}: the model emits {vocab_out} tokens but vocab.json has {len(vocab)}")
    return OnnxModel(session, vocab, normalizer, wants_mask, bool(fe.do_normalize), path,
                     blank_id=int(config["pad_token_id"]), frames_fn=frames_fn, frame_seconds=frame_seconds)
