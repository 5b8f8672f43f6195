"""Directory transcription speed: this project's transcriber vs `transformers.pipeline`, same files and model.

    # synthesised speech (--num-files utterances) and the shipped base checkpoint
    $ OMP_NUM_THREADS=2 .venv/bin/python bench/transcribe.py --model assets/base_model --output runs/bench/
    # your audio and model
    $ .venv/bin/python bench/transcribe.py recordings/ --model runs/x/model --repeats 3
    # plus ours on ONNX Runtime, float32 and int8 (exported and parity-checked first, as scripts/export.py does)
    $ OMP_NUM_THREADS=2 .venv/bin/python bench/transcribe.py --model assets/base_model --onnx --output runs/bench/
    # smoke test of the machinery only: a tiny untrained model (its transcripts are noise)
    $ .venv/bin/python bench/transcribe.py --random-tiny-model --num-files 16

Both sides run greedy CTC in this process with the same torch threads, on the same file list,
after loading the model (not timed) and a warm-up on two files:

- baseline: `pipeline("automatic-speech-recognition", model=DIR, batch_size=8)(paths)`: files read
  by FFmpeg, batches of 8 in the given (sorted path) order, each padded to its longest file;
- the same pipeline on audio read into memory beforehand (not timed): how much of its time is reading;
- ours: what `scripts/transcribe.py` does on one process (asr/transcribe.py): header probing,
  batches packed by duration (`--max-batch-seconds` of padded audio, length-sorted), soundfile
  reading, greedy decoding with word times, and each file's line appended and fsync'd to
  transcripts.jsonl in a temporary output directory.

Model directories written by training (and assets/base_model) are standard Hugging Face
directories: the pipeline loads them as they are (config, weights, tokenizer, feature extractor);
it needs FFmpeg on PATH to read file paths. Transcripts are compared per file after removing the
pipeline's "[UNK]" marks (ours drops unknown tokens) and collapsing spaces. The pipeline (without
chunking) takes the argmax of every output frame of a padded batch, so a short file in a batch
also gets whatever the model says over the padding after it; ours cuts each file's log-probs to
its own frames. The report counts the files where that is the only difference (the pipeline's text
is ours plus more). Models without an attention mask (group-norm feature encoder) also see the
padding inside the model, so any batching changes their outputs a little. The padding column is
the share of padded samples in all forward passes.
"""

from __future__ import annotations

import sys

if __package__ in (None, ""):  # run by path (python bench/transcribe.py): the repository root, not bench/, goes first
    sys.path[0] = str(__import__("pathlib").Path(__file__).resolve().parents[1])

import argparse
import logging
import shutil
import statistics
import tempfile
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from bench.common import machine_info, markdown_table, ratio, write_report
from asr.constants import UNK
from asr.outputs import OutputDir, ResultSink
from asr.packing import padding_fraction
from asr.transcribe import (
    AudioItem,
    Failure,
    Transcriber,
    TranscribeOptions,
    find_audio,
    plan_work,
    probe_durations,
)

logger = logging.getLogger("bench_transcribe")

ROOT = Path(__file__).resolve().parents[1]
DEFAULT_MODEL = ROOT / "assets" / "base_model"
PIPELINE_BATCH_SIZE = 8
WARMUP_FILES = 2
OURS = 2  # sides: the pipeline on paths, the pipeline on preloaded audio, ours on PyTorch, [ours on ONNX ...]


@dataclass(frozen=True)
class SideResult:
    """One side's transcripts (by file path) and timings."""

    name: str
    runs: tuple[float, ...]  # seconds of each timed run
    texts: dict[str, str]
    padding: float  # padded samples / all samples fed to the model
    settings: str

    @property
    def seconds(self) -> float:
        return statistics.median(self.runs)

# ------------------------------------------------------------------------------------------- inputs
def synthesise_files(out: Path, num_files: int, seed: int = 0) -> Path:
    """`num_files` utterances of fortunes sentences read by the synthetic voices; returns the audio directory."""
    from asr.corpus import CorpusOptions, make_corpus

    make_corpus(CorpusOptions(train=0, dev=0, test=num_files, seed=seed), out, workers=2, progress=False)
    return out / "audio"


