"""Transcribe directories of audio with a trained CTC model: greedy or beam search + KenLM, resumable, multi-process.

    $ .venv/bin/python scripts/transcribe.py recordings/ --model runs/tiny/model --output out/
    $ .venv/bin/python scripts/transcribe.py a/ b/ --manifest more.jsonl --model runs/tiny/model \\
          --lm runs/tiny/model --decoder beam --formats txt,srt,vtt --output out/
    $ accelerate launch --config_file configs/accelerate/cpu_2proc.yaml scripts/transcribe.py recordings/ \\
          --model runs/tiny/model --output out/        # files sharded over 2 processes by duration
    $ .venv/bin/python scripts/transcribe.py recordings/ --backend onnx --model runs/tiny/onnx --output out/
          # ONNX Runtime on CPU, on a directory written by scripts/export.py (same batching, chunks, decoders)
    $ .venv/bin/python scripts/transcribe.py recordings/ --model runs/tiny/model --precision auto --output out/
          # the acoustic model in bf16 where the CPU (AMX, AVX512-BF16) or GPU computes it natively
    $ .venv/bin/python scripts/transcribe.py recordings/ --model runs/tiny/model --output - | jq -r .text
          # transcripts.jsonl's lines on stdout (in input order, when the run ends); logs on stderr
    $ .venv/bin/python scripts/transcribe.py calls/ --model runs/tiny/model --decoder flashlight \\
          --hotwords kowalski "new york" --output out/      # boost words the LM lacks or underrates

Inputs: directories (searched recursively for wav/flac/ogg/opus/mp3/aiff/..., plus m4a/aac/webm/mp4/...
through FFmpeg when it is installed; hidden names skipped) and --manifest files (JSONL/CSV with an
`audio_filepath`/`audio`/`path` column, or one path a line). Any sample rate or channel count.

Outputs in --output: `transcripts.jsonl` (one line per file: path, input, duration, text, words
[{word, start, end, confidence}] in seconds, decoder, model, lm, confidence: "calibrated" when the model
directory holds this decoder's calibration from `eval.py --calibrate`, the probability the word is
right; else "raw", the frames' geometric-mean top posterior), `errors.jsonl` (files that could not be read or
are too short for one output frame of the model, 25 ms for wav2vec2, with the reason), `summary.json`,
and with --formats a mirror of the input tree holding per-file .txt, .srt/.vtt (subtitle cues of at most
2 lines of 42 characters), .ctm (NIST CTM: `<file-id> 1 <start> <duration> <word>` a line) and .tsv
(`start<TAB>end<TAB>text` in ms, a cue a line, as Whisper writes it), next to the audio instead with
--in-place; `nemo` in --formats adds `nemo_manifest.jsonl`, a NeMo manifest (`audio_filepath`,
`duration`, `pred_text`) of the run. Nothing is written into an input tree without --in-place. One run
at a time per --output: a second run on a directory in use is refused, naming the first one's pid.
`--output -` prints transcripts.jsonl's lines to stdout instead (logs and progress go to stderr; failed
files are logged; per-file formats then need --in-place); nothing is kept, so a re-run starts over.

The progress bar counts audio seconds, not files, and moves within a long file as its chunks are run,
so its rate is audio seconds per second (1 / RTF) and its ETA holds for one long file as for many.

Files longer than --chunk-seconds are streamed in overlapping chunks (memory stays bounded) and their
stitched CTC output is decoded once. The pieces end at the pauses --segmenter finds (silero by default;
webrtc, energy), without overlap, or with --segmenter grid lie on a fixed grid of chunks overlapping by
--overlap-seconds (bench/chunking.py compares; models trained on short utterances read short pieces best:
--chunk-seconds 5). Digital silence (a file or chunk whose samples all
lie within -80 dBFS of their mean) is not given to the model, which would read garbage into it: its
transcript is "" (asr.transcribe.SILENCE_PEAK_DBFS). Re-running
the same command skips finished files; an interrupted run loses only the files in flight.

Exit code: 0 every file transcribed; 1 a crash (a traceback: a bug or the environment, e.g. a full disk;
rerun to continue); 2 bad arguments or inputs, or --output in use by another run (one line, nothing
transcribed); 3 the run completed but some files failed (errors.jsonl lists them with the reason).
"""

