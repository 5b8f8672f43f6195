"""How the chunk length of long-file transcription changes the transcript: a table to pick --chunk-seconds.

    # the demo's test sentences (data/synth, made by `make demo`) joined into a 4-minute recording
    $ .venv/bin/python bench/chunking.py --model assets/base_model --output runs/bench/
    # your model and a manifest of labelled utterances
    $ .venv/bin/python bench/chunking.py --model runs/x/model --manifest data/x/dev.jsonl --minutes 10

The manifest's utterances (JSONL: audio_filepath relative to the manifest, text) are joined, 0.4 s
apart, into one recording of about --minutes; `asr.transcribe` reads it unchunked and with each
--chunks length:overlap (fixed grid) or length:pauses (`--cut-at-pauses`), greedy, on one process. Per row: WER and CER against the joined reference
text, word agreement with the unchunked transcript (1 - word edits / unchunked words), and seconds.

A transformer attends over everything it is given, so how much audio it sees changes its reading of
every frame a little; a model fine-tuned on short utterances often reads chunks near its training
lengths better than a whole long file. The stitching itself adds nothing (tests/test_transcribe.py
checks each chunk's kept words against that chunk read alone).
"""

from __future__ import annotations

import sys

if __package__ in (None, ""):  # run by path (python bench/chunking.py): the repository root, not bench/, goes first
    sys.path[0] = str(__import__("pathlib").Path(__file__).resolve().parents[1])

import argparse
import json
import logging
import tempfile
import time
from pathlib import Path

import numpy as np
import soundfile as sf

from asr.audio import load_audio
from bench.common import machine_info, markdown_table, write_report
from asr.constants import SAMPLE_RATE
from asr.metrics import error_rates
from asr.transcribe import TranscribeOptions, Transcriber, find_audio

logger = logging.getLogger("bench_chunking")
GAP_SECONDS = 0.4


def join_utterances(manifest: Path, minutes: float, out: Path) -> str:
    """Writes the manifest's utterances (repeated if needed) as one 16 kHz file; returns its reference text."""
    rows = [json.loads(line) for line in manifest.read_text(encoding="utf-8").splitlines() if line.strip()]
    if not rows:
        raise ValueError(f"{manifest} lists no utterances; pass a JSONL manifest with audio_filepath and text")
    gap = np.zeros(int(GAP_SECONDS * SAMPLE_RATE), dtype=np.float32)
    parts, texts, total = [], [], 0
    while total < minutes * 60 * SAMPLE_RATE:
        row = rows[len(texts) % len(rows)]
        audio = load_audio(manifest.parent / row["audio_filepath"])
        parts += [audio, gap]
        texts.append(row["text"])
        total += len(audio) + len(gap)
    sf.write(out, np.concatenate(parts), SAMPLE_RATE, subtype="PCM_16")
    return " ".join(texts)


def parse_chunks(spec: str) -> list[tuple[float, float]]:
    """"10:2,30:5,15:pauses" -> [(10.0, 2.0), (30.0, 5.0), (15.0, 0.0)]; overlap 0 means cut at pauses."""
    try:
        pairs = [(float(a), 0.0 if b == "pauses" else float(b)) for a, b in (item.split(":") for item in spec.split(",")
                                                                              if item)]
        if not pairs or any(a <= 0 or (b and not 0 < 2 * b <= a) for a, b in pairs):
            raise ValueError
    except ValueError:
        raise SystemExit(f"bench_chunking: --chunks {spec!r} must be length:overlap pairs in seconds with "
                         "0 < 2 * overlap <= length, or length:pauses, e.g. 10:2,30:5,15:pauses") from None
    return pairs


def main(argv: list[str] | None = None) -> None:
    """Prints (and with --output saves) the chunk-length table."""
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", type=Path, default=Path("assets/base_model"), help="a model directory")
    p.add_argument("--manifest", type=Path, default=Path("data/synth/test.jsonl"),
                   help="labelled utterances to join (default: the demo corpus's test split)")
    p.add_argument("--minutes", type=float, default=4.0, help="length of the joined recording")
    p.add_argument("--chunks", default="10:2,15:3,30:5,60:5,5:pauses,10:pauses,15:pauses",
                   help="length:overlap seconds to compare; length:pauses cuts at pauses into pieces <= length")
    p.add_argument("--output", type=Path, help="write bench_chunking.md/.json here")
    args = p.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s", datefmt="%H:%M:%S")
    if not args.manifest.is_file():
        raise SystemExit(f"bench_chunking: no manifest {args.manifest}; run `make demo` (or scripts/make_corpus.py) "
                         "or pass --manifest")
    chunks = parse_chunks(args.chunks)

    from asr.beam import GreedyCTC
    from asr.inference import load_model

    loaded = load_model(args.model)
    with tempfile.TemporaryDirectory() as tmp:
        wav = Path(tmp) / "long.wav"
        reference = join_utterances(args.manifest, args.minutes, wav)
        [item] = find_audio([tmp])
        duration = sf.info(wav).duration
        logger.info("%s: %.1f s joined from %s", wav.name, duration, args.manifest)
        results = {}
        for length, overlap in [(0.0, 0.0)] + chunks:
            options = TranscribeOptions(chunk_seconds=length, overlap_seconds=overlap,
                                        cut_at_pauses=bool(length) and not overlap)
            transcriber = Transcriber(loaded, GreedyCTC(loaded.vocab), options)
            started = time.perf_counter()
            [(_, transcript)] = list(transcriber.transcribe([item], chunked=bool(length)))
            results[(length, overlap)] = (transcript.text, time.perf_counter() - started)

    unchunked = results[(0.0, 0.0)][0]
    rows, data = [], []
    for (length, overlap), (text, seconds) in results.items():
        rates = error_rates([reference], [text])
        agree = 1 - error_rates([unchunked], [text]).wer
        name = (f"{length:g} s / {overlap:g} s" if overlap else f"at pauses, <= {length:g} s") if length else "unchunked"
        rows.append([name, f"{rates.wer:.3f}", f"{rates.cer:.3f}", f"{agree:.3f}", f"{seconds:.1f}"])
        data.append({"chunk_seconds": length, "overlap_seconds": overlap, "wer": rates.wer, "cer": rates.cer,
                     "agreement_with_unchunked": agree, "seconds": seconds})
    table = markdown_table(["chunks", "WER", "CER", "words as unchunked", "seconds"], rows)
    header = (f"Chunk length on a {duration:.0f} s recording joined from {args.manifest} "
              f"({args.model}, greedy, 1 process)\n\n")
    print(header + table)
    if args.output:
        write_report(args.output, "bench_chunking", header + table,
                     {"model": str(args.model), "manifest": str(args.manifest), "duration": duration,
                      "rows": data, "machine": machine_info()})

if __name__ == "__main__":
    sys.exit(main())
