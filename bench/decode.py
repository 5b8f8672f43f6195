"""Beam search + KenLM speed: pyctcdecode one utterance at a time vs this project's decoders, same logits and LM.

    # self-contained: noisy CTC log-probs of 100 held-out fortunes sentences, 4-gram KenLM from 15k others
    $ OMP_NUM_THREADS=1 .venv/bin/python bench/decode.py --output runs/bench/
    # a trained model: its log-probs on a test set (cached, see scripts/eval.py), its LM (scripts/build_lm.py)
    $ .venv/bin/python bench/decode.py --model runs/x/model --data data/synth/test.jsonl --lm runs/x/model

Rows, all decoding the same log-probs with the same LM, alpha and beta (the LM directory's
attrs.json; flashlight's lm_weight = alpha * ln 10 and word_score = beta pose the same objective,
see asr/beam.py):

- baseline: `pyctcdecode.build_ctcdecoder(labels, kenlm_model_path, unigrams, alpha, beta).decode(lp)`,
  one utterance after another, every search setting at pyctcdecode's default (beam width 100);
- ours, pyctcdecode's search on the frames it can act on (`PyCTCDecodeBeam`, `skip_idle_frames`: the
  2nd, 3rd, ... frame of each run where only the blank passes `token_min_logp` is a no-op for every
  beam and is dropped, see `asr.beam.IdleFrames`), in one process and on a fork pool
  (`num_processes=N`): the same search, so the same transcripts (the baseline's unknown-token marks
  "⁇" are removed, as ours drop [UNK]); and the same with beam width `--fast-beam-width` (32), a
  narrower search (flashlight too, on the pool);
- flashlight-text lexicon decoder (`FlashlightBeam`, beam 100), in one process and on a fork pool:
  it can only output words of the LM's vocabulary (the header gives the share of reference words
  outside it, which pyctcdecode can still spell);
- flashlight skipping idle frames (`FlashlightOptions.idle_token_logp`, at each --idle-token-logps):
  the 2nd, 3rd, ... frame of each run where the blank is the argmax and every other token is below the
  threshold is dropped; nearer 0 than -beam_threshold it is an approximation (a token inside the
  threshold could have taken a beam slot), so its WER column is the measure; at the full and the
  narrow beam, and with at most 8 tokens tried per frame (`beam_size_token`);
- greedy CTC: no LM, the speed ceiling.

utt/s counts decoding only (building a decoder, i.e. loading the LM and the lexicon trie, is
reported apart); each row is timed `--repeats` times after a warm-up on a few utterances and the
median counts. Target (issue 17): a row of ours at >= 10x the baseline's utt/s with a WER at most
0.2 percentage points above it. Other jobs on the machine slow every row (the load average is
printed); the pool rows need idle cores to gain.

The synthetic log-probs follow tests/test_beam.py: a few frames per character with blanks between,
Gaussian noise on every score, and about a quarter of the characters confused with a random letter
about as strongly. Their WERs say how the decoders compare, not how a real model would do.
"""

from __future__ import annotations

import sys

if __package__ in (None, ""):  # run by path (python bench/decode.py): the repository root, not bench/, goes first
    sys.path[0] = str(__import__("pathlib").Path(__file__).resolve().parents[1])

import argparse
import dataclasses
import logging
import os
import tempfile
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from asr.beam import (
    FlashlightBeam,
    FlashlightOptions,
    PYCTCDECODE_UNK,
    GreedyCTC,
    PyCTCDecodeBeam,
    pyctcdecode_labels,
)
from bench.common import machine_info, noisy_log_probs, markdown_table, ratio, time_runs, write_report
from asr.corpus import load_sentences
from asr.decoders import DecoderSettings, has_lm, load_decoder_settings, load_lm_files
from asr.defaults import DEFAULT_CACHE_DIR
from asr.metrics import error_rates
from asr.text import build_vocab, load_vocab

logger = logging.getLogger("bench_decode")

TARGET_SPEEDUP = 10.0  # issue 17 (issue 7 asked 5x): ours >= 10x the baseline's utt/s ...
TARGET_WER_POINTS = 0.2  # ... at a WER at most this many percentage points above the baseline's
WARMUP_UTTERANCES = 3  # decoded untimed by every row first (imports, LM pages, lazy state)
FAST_BEAM_WIDTH = 32  # the narrower pyctcdecode row: ~3x faster than 100, WER within noise on the synthetic set
IDLE_TOKEN_LOGPS = (-8.0, -15.0)  # flashlight rows that skip frames where every non-blank token is below this
TOKEN_BEAM = 8  # flashlight rows that try only the 8 likeliest tokens per frame (beam_size_token)


