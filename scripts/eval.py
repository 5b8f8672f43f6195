"""Evaluate a CTC model with greedy, pyctcdecode and flashlight decoding, side by side.

    $ .venv/bin/python scripts/eval.py --model runs/x/model --data data/synth/test.jsonl --decoder all --output eval/x
    # tune alpha/beta on dev first (written into the LM dir, then used by every later decode), evaluate on test
    $ .venv/bin/python scripts/eval.py --model runs/x/model --data data/synth/test.jsonl --tune \
          --tune-data data/synth/dev.jsonl --output eval/x
    # the acoustic model on 2 processes (CPU here; GPUs with a multi-GPU accelerate config)
    $ accelerate launch --config_file configs/accelerate/cpu_2proc.yaml scripts/eval.py --model ... --output ...
    # plus a classic offline recogniser on the same audio, as a yardstick row (asr.reference)
    $ .venv/bin/python scripts/eval.py --model runs/x/model --data data/synth/test.jsonl --reference pocketsphinx \
          --output eval/x

The acoustic model runs once per (model, data, batch size): its log-probs are cached (--cache-dir,
default ~/.cache/asr-toolkit/logits), so another decoder, other alpha/beta or tuning never rerun it.
--lm defaults to the model directory when it holds an LM (`scripts/build_lm.py --model DIR` puts
it there). Decoder settings default to what the LM directory stores (language_model/attrs.json,
decoder.json written by --tune); flags override them. --reference adds rows for reference recognisers
(pocketsphinx) that transcribe the same kept utterances themselves, on every available core.

Every row's WER and CER, and the difference between every two rows, get a paired-bootstrap 95%
confidence interval (--bootstrap resamples of the utterances, seeded by --bootstrap-seed; 0 skips
them); a difference is significant when its interval excludes 0. WER is also broken down by speaker,
duration bucket and each category-like manifest column (string or boolean values, 2-12 of them),
each group with its own interval. Every decoder's words get a confidence (the frames' posteriors in
the word's span); the table says how well it predicts errors (ECE, errors among the least confident
10% of words), calibrated when the model holds confidence.json (written by --calibrate, fitted on
--tune-data after any tuning).

Writes to --output: results.md (the table, intervals, differences, breakdowns, confidence), results.json,
results.csv, utterances.jsonl/.csv (id, reference, every decoder's hypothesis and word errors),
comparison.png, breakdown.png (WER per group and decoder), reliability.png (confidence against
accuracy per decoder), dropped.jsonl (items left out and why),
and with --tune: tuning.md/.json, tuning_grid.png (WER heatmaps over alpha x beta) and
tuning_pareto.png (WER against speed of every setting tried). The table goes to stdout, logs to
stderr. With --tune and the LM in the model directory, the model card (README.md) is rewritten
with the tuned decoders' results on the tuning set and this table's.

Exit code: 0 done; 1 a crash (a traceback); 2 bad arguments or input (one line, nothing evaluated);
3 done, but some utterances' audio was missing or unreadable (dropped.jsonl lists them; the table
covers the rest). Utterances left out by the duration filters are not failures.
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
from pathlib import Path

from asr.cli import ArgumentParser, add_common_flags, exit_with, setup_logging
from asr.constants import EXIT_OK, EXIT_SOME_FAILED, EXIT_USAGE
from asr.defaults import (BEAM_DECODERS, BOOTSTRAP_RESAMPLES, BOOTSTRAP_SEED, DECODERS, DEFAULT_CACHE_DIR,
                          DEFAULT_MAX_BATCH_SECONDS, DEFAULT_MAX_PADDING, DEFAULT_NBEST, DEFAULT_PADDING_SAMPLE,
                          EVAL_MAX_DURATION, EVAL_MIN_DURATION, REFERENCES, TUNE_ALPHAS, TUNE_BEAM_WIDTHS,
                          TUNE_BETAS, available_cores)

logger = logging.getLogger("eval")
# The library (numpy, jiwer, torch) is imported in the functions below, after parsing, so that --help is instant.


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    """Command-line arguments."""
    p = ArgumentParser(description=__doc__)
    p.add_argument("--model", type=Path, required=True, help="model directory written by scripts/train.py")
    p.add_argument("--data", required=True, help="manifest, corpus folder or dataset (any asr.sources layout)")
    p.add_argument("--split", default=None, help="split of a dataset/layout source")
    p.add_argument("--source-kind", default="auto", help="layout of --data (auto|manifest|librispeech|hf|...)")
    p.add_argument("--text-column", default=None, help="text column of a manifest/dataset")
    p.add_argument("--audio-column", default=None, help="audio column of a manifest/dataset")
    p.add_argument("--decoder", nargs="+", default=["all"], choices=[*DECODERS, "all"], help="decoders to compare")
    p.add_argument("--lm", type=Path, default=None, help="LM directory (default: --model when it holds one)")
    p.add_argument("--output", type=Path, required=True, help="where results go")
    p.add_argument("--workers", type=int, default=available_cores(),
                   help="fork-pool processes for beam decoding and tuning, same hypotheses for any (default: cores)")
    p.add_argument("--reference", default="", metavar="NAME[,NAME]",
                   help=f"reference recognisers to add as rows, comma-separated ({', '.join(REFERENCES)}); they "
                        "hear the audio themselves on every available core and are not decoders of this model")
    p.add_argument("--hotwords", nargs="+", default=None, help="words or phrases to boost (both beam decoders)")
    p.add_argument("--hotword-weight", type=float, default=None, help="score per hotword in a transcript (10)")
    g = p.add_argument_group("pyctcdecode (beam); unset values come from the LM directory")
    g.add_argument("--alpha", type=float, default=None, help="LM weight")
    g.add_argument("--beta", type=float, default=None, help="word bonus")
    g.add_argument("--beam-width", type=int, default=None, help="hypotheses kept per frame")
    g.add_argument("--beam-prune-logp", type=float, default=None, help="drop beams this far below the best (log)")
    g.add_argument("--token-min-logp", type=float, default=None, help="skip tokens less likely than this (log)")
    g = p.add_argument_group("flashlight; unset values come from the LM directory")
    g.add_argument("--lm-weight", type=float, default=None, help="weight of KenLM's log10 scores (= alpha * ln 10)")
    g.add_argument("--word-score", type=float, default=None, help="word bonus (= beta)")
    g.add_argument("--beam-size", type=int, default=None, help="hypotheses kept per frame")
    g.add_argument("--beam-threshold", type=float, default=None, help="drop beams this far below the best")
    g.add_argument("--lexicon-free", action="store_true", help="spell freely (needs a token LM: build_lm --unit token)")
    g = p.add_argument_group("acoustic model")
    g.add_argument("--max-batch-seconds", type=float, default=DEFAULT_MAX_BATCH_SECONDS,
                   help="padded audio per forward pass (per process); 0 runs one utterance per pass")
    g.add_argument("--max-padding", type=float, default=DEFAULT_MAX_PADDING,
                   help="models without an attention mask: an utterance is batched only with ones at most this "
                        "fraction longer (padding changes their output); 1 disables the bound")
    g.add_argument("--min-duration", type=float, default=EVAL_MIN_DURATION, help="shorter items are dropped (s)")
    g.add_argument("--max-duration", type=float, default=EVAL_MAX_DURATION, help="longer items are dropped (s)")
    g.add_argument("--cache-dir", type=Path, default=DEFAULT_CACHE_DIR, help="log-prob cache")
    g.add_argument("--no-cache", action="store_true", help="neither read nor write the log-prob cache")
    g.add_argument("--check-padding", type=int, default=DEFAULT_PADDING_SAMPLE,
                   help="utterances run one by one to measure the effect of batch padding; 0 skips, -1 checks all")
    g = p.add_argument_group("confidence intervals")
    g.add_argument("--bootstrap", type=int, default=BOOTSTRAP_RESAMPLES, metavar="RESAMPLES",
                   help="paired-bootstrap resamples for the 95%% intervals of WER/CER and their differences; 0 skips")
    g.add_argument("--bootstrap-seed", type=int, default=BOOTSTRAP_SEED, help="seed of the resampling (reproducible)")
    g = p.add_argument_group("tuning")
    g.add_argument("--tune", action="store_true", help="grid-search alpha/beta and store the best in the LM dir")
    g.add_argument("--tune-data", default=None, help="tuning (dev) set; default: --data (then the table is optimistic)")
    g.add_argument("--tune-split", default=None, help="split of --tune-data")
    g.add_argument("--alphas", type=float, nargs="+", default=list(TUNE_ALPHAS), help="LM weights tried")
    g.add_argument("--betas", type=float, nargs="+", default=list(TUNE_BETAS), help="word bonuses tried")
    g.add_argument("--beam-widths", type=int, nargs="+", default=list(TUNE_BEAM_WIDTHS),
                   help="also search beam widths (default: keep the current one)")
    g.add_argument("--nbest", type=int, default=DEFAULT_NBEST, help="n-best size for the oracle WER; 0 skips it")
    g.add_argument("--calibrate", action="store_true", help="fit each decoder's word-confidence calibration on "
                   "--tune-data (after tuning) and store it beside the model (confidence.json)")
    add_common_flags(p)
    args = p.parse_args(argv)
    args.decoder = list(DECODERS) if "all" in args.decoder else [d for d in DECODERS if d in args.decoder]
    args.reference = list(dict.fromkeys(n.strip() for n in args.reference.split(",") if n.strip()))
    if unknown := [n for n in args.reference if n not in REFERENCES]:
        p.error(f"--reference {', '.join(unknown)} is unknown; use one of {', '.join(REFERENCES)}")
    if args.workers < 1:
        p.error(f"--workers is {args.workers}; use 1 or more")
    if args.bootstrap < 0:
        p.error(f"--bootstrap is {args.bootstrap}; use a number of resamples such as 1000, or 0 to skip the intervals")
    searched = [f"--{k.replace('_', '-')}" for k in ("alpha", "beta", "lm_weight", "word_score")
                if getattr(args, k) is not None]
    if args.calibrate and not args.tune_data:
        p.error("--calibrate fits on a dev set: give it with --tune-data (the evaluated set would grade itself)")
    if args.tune and searched:
        p.error(f"{', '.join(searched)} are what --tune searches; give the grid with --alphas/--betas instead")
    return args


def decoder_settings(args: argparse.Namespace, lm: Path | None):
    """The LM directory's stored settings (DecoderSettings) with the command line's overrides."""
    from asr.decoders import load_decoder_settings

    flags = ("alpha", "beta", "beam_width", "beam_prune_logp", "token_min_logp", "hotwords", "hotword_weight",
             "lm_weight", "word_score", "beam_size", "beam_threshold")
    return load_decoder_settings(lm).with_overrides(num_processes=args.workers, lexicon_free=args.lexicon_free or None,
                                                    **{name: getattr(args, name) for name in flags})


def acoustic_for(args: argparse.Namespace, data: str, split: str | None, accelerator) -> tuple:
    """A source's log-probs (AcousticOutput, cached or computed; None off the main process), utterances by id."""
    from asr.evaluation import compute_source_acoustic, eval_filters
    from asr.sources import SourceConfig

    return compute_source_acoustic(
        args.model, SourceConfig(kind=args.source_kind, path=data, split=split, text_column=args.text_column,
                                 audio_column=args.audio_column),
        filters=eval_filters(args.min_duration, args.max_duration), max_batch_seconds=args.max_batch_seconds,
        max_padding=args.max_padding, cache_dir=None if args.no_cache else args.cache_dir, accelerator=accelerator,
        progress=not args.no_progress)