from __future__ import annotations

if __name__ == "__main__":  # first, before torch: re-run this command under jemalloc (see asr/allocator.py)
    from asr.allocator import relaunch_under_jemalloc

    ALLOCATOR_NOTE = relaunch_under_jemalloc()

import argparse
import datetime
import logging
import os
import shutil
import sys
import tempfile
from pathlib import Path

from asr.cli import ArgumentParser, add_common_flags, exit_with, setup_logging
from asr.constants import EXIT_OK, EXIT_SOME_FAILED, EXIT_USAGE
from asr.defaults import (BACKENDS, CHUNK_SECONDS, CUTS, DECODERS, DEFAULT_MAX_BATCH_SECONDS, DEFAULT_SEGMENTER,
                          FORMATS, INFERENCE_PRECISIONS, NEMO_MANIFEST_FILE, OVERLAP_SECONDS, SIDE_FORMATS)

# The library (torch, numpy) is imported in the functions below, after parsing, so that --help is instant.
logger = logging.getLogger("transcribe")

# A rank that finishes early waits for the others at a barrier; long shards must not time it out.
BARRIER_TIMEOUT = datetime.timedelta(hours=48)
STDOUT = Path("-")  # --output - : transcripts to stdout


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    """Command-line arguments."""
    p = ArgumentParser(description=__doc__)
    p.add_argument("inputs", nargs="*", type=Path, help="directories (or files) of audio")
    p.add_argument("--manifest", type=Path, action="append", default=[], help="JSONL/CSV/plain list of audio paths")
    p.add_argument("--model", type=Path, required=True, help="model directory (the model/ of a training run; "
                   "with --backend onnx, a directory written by scripts/export.py)")
    p.add_argument("--backend", choices=BACKENDS, default="torch",
                   help="what runs the acoustic model: PyTorch, or ONNX Runtime (CPU) on an exported model")
    p.add_argument("--precision", choices=INFERENCE_PRECISIONS, default="float32",
                   help="the acoustic model's arithmetic (--backend torch): bf16/fp16 autocast (fp16 on GPUs only); "
                   "auto: bf16 where the device computes it natively (AMX/AVX512-BF16 CPUs, Ampere+ GPUs), fp16 on "
                   "older GPUs, else float32")
    p.add_argument("--lm", type=Path, default=None, help="LM directory from scripts/build_lm.py (default: the "
                   "model directory when it holds language_model/)")
    p.add_argument("--decoder", choices=DECODERS, default=None, help="default: beam with --lm, else greedy")
    p.add_argument("--hotwords", nargs="+", default=None, metavar="WORD", help="words or phrases to boost, written "
                   "as the model's transcripts are (lower case); may be outside the LM; flashlight boosts a phrase "
                   "word by word; give them after the inputs")
    p.add_argument("--hotword-weight", type=float, default=None, help="score added per hotword in a transcript "
                   "(default 10; pyctcdecode may need ~20 for a word outside the LM)")
    p.add_argument("--output", type=Path, required=True, help="output directory, or - for transcripts (JSONL) "
                   "on stdout")
    p.add_argument("--formats", default="", help=f"comma list of extra outputs: {','.join(FORMATS)} (nemo: one "
                   f"{NEMO_MANIFEST_FILE} for the run; the others one file per audio file)")
    p.add_argument("--chunk-seconds", type=float, default=CHUNK_SECONDS,
                   help="chunk files longer than this (0: never chunk)")
    p.add_argument("--overlap-seconds", type=float, default=OVERLAP_SECONDS,
                   help="overlap of neighbouring chunks")
    p.add_argument("--segmenter", choices=CUTS, default=None, help="cut long files at the pauses this finds (silero, "
                   "webrtc: voice activity detectors; energy: the quietest stretches) into pieces of at most "
                   "--chunk-seconds, without overlap; grid: overlapping chunks on a fixed grid (--overlap-seconds). "
                   f"Default: {DEFAULT_SEGMENTER}")
    p.add_argument("--cut-at-pauses", action="store_true", help="deprecated: use --segmenter energy")
    p.add_argument("--max-batch-seconds", type=float, default=DEFAULT_MAX_BATCH_SECONDS,
                   help="padded audio seconds per forward pass")
    p.add_argument("--in-place", action="store_true", help="write the per-file formats next to the audio files")
    p.add_argument("--mark-below", type=float, default=None, metavar="P", help="in txt/srt/vtt/tsv, write words whose "
                   "confidence is below P (0-1; calibrated with confidence.json) as word(?)")
    add_common_flags(p)
    args = p.parse_args(argv)
    if not args.inputs and not args.manifest:
        p.error("give at least one INPUT_DIR or --manifest FILE")
    return args


