"""CTC speech recognition toolkit: data pipeline, training pieces, decoding and evaluation.

Modules follow the pipeline: `audio` and `text` (inputs), `sources`, `filters`, `data`, `datasets`, `sampler`,
`collate`, `feature_cache`, `augment` (data), `model`, `train`, `trainer`, `checkpoint`, `averaging`, `launch`, `allocator`
(training),
`inference`, `decoders` (the front door of decoding: names, settings, the LM directory, `build_decoder`), `decoding`, `beam`, `metrics` (decoding and scoring), `evaluation`, `report`, `tuning`,
`reference`, `significance`, `breakdown` (scripts/eval.py's stages; `reference` is its pocketsphinx
yardstick row, `significance` its bootstrap intervals, `breakdown` its WER by group), `chunking`,
`transcribe`, `outputs` (batch transcription), `align` (CTC segmentation of long recordings with their text),
`recognizer` (one-call transcription from Python),
`corpus` and `layouts` (the synthetic speech corpus and its export layouts), `files`, `defaults` and `cli`
(the scripts' --help defaults and shared flags), and
`onnx_export` and `onnx_model` (ONNX export and the ONNX Runtime backend). Only the names below are
re-exported here; the rest are imported from their modules.
"""

import importlib
from typing import Any

# Public name -> defining module. Imported on first use, so that light modules (asr.allocator,
# asr.constants) can be imported before torch, e.g. at the very top of a script.
_EXPORTS = {
    "AlignOptions": "align", "align_recording": "align",
    "AUDIO_EXTENSIONS": "audio", "AudioError": "audio", "audio_duration": "audio", "load_audio": "audio",
    "AugmentConfig": "augment", "Augmenter": "augment",
    "CTCCollator": "collate",
    "ConfigError": "config", "load_config": "config",
    "PAD": "constants", "SAMPLE_RATE": "constants", "UNK": "constants", "WORD_DELIMITER": "constants",
    "DataConfig": "data", "PreparedSplit": "data", "SpeechDataset": "datasets", "StreamingSpeechDataset": "datasets",
    "prepare_split": "data",
    "BEAM_DECODERS": "decoders", "DECODERS": "decoders", "DecoderSettings": "decoders", "build_decoder": "decoders",
    "has_lm": "decoders", "load_decoder_settings": "decoders",
    "GreedyCTC": "beam",
    "FeatureCacheConfig": "feature_cache",
    "FilterConfig": "filters", "apply_filters": "filters",
    "ErrorRates": "metrics", "UtteranceErrors": "metrics", "error_rates": "metrics", "utterance_errors": "metrics",
    "Recognizer": "recognizer",
    "DurationBatchSampler": "sampler",
    "paired_bootstrap": "significance",
    "SourceConfig": "sources", "Utterance": "sources", "load_source": "sources",
    "TextNormalizer": "text", "build_vocab": "text", "load_processor": "text", "make_processor": "text",
    "save_processor": "text",
}
__all__ = list(_EXPORTS)


def __getattr__(name: str) -> Any:
    if name not in _EXPORTS:
        raise AttributeError(f"module 'asr' has no attribute {name!r}")
    value = getattr(importlib.import_module(f"asr.{_EXPORTS[name]}"), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted([*globals(), *_EXPORTS])