def tiny_random_model(out: Path, seed: int = 0) -> Path:
    """An untrained 2-layer wav2vec2 CTC directory (layer-norm encoder, attention mask), as training writes it."""
    import torch

    from asr.corpus import load_sentences
    from asr.model import ModelConfig, build_model
    from asr.text import TextNormalizer, build_vocab, make_processor, save_processor

    vocab = build_vocab(load_sentences())
    arch = dict(model_type="wav2vec2", hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
                intermediate_size=64, conv_dim=[32] * 7, num_conv_pos_embeddings=16,
                num_conv_pos_embedding_groups=4, feat_extract_norm="layer", do_stable_layer_norm=True)
    torch.manual_seed(seed)
    model = build_model(ModelConfig(architecture=arch), vocab, pad_token_id=vocab["[PAD]"])
    model.save_pretrained(out)
    save_processor(make_processor(vocab, return_attention_mask=True), TextNormalizer(), out)
    return out

# -------------------------------------------------------------------------------------------- sides
def clean_pipeline_text(text: str) -> str:
    """The pipeline's transcript as ours writes it: no [UNK] marks, single spaces."""
    return " ".join(text.replace(UNK, "").split())


def run_ours(loaded, items: Sequence[AudioItem], options: TranscribeOptions, repeats: int, work: Path,
             name: str = "ours (asr.transcribe, greedy)") -> SideResult:
    """scripts/transcribe.py's pipeline on one process with `loaded` (a PyTorch or ONNX model), outputs to a fresh
    directory each run."""
    from asr.beam import GreedyCTC

    transcriber = Transcriber(loaded, GreedyCTC(loaded.vocab), options)
    texts: dict[str, str] = {}
    batches: list[list[float]] = []

    def transcribe(files: Sequence[AudioItem], out_dir: Path) -> None:
        out = OutputDir(out_dir)
        out.prepare()
        sink = ResultSink(out, {}, options.formats)
        probed = probe_durations(files)
        readable = [(item, d) for item, d in zip(files, probed) if not isinstance(d, Failure)]
        units = plan_work([d for _, d in readable], options)
        batches[:] = [[readable[i][1] for i in unit.items] for unit in units if not unit.chunked]
        for unit in units:
            for item, result in transcriber.transcribe([readable[i][0] for i in unit.items], unit.chunked):
                sink.write(item, result)
                if not isinstance(result, Failure):
                    texts[str(item.file)] = result.text
        sink.close()

    transcribe(items[:WARMUP_FILES], work / "warmup")
    runs = []
    for run in range(repeats):
        started = time.perf_counter()
        transcribe(items, work / f"run{run}")
        runs.append(time.perf_counter() - started)
    settings = f"batches of <= {options.max_batch_seconds:g} s padded audio, length-sorted"
    return SideResult(name, tuple(runs), dict(texts), padding_fraction(batches), settings)


def onnx_exports(model_dir: Path, work: Path) -> dict[str, Path]:
    """The model exported by scripts/export.py's code into `work`: float32 and int8 (each parity-gated), by name."""
    from asr.onnx_export import ExportOptions, export_onnx

    exports = {}
    for quantize in (None, "int8"):
        out = work / f"onnx_{quantize or 'fp32'}"
        export_onnx(model_dir, out, options=ExportOptions(quantize=quantize))
        exports[f"ours, ONNX Runtime {quantize or 'float32'}"] = out
    return exports


def run_pipeline(model_dir: Path, items: Sequence[AudioItem], durations: Sequence[float], batch_size: int,
                 repeats: int) -> tuple[SideResult, SideResult]:
    """transformers' ASR pipeline, `batch_size` files per forward pass: on the file paths (the baseline),
    and on audio read into memory beforehand (where its time goes besides reading)."""
    from transformers import AutoFeatureExtractor, pipeline

    from asr.audio import load_audio
    from asr.constants import SAMPLE_RATE

    # The feature extractor given as an object: from a path, the pipeline would also load a language_model/ it
    # finds beside the model (scripts/build_lm.py puts one there) and beam-search, where ours is greedy.
    pipe = pipeline("automatic-speech-recognition", model=str(model_dir), batch_size=batch_size, device="cpu",
                    feature_extractor=AutoFeatureExtractor.from_pretrained(model_dir))
    if pipe.type != "ctc":
        logger.warning("the pipeline decodes %s with %r, not greedy CTC", model_dir, pipe.type)
    paths = [str(item.file) for item in items]
    arrays = [{"raw": load_audio(item.file), "sampling_rate": SAMPLE_RATE} for item in items]
    batches = [list(durations[i : i + batch_size]) for i in range(0, len(durations), batch_size)]
    settings = f"batch_size={batch_size}, files in path order"
    out = []
    for name, inputs, how in (("transformers pipeline (baseline)", paths, "FFmpeg reading"),
                              ("  same, audio preloaded (reading not timed)", arrays, "numpy input")):
        pipe([dict(x) if isinstance(x, dict) else x for x in inputs[:WARMUP_FILES]])
        runs, outputs = [], []
        for _ in range(repeats):
            fresh = [dict(x) if isinstance(x, dict) else x for x in inputs]  # the pipeline pops keys of dicts
            started = time.perf_counter()
            outputs = pipe(fresh)
            runs.append(time.perf_counter() - started)
        texts = {str(item.file): clean_pipeline_text(o["text"]) for item, o in zip(items, outputs)}
        out.append(SideResult(name, tuple(runs), texts, padding_fraction(batches), f"{settings}, {how}"))
    return out[0], out[1]


