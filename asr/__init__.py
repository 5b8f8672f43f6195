"""CTC speech recognition toolkit: data pipeline, training pieces, decoding and evaluation.

Modules follow the pipeline: `audio` and `text` (inputs), `sources`, `filters`, `data`, `sampler`,
`collate` (data), `model`, `train`, `checkpoint` (training), `inference`, `decoding`, `beam`,
`metrics` (decoding and scoring), `corpus` (the synthetic speech corpus), `onnx_export` and
`onnx_model` (ONNX export and the ONNX Runtime backend; imported on demand, not re-exported here).
"""

from asr.audio import AUDIO_EXTENSIONS, AudioError, audio_duration, load_audio
from asr.collate import CTCCollator
from asr.config import ConfigError, load_config
from asr.constants import PAD, SAMPLE_RATE, UNK, WORD_DELIMITER
from asr.data import DataConfig, PreparedSplit, SpeechDataset, StreamingSpeechDataset, prepare_split
from asr.decoding import greedy_decode
from asr.filters import FilterConfig, apply_filters
from asr.metrics import ErrorRates, error_rates
from asr.sampler import DurationBatchSampler
from asr.sources import SourceConfig, Utterance, load_source
from asr.text import TextNormalizer, build_vocab, load_processor, make_processor, save_processor

__all__ = [
    "AUDIO_EXTENSIONS", "AudioError", "CTCCollator", "ConfigError", "DataConfig", "DurationBatchSampler",
    "ErrorRates", "FilterConfig", "PAD", "PreparedSplit", "SAMPLE_RATE", "SourceConfig", "SpeechDataset",
    "StreamingSpeechDataset", "TextNormalizer", "UNK", "Utterance", "WORD_DELIMITER", "apply_filters",
    "audio_duration", "build_vocab", "error_rates", "greedy_decode", "load_audio", "load_config",
    "load_processor", "load_source", "make_processor", "prepare_split", "save_processor",
]
