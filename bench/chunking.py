"""How long files are cut changes the transcript: a table to pick --chunk-seconds and --segmenter.

    # 80 test utterances (all four engines), joined into 4-minute recordings with 0.2-1.5 s pauses,
    # clean, in pink noise at 10 dB SNR and in babble at 15 dB; the shipped base checkpoint
    $ .venv/bin/python scripts/make_corpus.py --out data/longrec --train 0 --dev 0 --test 80 --seed 0
    $ .venv/bin/python bench/chunking.py --model assets/base_model --manifest data/longrec/test.jsonl \
          --noises none,pink:10,babble:15 --output runs/bench/
    # your model, the demo's test sentences, chunk lengths on the fixed grid
    $ .venv/bin/python bench/chunking.py --model runs/x/model --manifest data/synth/test.jsonl --chunks 10:2,30:5

The manifest's utterances (JSONL: audio_filepath relative to the manifest, text) are joined with pauses
drawn from 0.2-1.5 s into one recording of about --minutes per --noises condition
(`asr.long_recordings`: noise at an SNR over the speech); `asr.transcribe` reads it with each --chunks
setting, greedy, on one process: length:overlap is the fixed overlapping grid, length:SEGMENTER
(energy, webrtc, silero; `pauses` = energy) cuts at pauses into pieces <= length, `oracle` cuts in the
middle of every pause between utterances (what a perfect segmenter would do; each piece is read alone)
and `unchunked` gives the whole file at once (attention over all of it: slow and memory-hungry). Per
row: WER and CER against the joined reference text, the pieces and the share of cuts that fall in a
pause between utterances (or a word gap the segmenter found inside one: utterances have pauses too),
and seconds.

A transformer attends over everything it is given, so how much audio it sees changes its reading of
every frame a little; a model fine-tuned on short utterances often reads pieces near its training
lengths better than a whole long file. The stitching itself adds nothing (tests/test_transcribe.py
checks each chunk's kept words against that chunk read alone).
"""

from __future__ import annotations

import sys

if __package__ in (None, ""):  # run by path (python bench/chunking.py): the repository root, not bench/, goes first
    sys.path[0] = str(__import__("pathlib").Path(__file__).resolve().parents[1])

import argparse
import logging
import time
from pathlib import Path

from asr.chunking import ChunkSpec, iter_chunks
from asr.constants import SAMPLE_RATE
from asr.inference import plan_batches
from asr.long_recordings import NOISES, LongRecording, RecordingOptions, join_utterances, read_manifest
from asr.metrics import error_rates
from asr.segmenters import SEGMENTERS
from asr.defaults import GRID
from asr.transcribe import AudioItem, TranscribeOptions, Transcriber
from bench.common import machine_info, markdown_table, write_report

logger = logging.getLogger("bench_chunking")
UNCHUNKED = (0.0, "")
ORACLE = (0.0, "oracle")


def parse_chunks(spec: str) -> list[tuple[float, str]]:
    """"10:2,30:silero,15:pauses,unchunked,oracle" -> [(10.0, "2"), (30.0, "silero"), (15.0, "energy"), (0.0, ""),
    (0.0, "oracle")]."""
    pairs = []
    try:
        for item in filter(None, spec.split(",")):
            if item in ("unchunked", "oracle"):
                pairs.append(UNCHUNKED if item == "unchunked" else ORACLE)
                continue
            length, how = item.split(":")
            how = "energy" if how == "pauses" else how
            if float(length) <= 0 or (how not in SEGMENTERS and not 0 < 2 * float(how) <= float(length)):
                raise ValueError
            pairs.append((float(length), how))
    except ValueError:
        raise SystemExit(f"bench_chunking: --chunks {spec!r} must be length:overlap pairs in seconds with "
                         f"0 < 2 * overlap <= length, length:SEGMENTER ({'|'.join(SEGMENTERS)}|pauses) or "
                         "unchunked or oracle, e.g. 10:2,30:5,15:silero") from None
    if not pairs:
        raise SystemExit("bench_chunking: --chunks is empty; give e.g. 30:5,10:silero")
    return pairs


def parse_noises(spec: str) -> list[tuple[str, float]]:
    """"none,pink:10,babble:15" -> [("none", 0.0), ("pink", 10.0), ("babble", 15.0)]."""
    try:
        noises = [(item, 0.0) if item == "none" else (item.split(":")[0], float(item.split(":")[1]))
                  for item in filter(None, spec.split(","))]
        if not noises or any(noise not in NOISES for noise, _ in noises):
            raise ValueError
    except (ValueError, IndexError):
        raise SystemExit(f"bench_chunking: --noises {spec!r} must be none or NOISE:SNR_DB items, NOISE one of "
                         f"{', '.join(NOISES[1:])}, e.g. none,pink:10,babble:15") from None
    return noises


def chunk_name(length: float, how: str) -> str:
    """A row's label: "30 s / 5 s", "silero, <= 10 s", "unchunked", "oracle: at the true pauses"."""
    if not length:
        return "oracle: at the true pauses" if how == "oracle" else "unchunked"
    return f"{how}, <= {length:g} s" if how in SEGMENTERS else f"{length:g} s / {float(how):g} s"


def chunk_options(length: float, how: str) -> TranscribeOptions:
    """The transcription options of a --chunks item (greedy; as parsed by parse_chunks)."""
    if not length:
        return TranscribeOptions(chunk_seconds=0)
    if how in SEGMENTERS:
        return TranscribeOptions(chunk_seconds=length, segmenter=how)
    return TranscribeOptions(chunk_seconds=length, overlap_seconds=float(how), segmenter=GRID)