def compare(base: SideResult, ours: SideResult) -> list[str]:
    """Paths whose transcripts differ (or that only one side transcribed)."""
    return sorted(p for p in set(base.texts) | set(ours.texts) if base.texts.get(p) != ours.texts.get(p))


def only_trailing(base: SideResult, ours: SideResult, paths: Sequence[str]) -> list[str]:
    """Of `paths`, those where the pipeline's text is ours plus more at the end (its batch padding decoded)."""
    return [p for p in paths if p in base.texts and p in ours.texts and base.texts[p].startswith(ours.texts[p])]


def render(sides: Sequence[SideResult], differing: Sequence[str], files: int, audio_seconds: float,
           model: str, attention_mask: bool, info: dict) -> str:
    """The table and what it measured."""
    base, ours = sides[0], sides[OURS]
    trailing = only_trailing(base, ours, differing)
    rows = [[s.name, files / s.seconds, s.seconds / audio_seconds, f"{ratio(base.seconds, s.seconds):.2f}x",
             round(100 * s.padding, 2), len(compare(s, ours)), s.settings] for s in sides]
    mask = "takes an attention mask" if attention_mask else "takes NO attention mask (batch padding changes outputs)"
    return (f"## Directory transcription: {files} files, {audio_seconds / 60:.1f} min of audio\n\n"
            f"Model `{model}` ({mask}); greedy CTC; median of {len(base.runs)} timed run(s) after a "
            f"{WARMUP_FILES}-file warm-up; {info['cpus']} CPUs, torch threads {info['torch_threads']}, "
            f"load average {info['load_average_1min']} at the start.\n\n"
            + markdown_table(["side", "files/s", "RTF", "vs baseline", "padding %", "texts != ours (PyTorch)", "settings"],
                             rows)
            + f"\nTranscripts differing between the baseline and ours: {len(differing)} of {files} files"
            + (f"; in {len(trailing)} of them the pipeline only adds text at the end (it decodes every frame of "
               "the padded batch, ours cuts each file's log-probs to its own frames)" if trailing else "") + ".\n")

# ---------------------------------------------------------------------------------------------- main
def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    """Command-line arguments."""
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("inputs", nargs="*", type=Path, help="audio directories (default: synthesise --num-files)")
    p.add_argument("--model", type=Path, default=None, help=f"model directory (default: {DEFAULT_MODEL})")
    p.add_argument("--random-tiny-model", action="store_true",
                   help="use an untrained tiny model instead (exercises the machinery; transcripts are noise)")
    p.add_argument("--num-files", type=int, default=64, help="synthetic files when no input is given")
    p.add_argument("--limit", type=int, default=0, help="use at most this many files (0: all)")
    p.add_argument("--batch-size", type=int, default=PIPELINE_BATCH_SIZE, help="the pipeline's batch size")
    p.add_argument("--max-batch-seconds", type=float, default=TranscribeOptions.max_batch_seconds,
                   help="ours: padded audio seconds per forward pass")
    p.add_argument("--repeats", type=int, default=1, help="timed runs per side; the median counts")
    p.add_argument("--onnx", action="store_true", help="also ours on ONNX Runtime: the model exported (float32, "
                   "and int8 by dynamic quantization, each through scripts/export.py's parity gate) into a temporary "
                   "directory first")
    p.add_argument("--bf16", action="store_true", help="also ours with the acoustic model under bf16 autocast "
                   "(transcribe.py --precision bf16; fast only where the CPU computes bfloat16: AMX, AVX512-BF16)")
    p.add_argument("--output", type=Path, default=None, help="also write transcribe.md and transcribe.json here")
    args = p.parse_args(argv)
    if args.model is not None and args.random_tiny_model:
        p.error("give --model or --random-tiny-model, not both")
    return args


