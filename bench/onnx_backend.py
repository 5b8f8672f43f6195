"""Speed of the PyTorch and ONNX Runtime backends on CPU, side by side, on the same audio and model.

    $ .venv/bin/python bench/onnx_backend.py recordings/ --model runs/tiny/model --onnx runs/tiny/onnx
    $ .venv/bin/python bench/onnx_backend.py recordings/ --model runs/tiny/model --limit 50 --threads 2
          # without --onnx the model is exported (and parity-checked) into a temporary directory first

Every file (up to --limit) is read into memory first, so the timings are the acoustic model plus
greedy decoding, nothing of the disk. Each backend warms up on one file, then runs the whole set
--repeats times with the batching transcription uses (length-sorted, --max-batch-seconds of padded
audio per forward pass); the best run counts. Prints a table: files/s, real-time factor (compute
seconds per audio second, lower is faster), and how many greedy transcripts equal PyTorch's.
"""

from __future__ import annotations

import sys

if __package__ in (None, ""):  # run by path (python bench/onnx_backend.py): the repository root, not bench/, goes first
    sys.path[0] = str(__import__("pathlib").Path(__file__).resolve().parents[1])

import argparse
import logging
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
import transformers

from asr.audio import AudioError, load_audio
from asr.beam import GreedyCTC
from asr.constants import SAMPLE_RATE
from asr.inference import AcousticModel, iter_log_probs, load_model, log_probs_batch
from asr.onnx_export import export_onnx
from asr.onnx_model import load_onnx_model
from asr.transcribe import find_audio

logger = logging.getLogger("bench_onnx")


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    """Command-line arguments."""
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("inputs", nargs="+", type=Path, help="directories (or files) of audio")
    p.add_argument("--model", type=Path, required=True, help="PyTorch model directory (the model/ of a training run)")
    p.add_argument("--onnx", type=Path, default=None, help="its export (scripts/export.py); default: export now")
    p.add_argument("--limit", type=int, default=0, help="use at most this many files (0: all)")
    p.add_argument("--max-batch-seconds", type=float, default=60.0, help="padded audio seconds per forward pass")
    p.add_argument("--threads", type=int, default=0, help="CPU threads for both backends (0: each one's default)")
    p.add_argument("--repeats", type=int, default=1, help="timed runs per backend; the fastest counts")
    return p.parse_args(argv)


def time_backend(model: AcousticModel, audios: list[np.ndarray], max_batch_seconds: float,
                 repeats: int) -> tuple[float, list[str]]:
    """(best wall seconds over `repeats` runs, greedy transcripts in input order)."""
    greedy = GreedyCTC(model.vocab)
    log_probs_batch(model, audios[:1])  # warm-up: first-call allocations and lazy initialisation
    best, texts = float("inf"), [""] * len(audios)
    for _ in range(max(1, repeats)):
        start = time.perf_counter()
        for i, lp in iter_log_probs(model, audios, max_batch_seconds):
            texts[i] = greedy.decode(lp).text
        best = min(best, time.perf_counter() - start)
    return best, texts


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s", datefmt="%H:%M:%S")
    transformers.utils.logging.disable_progress_bar()
    if args.threads:
        torch.set_num_threads(args.threads)
    with tempfile.TemporaryDirectory(prefix="bench-onnx-") as work:
        try:
            items = find_audio(args.inputs)[: args.limit or None]
            audios = []
            for item in items:
                try:
                    audios.append(load_audio(item.file))
                except AudioError as e:
                    logger.warning("skipping %s: %s", item.path, e)
            if not audios:
                raise ValueError(f"no readable audio in {[str(p) for p in args.inputs]}; check the paths")
            onnx_dir = args.onnx
            if onnx_dir is None:
                onnx_dir = Path(work) / "onnx"
                export_onnx(args.model, onnx_dir)
            models = {"torch": load_model(args.model), "onnx": load_onnx_model(onnx_dir, threads=args.threads)}
        except ValueError as e:
            logger.error("%s", e)
            return 2
        audio_seconds = sum(len(a) for a in audios) / SAMPLE_RATE
        logger.info("%d files, %.1f s of audio; torch threads %d, onnxruntime threads %s", len(audios),
                    audio_seconds, torch.get_num_threads(), args.threads or "default")
        results = {name: time_backend(model, audios, args.max_batch_seconds, args.repeats)
                   for name, model in models.items()}
    reference = results["torch"][1]
    print(f"\n{len(audios)} files, {audio_seconds:.1f} s of audio, batches of <= {args.max_batch_seconds:g} s\n")
    print("| backend | seconds | files/s | RTF | speed-up | greedy = torch |")
    print("|---|---:|---:|---:|---:|---:|")
    for name, (seconds, texts) in results.items():
        same = sum(a == b for a, b in zip(texts, reference))
        print(f"| {name} | {seconds:.3f} | {len(audios) / seconds:.1f} | {seconds / audio_seconds:.4f} | "
              f"{results['torch'][0] / seconds:.2f}x | {same}/{len(audios)} |")
    return 0

if __name__ == "__main__":
    sys.exit(main())
