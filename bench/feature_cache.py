"""Frozen conv feature-encoder cache: the training-step time it saves against the encoder's own forward time.

    # the tiny config (configs/train/tiny_cpu.yaml's architecture) and wav2vec2-base, 4 x 10 s batches
    $ OMP_NUM_THREADS=2 .venv/bin/python bench/feature_cache.py --output runs/bench/
    # smoke test of the code path (seconds): tiny_cpu and the 2 x 32 test model, 2 x 1 s batches
    $ .venv/bin/python bench/feature_cache.py --smoke

What one training step is: what scripts/train.py runs per micro-batch with `model.freeze_feature_encoder:
true` (`asr.model.build_model`, `asr.train.forward_loss`: CTC in float32 over each utterance's real
frames, backward, gradient clipping at 1.0, AdamW from `asr.train.build_optimizer`), uncached on the
audio batch (`asr.collate.CTCCollator`), cached on the batch `asr.feature_cache.FeatureCollator` makes
from the features `asr.feature_cache.FeatureCache` stored on disk (a temporary folder) and read back.

In one process, per architecture: one model is built (random weights, dropout 0, SpecAugment off
unless --mask-time-prob) and copied, so the uncached and cached runs start from the same weights,
each with its own AdamW and its own torch/numpy RNG stream (same seed). Every step i then times, on
batch i (cycling over --batches distinct batches of --batch-size utterances of --seconds of noise
with random labels): (a) the conv encoder's forward on the audio batch, in train mode with autograd
on, as the step runs it; (b) the uncached step; (c) the cached step. Interleaving the three keeps a
load change on a busy machine from favouring one of them. The first --warmup steps are not timed;
the fastest of the timed runs is reported (the least disturbed by other jobs; all are in the JSON;
on a busy machine use --threads 1 and more --steps). "saved / conv" = (b - c) / a is the target (>= 0.9: the cache removes the
encoder's cost and adds none); the loss difference is the largest |loss_b - loss_c| over every step,
warm-up included, at dropout 0.

Utterances in a batch are equally long: a group-norm encoder (both architectures here) normalises
over the padded input, so its cached per-utterance features equal the batch's only without padding
(see asr/feature_cache.py). Reading the cache (disk + collate) runs in DataLoader workers in training
and is reported separately, per batch, beside the one-off cost of filling it.
"""

from __future__ import annotations

import sys

if __package__ in (None, ""):  # run by path (python bench/feature_cache.py): the repository root, not bench/, goes first
    sys.path[0] = str(__import__("pathlib").Path(__file__).resolve().parents[1])

import argparse
import copy
import logging
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch

from bench.common import (
    ARCHITECTURES,
    Timing,
    ctc_vocab,
    machine_info,
    markdown_table,
    ratio,
    write_report,
)

logger = logging.getLogger("bench_feature_cache")

ROOT = Path(__file__).resolve().parents[1]
TINY_CPU_CONFIG = ROOT / "configs" / "train" / "tiny_cpu.yaml"
CHARS_PER_SECOND = 12  # label length of the random transcripts (read speech is 12-15 characters/s)
TARGET = 0.9  # issue 7: the step time saved must be >= 90% of the conv encoder's forward time
NAMES = {"tiny_cpu": "tiny_cpu.yaml", "base": "wav2vec2-base", "tiny": "2 x 32 test model",
         "xlsr-300m": "XLS-R 300M"}


def architecture(name: str) -> dict[str, Any]:
    """Config kwargs of `name`: tiny_cpu from configs/train/tiny_cpu.yaml, others from bench.common.ARCHITECTURES."""
    if name == "tiny_cpu":
        from asr.config import load_config
        from asr.train import TrainConfig

        return dict(load_config(TrainConfig, TINY_CPU_CONFIG).model.architecture)
    return dict(ARCHITECTURES[name])


class RngStream:
    """Torch's and numpy's global RNG states of one run: `with stream:` draws as if it had them alone."""

    def __init__(self, seed: int):
        outer = torch.get_rng_state(), np.random.get_state()
        torch.manual_seed(seed)
        np.random.seed(seed)
        self.state = torch.get_rng_state(), np.random.get_state()
        self._outer = outer
        self._restore(outer)

    @staticmethod
    def _restore(state) -> None:
        torch.set_rng_state(state[0])
        np.random.set_state(state[1])

    def __enter__(self) -> None:
        self._outer = torch.get_rng_state(), np.random.get_state()
        self._restore(self.state)

    def __exit__(self, *exc: object) -> None:
        self.state = torch.get_rng_state(), np.random.get_state()
        self._restore(self._outer)


