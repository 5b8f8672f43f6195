"""Align a long recording with its text (CTC segmentation): utterance segments ready for training.

    $ .venv/bin/python scripts/align.py book.flac --text book.txt --split sentences \\
          --model assets/base_model --out aligned/ --cut
    $ .venv/bin/python scripts/train.py --config configs/train/tiny_cpu.yaml data.train.path=aligned/segments.jsonl

Input: a recording of any length and format the toolkit reads (streamed in blocks: memory stays bounded),
its text (--split lines: one utterance a line; --split sentences: free text cut after . ! ? and at blank
lines) and a model directory (its normaliser and vocabulary prepare the text).

Outputs in --out:
    segments.jsonl   the segments scoring at least --min-score, one per line: id, audio_filepath, duration,
                     text (normalised, as training reads it), original_text, start, end, score, recording.
                     With --cut, audio_filepath is the segment's own WAV (audio/<id>.wav, 16 kHz mono) and the
                     manifest trains as it is; without it audio_filepath is absent (the recording and the
                     times are in `recording`, `start`, `end`), since manifests here have no offsets.
    low_score.jsonl  the segments scoring below --min-score (same fields; their WAVs are cut too, for review)
                     and the lines without a character the model knows (start/end/score null).
    summary.json     counts, seconds, the options.

Scores are ctc-segmentation's: the lowest mean log-prob of a segment's path over 30 frames (0.6 s); see
asr/align.py for why -3 is the default threshold. Exit code: 0 done; 2 bad arguments or input (a missing
file, empty text, text without a character the model knows, a recording too short for its text), one line.
"""

from __future__ import annotations

if __name__ == "__main__":  # first, before torch: re-run this command under jemalloc (see asr/allocator.py)
    from asr.allocator import relaunch_under_jemalloc

    relaunch_under_jemalloc()

import argparse
import json
import logging
import sys
from pathlib import Path

from asr.cli import ArgumentParser, add_common_flags, setup_logging
from asr.constants import EXIT_OK, EXIT_USAGE
from asr.defaults import (ALIGN_SPLITS, ALIGN_WINDOW_SECONDS, CHUNK_SECONDS, DEFAULT_MAX_BATCH_SECONDS,
                          DEFAULT_MIN_SCORE, OVERLAP_SECONDS)

logger = logging.getLogger("align")
# The library (torch, ctc-segmentation) is imported in main, after parsing, so that --help is instant.


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    """Command-line arguments."""
    p = ArgumentParser(description=__doc__)
    p.add_argument("recording", type=Path, help="the long audio file")
    p.add_argument("--text", type=Path, required=True, help="its transcript or book text (UTF-8)")
    p.add_argument("--split", choices=ALIGN_SPLITS, default="lines",
                   help="one utterance a line, or sentences of free text")
    p.add_argument("--model", type=Path, required=True, help="model directory (e.g. assets/base_model)")
    p.add_argument("--out", type=Path, required=True, help="output directory")
    p.add_argument("--cut", action="store_true", help="write each segment as a WAV under OUT/audio/ (trainable)")
    p.add_argument("--min-score", type=float, default=DEFAULT_MIN_SCORE,
                   help="lower-scoring segments go to low_score.jsonl")
    p.add_argument("--chunk-seconds", type=float, default=CHUNK_SECONDS, help="model window (0: one pass)")
    p.add_argument("--overlap-seconds", type=float, default=OVERLAP_SECONDS, help="overlap of the windows")
    p.add_argument("--cut-at-pauses", action="store_true", help="end the model's windows at pauses instead")
    p.add_argument("--max-batch-seconds", type=float, default=DEFAULT_MAX_BATCH_SECONDS, help="audio per forward")
    p.add_argument("--window-seconds", type=float, default=ALIGN_WINDOW_SECONDS,
                   help="ctc-segmentation's search window; raise it for long unspoken or untranscribed stretches")
    p.add_argument("--device", default="cpu", help="torch device")
    add_common_flags(p)
    return p.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    """Align, write the manifests; returns the exit code."""
    args = parse_args(argv)
    setup_logging(args)
    from asr.align import AlignOptions, align_recording, cut_segments, split_text
    from asr.audio import AudioError, stream_audio
    from asr.inference import load_model

    try:
        options = AlignOptions(args.chunk_seconds, args.overlap_seconds, args.cut_at_pauses, args.max_batch_seconds,
                               args.window_seconds, args.min_score)
        if not args.recording.is_file():
            raise ValueError(f"Recording {str(args.recording)!r} does not exist; check the path.")
        if not args.text.is_file():
            raise ValueError(f"Text file {str(args.text)!r} does not exist; check --text.")
        lines = split_text(args.text.read_text(encoding="utf-8-sig"), args.split)
        loaded = load_model(args.model, args.device)
        alignment = align_recording(loaded, args.recording, lines, options)
    except (ValueError, AudioError) as e:
        print(f"error: {str(e).splitlines()[0]}", file=sys.stderr)
        return EXIT_USAGE
    kept, low = alignment.split(options.min_score)
    args.out.mkdir(parents=True, exist_ok=True)
    ids = {id(s): f"{args.recording.stem}-{s.line.index:05d}" for s in alignment.segments}
    if args.cut:
        paths = [args.out / "audio" / f"{ids[id(s)]}.wav" for s in alignment.segments]
        cut_segments(stream_audio(args.recording), alignment.segments, paths)
    recording = str(args.recording.resolve())

    def row(segment) -> dict:
        data = {"id": ids[id(segment)], **segment.to_dict(), "duration": round(segment.duration, 3),
                "recording": recording}
        if args.cut:
            data = {"audio_filepath": f"audio/{data['id']}.wav", **data}
        return data

    unaligned = [{"id": f"{args.recording.stem}-{line.index:05d}", "index": line.index, "text": line.normalized,
                  "original_text": line.text, "start": None, "end": None, "score": None, "recording": recording,
                  "reason": "no character in the model's vocabulary"} for line in alignment.unaligned]
    _write_jsonl(args.out / "segments.jsonl", [row(s) for s in kept])
    _write_jsonl(args.out / "low_score.jsonl", [row(s) for s in low] + unaligned)
    summary = {"recording": recording, "text": str(args.text.resolve()), "model": str(args.model.resolve()),
               "duration": round(alignment.duration, 3), "utterances": len(lines), "kept": len(kept),
               "low_score": len(low), "unaligned": len(unaligned),
               "kept_seconds": round(sum(s.duration for s in kept), 3), "cut": args.cut,
               "options": vars(options)}
    (args.out / "summary.json").write_text(json.dumps(summary, indent=2) + "\n")
    logger.info("%d of %d utterances kept (%.1f s of %.1f s), %d below score %g, %d unaligned: %s",
                len(kept), len(lines), summary["kept_seconds"], alignment.duration, len(low), options.min_score,
                len(unaligned), args.out)
    return EXIT_OK


def _write_jsonl(path: Path, rows: list[dict]) -> None:
    """One JSON object a line."""
    path.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows), encoding="utf-8")


if __name__ == "__main__":
    sys.exit(main())
