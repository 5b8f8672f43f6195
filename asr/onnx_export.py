"""Export a trained CTC model to ONNX for serving, and prove the export computes what PyTorch computes.

    >>> report = export_onnx("runs/tiny/model", "runs/tiny/onnx")      # scripts/export.py
    >>> report.max_abs_diff, report.greedy_identical                    # also in OUT/export_report.json

What lands in the output directory (written to a hidden temporary directory beside it, renamed
into place only once the parity check passed, so it is complete or absent):

    model.onnx            inputs `input_values` float32 [batch, samples] (+ `attention_mask` int64
                          [batch, samples] when the processor uses one), output `logits` float32
                          [batch, frames, vocab]; batch, samples and frames are dynamic axes
    config.json, vocab.json, preprocessor_config.json, tokenizer files, normalizer.json, ...
                          every file of the model directory except its weights
    alphabet.json, language_model/, lm_info.json, decoder.json
                          the KenLM directory (the model's own, or --lm DIR), as scripts/build_lm.py wrote it
    export_report.json    exporter, versions, opset, tolerance, and the measured logit differences

Exporter: the TorchScript-based `torch.onnx.export(..., dynamo=False)`. On torch 2.13 both exporters
turn HF `Wav2Vec2ForCTC` (layer-norm + attention mask, and group-norm without) into graphs with
dynamic batch and time axes whose logits match PyTorch within 2e-5 from 0.025 s to 8 s in batches
of 1 to 4 (measured on 2-layer models; 4e-5 on a randomly initialised wav2vec2-base, and HuBERT and
WavLM export the same way); the TorchScript one takes ~1 s for a tiny model (8 s for base) where the
dynamo exporter takes 10-18 s for a tiny one and needs onnxscript as well. Tracing records Python
control flow for the example input only; the traced example is a padded batch of two (so masking
takes its general path), the branches it records for wav2vec2 in eval mode do not depend on the
input, and the parity check below runs other lengths and batch sizes to catch any that would.
PyTorch has deprecated this exporter: when it is removed, switch `_export_graph` to `dynamo=True`
with `dynamic_shapes` (and pin onnxscript).

Parity: the same real speech (synthesised with espeak-ng/flite, or recordings you pass) is cut into
clips of several lengths, batched at several batch sizes exactly as inference batches them, and run
through both backends: the largest absolute logit difference over the valid frames must stay within
`ExportOptions.tolerance`, and greedy transcripts must be identical.

int8 (`ExportOptions.quantize="int8"`, `scripts/export.py --quantize int8`): the float graph above passes its
parity check first, then ONNX Runtime's dynamic quantization stores the weights of its MatMul/Gemm ops as int8
per output channel (activations are quantized per batch at run time) and model.onnx is that graph. Its logits
no longer match within a float tolerance, so the gate is the number a user reads: greedy WER on labelled speech
(the parity sentences with their texts, or a manifest you pass) may exceed PyTorch's by at most
`max_wer_increase` (0.5 points), else nothing is written; judge on a real dev set (--parity-data): on a few
sentences one changed word is several points. Measured on the shipped base (37 -> 13.5 MB): natural dev, 200
utterances, WER 57.78% both (per-tensor scales); 20 unheard synthetic utterances +0.6 points per channel, +1.8
per tensor. Convolutions stay float: quantizing them too cost 0.3 points more for 3.7 MB.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import shutil
import tempfile
import time
import warnings
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from asr.audio import load_audio
from asr.beam import GreedyCTC
from asr.decoders import ALPHABET_FILE, DECODER_FILE, INFO_FILE, LM_SUBDIR, load_lm_files
from asr.collate import filterbank_inputs
from asr.constants import SAMPLE_RATE
from asr.defaults import DEFAULT_MAX_WER_INCREASE, DEFAULT_OPSET, DEFAULT_TOLERANCE, QUANTIZE_CHOICES
from asr.files import replace_dir
from asr.inference import LoadedModel, load_model, log_probs_batch, prepare_batch
from asr.model import WEIGHT_SUFFIXES
from asr.onnx_model import (
    ATTENTION_MASK,
    INPUT_FEATURES,
    INPUT_VALUES,
    LOGITS,
    ONNX_FILE,
    REPORT_FILE,
    OnnxModel,
    load_onnx_model,
)

logger = logging.getLogger(__name__)

EXPORTER = "torch.onnx.export (TorchScript, dynamo=False)"
MIN_OPSET, MAX_OPSET = 14, 20  # scaled_dot_product_attention needs 14; 20 is the TorchScript exporter's last
PARITY_SECONDS = (0.37, 1.93, 4.41, 11.07, 30.0)  # clip lengths: sub-second to the default transcribe chunk
PARITY_BATCH_SIZES = (1, 2, 4)  # 1: no padding; 2 and 4: shorter clips padded inside longer batches
TRACE_SAMPLES = 16_000  # example input for tracing: a padded batch of two 1 s rows
LM_FILES = (ALPHABET_FILE, LM_SUBDIR, INFO_FILE, DECODER_FILE)  # an LM directory (lm.build, evaluation)
PARITY_SENTENCES = (  # read aloud for the parity check; plain words every voice pronounces
    ("espeak-ng", "en-us+f3", "the quick brown fox jumps over the lazy dog near the river bank"),
    ("flite", "slt", "she sells sea shells by the sea shore every summer morning"),
    ("espeak-ng", "en-gb+m3", "a journey of a thousand miles begins with a single step"),
)
PARITY_GAP_SECONDS = 0.25  # silence between the synthesised sentences
QUANTIZED_OPS = ("MatMul", "Gemm")  # attention and feed-forward weights: most of the bytes and the time


@dataclass(frozen=True)
class ExportOptions:
    """How the graph is written and how hard it is checked."""

    opset: int = DEFAULT_OPSET  # ONNX opset of model.onnx
    tolerance: float = DEFAULT_TOLERANCE  # largest |logit difference| PyTorch vs ONNX Runtime that passes
    parity_seconds: tuple[float, ...] = PARITY_SECONDS  # clip lengths the parity check runs
    batch_sizes: tuple[int, ...] = PARITY_BATCH_SIZES  # batch sizes the parity check runs
    quantize: str | None = None  # "int8": MatMul/Gemm weights as int8, gated on greedy WER (None: float32)
    max_wer_increase: float = DEFAULT_MAX_WER_INCREASE  # the int8 gate: WER above PyTorch's by at most this

    def __post_init__(self) -> None:
        if self.quantize is not None and self.quantize not in QUANTIZE_CHOICES:
            raise ValueError(f"--quantize {self.quantize} is unknown; use {' or '.join(QUANTIZE_CHOICES)}, or leave "
                             "it out for float32")
        if not 0 <= self.max_wer_increase < 1:
            raise ValueError(f"--max-wer-increase {self.max_wer_increase} must be in [0, 1) (a fraction: 0.005 "
                             "is 0.5 points)")
        if not MIN_OPSET <= self.opset <= MAX_OPSET:
            raise ValueError(f"--opset {self.opset} is outside {MIN_OPSET}-{MAX_OPSET}; {DEFAULT_OPSET} works "
                             "with every onnxruntime 1.x")
        if not self.tolerance > 0:
            raise ValueError(f"--tolerance {self.tolerance} must be positive; {DEFAULT_TOLERANCE} suits float32")
        if not self.parity_seconds or min(self.parity_seconds) < 0.05:
            raise ValueError(f"parity clip lengths {self.parity_seconds} need at least one, each >= 0.05 s")
        if not self.batch_sizes or min(self.batch_sizes) < 1:
            raise ValueError(f"parity batch sizes {self.batch_sizes} need at least one, each >= 1")
        object.__setattr__(self, "parity_seconds", tuple(float(s) for s in self.parity_seconds))
        object.__setattr__(self, "batch_sizes", tuple(int(b) for b in self.batch_sizes))


@dataclass(frozen=True)
class ParityCheck:
    """One clip in one batch size: how far ONNX Runtime's logits are from PyTorch's on its valid frames."""

    seconds: float
    samples: int
    frames: int
    batch_size: int
    padded_samples: int  # the batch's length: > samples when this clip was padded
    max_abs_diff: float
    greedy_identical: bool


@dataclass(frozen=True)
class QuantizedCheck:
    """The int8 graph against PyTorch on labelled speech: greedy WER of each, and the gate."""

    quantize: str
    ops: tuple[str, ...]
    references: str  # where the texts came from
    utterances: int
    words: int
    wer_torch: float
    wer_quantized: float
    max_wer_increase: float
    transcripts_changed: int
    max_abs_diff: float  # largest |logit difference| int8 vs PyTorch (informative: not gated)
    float_bytes: int
    passed: bool

    def summary(self) -> str:
        """One line: the two WERs and the gate."""
        return (f"{self.quantize}: greedy WER {100 * self.wer_quantized:.2f}% vs PyTorch {100 * self.wer_torch:.2f}% "
                f"on {self.utterances} utterances ({self.words} words, {self.references}; allowed +"
                f"{100 * self.max_wer_increase:.1f} points), {self.transcripts_changed} transcript(s) changed")


@dataclass(frozen=True)
class ExportReport:
    """What `export_onnx` did and measured; written as export_report.json."""

    model: str  # the source model directory
    output: str
    exporter: str
    opset: int
    inputs: dict[str, list[str | int]]  # graph input -> axis names (or fixed sizes)
    outputs: dict[str, list[str | int]]
    tolerance: float
    max_abs_diff: float
    max_abs_logit: float  # scale of the logits, to read max_abs_diff against
    greedy_identical: bool
    passed: bool
    audio: str  # where the parity audio came from
    checks: tuple[ParityCheck, ...]
    lm: str | None  # where the copied LM came from
    onnx_bytes: int
    onnx_sha256: str
    versions: dict[str, str]
    seconds: dict[str, float] = field(default_factory=dict)  # export, parity, total
    quantized: QuantizedCheck | None = None  # the int8 graph's WER gate (None: a float32 export)

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready dict."""
        return asdict(self)

    def summary(self) -> str:
        """One line: max diff vs tolerance per clip length (over batch sizes)."""
        by_length: dict[float, float] = {}
        for check in self.checks:
            by_length[check.seconds] = max(by_length.get(check.seconds, 0.0), check.max_abs_diff)
        lengths = ", ".join(f"{s:g} s {d:.1e}" for s, d in sorted(by_length.items()))
        line = (f"max |logit diff| {self.max_abs_diff:.2e} (tolerance {self.tolerance:g}; {lengths}), greedy "
                f"transcripts {'identical' if self.greedy_identical else 'DIFFERENT'}")
        return line if self.quantized is None else f"float32 graph: {line}; {self.quantized.summary()}"