@dataclass(frozen=True)
class DecodeSet:
    """Log-probs to decode, their references, and the vocabulary and LM to decode them with."""

    description: str
    references: list[str]
    log_probs: list[np.ndarray]  # [T_i, V] float32 per utterance
    vocab: dict[str, int]
    lm_dir: Path


@dataclass(frozen=True)
class DecoderRow:
    """One decoder's result on the whole set."""

    name: str
    settings: str
    processes: int
    ours: bool  # a candidate for the target (not the baseline, not greedy)
    load_seconds: float
    runs: tuple[float, ...]  # decode seconds of each timed run
    texts: list[str]
    wer: float

    @property
    def seconds(self) -> float:
        return float(np.median(self.runs))

# ------------------------------------------------------------------------------------------ inputs
def synthetic_set(work_dir: Path, num_utterances: int = 100, lm_sentences: int = 15_000, order: int = 4,
                  seed: int = 0, sentences: Sequence[str] | None = None) -> DecodeSet:
    """Noisy log-probs of the last `num_utterances` fortunes sentences; a KenLM from the first `lm_sentences`."""
    from lm.build import LMBuildOptions, build_lm

    sentences = list(sentences) if sentences is not None else load_sentences()
    if num_utterances < 1 or lm_sentences < 1 or num_utterances + lm_sentences > len(sentences):
        raise ValueError(f"{num_utterances} test + {lm_sentences} LM sentences do not fit the {len(sentences)} "
                         "available; lower --num-utterances or --lm-sentences.")
    references = sentences[-num_utterances:]
    vocab = build_vocab(sentences)
    lm_dir = work_dir / "lm"
    build_lm(sentences[:lm_sentences], lm_dir, vocab=vocab, options=LMBuildOptions(order=order))
    rng = np.random.default_rng(seed)
    log_probs = [noisy_log_probs(ref, vocab, rng) for ref in references]
    description = (f"synthetic noisy log-probs of {num_utterances} held-out fortunes sentences (seed {seed}); "
                   f"{order}-gram KenLM from {lm_sentences} other sentences")
    return DecodeSet(description, references, log_probs, vocab, lm_dir)


def model_set(model: Path, data: str, lm: Path | None, cache_dir: Path | None) -> DecodeSet:
    """A trained model's log-probs on `data` (computed once, then read from the cache) and its LM."""
    from asr.evaluation import compute_acoustic
    from asr.sources import SourceConfig, load_source

    lm_dir = lm if lm is not None else model
    if not has_lm(lm_dir):
        raise ValueError(f"{lm_dir} holds no KenLM directory; build one with `scripts/build_lm.py --model {model} "
                         "--text LM_TEXT` or pass --lm DIR.")
    acoustic = compute_acoustic(model, load_source(SourceConfig(path=data)), cache_dir=cache_dir)
    description = (f"{model} on {data}: {len(acoustic.ids)} utterances, {acoustic.audio_seconds / 60:.1f} min "
                   f"of audio; LM {lm_dir}")
    return DecodeSet(description, acoustic.references, acoustic.log_probs, load_vocab(model), lm_dir)

# ---------------------------------------------------------------------------------------- decoders
def clean_baseline_text(text: str) -> str:
    """pyctcdecode's text without its unknown-token marks, spaced like our decoders' (they drop [UNK])."""
    return " ".join(text.replace(PYCTCDECODE_UNK, "").split())


def replace_beam(options: FlashlightOptions, beam_size: int, tokens: int | None = None) -> FlashlightOptions:
    """`options` with another beam size and tokens tried per frame (None: all)."""
    return dataclasses.replace(options, beam_size=beam_size, beam_size_token=tokens)


@dataclass(frozen=True)
class Candidate:
    """A decoder ready to time: `decode` maps a list of [T, V] log-probs to texts."""

    name: str
    settings: str
    processes: int
    ours: bool
    load_seconds: float
    decode: Callable[[list[np.ndarray]], list[str]]