def run_tuning(args: argparse.Namespace, lm: Path, acoustic, data: str) -> None:
    """Grid-search the beam decoders on `acoustic`, store the best values in the LM dir, write tuning.md/.json."""
    from asr.text import load_vocab
    from asr.tuning import TuneGrid, tune_and_save

    result = tune_and_save(
        acoustic.log_probs, acoustic.references, load_vocab(args.model), lm, args.output, model=str(args.model),
        decoders=[d for d in args.decoder if d in BEAM_DECODERS] or list(BEAM_DECODERS), data=data,
        grid=TuneGrid(tuple(args.alphas), tuple(args.betas), tuple(args.beam_widths)),
        settings=decoder_settings(args, lm), processes=args.workers, nbest=args.nbest, progress=not args.no_progress)
    print(result.to_markdown())


def main(argv: list[str] | None = None) -> int:
    """Run the acoustic model once per set, tune (optionally), decode with each decoder, write and print the table.

    Returns:
        The exit code (see the module docstring).
    """
    args = parse_args(argv)
    from asr import launch
    from asr.confidence import load_calibrations
    from asr.decoders import check_lm_fits, find_lm
    from asr.reference import check_reference
    from asr.text import load_vocab

    try:  # before the acoustic model runs, not after
        vocab = load_vocab(args.model)  # no model directory there: one line, before any work
        searches = args.tune or any(d in BEAM_DECODERS for d in args.decoder)
        lm = find_lm(args.model, args.lm, needed=searches)
        if lm is not None and searches:
            check_lm_fits(lm, vocab, args.hotwords or ())  # another alphabet, unspellable hotwords: refused now
        for name in args.reference:
            check_reference(name)
        load_calibrations(args.model)  # a damaged confidence.json is an input error, before any work
    except (ValueError, RuntimeError, FileNotFoundError) as e:
        print(f"error: {e}", file=sys.stderr)
        return EXIT_USAGE
    accelerator = launch.make_accelerator(int(os.environ.get("WORLD_SIZE", "1")))
    setup_logging(args, main_process=accelerator.is_main_process)
    # Every process runs its share of both acoustic passes, then all leave the process group together (see
    # asr.launch.finish); only the main one decodes after that, with no group left to wait in.
    tune_acoustic = None
    try:  # the inputs: a source that cannot be read, or holds no usable utterance, is a one-line error
        if (args.tune or args.calibrate) and args.tune_data:
            tune_acoustic, _ = acoustic_for(args, args.tune_data, args.tune_split, accelerator)
        acoustic, utterances = acoustic_for(args, args.data, args.split, accelerator)
        accelerator.wait_for_everyone()
    except ValueError as e:
        logger.error("%s", e)
        return EXIT_USAGE
    finally:
        launch.finish(accelerator)
    if acoustic is None:  # not the main process: its share of the model work is done
        return EXIT_OK
    return _evaluate(args, lm, vocab, acoustic, utterances, tune_acoustic)