class ParityError(RuntimeError):
    """The exported graph does not reproduce PyTorch; `report` holds the measurements."""

    def __init__(self, message: str, report: ExportReport) -> None:
        super().__init__(message)
        self.report = report


# ---------------------------------------------------------------------------------------- export
def export_onnx(model_dir: str | os.PathLike, output: str | os.PathLike, lm_dir: str | os.PathLike | None = None,
                options: ExportOptions | None = None, audios: Sequence[np.ndarray] | None = None,
                labelled: Sequence[tuple[np.ndarray, str]] | None = None) -> ExportReport:
    """Export `model_dir` to ONNX in `output`, with its processor files and LM, checked against PyTorch.

    Args:
        model_dir: A model directory written by training (weights, config, processor, normalizer.json).
        output: The export directory; replaced if it holds an earlier export, refused if it holds anything else.
        lm_dir: A KenLM directory (scripts/build_lm.py) to copy in place of the model directory's own.
        options: Opset and parity settings.
        audios: Real recordings (float32 16 kHz mono) for the parity check; None synthesises speech
            with espeak-ng/flite.
        labelled: (audio, transcript) pairs for the int8 WER gate; None uses the synthesised parity
            sentences and their texts, or with `audios`, PyTorch's transcripts of them as references.

    Returns:
        The report (also written to `output/export_report.json`).

    Raises:
        ValueError: a directory is missing or is not what it should be.
        RuntimeError: no speech synthesiser for the parity audio.
        ParityError: ONNX Runtime's logits or transcripts differ from PyTorch's, or the int8 graph's WER
            exceeds PyTorch's by more than allowed; nothing is written.
    """
    started = time.perf_counter()
    options = options or ExportOptions()
    model_dir, output = Path(model_dir), Path(output)
    _check_paths(model_dir, output, lm_dir)
    loaded = load_model(model_dir, "cpu")
    if getattr(loaded.model.config, "add_adapter", False):
        raise ValueError(f"--model {model_dir} has adapter layers (add_adapter: true), whose frame rate the ONNX "
                         "backend does not model; export a model without them")
    sentences = None
    if audios is None:
        sentences = synthesise_sentences()
        speech = _join([audio for audio, _ in sentences])
        source = "synthesised: " + ", ".join(f"{e} {v}" for e, v, _ in PARITY_SENTENCES)
    else:
        speech, source = _join(audios), f"{len(audios)} recordings given"
    clips = cut_clips(speech, options.parity_seconds)

    target = output.resolve()  # `--output .` has no name of its own to put a temporary one beside
    tmp = target.with_name(f".{target.name}.tmp{os.getpid()}")  # hidden, beside the output: same file system
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    try:
        _copy_model_files(model_dir, tmp)
        if lm_dir is not None:
            _copy_lm(Path(lm_dir), tmp)
        graph_started = time.perf_counter()
        _export_graph(loaded, tmp / ONNX_FILE, options.opset)
        export_seconds = time.perf_counter() - graph_started
        onnx_model = load_onnx_model(tmp)
        parity_started = time.perf_counter()
        checks, max_logit = check_parity(loaded, onnx_model, clips, options.batch_sizes)
        parity_seconds = time.perf_counter() - parity_started
        quantized = None
        if options.quantize and all(c.greedy_identical for c in checks) and max(
                c.max_abs_diff for c in checks) <= options.tolerance:
            if labelled is not None:
                references = f"{len(labelled)} labelled recordings given"
            elif sentences is not None:
                labelled, references = sentences, "the synthesised parity sentences"
            else:
                labelled, references = [(a, None) for a in audios], "PyTorch's transcripts of the recordings given"
            quantized = quantize_graph(loaded, tmp, options, labelled, references)
            onnx_model = load_onnx_model(tmp)
        report = _report(model_dir, output, lm_dir, options, onnx_model, checks, max_logit, source,
                         {"export": export_seconds, "parity": parity_seconds,
                          "total": time.perf_counter() - started}, quantized)
        if not report.passed:
            if quantized is not None and not quantized.passed:
                raise ParityError(f"the int8 export of {model_dir} reads worse than PyTorch, so nothing was written: "
                                  f"{quantized.summary()}; export float32 (leave --quantize out), or judge on "
                                  "your own dev set with --parity-data", report)
            raise ParityError(f"the ONNX export of {model_dir} does not reproduce PyTorch, so nothing was written: "
                              f"{report.summary()}; try another --opset, or a larger --tolerance if transcripts "
                              "agree and the logits differ by little more than it", report)
        (tmp / REPORT_FILE).write_text(json.dumps(report.to_dict(), indent=2) + "\n", encoding="utf-8")
        replace_dir(tmp, target)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    logger.info("wrote %s: %s", output, report.summary())
    return report