def make_decoders(decode_set: DecodeSet, settings: DecoderSettings, processes: int,
                  fast_beam_width: int = FAST_BEAM_WIDTH,
                  idle_token_logps: Sequence[float] = IDLE_TOKEN_LOGPS) -> list[Candidate]:
    """The rows of the table, baseline first, each with its decoder built (LM loaded)."""
    from pyctcdecode import build_ctcdecoder

    files = load_lm_files(decode_set.lm_dir)
    py, fl = settings.pyctcdecode, settings.flashlight
    labels = pyctcdecode_labels(decode_set.vocab)
    rows = []

    started = time.perf_counter()
    baseline = build_ctcdecoder(labels, kenlm_model_path=str(files.kenlm_path), unigrams=list(files.unigrams),
                                alpha=py.alpha, beta=py.beta)
    rows.append(Candidate("pyctcdecode (baseline)", f"alpha={py.alpha:g} beta={py.beta:g}, defaults (beam 100)", 1,
                          False, time.perf_counter() - started,
                          lambda lps: [clean_baseline_text(baseline.decode(lp)) for lp in lps]))

    variants = [(py.beam_width, 1), (py.beam_width, processes), (fast_beam_width, processes)]
    for beam_width, workers in dict.fromkeys(variants):
        started = time.perf_counter()
        ours_py = PyCTCDecodeBeam(decode_set.vocab, files.kenlm_path, files.unigrams,
                                  dataclasses.replace(py, beam_width=beam_width, num_processes=workers,
                                                      skip_idle_frames=True, prune_history=True))  # decode()'s search
        pool = f", fork pool x{workers}" if workers > 1 else ""
        rows.append(Candidate(f"pyctcdecode beam {beam_width}, idle frames skipped{pool}", f"beam {beam_width}",
                              workers, True, time.perf_counter() - started,
                              lambda lps, d=ours_py: [h.text for h in d.decode_batch(lps)]))

    def flashlight_row(name: str, options: FlashlightOptions) -> Candidate:
        started = time.perf_counter()
        decoder = FlashlightBeam(decode_set.vocab, files.kenlm_path, files.unigrams, options)
        pool = f", fork pool x{options.num_processes}" if options.num_processes > 1 else ""
        settings_text = fl_settings.replace(f"beam {fl.beam_size}", f"beam {options.beam_size}")
        return Candidate(name + pool, settings_text, max(1, options.num_processes), True,
                         time.perf_counter() - started, lambda lps, d=decoder: [h.text for h in d.decode_batch(lps)])

    fl_settings = f"lexicon, lm_weight={fl.lm_weight:.3g} word_score={fl.word_score:g} beam {fl.beam_size}"
    # flashlight's own fork pool (FlashlightOptions.num_processes), the one eval.py --workers uses
    fl_pool = dataclasses.replace(fl, num_processes=processes)
    rows.append(flashlight_row("flashlight", dataclasses.replace(fl, num_processes=0)))
    if processes > 1:
        rows.append(flashlight_row("flashlight", fl_pool))
    if fast_beam_width != fl.beam_size:
        rows.append(flashlight_row(f"flashlight beam {fast_beam_width}", replace_beam(fl_pool, fast_beam_width)))
        rows.append(flashlight_row(f"flashlight beam {fast_beam_width}, {TOKEN_BEAM} tokens/frame",
                                   replace_beam(fl_pool, fast_beam_width, TOKEN_BEAM)))
    # Skipping idle frames (asr.beam.IdleFrames): each threshold, at the full and the narrow beam, with and without
    # a cap on the tokens tried per frame.
    for logp in idle_token_logps:
        for beam_size, tokens in ((fl.beam_size, None), (fast_beam_width, None), (fast_beam_width, TOKEN_BEAM)):
            name = (f"flashlight beam {beam_size}" + (f", {tokens} tokens/frame" if tokens else "")
                    + f", idle frames < {logp:g} skipped")
            rows.append(flashlight_row(name, dataclasses.replace(replace_beam(fl_pool, beam_size, tokens),
                                                                 idle_token_logp=logp)))

    greedy = GreedyCTC(decode_set.vocab)
    rows.append(Candidate("greedy (ceiling)", "no LM", 1, False, 0.0,
                          lambda lps: [h.text for h in greedy.decode_batch(lps)]))
    return rows


def run_benchmark(decode_set: DecodeSet, processes: int = 2, repeats: int = 1,
                  settings: DecoderSettings | None = None, fast_beam_width: int = FAST_BEAM_WIDTH,
                  idle_token_logps: Sequence[float] = IDLE_TOKEN_LOGPS) -> list[DecoderRow]:
    """Every row's transcripts, WER and decode times on `decode_set`; the baseline first."""
    settings = settings or load_decoder_settings(decode_set.lm_dir)
    out = []
    for c in make_decoders(decode_set, settings, processes, fast_beam_width, idle_token_logps):
        c.decode(decode_set.log_probs[:WARMUP_UTTERANCES])
        texts: list[str] = []

        def run(decode: Callable[[list[np.ndarray]], list[str]] = c.decode) -> None:
            texts[:] = decode(decode_set.log_probs)

        timing = time_runs(run, repeats=repeats, warmup=0)
        wer = error_rates(decode_set.references, texts).wer
        out.append(DecoderRow(c.name, c.settings, c.processes, c.ours, c.load_seconds, timing.runs, list(texts), wer))
        logger.info("%s: %.2f s, WER %.4f", c.name, timing.median, wer)
    return out