def _evaluate(args: argparse.Namespace, lm: Path | None, vocab: dict[str, int], acoustic, utterances,
              tune_acoustic) -> int:
    """The main process's work after the acoustic passes: tune, decode, write the table; returns the exit code."""
    from asr.confidence import load_calibrations
    from asr.evaluation import FAILED_AUDIO, calibrate_decoders
    from asr.model_card import card_after_tuning
    from asr.report import compare_decoders, write_results
    from asr.text import TextNormalizer

    if args.tune:
        if tune_acoustic is None:
            logger.warning("tuning on the evaluation set itself, so the table's beam WER is optimistic; pass "
                           "--tune-data DEV to tune on another set")
        run_tuning(args, lm, tune_acoustic or acoustic, args.tune_data or args.data)
    settings = decoder_settings(args, lm)  # after tuning, the LM directory holds the tuned values
    if args.calibrate:
        calibrate_decoders(args.model, args.decoder, vocab, tune_acoustic, lm, settings, data=args.tune_data)
    report, rows = compare_decoders(
        acoustic, utterances, args.decoder, vocab, lm, settings, model=str(args.model), data=args.data,
        references=args.reference, normalizer=TextNormalizer.load(args.model) if args.reference else None,
        padding_sample=args.check_padding, resamples=args.bootstrap, seed=args.bootstrap_seed,
        calibrations=load_calibrations(args.model))
    write_results(report, rows, acoustic.drops, args.output)
    if args.tune and (card := card_after_tuning(args.model, lm, args.data, args.split, report.results)):
        logger.info("model card rewritten with the tuned decoders and this table: %s", card)
    print(report.to_markdown())
    print(f"written to {args.output}: results.md/.json/.csv, utterances.jsonl/.csv, comparison.png"
          + (", breakdown.png" if report.breakdowns else "") + ", dropped.jsonl")
    if failed := [d for d in acoustic.drops if d.reason in FAILED_AUDIO]:
        logger.warning("%d utterance(s) had missing or unreadable audio (see %s); exit code %d", len(failed),
                       args.output / "dropped.jsonl", EXIT_SOME_FAILED)
        return EXIT_SOME_FAILED
    return EXIT_OK


if __name__ == "__main__":
    exit_with(main())