def _check_paths(model_dir: Path, output: Path, lm_dir: str | os.PathLike | None) -> None:
    """Every argument check of `export_onnx`, one sentence each."""
    if not model_dir.is_dir():
        raise ValueError(f"--model {model_dir} does not exist; pass the model/ directory of a training run")
    if not (model_dir / "config.json").is_file():
        raise ValueError(f"--model {model_dir} is not a model directory (no config.json); pass the model/ "
                         "directory of a training run")
    if (model_dir / ONNX_FILE).is_file():
        raise ValueError(f"--model {model_dir} is already an ONNX export; pass the PyTorch model directory "
                         "it came from")
    src, out = model_dir.resolve(), output.resolve()
    if out == src or src in out.parents:
        raise ValueError(f"--output {output} is inside --model {model_dir}; choose a directory outside the model")
    if output.exists() and not output.is_dir():
        raise ValueError(f"--output {output} is a file; choose a directory")
    if output.is_dir() and any(output.iterdir()) and not (output / REPORT_FILE).is_file():
        raise ValueError(f"--output {output} exists and is not an earlier export; choose a new directory or "
                         "empty it")
    if lm_dir is not None:
        try:
            load_lm_files(lm_dir)
        except FileNotFoundError as e:
            raise ValueError(f"--lm {lm_dir} holds no KenLM model ({LM_SUBDIR}/ with lm.bin or lm.arpa and "
                             "unigrams.txt); build one with scripts/build_lm.py, or leave --lm out") from e