def segmenter_from(args: argparse.Namespace) -> str:
    """--segmenter, or energy for the deprecated --cut-at-pauses (warned), or the default."""
    if args.cut_at_pauses:
        if args.segmenter not in (None, "energy"):
            raise ValueError(f"--cut-at-pauses means --segmenter energy, but --segmenter {args.segmenter} was given "
                             "too; drop --cut-at-pauses.")
        logger.warning("--cut-at-pauses is deprecated; use --segmenter energy (what it now means)")
        return "energy"
    return args.segmenter or DEFAULT_SEGMENTER


def options_from(args: argparse.Namespace) -> tuple:
    """Checked options (TranscribeOptions) and the LM directory (None for greedy decoding)."""
    from asr.decoders import LM_SUBDIR
    from asr.transcribe import TranscribeOptions

    lm = args.lm
    if lm is None and args.decoder in ("beam", "flashlight") and (args.model / LM_SUBDIR).is_dir():
        lm = args.model
    decoder = args.decoder or ("beam" if lm is not None else "greedy")
    if decoder != "greedy" and lm is None:
        raise ValueError(f"--decoder {decoder} needs a language model; pass --lm DIR (built by scripts/build_lm.py).")
    if decoder == "greedy" and lm is not None:
        raise ValueError("--lm is ignored by --decoder greedy; drop --lm or choose --decoder beam or flashlight.")
    if decoder == "greedy" and (args.hotwords or args.hotword_weight is not None):
        raise ValueError("--hotwords need a beam decoder; add --decoder beam or flashlight (and --lm DIR).")
    formats = tuple(f.strip() for f in args.formats.split(",") if f.strip())
    options = TranscribeOptions(decoder=decoder, chunk_seconds=args.chunk_seconds,
                                overlap_seconds=args.overlap_seconds, segmenter=segmenter_from(args),
                                max_batch_seconds=args.max_batch_seconds,
                                formats=formats, in_place=args.in_place, mark_below=args.mark_below)
    if args.output == STDOUT:
        if "nemo" in formats:
            raise ValueError("--formats nemo writes a file into --output; give an output directory instead of -.")
        if not args.in_place and any(f in SIDE_FORMATS for f in formats):
            raise ValueError(f"--output - keeps no directory for the per-file formats {formats}; add --in-place to "
                             "write them next to the audio, or give an output directory.")
        return options, lm
    out = args.output.resolve()
    taken = next(p for p in (out, *out.parents) if p.exists())
    if not taken.is_dir():
        raise ValueError(f"--output {args.output}: {taken} is a file, not a directory; choose a directory path.")
    for given in args.inputs:
        root = given.resolve()
        if root.is_dir() and (out == root or root in out.parents) and not args.in_place:
            raise ValueError(f"--output {args.output} is inside the input {given}; choose an output outside it, or "
                             "pass --in-place to allow writing there.")
    return options, lm


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    import transformers
    from accelerate.utils import broadcast_object_list

    from asr import launch
    from asr.allocator import active_allocator
    from asr.confidence import load_calibrations
    from asr.inference import load_acoustic_model
    from asr.outputs import ERRORS_FILE, TRANSCRIPTS_FILE, OutputBusy, OutputDir
    from asr.recognizer import make_decoder
    from asr.segmenters import SegmenterUnavailable
    from asr.transcribe import Transcriber, find_audio
    from asr.transcribe_run import StaleOutput, run_transcription

    accelerator = launch.make_accelerator(int(os.environ.get("WORLD_SIZE", "1")), timeout=BARRIER_TIMEOUT)
    rank, is_main = accelerator.process_index, accelerator.is_main_process
    setup_logging(args, main_process=is_main, rank=rank)
    transformers.utils.logging.disable_progress_bar()  # one "Loading weights" bar per process is noise here
    if globals().get("ALLOCATOR_NOTE"):  # set when run as a script
        logger.warning(ALLOCATOR_NOTE)
    try:
        options, lm = options_from(args)
        items = find_audio(args.inputs, args.manifest, exclude=[args.output])
        if not items:
            raise ValueError(f"no audio files found in {[str(p) for p in args.inputs + args.manifest]}; check the "
                             "paths (hidden files are skipped).")
        loaded = load_acoustic_model(args.model, args.backend, accelerator.device, args.precision)
        transcriber = Transcriber(loaded, make_decoder(options.decoder, lm, loaded.vocab, hotwords=args.hotwords,
                                                       hotword_weight=args.hotword_weight), options,
                                  lm=str(lm.resolve()) if lm else None,
                                  calibration=load_calibrations(args.model).get(options.decoder))
    except (ValueError, FileNotFoundError, SegmenterUnavailable) as e:
        logger.error("%s", e)
        return EXIT_USAGE
    autocast = getattr(loaded, "autocast_dtype", None)  # ONNX models have none
    logger.info("memory allocator: %s; acoustic model: %s, %s", active_allocator(), args.backend,
                f"{str(autocast).removeprefix('torch.')} autocast" if autocast else "float32")

    to_stdout = args.output == STDOUT
    if to_stdout:  # a private directory, the same on every rank, removed at the end
        where = [tempfile.mkdtemp(prefix="transcribe-stdout-") if is_main else None]
        broadcast_object_list(where)
        args.output = Path(where[0])
    out = OutputDir(args.output, rank)

    def take_output() -> None:
        out.lock()  # before anything is cleared: a second run must not erase this one's error records
        out.prepare()

    try:
        launch.on_main_process(accelerator, take_output)
    except OutputBusy as e:
        logger.error("%s", e)
        return EXIT_USAGE
    try:
        summary = run_transcription(accelerator, transcriber, items, out, options, progress=not args.no_progress)
    except StaleOutput as e:
        logger.error("%s", e)
        out.unlock()
        return EXIT_USAGE
    if summary is not None:
        if to_stdout:
            sys.stdout.buffer.write((out.root / TRANSCRIPTS_FILE).read_bytes())
            sys.stdout.flush()
        run = summary["this_run"]
        logger.info("done: %d of %d files transcribed (%d this run, %.3f h of audio in %.1f s, RTF %.3f), %d failed%s",
                    summary["transcribed"], summary["files"], run["files"], run["audio_hours"], run["seconds"],
                    run["rtf"] or 0.0, summary["failed"],
                    f" (see {out.root / ERRORS_FILE})" if summary["failed"] and not to_stdout else "")
    accelerator.wait_for_everyone()
    errors = (out.root / ERRORS_FILE).read_text(encoding="utf-8").strip()
    out.unlock()
    accelerator.wait_for_everyone()  # every rank has read errors.jsonl; all leave the group together
    launch.finish(accelerator)
    if to_stdout and is_main:
        shutil.rmtree(out.root, ignore_errors=True)
    return EXIT_SOME_FAILED if errors else EXIT_OK


if __name__ == "__main__":
    exit_with(main())
