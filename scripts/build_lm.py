"""Build a KenLM n-gram LM for beam-search decoding, normalised exactly like a model's labels.

    $ .venv/bin/python scripts/build_lm.py --model runs/x/final --text data/synth/lm.txt --heldout-fraction 0.02

writes, beside the model (or into --output DIR), pyctcdecode's layout: alphabet.json,
language_model/{attrs.json, lm.bin, unigrams.txt}, plus lm_info.json (corpus report, n-gram counts,
size, held-out perplexity). `Wav2Vec2ProcessorWithLM.from_pretrained(DIR)`, pyctcdecode's
`BeamSearchDecoderCTC.load_from_dir(DIR)` and `asr.decoders.build_decoder("beam" | "flashlight", None, DIR)`
then load it. Beside a model, the processor files then name `Wav2Vec2ProcessorWithLM`, so
`transformers.pipeline("automatic-speech-recognition", model=DIR)` decodes with the LM, and the model
card (README.md) is rewritten to describe it. Needs KenLM's lmplz and build_binary, found in
$ASR_KENLM_BIN, on PATH or in tools/kenlm/bin (`bash scripts/setup.sh` builds them there).

Text inputs (any mix, all concatenated):
    --text FILE ...            plain text, one sentence per line
    --text-source wordnet      WordNet's ~47k usage examples (Debian's wordnet-base): general English that
                               widens the vocabulary; none is a fortunes sentence, so a synthetic corpus's test
                               sentences stay out (fortunes itself is not offered: it holds them)
    --source PATH ...          transcripts of a corpus: a manifest (.jsonl/.csv/.tsv), a LibriSpeech tree,
                               an audiofolder, a folder layout, or a `datasets` dataset (save_to_disk dir,
                               parquet, hub name), read through asr.sources; --split/--text-column apply
Options worth knowing:
    --model DIR                use DIR's normalizer.json and vocab.json; characters the model cannot emit are
                               reported and their sentences dropped (--keep-unemittable keeps them)
    --order 4 --prune 0 0 1    n-gram order; lmplz count pruning per order
    --unit token --order 6     a character n-gram over the model's tokens, for lexicon-free flashlight decoding
    --heldout FILE | --heldout-source PATH | --heldout-fraction 0.02
                               text to report perplexity on (files, corpus transcripts, or a share of the text)
    --encoding latin-1         the --text/--heldout files' encoding (default UTF-8); text that is not valid
                               in it is refused with its file, line and byte offset, never read as "\ufffd"
    --arpa                     keep the ARPA text file instead of building a binary
    --memory 1G --temp-dir DIR bounds for lmplz/build_binary (-S, -T)

Exit code: 0 built; 1 a crash (a traceback, or lmplz/build_binary failing with their output); 2 bad
arguments or input, or lmplz/build_binary not found (one line: a missing file, text that is not in
--encoding, no usable sentence, where KenLM was looked for).
"""

from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path

from asr.beam import PyCTCDecodeOptions
from asr.cli import ArgumentParser, add_common_flags, setup_logging
from asr.constants import EXIT_OK, EXIT_USAGE
from asr.corpus import load_sentences
from asr.model_card import write_model_card
from asr.sources import SourceConfig, read_source_texts
from asr.text import TextNormalizer, load_model_text_config
from lm.build import (
    KenLMNotFoundError,
    LMBuildOptions,
    build_lm,
    read_text_files,
)

