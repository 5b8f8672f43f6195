"""What hotwords cost at decode time: each beam decoder with and without them, same log-probs and LM.

    $ OMP_NUM_THREADS=1 .venv/bin/python bench/hotwords.py                     # 100 synthetic utterances
    $ .venv/bin/python bench/hotwords.py --hotwords zork kestrel --repeats 3 --output runs/bench/

The set is bench/decode.py's synthetic one (noisy CTC log-probs of held-out fortunes sentences, a 4-gram
KenLM from 15k others). Default hotwords: the 5 most frequent reference words of 6+ letters the LM lacks
and 5 it knows, like a user's list of names and terms; "hotwords found" counts their spoken occurrences
that the transcripts have. pyctcdecode matches hotwords on its beams' text in Python
either way; flashlight runs KenLM in C++ without hotwords and through `asr.beam.HotwordLM` (a Python
call per completed word) with them, which is the cost measured here. utt/s counts decoding only, the
median of --repeats runs after a warm-up; other jobs on the machine slow every row alike.
"""

from __future__ import annotations

import sys

if __package__ in (None, ""):  # run by path (python bench/hotwords.py): the repository root, not bench/, goes first
    sys.path[0] = str(__import__("pathlib").Path(__file__).resolve().parents[1])

import argparse
import logging
import tempfile
from collections import Counter
from pathlib import Path

from asr.decoders import build_decoder, load_decoder_settings, load_lm_files
from asr.metrics import error_rates
from bench.common import machine_info, markdown_table, time_runs, write_report
from bench.decode import DecodeSet, synthetic_set

logger = logging.getLogger("bench.hotwords")

DEFAULT_HOTWORDS_EACH = 5  # reference words outside the LM, and as many inside it
MIN_HOTWORD_LETTERS = 6  # default hotwords are content words
WARMUP_UTTERANCES = 3  # decoded untimed first (LM pages, lazy state)


def default_hotwords(decode_set: DecodeSet) -> list[str]:
    """The most frequent reference words the LM lacks, then as many it knows; content words (6+ letters), as a
    user would boost names and terms, not "the"."""
    known = set(load_lm_files(decode_set.lm_dir).unigrams)
    counts = Counter(w for ref in decode_set.references for w in ref.split() if len(w) >= MIN_HOTWORD_LETTERS)
    outside = [w for w, _ in counts.most_common() if w not in known][:DEFAULT_HOTWORDS_EACH]
    inside = [w for w, _ in counts.most_common() if w in known][:DEFAULT_HOTWORDS_EACH]
    return outside + inside


def hotword_hits(references: list[str], texts: list[str], hotwords: list[str]) -> str:
    """`found/spoken`: the hotwords' reference occurrences that the transcripts have (per utterance, at most as
    many as the reference)."""
    spoken = found = 0
    for ref, text in zip(references, texts):
        ref_counts, text_counts = Counter(ref.split()), Counter(text.split())
        spoken += sum(ref_counts[w] for w in hotwords)
        found += sum(min(ref_counts[w], text_counts[w]) for w in hotwords)
    return f"{found}/{spoken}"


def run(decode_set: DecodeSet, hotwords: list[str], repeats: int) -> list[list]:
    """One row per (decoder, with or without hotwords): utt/s, time against the plain row, WER, hotwords found,
    texts changed."""
    rows = []
    stored = load_decoder_settings(decode_set.lm_dir)
    n = len(decode_set.references)
    for name in ("beam", "flashlight"):
        for words in ([], hotwords):
            decoder = build_decoder(name, decode_set.vocab, decode_set.lm_dir, stored.with_overrides(hotwords=words))
            decoder.decode_batch(decode_set.log_probs[:WARMUP_UTTERANCES])
            texts: list[str] = []

            def decode_all(decoder=decoder) -> None:
                texts[:] = [h.text for h in decoder.decode_batch(decode_set.log_probs)]

            timing = time_runs(decode_all, repeats=repeats, warmup=0)
            if not words:
                plain_seconds, plain_texts = timing.median, list(texts)
            changed = sum(a != b for a, b in zip(texts, plain_texts))
            rows.append([name, len(words), round(n / timing.median, 1), f"{timing.median / plain_seconds:.2f}x",
                         round(100 * error_rates(decode_set.references, texts).wer, 2),
                         hotword_hits(decode_set.references, texts, hotwords), f"{changed}/{n}"])
            logger.info("%s with %d hotwords: %.2f s", name, len(words), timing.median)
    return rows


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--hotwords", nargs="+", default=None, help="words to boost (default: see above)")
    p.add_argument("--num-utterances", type=int, default=100, help="held-out sentences to decode")
    p.add_argument("--repeats", type=int, default=3, help="timed runs per row; the median counts")
    p.add_argument("--output", type=Path, default=None, help="also write hotwords.md and hotwords.json here")
    args = p.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s", datefmt="%H:%M:%S")
    info = machine_info()
    with tempfile.TemporaryDirectory(prefix="bench-hotwords-") as work:
        decode_set = synthetic_set(Path(work), args.num_utterances)
        hotwords = args.hotwords or default_hotwords(decode_set)
        rows = run(decode_set, hotwords, args.repeats)
    headers = ["decoder", "hotwords", "utt/s", "time vs none", "WER %", "hotwords found", "texts changed"]
    markdown = (f"## Hotwords' decode cost: {decode_set.description}\n\nhotwords: {' '.join(hotwords)}; median of "
                f"{args.repeats} run(s); {info['cpus']} CPUs, load average {info['load_average_1min']} at the "
                "start.\n\n" + markdown_table(headers, rows))
    print("\n" + markdown)
    if args.output is not None:
        write_report(args.output, "hotwords", markdown, {"hotwords": hotwords, "machine": info,
                                                         "command": " ".join(sys.argv), "headers": headers,
                                                         "rows": rows})
    return 0


if __name__ == "__main__":
    sys.exit(main())
