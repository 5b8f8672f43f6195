"""Boundary error of CTC segmentation on a long file joined from utterances whose boundaries are known.

    $ .venv/bin/python scripts/make_corpus.py --out /tmp/piper40 --train 0 --dev 0 --test 40 --seed 3 --engines piper
    $ .venv/bin/python bench/align.py --manifest /tmp/piper40/test.jsonl --model assets/base_model

Joins the manifest's first --count utterances into one WAV (with --max-gap-seconds of silence drawn
uniformly between them; 0 joins them back to back), aligns it with its lines (asr.align) and prints, as
a markdown table, the median, 90th percentile and largest |found - true| of every segment start and
end. The true boundary between two utterances is the middle of the pause between their files; the
first start is 0 and the last end the recording's end. Also prints the score range of the segments.
"""

from __future__ import annotations

import sys

if __package__ in (None, ""):  # run by path (python bench/align.py): the repository root, not bench/, goes first
    sys.path[0] = str(__import__("pathlib").Path(__file__).resolve().parents[1])

import argparse
import json
import logging
import tempfile
import time
from pathlib import Path

import numpy as np

from asr.align import AlignOptions, align_recording, boundary_errors, join_recordings
from asr.inference import load_model
from bench.common import markdown_table


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    """Command-line arguments."""
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--manifest", type=Path, required=True, help="native JSONL manifest (audio_filepath, text)")
    p.add_argument("--model", type=Path, default=Path("assets/base_model"), help="model directory")
    p.add_argument("--count", type=int, default=40, help="utterances joined")
    p.add_argument("--max-gap-seconds", type=float, default=0.0, help="silence between utterances, up to this")
    p.add_argument("--seed", type=int, default=0, help="draws the gaps")
    p.add_argument("--chunk-seconds", type=float, default=AlignOptions().chunk_seconds, help="model window")
    return p.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    """Join, align, print the table."""
    logging.basicConfig(level=logging.WARNING)
    args = parse_args(argv)
    rows = [json.loads(line) for line in args.manifest.read_text().splitlines() if line.strip()][: args.count]
    files = [args.manifest.parent / r["audio_filepath"] for r in rows]
    gaps = np.random.default_rng(args.seed).uniform(0, args.max_gap_seconds, len(rows)).tolist()
    loaded = load_model(args.model)
    with tempfile.TemporaryDirectory() as tmp:
        joined = join_recordings(files, Path(tmp) / "joined.wav", gaps)
        started = time.perf_counter()
        alignment = align_recording(loaded, Path(tmp) / "joined.wav", [r["text"] for r in rows],
                                    AlignOptions(chunk_seconds=args.chunk_seconds))
        seconds = time.perf_counter() - started
    errors = boundary_errors(alignment.segments, joined.true_boundaries())
    scores = [s.score for s in alignment.segments]
    print(f"{len(rows)} utterances, {joined.duration:.1f} s joined (gaps 0-{args.max_gap_seconds:g} s), "
          f"model {args.model}, aligned in {seconds:.1f} s")
    print(markdown_table(["boundaries", "median error (s)", "p90 error (s)", "max error (s)", "scores"],
                         [[len(errors), f"{np.median(errors):.3f}", f"{np.percentile(errors, 90):.3f}",
                           f"{errors.max():.3f}", f"{min(scores):.2f} to {max(scores):.2f}"]]))
    return 0


if __name__ == "__main__":
    sys.exit(main())