def read(transcriber: Transcriber, recording: LongRecording, oracle: bool) -> str:
    """The transcript of `recording` as `transcriber`'s options cut it, or cut in the middle of every pause."""
    if oracle:
        middles = [(start + end) // 2 for start, end in recording.pauses]
        bounds = list(zip([0, *middles], [*middles, len(recording.audio)]))
        items = [AudioItem(i, "bench", f"piece{i}.wav", Path(f"piece{i}.wav"), audio=recording.audio[a:b])
                 for i, (a, b) in enumerate(bounds)]
        batches = plan_batches([b - a for a, b in bounds], int(transcriber.options.max_batch_seconds * SAMPLE_RATE))
        results = sorted((pair for batch in batches for pair in transcriber.transcribe([items[i] for i in batch])),
                         key=lambda pair: pair[0].index)
        return " ".join(transcript.text for _, transcript in results)
    item = AudioItem(0, "bench", "long.wav", Path("long.wav"), audio=recording.audio)
    [(_, transcript)] = list(transcriber.transcribe([item], chunked=transcriber.spec is not None))
    return transcript.text


def cuts(recording: LongRecording, spec: ChunkSpec | None, oracle: bool) -> tuple[int, float | None]:
    """(pieces, share of the cuts between them inside a pause between utterances) of `recording`."""
    if oracle:
        return len(recording.speech), 1.0
    if spec is None:
        return 1, None
    chunks = list(iter_chunks([recording.audio], spec))
    ends = [c.keep_end for c in chunks[:-1]]  # on the grid: where one chunk's kept frames give way to the next's
    inside = sum(any(start <= end <= stop for start, stop in recording.pauses) for end in ends)
    return len(chunks), inside / len(ends) if ends else None


def main(argv: list[str] | None = None) -> None:
    """Prints (and with --output saves) the table of chunk settings x noise conditions."""
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", type=Path, default=Path("assets/base_model"), help="a model directory")
    p.add_argument("--manifest", type=Path, default=Path("data/synth/test.jsonl"),
                   help="labelled utterances to join (default: the demo corpus's test split)")
    p.add_argument("--minutes", type=float, default=4.0, help="length of each joined recording")
    p.add_argument("--noises", default="none", help="recordings to make: none, or NOISE:SNR_DB with NOISE one of "
                   f"{', '.join(NOISES[1:])}, e.g. none,pink:10,babble:15")
    p.add_argument("--chunks", default="oracle,30:5,5:energy,5:webrtc,5:silero,10:energy,10:webrtc,10:silero,30:energy,"
                   "30:webrtc,30:silero",
                   help="settings to compare: length:overlap (fixed grid), length:SEGMENTER (cut at pauses into "
                   "pieces <= length; pauses = energy), unchunked, oracle (cut in the middle of every pause)")
    p.add_argument("--seed", type=int, default=0, help="pauses and noise")
    p.add_argument("--output", type=Path, help="write bench_chunking.md/.json here")
    args = p.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s", datefmt="%H:%M:%S")
    if not args.manifest.is_file():
        raise SystemExit(f"bench_chunking: no manifest {args.manifest}; run `make demo` (or scripts/make_corpus.py) "
                         "or pass --manifest")
    chunks, noises = parse_chunks(args.chunks), parse_noises(args.noises)

    from asr.beam import GreedyCTC
    from asr.inference import load_model

    loaded = load_model(args.model)
    utterances = read_manifest(args.manifest)
    rows, data = [], []
    for noise, snr in noises:
        recording = join_utterances(utterances, RecordingOptions(args.minutes, noise=noise, snr_db=snr, seed=args.seed))
        duration = len(recording.audio) / SAMPLE_RATE
        condition = "clean" if noise == "none" else f"{noise} {snr:g} dB"
        logger.info("%s: %.1f s joined from %s", condition, duration, args.manifest)
        for length, how in chunks:
            transcriber = Transcriber(loaded, GreedyCTC(loaded.vocab), chunk_options(length, how))
            started = time.perf_counter()
            text = read(transcriber, recording, oracle=how == "oracle")
            seconds = time.perf_counter() - started
            rates = error_rates([recording.text], [text])
            pieces, in_pauses = cuts(recording, transcriber.spec, oracle=how == "oracle")
            name = chunk_name(length, how)
            logger.info("%s, %s: WER %.3f CER %.3f (%.1f s)", condition, name, rates.wer, rates.cer, seconds)
            rows.append([condition, name, rates.wer, rates.cer, pieces, in_pauses, seconds])
            data.append({"noise": noise, "snr_db": snr, "chunk_seconds": length, "cut": how or "unchunked",
                         "wer": rates.wer, "cer": rates.cer, "pieces": pieces, "cuts_in_pauses": in_pauses,
                         "seconds": seconds, "audio_seconds": duration})
    table = markdown_table(["recording", "chunks", "WER", "CER", "pieces", "cuts in pauses", "seconds"], rows)
    header = (f"Long-file cutting on {args.minutes:g}-minute recordings joined from {args.manifest} with 0.2-1.5 s "
              f"pauses ({args.model}, greedy, 1 process)\n\n")
    print(header + table)
    if args.output:
        write_report(args.output, "bench_chunking", header + table,
                     {"model": str(args.model), "manifest": str(args.manifest), "minutes": args.minutes,
                      "rows": data, "machine": machine_info()})


if __name__ == "__main__":
    sys.exit(main())