def render(decode_set: DecodeSet, rows: Sequence[DecoderRow], info: Mapping[str, Any]) -> str:
    """The table, what was measured, and whether the target is met."""
    base = rows[0]
    n = len(decode_set.references)
    table = []
    for row in rows:
        speedup = ratio(base.seconds, row.seconds)
        points = 100 * (row.wer - base.wer)
        same = sum(a == b for a, b in zip(row.texts, base.texts))
        target = (speedup >= TARGET_SPEEDUP and points <= TARGET_WER_POINTS) if row.ours else None
        table.append([row.name, row.processes, n / row.seconds, f"{speedup:.2f}x", round(100 * row.wer, 2),
                      f"{points:+.2f}", f"{same}/{n}", row.load_seconds, target, row.settings])
    headers = ["decoder", "processes", "utt/s", "vs baseline", "WER %", "ΔWER (pp)", "= baseline text",
               "load s", f">= {TARGET_SPEEDUP:g}x at <= +{TARGET_WER_POINTS:g} pp", "settings"]
    frames = sum(len(lp) for lp in decode_set.log_probs)
    lm_words = set(load_lm_files(decode_set.lm_dir).unigrams)
    ref_words = [w for ref in decode_set.references for w in ref.split()]
    oov = sum(w not in lm_words for w in ref_words) / max(len(ref_words), 1)
    return (f"## Beam search + KenLM: {decode_set.description}\n\n"
            f"{n} utterances, {frames} frames, {100 * oov:.1f}% of reference words outside the LM's vocabulary; "
            f"median of {len(base.runs)} timed run(s) per row after a "
            f"{WARMUP_UTTERANCES}-utterance warm-up; {info['cpus']} CPUs, load average {info['load_average_1min']} "
            f"at the start.\n\n" + markdown_table(headers, table))

# ------------------------------------------------------------------------------------------- main
def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    """Command-line arguments."""
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", type=Path, default=None, help="model directory (default: synthetic log-probs)")
    p.add_argument("--data", default=None, help="with --model: manifest or corpus to decode (any asr.sources layout)")
    p.add_argument("--lm", type=Path, default=None, help="with --model: LM directory (default: --model)")
    p.add_argument("--cache-dir", type=Path, default=DEFAULT_CACHE_DIR,
                   help="with --model: log-probs cache (as scripts/eval.py)")
    p.add_argument("--num-utterances", type=int, default=100, help="synthetic: held-out sentences to decode")
    p.add_argument("--lm-sentences", type=int, default=15_000, help="synthetic: sentences the LM is built from")
    p.add_argument("--seed", type=int, default=0, help="synthetic: noise seed")
    p.add_argument("--processes", type=int, default=os.cpu_count() or 1, help="fork-pool workers of the pool rows")
    p.add_argument("--fast-beam-width", type=int, default=FAST_BEAM_WIDTH,
                   help="beam width of the narrower pyctcdecode row")
    p.add_argument("--idle-token-logps", type=float, nargs="*", default=list(IDLE_TOKEN_LOGPS),
                   help="flashlight rows skipping idle frames at each of these thresholds (none: no such rows)")
    p.add_argument("--repeats", type=int, default=1, help="timed runs per row; the median counts")
    p.add_argument("--output", type=Path, default=None, help="also write decode.md and decode.json here")
    args = p.parse_args(argv)
    if (args.model is None) != (args.data is None):
        p.error("--model and --data go together (or give neither for the synthetic set)")
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s", datefmt="%H:%M:%S")
    info = machine_info()
    with tempfile.TemporaryDirectory(prefix="bench-decode-") as work:
        try:
            if args.model is not None:
                decode_set = model_set(args.model, args.data, args.lm, args.cache_dir)
            else:
                decode_set = synthetic_set(Path(work), args.num_utterances, args.lm_sentences, seed=args.seed)
        except (ValueError, FileNotFoundError) as e:
            logger.error("%s", e)
            return 2
        rows = run_benchmark(decode_set, args.processes, args.repeats, fast_beam_width=args.fast_beam_width,
                             idle_token_logps=args.idle_token_logps)
        markdown = render(decode_set, rows, info)  # reads the LM's words: before the temporary LM is deleted
    print("\n" + markdown)
    if args.output is not None:
        data = {"description": decode_set.description, "utterances": len(decode_set.references), "machine": info,
                "command": " ".join(sys.argv),
                "rows": [{"decoder": r.name, "settings": r.settings, "processes": r.processes,
                          "load_seconds": r.load_seconds, "runs_seconds": list(r.runs), "seconds": r.seconds,
                          "utterances_per_second": len(r.texts) / r.seconds, "wer": r.wer,
                          "speedup": ratio(rows[0].seconds, r.seconds)} for r in rows]}
        write_report(args.output, "decode", markdown, data)
    return 0

if __name__ == "__main__":
    sys.exit(main())