def benchmark(model_dir: Path, items: Sequence[AudioItem], batch_size: int, max_batch_seconds: float,
              repeats: int, work: Path, onnx: bool = False,
              bf16: bool = False) -> tuple[list[SideResult], list[str], list[float]]:
    """(baseline, pipeline on preloaded audio, ours [, ours in bf16] [, ours on ONNX float32 and int8]; paths whose
    transcripts differ between the baseline and ours on PyTorch; durations) on `items`."""
    from asr.inference import load_model
    from asr.onnx_model import load_onnx_model

    durations = [d for d in probe_durations(items) if not isinstance(d, Failure)]
    if len(durations) != len(items):
        raise ValueError(f"{len(items) - len(durations)} of {len(items)} files are unreadable; benchmark on "
                         "readable audio only.")
    options = TranscribeOptions(max_batch_seconds=max_batch_seconds)
    base, preloaded = run_pipeline(model_dir, items, durations, batch_size, repeats)
    ours = run_ours(load_model(model_dir), items, options, repeats, work / "torch")
    sides = [base, preloaded, ours]
    if bf16:
        sides.append(run_ours(load_model(model_dir, precision="bf16"), items, options, repeats, work / "bf16",
                              "ours, bf16 autocast (--precision bf16)"))
    for name, path in (onnx_exports(model_dir, work) if onnx else {}).items():
        sides.append(run_ours(load_onnx_model(path), items, options, repeats, work / path.name, name))
    return sides, compare(base, ours), durations


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s", datefmt="%H:%M:%S")
    import transformers

    transformers.utils.logging.disable_progress_bar()
    info = machine_info()
    with tempfile.TemporaryDirectory(prefix="bench-transcribe-") as tmp:
        work = Path(tmp)
        try:
            if shutil.which("ffmpeg") is None:
                raise ValueError("the transformers pipeline reads file paths with FFmpeg, which is not on PATH; "
                                 "run `bash scripts/setup.sh`.")
            if args.random_tiny_model:
                model_dir = tiny_random_model(work / "tiny_model")
            else:
                model_dir = args.model or DEFAULT_MODEL
                if not (model_dir / "config.json").is_file():
                    raise ValueError(f"{model_dir} is not a model directory; pass --model DIR (a training run's "
                                     "model/), or --random-tiny-model for a smoke test.")
            inputs = args.inputs or [synthesise_files(work / "corpus", args.num_files)]
            items = find_audio(inputs)[: args.limit or None]
            if not items:
                raise ValueError(f"no audio files in {[str(p) for p in inputs]}; check the paths.")
            sides, differing, durations = benchmark(model_dir, items, args.batch_size, args.max_batch_seconds,
                                                    args.repeats, work, args.onnx, args.bf16)
        except ValueError as e:
            logger.error("%s", e)
            return 2
        from asr.inference import load_model

        attention_mask = load_model(model_dir).return_attention_mask
    for path in differing[:5]:
        logger.info("differs: %s\n  pipeline: %s\n  ours:     %s", path, sides[0].texts.get(path),
                    sides[OURS].texts.get(path))
    model_name = "random tiny model" if args.random_tiny_model else str(model_dir)
    markdown = render(sides, differing, len(items), sum(durations), model_name, attention_mask, info)
    print("\n" + markdown)
    if args.output is not None:
        data = {"files": len(items), "audio_seconds": sum(durations), "model": model_name,
                "attention_mask": attention_mask, "machine": info, "command": " ".join(sys.argv),
                "differing_files": differing,
                "sides": [{"side": s.name, "runs_seconds": list(s.runs), "seconds": s.seconds,
                           "files_per_second": len(items) / s.seconds, "padding": s.padding, "settings": s.settings,
                           "speedup": ratio(sides[0].seconds, s.seconds)} for s in sides]}
        write_report(args.output, "transcribe", markdown, data)
    return 0

if __name__ == "__main__":
    sys.exit(main())