def _copy_model_files(model_dir: Path, dst: Path) -> None:
    """Everything of the model directory but its weights (and hidden leftovers of interrupted writes)."""

    def ignore(folder: str, names: list[str]) -> set[str]:
        top = Path(folder).resolve() == model_dir.resolve()
        return {n for n in names if n.startswith(".") or (top and _is_weight_file(n))}

    shutil.copytree(model_dir, dst, ignore=ignore, dirs_exist_ok=True)


def _is_weight_file(name: str) -> bool:
    """Whether a top-level file of a model directory holds weights (or their shard index)."""
    return name.endswith(WEIGHT_SUFFIXES) or name.endswith((".safetensors.index.json", ".bin.index.json"))


def _copy_lm(lm_dir: Path, dst: Path) -> None:
    """The LM directory's files (alphabet.json, language_model/, ...) into `dst`, replacing the model's own."""
    for name in LM_FILES:
        target = dst / name
        if target.is_dir():
            shutil.rmtree(target)
        elif target.exists():
            target.unlink()
        source = lm_dir / name
        if source.is_dir():
            shutil.copytree(source, target, ignore=shutil.ignore_patterns(".*"))
        elif source.is_file():
            shutil.copy2(source, target)


class _LogitsOnly(torch.nn.Module):
    """The CTC model as a graph from (input_values[, attention_mask]) to logits alone; with
    `filterbank`, from (input_features, attention_mask)."""

    def __init__(self, model: torch.nn.Module, filterbank: bool = False) -> None:
        super().__init__()
        self.model = model
        self.input_name = INPUT_FEATURES if filterbank else INPUT_VALUES

    def forward(self, inputs: torch.Tensor, attention_mask: torch.Tensor | None = None) -> torch.Tensor:
        return self.model(**{self.input_name: inputs}, attention_mask=attention_mask).logits