logger = logging.getLogger("build_lm")
# Built-in text sources for the LM: not fortunes, whose sentences include every synthetic corpus's dev/test ones
# (a corpus's lm.txt is fortunes without them).
LM_TEXT_SOURCES = ("wordnet",)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    """Command-line arguments."""
    defaults = LMBuildOptions()
    p = ArgumentParser(description=__doc__)
    p.add_argument("--text", type=Path, nargs="+", default=[], help="text files, one sentence per line")
    p.add_argument("--text-source", nargs="+", default=[], choices=LM_TEXT_SOURCES,
                   help="built-in text added to the LM's: WordNet's usage examples")
    p.add_argument("--encoding", default="utf-8", help="encoding of the --text/--heldout files")
    p.add_argument("--source", nargs="+", default=[], help="corpus sources whose transcripts are LM text")
    p.add_argument("--source-kind", default="auto", help="layout of --source (auto|manifest|librispeech|hf|...)")
    p.add_argument("--split", default=None, help="split of a dataset/layout source")
    p.add_argument("--text-column", default=None, help="text column of a manifest/dataset source")
    p.add_argument("--model", type=Path, default=None, help="model/processor dir with normalizer.json and vocab.json")
    p.add_argument("--output", type=Path, default=None, help="output dir (default: the --model dir)")
    p.add_argument("--order", type=int, default=defaults.order, help="n-gram order")
    p.add_argument("--unit", choices=("word", "token"), default=defaults.unit,
                   help="word n-grams (pyctcdecode, lexicon) or token n-grams (flashlight lexicon-free)")
    p.add_argument("--prune", type=int, nargs="+", default=list(defaults.prune), help="lmplz --prune thresholds")
    p.add_argument("--no-dedupe", action="store_true", help="keep repeated sentences")
    p.add_argument("--keep-unemittable", action="store_true", help="keep sentences the model cannot spell")
    p.add_argument("--arpa", action="store_true", help="write the ARPA file instead of a KenLM binary")
    p.add_argument("--binary-type", choices=("probing", "trie"), default=defaults.binary_type,
                   help="KenLM binary layout: probing is fastest to query, trie about 3x smaller")
    p.add_argument("--quantize", type=int, default=None, help="trie only: bits for quantisation (e.g. 8)")
    p.add_argument("--discount-fallback", action="store_true",
                   help="always pass --discount_fallback (default: only when lmplz fails without it)")
    p.add_argument("--memory", default=defaults.memory, help="lmplz/build_binary -S, e.g. 1G or 20%%")
    p.add_argument("--temp-dir", default=None, help="lmplz/build_binary -T (default: inside the output dir)")
    p.add_argument("--heldout", type=Path, nargs="+", default=None, help="held-out text files for perplexity")
    p.add_argument("--heldout-source", nargs="+", default=None,
                   help="corpus sources (e.g. a dev manifest) whose transcripts are the held-out text")
    p.add_argument("--heldout-fraction", type=float, default=defaults.heldout_fraction,
                   help="share of the sentences held out of training for perplexity")
    p.add_argument("--seed", type=int, default=defaults.seed, help="picks the held-out sentences")
    p.add_argument("--kenlm-bin", default=None,
                   help="directory with lmplz/build_binary (default: $ASR_KENLM_BIN, PATH, then tools/kenlm/bin)")
    p.add_argument("--alpha", type=float, default=PyCTCDecodeOptions.alpha, help="attrs.json LM weight for pyctcdecode")
    p.add_argument("--beta", type=float, default=PyCTCDecodeOptions.beta, help="attrs.json word bonus for pyctcdecode")
    add_common_flags(p)
    args = p.parse_args(argv)
    if not args.text and not args.source and not args.text_source:
        p.error("give LM text with --text FILE, --source PATH and/or --text-source wordnet")
    if args.output is None and args.model is None:
        p.error("give --output DIR, or --model DIR to write the LM beside the model")
    if (args.heldout or args.heldout_source) and args.heldout_fraction:
        p.error("give either --heldout/--heldout-source or --heldout-fraction, not both")
    return args


def _source(args: argparse.Namespace, path: str) -> SourceConfig:
    """A SourceConfig for one --source/--heldout-source path."""
    return SourceConfig(kind=args.source_kind, path=path, split=args.split, text_column=args.text_column)


def main(argv: list[str] | None = None) -> int:
    """Read the text, build the LM, print where it went; returns the exit code."""
    args = parse_args(argv)
    setup_logging(args)
    try:
        build(args)
    except (ValueError, FileNotFoundError, KenLMNotFoundError) as e:  # bad input or no KenLM: one line, nothing built
        print(f"error: {e}", file=sys.stderr)
        return EXIT_USAGE
    return EXIT_OK


def build(args: argparse.Namespace) -> None:
    """main's work: read the text, build the LM, print where it went."""
    options = LMBuildOptions(
        order=args.order, unit=args.unit, prune=tuple(args.prune), dedupe=not args.no_dedupe,
        drop_unemittable=not args.keep_unemittable, binary=not args.arpa, binary_type=args.binary_type,
        quantize_bits=args.quantize, discount_fallback=True if args.discount_fallback else None,
        memory=args.memory, temp_dir=args.temp_dir, heldout_fraction=args.heldout_fraction, seed=args.seed,
        kenlm_bin=args.kenlm_bin,
    )
    normalizer, vocab = load_model_text_config(args.model) if args.model is not None else (TextNormalizer(), None)
    texts: list[str] = list(read_text_files(args.text, args.encoding))
    for path in args.source:
        texts.extend(read_source_texts(_source(args, path)))
    for name in args.text_source:  # every example, fragments too: n-gram statistics, not utterances
        try:
            texts.extend(load_sentences(None, min_words=1, max_words=10_000, source=name))
        except RuntimeError as e:  # its package is not installed: the message names the set-up
            raise ValueError(str(e)) from None
    heldout = None
    if args.heldout or args.heldout_source:
        heldout = list(read_text_files(args.heldout or [], args.encoding))
        for path in args.heldout_source or []:
            heldout.extend(read_source_texts(_source(args, path)))

    info = build_lm(texts, args.output or args.model, normalizer=normalizer, vocab=vocab, heldout=heldout,
                    options=options, decoder_options=PyCTCDecodeOptions(alpha=args.alpha, beta=args.beta))
    if args.model is None:  # said once built: an input error before it stays the one line on stderr
        logger.warning("no --model: default TextNormalizer, no vocabulary check and no alphabet.json; the LM text "
                       "may not match a model's labels")
    print(f"LM: {info.kenlm_path} ({info.order}-gram {info.format}, {info.size_bytes / 1e6:.1f} MB, "
          f"{info.num_unigrams} words, {info.num_train_sentences} training sentences)")
    if info.heldout is not None:
        print(f"held-out perplexity {info.heldout.perplexity:.1f} on {info.heldout.num_sentences} sentences "
              f"(OOV {100 * info.heldout.oov_rate:.1f}%)")
    print(f"report: {Path(info.directory) / 'lm_info.json'}")
    card = write_model_card(info.directory)  # None unless the LM went beside a model that scripts/train.py wrote
    if card is not None:
        print(f"model card: {card}")


if __name__ == "__main__":
    sys.exit(main())
