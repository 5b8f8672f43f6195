"""Make a speech corpus: fortunes sentences read by espeak-ng, flite, festival, Piper and Kokoro (natural) voices.

    $ .venv/bin/python scripts/make_corpus.py --out data/synth --train 2000 --dev 200 --test 200 --seed 0

writes data/synth/{train,dev,test}.jsonl (native manifests), audio/<split>/*.wav (16 kHz mono),
lm.txt (LM text without any dev/test sentence), skipped.jsonl and corpus.json (written last). About
2,400 utterances take a few minutes on 2 cores. The same arguments give the same files; re-running
into a complete corpus is a no-op, and an interrupted run resumes where it stopped.

Options worth knowing:
    --text FILE               one sentence per line instead of Debian's fortunes
    --text-source wordnet     WordNet's ~30k usage examples instead (none that fortunes also holds)
    --engines espeak-ng,flite   engines to use (default: all four but kokoro; absent ones are skipped)
    --engines piper,kokoro    Kokoro-82M reads English with five real speakers' neural voices (Japanese
                              speakers: an accent) and their pairwise blends; opt-in (asr/kokoro.py)
    --engines kokoro-mix      a new in-between speaker per utterance: random convex mixes of two or three
                              of Kokoro's speakers (timbre and prosody mixed apart); opt-in
    --engine-weights piper=3  draw an engine 3x as often as the others (default: all equal)
    --heldout-voices 3        keep 3 voices (or comma-separated voice ids) out of train, so dev/test
                              measure unseen speakers (manifests say `seen_voice`)
    --voices 'flite:rms,espeak-ng:en-gb-scotland*'   only these voices (glob patterns on voice ids)
    --exclude-voices PATTERNS   never these voices (a base model's corpus leaves out its fine-tuning voices)
    --exclude-sentences-of data/base_wn   never a sentence spoken in these corpora: a second corpus of the same
                              text source with new sentences only
    --layout librispeech --layout-out DIR
                              also export as librispeech | audiofolder | folder | parquet | nemo_csv | tsv
    --list-voices             print the voice catalogue and exit
    --combine data/synth data/natural --out runs/demo/train_mix.jsonl
                              no synthesis: one manifest of these corpora's train splits (ids prefixed with
                              each folder's name, absolute audio paths): a training mix of several corpora
    --workers N               synthesis processes (default: all cores)
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from asr.cli import ArgumentParser, add_common_flags, setup_logging
from asr.constants import EXIT_OK, EXIT_USAGE
from asr.corpus import DEFAULT_ENGINES, ENGINES, TEXT_SOURCES, CorpusOptions, list_voices, make_corpus, select_voices
from asr.layouts import LAYOUTS, combine_corpora, export_layout


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    """Command-line arguments."""
    p = ArgumentParser(description=__doc__)
    p.add_argument("--out", type=Path, default=Path("data/synth"), help="corpus directory")
    p.add_argument("--train", type=int, default=2000, help="train utterances")
    p.add_argument("--dev", type=int, default=200, help="dev utterances")
    p.add_argument("--test", type=int, default=200, help="test utterances")
    p.add_argument("--seed", type=int, default=0, help="picks sentences and voices")
    p.add_argument("--text", type=Path, default=None, help="text file, one sentence per line (default: fortunes)")
    p.add_argument("--text-source", choices=TEXT_SOURCES, default="fortunes",
                   help="built-in sentences when no --text: fortunes' quotes or WordNet's usage examples")
    p.add_argument("--engines", default=",".join(DEFAULT_ENGINES),
                   help=f"comma-separated engines of {', '.join(ENGINES)} (default: all but the kokoros)")
    p.add_argument("--engine-weights", default="", help="comma-separated engine=weight, e.g. piper=3 (default: all 1)")
    p.add_argument("--heldout-voices", default="0", help="voices only in dev/test: a count, or comma-separated ids")
    p.add_argument("--heldout-fraction", type=float, default=0.5, help="share of dev/test read by held-out voices")
    p.add_argument("--voices", default="", help="comma-separated glob patterns: only matching voices")
    p.add_argument("--exclude-voices", default="", help="comma-separated glob patterns: never these voices")
    p.add_argument("--exclude-sentences-of", type=Path, nargs="+", default=None, metavar="CORPUS",
                   help="never use a sentence spoken in these corpora's train/dev/test manifests")
    p.add_argument("--min-words", type=int, default=4, help="shorter sentences are not used")
    p.add_argument("--max-words", type=int, default=14, help="longer sentences are not used")
    p.add_argument("--workers", type=int, default=None, help="synthesis processes (default: os.cpu_count())")
    p.add_argument("--overwrite", action="store_true", help="replace a corpus made with other arguments")
    p.add_argument("--layout", choices=LAYOUTS, default=None, help="also export the corpus in this layout")
    p.add_argument("--layout-out", type=Path, default=None, help="export directory (default: <out>_<layout>)")
    p.add_argument("--list-voices", action="store_true", help="print the voice catalogue and exit")
    p.add_argument("--combine", type=Path, nargs="+", default=None, metavar="CORPUS",
                   help="write --out as ONE manifest file of these corpora's train splits (nothing synthesised)")
    add_common_flags(p)
    return p.parse_args(argv)


def _patterns(text: str) -> tuple[str, ...]:
    """Comma-separated patterns as a tuple, blanks dropped."""
    return tuple(p.strip() for p in text.split(",") if p.strip())


def main(argv: list[str] | None = None) -> int:
    """Makes (or finds up to date) the corpus, then exports it if asked; returns the exit code."""
    args = parse_args(argv)
    setup_logging(args)
    engines = tuple(e.strip() for e in args.engines.split(",") if e.strip())
    heldout = args.heldout_voices.strip()
    heldout_voices = int(heldout) if heldout.isdigit() else tuple(h.strip() for h in heldout.split(",") if h.strip())
    include, exclude = _patterns(args.voices), _patterns(args.exclude_voices)
    try:
        if args.combine:
            combine_corpora(args.combine, args.out)
            return EXIT_OK
        if args.list_voices:
            for voice in select_voices(list_voices(engines), include, exclude):
                print(voice.id)
            return EXIT_OK
        weights = {}
        for item in _patterns(args.engine_weights):
            engine, _, weight = item.partition("=")
            try:
                weights[engine.strip()] = float(weight)
            except ValueError:
                raise ValueError(f"--engine-weights item {item!r} must look like engine=weight, e.g. piper=3") from None
        options = CorpusOptions(
            train=args.train,
            dev=args.dev,
            test=args.test,
            seed=args.seed,
            text=args.text,
            text_source=args.text_source,
            engines=engines,
            engine_weights=weights,
            heldout_voices=heldout_voices,
            heldout_fraction=args.heldout_fraction,
            voices=include,
            exclude_voices=exclude,
            exclude_sentences_of=tuple(args.exclude_sentences_of or ()),
            min_words=args.min_words,
            max_words=args.max_words,
        )
        make_corpus(options, args.out, workers=args.workers, overwrite=args.overwrite, progress=not args.no_progress)
        if args.layout:
            layout_out = args.layout_out or args.out.with_name(f"{args.out.name}_{args.layout}")
            export_layout(args.out, args.layout, layout_out)
    except (ValueError, RuntimeError) as e:  # the message names the fix; a traceback would bury it
        print(f"error: {e}", file=sys.stderr)
        return EXIT_USAGE
    return EXIT_OK


if __name__ == "__main__":
    sys.exit(main())
