"""The defaults and choices the scripts show in `--help`, one definition each, in a module that imports nothing
heavy: a script parses its arguments with these before it imports torch or numpy, so `--help` is instant.

The library modules that use a value import it from here (asr.evaluation, asr.transcribe, asr.align, ...).
"""

import os
from pathlib import Path


def available_cores() -> int:
    """CPU cores this process may run on (its affinity mask, which a container or taskset narrows)."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not on Linux
        return os.cpu_count() or 1


# ---------------------------------------------------------------------------------------- decoding
DECODERS = ("greedy", "beam", "flashlight")  # table order; "beam" is pyctcdecode
BEAM_DECODERS = ("beam", "flashlight")  # the ones that need a KenLM directory

# ------------------------------------------------------------- the acoustic model (eval, transcribe, align)
# The acoustic model's arithmetic (asr.hardware.inference_dtype): float32, or autocast to bf16 / fp16 (GPU only);
# auto is bf16 where the device computes it natively (Ampere+ GPUs; CPUs with AMX or AVX512-BF16), fp16 on older
# GPUs, else float32. Weights stay float32 and the decoders read float32 log-probs either way.
INFERENCE_PRECISIONS = ("float32", "bf16", "fp16", "auto")
DEFAULT_MAX_BATCH_SECONDS = 60.0  # padded audio per forward pass; a 2.4 M-param model uses ~1 GB at this size
CHUNK_SECONDS = 30.0  # longer recordings are cut into chunks this long (memory bound); 0 never chunks
OVERLAP_SECONDS = 5.0  # audio shared by neighbouring chunks; half of it is context on each side
# Where long files are cut: "grid" is the fixed grid of overlapping chunks, the others cut at pauses.
SEGMENTERS = ("energy", "webrtc", "silero")  # asr.segmenters: the pause rule and two voice activity detectors
GRID = "grid"
CUTS = (GRID, *SEGMENTERS)
# Measured on 4-minute recordings with natural pauses, clean, in pink noise (10 dB) and in babble (15 dB)
# (README "Where long files are cut"): pieces cut at pauses read better than the grid at every length in every
# condition (at 30 s, Silero's CER 0.327/0.367/0.532 vs the grid's 0.344/0.376/0.537); of the detectors, Silero
# had the lowest mean CER at 5 s, and it and WebRTC put ~90% of their cuts in pauses in pink noise, energy 73%.
DEFAULT_SEGMENTER = "silero"

# ---------------------------------------------------------------------------------------- eval.py
DEFAULT_CACHE_DIR = Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "asr-toolkit" / "logits"
# Mask-less models only: an utterance shares a batch only with ones at most 2% longer. On the test model
# (32 utterances of 1-4 s) 60 s batches alone moved greedy WER from 0.084 (one by one) to 0.080, 2-process
# shards to 0.129; with this bound it matched one by one in 21 passes instead of 32.
DEFAULT_MAX_PADDING = 0.02
EVAL_MIN_DURATION = 0.1  # s; shorter clips hold no word and (< 25 ms) are shorter than the conv receptive field
EVAL_MAX_DURATION = 60.0  # s; attention memory grows with the square of the length: split longer recordings
DEFAULT_PADDING_SAMPLE = 16  # utterances run one by one to measure the effect of padding
REFERENCES = ("pocketsphinx",)  # reference recognisers known to `asr.reference.transcribe_reference`
BOOTSTRAP_RESAMPLES = 1000  # an interval end then varies by ~0.05-0.15 WER points (sd) between seeds; 0 skips
BOOTSTRAP_SEED = 0  # fixed, so a rerun on the same transcripts prints the same intervals
DEFAULT_NBEST = 10  # hypotheses per utterance for the oracle WER
TUNE_ALPHAS = (0.25, 0.5, 0.75, 1.0, 1.5)  # LM weight; 0.5 is pyctcdecode's default
TUNE_BETAS = (0.0, 1.0, 2.0, 3.0)  # per-word bonus; higher counters the LM's bias to few words
TUNE_BEAM_WIDTHS: tuple[int, ...] = ()  # () keeps the decoder's current width; more widths multiply the cost

# ---------------------------------------------------------------------------------------- transcribe.py
BACKENDS = ("torch", "onnx")  # asr.inference.LoadedModel, asr.onnx_model.OnnxModel
SIDE_FORMATS = ("txt", "srt", "vtt", "ctm", "tsv")  # one file per audio file (asr.outputs.render)
RUN_FORMATS = ("nemo",)  # one file per run: nemo_manifest.jsonl (asr.outputs.write_nemo_manifest)
FORMATS = SIDE_FORMATS + RUN_FORMATS
NEMO_MANIFEST_FILE = "nemo_manifest.jsonl"  # NeMo's manifest keys: transcribe_speech.py writes the same

# ---------------------------------------------------------------------------------------- align.py
ALIGN_SPLITS = ("lines", "sentences")  # one utterance per non-empty line, or free text cut after . ! ? and blank lines
# The score is a mean log-prob per frame (ctc-segmentation's): -3 keeps segments whose worst 0.6 s the model
# reads at e^-3 = 5% on average or better. Measured with assets/base_model on 40 Piper utterances joined
# (bench/align.py): every correct line scored -0.17 to -1.6, a line of wrong text -6.3.
DEFAULT_MIN_SCORE = -3.0
ALIGN_WINDOW_SECONDS = 20.0  # ctc-segmentation's search window (doubled on failure); memory grows with it

# ---------------------------------------------------------------------------------------- export.py
DEFAULT_OPSET = 17  # LayerNormalization is one op from 17 on; onnxruntime 1.x runs 14-20
DEFAULT_TOLERANCE = 1e-3  # max |logit difference|; measured <= 2e-5 (2-layer) and <= 4e-5 (random wav2vec2-base)
QUANTIZE_CHOICES = ("int8",)
DEFAULT_MAX_WER_INCREASE = 0.005  # int8 greedy WER may exceed PyTorch's by 0.5 points on the labelled parity set