def _export_graph(loaded: LoadedModel, path: Path, opset: int) -> None:
    """Write model.onnx with dynamic batch, samples and frames axes."""
    import onnx

    with_mask = loaded.return_attention_mask
    filterbank = loaded.feature_extractor is not None
    names = [INPUT_FEATURES if filterbank else INPUT_VALUES] + ([ATTENTION_MASK] if with_mask else [])
    example = torch.randn(2, TRACE_SAMPLES, generator=torch.Generator().manual_seed(0))
    mask = torch.ones(2, TRACE_SAMPLES, dtype=torch.int64)
    mask[1, TRACE_SAMPLES * 3 // 5:] = 0  # a padded row, so masking code is traced on its general path
    example[1, TRACE_SAMPLES * 3 // 5:] = 0.0
    axes = {name: {0: "batch", 1: "frames_in" if filterbank else "samples"} for name in names}
    axes[LOGITS] = {0: "batch", 1: "frames"}
    if filterbank:  # the graph starts after the feature extractor: trace it on real log-mel features
        feats = filterbank_inputs(loaded.feature_extractor, example.numpy(), mask.numpy())
        example, mask = torch.from_numpy(feats[INPUT_FEATURES]), torch.from_numpy(feats[ATTENTION_MASK])
    # export() restores the wrapper's train/eval mode afterwards, recursively: it must be eval too.
    wrapper = _LogitsOnly(loaded.model, filterbank).eval()
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        torch.onnx.export(wrapper, (example, mask) if with_mask else (example,), str(path), input_names=names,
                          output_names=[LOGITS], dynamic_axes=axes, opset_version=opset, dynamo=False)
    loaded.model.eval()
    for w in caught:  # tracer warnings name branches frozen at the example; the parity check covers them
        logger.debug("exporter: %s:%d: %s", w.filename, w.lineno, w.message)
    onnx.checker.check_model(str(path))


# ---------------------------------------------------------------------------------------- int8
def quantize_graph(reference: LoadedModel, directory: Path, options: ExportOptions,
                   labelled: Sequence[tuple[np.ndarray, str | None]], references: str) -> QuantizedCheck:
    """Replaces directory/model.onnx (float32, checked) by its dynamically quantized graph and measures it.

    Args:
        reference: The PyTorch model.
        directory: The export under construction.
        options: `quantize` and the WER gate.
        labelled: (audio, text) pairs; a None text takes PyTorch's transcript as the reference.
        references: Where the texts came from, for the report.

    Returns:
        The WER gate's measurements; `passed` False leaves the decision (nothing written) to the caller.
    """
    from onnxruntime.quantization import QuantType, quantize_dynamic

    from asr.metrics import error_rates

    graph = directory / ONNX_FILE
    float_bytes = graph.stat().st_size
    staged = directory / f".int8.{ONNX_FILE}"
    quantize_dynamic(str(graph), str(staged), weight_type=QuantType.QInt8, op_types_to_quantize=list(QUANTIZED_OPS),
                     per_channel=True)  # one scale per output channel: 1 word flipped of 163 where per-tensor flipped 3
    os.replace(staged, graph)
    candidate = load_onnx_model(directory)
    greedy = GreedyCTC(reference.vocab)
    audios = [audio for audio, _ in labelled]
    torch_texts, int8_texts, max_diff = [], [], 0.0
    for start in range(0, len(audios), 4):
        batch = audios[start: start + 4]
        torch_texts += [greedy.decode(lp).text for lp in log_probs_batch(reference, batch)]
        int8_texts += [greedy.decode(lp).text for lp in log_probs_batch(candidate, batch)]
        inputs = prepare_batch(reference, batch)
        expected, got = reference.logits(*inputs), candidate.logits(*inputs)
        for row, audio in enumerate(batch):
            frames = reference.frames(len(audio))
            max_diff = max(max_diff, float(np.abs(expected[row, :frames] - got[row, :frames]).max(initial=0.0)))
    texts = [reference.normalizer(text) if text is not None else torch_texts[i] for i, (_, text) in enumerate(labelled)]
    wer_torch, wer_int8 = error_rates(texts, torch_texts).wer, error_rates(texts, int8_texts).wer
    return QuantizedCheck(
        quantize=options.quantize or "", ops=QUANTIZED_OPS, references=references, utterances=len(texts),
        words=sum(len(t.split()) for t in texts), wer_torch=wer_torch, wer_quantized=wer_int8,
        max_wer_increase=options.max_wer_increase,
        transcripts_changed=sum(a != b for a, b in zip(torch_texts, int8_texts)), max_abs_diff=max_diff,
        float_bytes=float_bytes, passed=wer_int8 <= wer_torch + options.max_wer_increase + 1e-12)


# ---------------------------------------------------------------------------------------- parity
def synthesise_sentences() -> list[tuple[np.ndarray, str]]:
    """A few sentences read by espeak-ng and flite voices: (float32 [samples] at 16 kHz, text) each.

    Raises:
        RuntimeError: none of the voices is installed.
    """
    from asr.corpus import Voice, synthesise

    parts, problems = [], []
    with tempfile.TemporaryDirectory(prefix="asr-parity-") as work:
        for i, (engine, name, text) in enumerate(PARITY_SENTENCES):
            wav = Path(work) / f"{i}.wav"
            try:
                synthesise(Voice(engine, name), text, wav)
            except (RuntimeError, ValueError) as e:
                problems.append(str(e))
                continue
            parts.append((load_audio(wav), text))
    if not parts:
        raise RuntimeError(f"no speech synthesiser for the parity audio ({problems[0]}); run `bash "
                           "scripts/setup.sh`, or pass recordings with --audio")
    return parts


def _join(audios: Sequence[np.ndarray]) -> np.ndarray:
    """Recordings one after another with short silences between them."""
    gap = np.zeros(int(PARITY_GAP_SECONDS * SAMPLE_RATE), dtype=np.float32)
    parts = [p for a in audios if len(a) for p in (np.asarray(a, dtype=np.float32), gap)]
    if not parts:
        raise ValueError("the parity recordings are all empty; pass audio files with speech in them")
    return np.concatenate(parts[:-1])


def cut_clips(speech: np.ndarray, seconds: Sequence[float]) -> list[np.ndarray]:
    """Clips of the given lengths from different places of `speech` (repeated when it is too short)."""
    longest = max(round(s * SAMPLE_RATE) for s in seconds)
    repeats = -(-(longest + len(speech)) // len(speech))
    tiled = np.tile(speech, repeats)
    clips = []
    for i, s in enumerate(seconds):
        start = (i * len(speech) // max(1, len(seconds))) % len(speech)
        clips.append(tiled[start: start + round(s * SAMPLE_RATE)].copy())
    return clips


def parity_batches(num_clips: int, batch_size: int) -> list[list[int]]:
    """Clip indices in batches of `batch_size`, wrapping around, so every clip is run at that size."""
    return [[(start + k) % num_clips for k in range(batch_size)] for start in range(0, num_clips, batch_size)]


def check_parity(reference: LoadedModel, candidate: OnnxModel, clips: Sequence[np.ndarray],
                 batch_sizes: Sequence[int]) -> tuple[list[ParityCheck], float]:
    """Logits and greedy transcripts of both backends on the same batches.

    Args:
        reference: The PyTorch model.
        candidate: Its export.
        clips: Real speech, float32 [samples] each.
        batch_sizes: Each clip is run in batches of each size (with other clips as padding partners).

    Returns:
        (one ParityCheck per clip and batch size, the worst of its batches; the largest |logit| PyTorch gave).
        Differences are measured, not judged: `export_onnx` compares them with the tolerance.

    Raises:
        ValueError: the two disagree on frame counts or logit shapes (nothing to compare).
    """
    greedy = GreedyCTC(reference.vocab)
    worst: dict[tuple[int, int], ParityCheck] = {}
    max_logit = 0.0
    for clip in clips:
        if candidate.frames(len(clip)) != reference.frames(len(clip)):
            raise ValueError(f"the exported config's conv layers give {candidate.frames(len(clip))} frames for "
                             f"{len(clip)} samples but {reference.path} gives {reference.frames(len(clip))}; this "
                             "architecture cannot be served by the ONNX backend yet")
    for batch_size in batch_sizes:
        for batch in parity_batches(len(clips), batch_size):
            audios = [clips[i] for i in batch]
            inputs = prepare_batch(reference, audios)
            expected, got = reference.logits(*inputs), candidate.logits(*inputs)
            if got.shape != expected.shape:
                raise ValueError(f"{candidate.path}: ONNX logits have shape {got.shape}, PyTorch {expected.shape}")
            texts_expected = [greedy.decode(lp).text for lp in log_probs_batch(reference, audios)]
            texts_got = [greedy.decode(lp).text for lp in log_probs_batch(candidate, audios)]
            for row, i in enumerate(batch):
                frames = reference.frames(len(clips[i]))
                diff = float(np.abs(expected[row, :frames] - got[row, :frames]).max(initial=0.0))
                max_logit = max(max_logit, float(np.abs(expected[row, :frames]).max(initial=0.0)))
                check = ParityCheck(round(len(clips[i]) / SAMPLE_RATE, 4), len(clips[i]), frames, batch_size,
                                    inputs[0].shape[1], diff, texts_expected[row] == texts_got[row])
                key = (i, batch_size)
                if key not in worst or (check.max_abs_diff, not check.greedy_identical) > (
                        worst[key].max_abs_diff, not worst[key].greedy_identical):
                    worst[key] = check
    return [worst[key] for key in sorted(worst, key=lambda k: (k[1], k[0]))], max_logit


def _report(model_dir: Path, output: Path, lm_dir: str | os.PathLike | None, options: ExportOptions,
            onnx_model: OnnxModel, checks: list[ParityCheck], max_logit: float, audio: str,
            seconds: dict[str, float], quantized: QuantizedCheck | None = None) -> ExportReport:
    """The ExportReport of a finished export."""
    import onnx
    import onnxruntime
    import transformers

    path = onnx_model.path / ONNX_FILE
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(1 << 20):
            digest.update(chunk)
    session = onnx_model.session
    max_diff = max(c.max_abs_diff for c in checks)
    identical = all(c.greedy_identical for c in checks)
    lm = str(Path(lm_dir).resolve()) if lm_dir is not None else (
        str(model_dir.resolve()) if (model_dir / LM_SUBDIR).is_dir() else None)
    return ExportReport(
        model=str(model_dir.resolve()), output=str(output.resolve()), exporter=EXPORTER, opset=options.opset,
        inputs={i.name: [d if isinstance(d, str) else int(d) for d in i.shape] for i in session.get_inputs()},
        outputs={o.name: [d if isinstance(d, str) else int(d) for d in o.shape] for o in session.get_outputs()},
        tolerance=options.tolerance, max_abs_diff=max_diff, max_abs_logit=max_logit, greedy_identical=identical,
        passed=max_diff <= options.tolerance and identical and (quantized is None or quantized.passed), audio=audio,
        checks=tuple(checks), lm=lm,
        onnx_bytes=path.stat().st_size, onnx_sha256=digest.hexdigest(),
        versions={"torch": torch.__version__, "transformers": transformers.__version__, "onnx": onnx.__version__,
                  "onnxruntime": onnxruntime.__version__},
        seconds={k: round(v, 3) for k, v in seconds.items()}, quantized=quantized)