def make_items(batches: int, batch_size: int, seconds: float, frames: int, vocab_size: int, seed: int) -> list:
    """`batches` lists of utterance dicts (normalised noise, random labels), as SpeechDataset yields them."""
    from asr.audio import normalize_audio
    from asr.constants import SAMPLE_RATE

    rng = np.random.default_rng(seed)
    samples = int(seconds * SAMPLE_RATE)
    labels = max(1, min(int(seconds * CHARS_PER_SECOND), frames // 2))
    return [[{"input_values": normalize_audio(rng.standard_normal(samples).astype(np.float32)),
              "labels": rng.integers(3, vocab_size, labels).tolist(), "id": f"b{b}u{u}"}
             for u in range(batch_size)] for b in range(batches)]


def measure(arch: str, args: argparse.Namespace) -> dict[str, Any]:
    """Times (a), (b), (c) and compares the losses for one architecture (see the module docstring)."""
    from asr.collate import CTCCollator
    from asr.feature_cache import FeatureCache, FeatureCollator, encode_audio, encoder_fingerprint, use_cached_features
    from asr.model import ModelConfig, build_model, feature_extractor_settings, frames_fn_for
    from asr.train import OptimConfig, build_optimizer, forward_loss

    cpu = torch.device("cpu")
    torch.manual_seed(args.seed)
    cfg = ModelConfig(architecture=architecture(arch), freeze_feature_encoder=True, mask_time_prob=args.mask_time_prob,
                      hidden_dropout=0.0, attention_dropout=0.0, activation_dropout=0.0, feat_proj_dropout=0.0,
                      final_dropout=0.0)
    vocab = ctc_vocab()
    uncached = build_model(cfg, vocab, pad_token_id=0)
    uncached.train()
    cached = copy.deepcopy(uncached)
    use_cached_features(cached)
    return_mask, _ = feature_extractor_settings(cfg, uncached.config)
    frames_fn = frames_fn_for(uncached.config)
    channels = int(uncached.config.conv_dim[-1])
    items = make_items(args.batches, args.batch_size, args.seconds, frames_fn(int(args.seconds * 16000)), len(vocab),
                       args.seed)
    audio_batches = [CTCCollator(return_attention_mask=return_mask)(batch) for batch in items]

    with tempfile.TemporaryDirectory(prefix="bench_feature_cache_") as tmp:
        cache = FeatureCache(tmp, encoder_fingerprint(uncached, True, "float32"), channels, frames_fn)
        started = time.perf_counter()
        for batch in items:
            for item in batch:
                samples = item["input_values"]
                cache.save(item["id"], encode_audio(uncached, samples), len(samples), item["id"])
        fill_seconds = time.perf_counter() - started
        read_runs = []
        feature_batches = []
        for batch in items:
            started = time.perf_counter()
            loaded = [cache.load(item["id"]) for item in batch]
            feature_batches.append(FeatureCollator(return_attention_mask=return_mask)(
                [{"features": f, "samples": n, "labels": item["labels"], "id": item["id"]}
                 for (f, n), item in zip(loaded, batch)]))
            read_runs.append(time.perf_counter() - started)

    encoder = uncached.base_model.feature_extractor  # the conv encoder, as the uncached step runs it
    runs = {"uncached": (uncached, build_optimizer(uncached, OptimConfig(lr=1e-4)), RngStream(args.seed), audio_batches),
            "cached": (cached, build_optimizer(cached, OptimConfig(lr=1e-4)), RngStream(args.seed), feature_batches)}
    times: dict[str, list[float]] = {"conv": [], "uncached": [], "cached": []}
    losses: dict[str, list[float]] = {"uncached": [], "cached": []}
    for step in range(args.warmup + args.steps):
        audio = audio_batches[step % len(audio_batches)]["input_values"]
        started = time.perf_counter()
        encoder(audio)
        conv = time.perf_counter() - started
        for name, (model, optimizer, rng, batches) in runs.items():
            with rng:
                started = time.perf_counter()
                loss, _, _ = forward_loss(model, model, batches[step % len(batches)], cpu)
                loss.backward()
                torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
                optimizer.step()
                optimizer.zero_grad(set_to_none=True)
                elapsed = time.perf_counter() - started
            losses[name].append(loss.item())
            if step >= args.warmup:
                times[name].append(elapsed)
        if step >= args.warmup:
            times["conv"].append(conv)
        logger.info("%s step %d: conv %.3f s, losses %.6f / %.6f", arch, step, conv, losses["uncached"][-1],
                    losses["cached"][-1])

    op_times = op_profile(runs, cpu, args.profile) if args.profile else None
    # the fastest run: least disturbed by other jobs (every run does the same work); all runs are in the JSON
    best = {name: Timing(tuple(values)).best for name, values in times.items()}
    frames = frames_fn(int(args.seconds * 16000))
    return {
        "arch": arch, "params": sum(p.numel() for p in uncached.parameters()),
        "feat_extract_norm": uncached.config.feat_extract_norm, "attention_mask": return_mask,
        "batch_size": args.batch_size, "seconds": args.seconds, "frames": frames, "channels": channels,
        "conv_s": best["conv"], "uncached_s": best["uncached"], "cached_s": best["cached"],
        "saved_over_conv": ratio(best["uncached"] - best["cached"], best["conv"]),
        "cached_over_uncached": ratio(best["cached"], best["uncached"]),
        "max_loss_diff": max(abs(a - b) for a, b in zip(losses["uncached"], losses["cached"])),
        "loss_steps": len(losses["cached"]), "losses": losses, "times": times,
        "cache_read_s": Timing(tuple(read_runs)).best,
        "fill_s_per_audio_s": fill_seconds / (len(items) * args.batch_size * args.seconds),
        "cache_mb_per_audio_hour": frames / args.seconds * 3600 * channels * 4 / 1e6,
        "profile": op_times,
    }


def op_profile(runs: dict[str, tuple], cpu: torch.device, repeats: int) -> dict[str, Any]:
    """Self CPU seconds per operator of one uncached and one cached step (torch.profiler), `repeats`
    times alternately: where the saving comes from, and how much identical steps vary."""
    from torch.profiler import ProfilerActivity, profile

    from asr.train import forward_loss

    per_run: dict[str, list[dict[str, float]]] = {"uncached": [], "cached": []}
    calls: dict[str, dict[str, int]] = {}  # calls per operator in the last profiled step: what ran, not how long
    for _ in range(repeats):
        for name, (model, optimizer, rng, batches) in runs.items():
            with rng, profile(activities=[ProfilerActivity.CPU]) as prof:
                loss, _, _ = forward_loss(model, model, batches[0], cpu)
                loss.backward()
                torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
                optimizer.step()
                optimizer.zero_grad(set_to_none=True)
            per_run[name].append({e.key: e.self_cpu_time_total / 1e6 for e in prof.key_averages()})
            calls[name] = {e.key: e.count for e in prof.key_averages()}
    ops = sorted(set().union(*per_run["uncached"], *per_run["cached"]))
    mean = {name: {op: sum(r.get(op, 0.0) for r in rs) / len(rs) for op in ops} for name, rs in per_run.items()}
    return {"repeats": repeats, "mean": mean, "calls": calls,
            "spread_uncached": {op: max(r.get(op, 0.0) for r in per_run["uncached"]) -
                                min(r.get(op, 0.0) for r in per_run["uncached"]) for op in ops}}


def render(results: list[dict[str, Any]], args: argparse.Namespace, info: dict[str, Any]) -> str:
    """The table and what was measured."""
    rows = []
    for r in results:
        met = "met" if r["saved_over_conv"] >= TARGET else "missed"
        rows.append([NAMES.get(r["arch"], r["arch"]), f"{r['params'] / 1e6:.2f} M", r["conv_s"], r["uncached_s"],
                     r["cached_s"], f"{r['saved_over_conv']:.2f} ({met})", f"{r['cached_over_uncached']:.2f}x",
                     f"{r['max_loss_diff']:.1e}", r["cache_read_s"], r["fill_s_per_audio_s"],
                     round(r["cache_mb_per_audio_hour"])])
    headers = ["model", "params", "conv fwd s", "uncached step s", "cached step s", f"saved / conv (>= {TARGET})",
               "cached / uncached", f"max loss diff ({results[0]['loss_steps']} steps)", "cache read s",
               "fill s per audio s", "cache MB per audio h"]
    text = ""
    for r in results:
        if r.get("profile"):
            prof = r["profile"]
            diff = {op: prof["mean"]["uncached"][op] - prof["mean"]["cached"][op] for op in prof["mean"]["uncached"]}
            top = sorted(diff, key=lambda op: -abs(diff[op]))[:10]
            text += (f"\n\nPer-operator self CPU seconds, {NAMES.get(r['arch'], r['arch'])}, mean of {prof['repeats']} "
                     "profiled steps each (the ops whose time differs most; \"uncached spread\" = max - min over the "
                     "uncached runs):\n\n" + markdown_table(
                         ["op", "uncached", "cached", "uncached - cached", "uncached spread"],
                         [[op, prof["mean"]["uncached"][op], prof["mean"]["cached"][op], diff[op],
                           prof["spread_uncached"][op]] for op in top]))
    return (f"## Frozen conv encoder cache: {args.batch_size} x {args.seconds:g} s per step\n\n"
            f"Fastest of {args.steps} interleaved steps after {args.warmup} warm-up; forward + CTC + backward + clip + "
            f"AdamW; dropout 0, mask_time_prob {args.mask_time_prob:g}; equal-length utterances (no padding); float32 "
            f"cache read from disk outside the step (\"cache read s\" per batch); {info['cpus']} CPUs, "
            f"{info['torch_threads']} torch threads, load average {info['load_average_1min']}.\n\n"
            + markdown_table(headers, rows) + text)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    """Command-line arguments."""
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--archs", default="tiny_cpu,base",
                   help=f"comma-separated: tiny_cpu (configs/train/tiny_cpu.yaml) or any of {sorted(ARCHITECTURES)}")
    p.add_argument("--batch-size", type=int, default=4, help="utterances per step")
    p.add_argument("--seconds", type=float, default=10.0, help="length of every utterance")
    p.add_argument("--batches", type=int, default=2, help="distinct batches, cycled over the steps")
    p.add_argument("--steps", type=int, default=5, help="timed steps (losses are compared over warm-up + these)")
    p.add_argument("--warmup", type=int, default=1, help="untimed steps first")
    p.add_argument("--mask-time-prob", type=float, default=0.0, help="SpecAugment (the RNG use is the same cached)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's choice)")
    p.add_argument("--profile", type=int, default=0, metavar="N",
                   help="also profile N uncached and N cached steps per operator (torch.profiler)")
    p.add_argument("--smoke", action="store_true", help="tiny_cpu and the 2 x 32 model, 2 x 1 s, 2 steps: seconds")
    p.add_argument("--output", type=Path, default=None, help="also write feature_cache.md and feature_cache.json here")
    args = p.parse_args(argv)
    if args.smoke:
        args.archs, args.batch_size, args.seconds, args.steps, args.warmup = "tiny_cpu,tiny", 2, 1.0, 2, 1
    unknown = [a for a in args.archs.split(",") if a != "tiny_cpu" and a not in ARCHITECTURES]
    if unknown:
        p.error(f"unknown architecture(s) {unknown}; use tiny_cpu or one of {sorted(ARCHITECTURES)}")
    if min(args.batch_size, args.batches, args.steps) < 1 or args.warmup < 0 or args.seconds <= 0:
        p.error("--batch-size, --batches and --steps must be >= 1, --warmup >= 0 and --seconds > 0")
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s", datefmt="%H:%M:%S")
    if args.threads:
        torch.set_num_threads(args.threads)
    info = machine_info()
    results = [measure(arch, args) for arch in args.archs.split(",")]
    markdown = render(results, args, info)
    print("\n" + markdown)
    if args.output is not None:
        write_report(args.output, "feature_cache", markdown,
                     {"machine": info, "command": " ".join(sys.argv), "args": vars(args) | {"output": str(args.output)},
                      "results": results})
    return 0

if __name__ == "__main__":
    sys.exit(main())
