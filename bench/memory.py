"""Peak memory of one training step with and without gradient checkpointing, each in a fresh process.

    # wav2vec2-base (transformers.Wav2Vec2Config() + CTC head, random weights), 4 x 15 s, budget search to 8 GB
    $ OMP_NUM_THREADS=2 .venv/bin/python bench/memory.py --arch base --seconds 15 --batch-size 4 \\
          --budget-gb 8 --output runs/bench/
    # smoke test of the code path (seconds)
    $ .venv/bin/python bench/memory.py --arch tiny --seconds 2 --batch-size 2 --budget-gb 0.8 --max-seconds 16

One step is what scripts/train.py runs per micro-batch: `asr.model.build_model(ModelConfig(
gradient_checkpointing=...))` (non-reentrant activation checkpointing of every transformer layer;
the conv feature encoder frozen unless `--train-feature-encoder`, as in fine-tuning), train mode
with the default dropout and SpecAugment, forward, `asr.train.forward_loss` (CTC in float32 over
each utterance's real frames) and backward, on `--batch-size` utterances of `--seconds` of noise
with random labels at 12 characters per second. No optimizer step: AdamW's states (8 bytes per
parameter) come on top of the numbers here, the same with or without checkpointing.

How memory is measured: PyTorch allocates CPU tensors with malloc, so the honest number is what
the kernel charges the process, its resident set (RSS). Each measurement runs in a new Python
process (nothing of an earlier run is cached), which builds the model and the batch, resets its
RSS high-water mark (/proc/self/clear_refs) and runs two steps (gradients freed between them, as
`zero_grad()` does). Reported: the peak RSS of the process (runtime + weights + batch + the
step), and the step's own peak, that peak minus the RSS just before the step (gradients +
saved activations + temporaries): checkpointing changes only the latter, so its ratio is the
target (<= 0.5x). glibc's adaptive mmap threshold is pinned (MALLOC_MMAP_THRESHOLD_) so freed
tensors go back to the kernel and the RSS before a step holds no reusable free memory.

`--budget-gb` then binary-searches, per setting, the longest utterance (batch size fixed) whose
step keeps the whole process under the budget: each probe is a fresh process that exits as soon
as its RSS crosses the budget, so a probe never takes the machine's memory from other jobs.
`--limit-gb` (default 85% of the memory available at start) bounds the fixed-length runs likewise.
"""

from __future__ import annotations

import sys

if __package__ in (None, ""):  # run by path (python bench/memory.py): the repository root, not bench/, goes first
    sys.path[0] = str(__import__("pathlib").Path(__file__).resolve().parents[1])

import argparse
import json
import logging
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from bench.common import (
    ARCHITECTURES,
    GIB,
    RssLimit,
    ctc_vocab,
    machine_info,
    markdown_table,
    peak_rss_bytes,
    print_json,
    ratio,
    reset_peak_rss,
    rss_bytes,
    run_json_child,
    write_report,
)

logger = logging.getLogger("bench_memory")

CHARS_PER_SECOND = 12  # label length of the random transcripts (read speech is 12-15 characters/s)
CHILD_ENV = {"MALLOC_MMAP_THRESHOLD_": str(128 * 1024)}  # fixed: freed tensors >= 128 KiB return to the kernel
SETTINGS = (False, True)  # gradient checkpointing off, on

# ------------------------------------------------------------------------------------------- child
def measure_step(arch: str, checkpointing: bool, seconds: float, batch_size: int,
                 train_feature_encoder: bool = False, seed: int = 0) -> dict[str, Any]:
    """Build the model, run two training steps; RSS numbers (bytes), loss, step time. Call in a fresh process."""
    import gc

    import numpy as np
    import torch

    from asr.constants import SAMPLE_RATE
    from asr.model import ModelConfig, build_model
    from asr.train import forward_loss

    torch.manual_seed(seed)
    np.random.seed(seed)  # transformers draws SpecAugment's masks from numpy's global generator
    vocab = ctc_vocab()
    cfg = ModelConfig(architecture=dict(ARCHITECTURES[arch]), gradient_checkpointing=checkpointing,
                      freeze_feature_encoder=not train_feature_encoder)
    model = build_model(cfg, vocab, pad_token_id=0)
    model.train()
    samples = int(seconds * SAMPLE_RATE)
    frames = int(model._get_feat_extract_output_lengths(torch.tensor(samples)))
    num_labels = max(1, min(int(seconds * CHARS_PER_SECOND), frames // 2))
    batch = {
        "input_values": torch.randn(batch_size, samples),
        "input_lengths": torch.full((batch_size,), samples),
        "labels": torch.randint(3, len(vocab), (batch_size, num_labels)),
    }
    if model.config.feat_extract_norm == "layer":  # layer-norm encoders take a mask (all ones: no padding)
        batch["attention_mask"] = torch.ones(batch_size, samples, dtype=torch.long)
    gc.collect()
    reset_ok = reset_peak_rss()
    before = rss_bytes()
    losses, times = [], []
    for _ in range(2):
        started = time.perf_counter()
        loss, _, _ = forward_loss(model, model, batch, torch.device("cpu"))
        loss.backward()
        times.append(time.perf_counter() - started)
        losses.append(float(loss))
        model.zero_grad(set_to_none=True)
        del loss
    peak = peak_rss_bytes()
    return {"arch": arch, "checkpointing": checkpointing, "seconds": seconds, "batch_size": batch_size,
            "frames": frames, "params": sum(p.numel() for p in model.parameters()),
            "trainable": sum(p.numel() for p in model.parameters() if p.requires_grad),
            "rss_before": before, "peak": peak, "step_peak": peak - before, "peak_reset": reset_ok,
            "loss": losses[0], "step_seconds": times[-1]}


def child_main(spec_json: str) -> int:
    """Entry point of a measurement process: one JSON spec in, one JSON result line out."""
    spec = json.loads(spec_json)
    limit = spec.pop("limit_bytes", None)
    if limit:
        with RssLimit(limit):
            result = measure_step(**spec)
    else:
        result = measure_step(**spec)
    print_json(result)
    return 0

# ------------------------------------------------------------------------------------------ parent
def run_child(spec: dict[str, Any], limit_bytes: int | None) -> dict[str, Any] | None:
    """One measurement in a fresh process; None when it crossed `limit_bytes`."""
    spec_json = json.dumps({**spec, "limit_bytes": limit_bytes})
    result = run_json_child([str(Path(__file__).resolve()), "--child", spec_json], env=CHILD_ENV)
    return None if result.over_limit else result.data


def compare_checkpointing(arch: str, seconds: float, batch_size: int, limit_bytes: int | None,
                          train_feature_encoder: bool = False) -> dict[bool, dict[str, Any] | None]:
    """Setting (checkpointing off/on) -> the child's measurement, or None if it crossed the limit."""
    out = {}
    for checkpointing in SETTINGS:
        spec = dict(arch=arch, checkpointing=checkpointing, seconds=seconds, batch_size=batch_size,
                    train_feature_encoder=train_feature_encoder)
        out[checkpointing] = run_child(spec, limit_bytes)
        logger.info("checkpointing=%s: %s", checkpointing, out[checkpointing])
    return out


def longest_passing(fits: Callable[[float], bool], max_seconds: float, resolution: float = 1.0) -> tuple[float, int]:
    """(longest duration, a multiple of `resolution` up to `max_seconds`, for which `fits` holds; calls made).

    Assumes `fits` is monotonic (true up to some length, false beyond). 0.0 when even `resolution`
    fails; `max_seconds` when that passes (the search tries it first and stops).
    """
    calls = 1
    if fits(max_seconds):
        return max_seconds, calls
    lo, hi = 0, int(max_seconds / resolution)  # in units of `resolution`: lo passes (or is 0), hi fails
    while hi - lo > 1:
        mid = (lo + hi) // 2
        calls += 1
        if fits(mid * resolution):
            lo = mid
        else:
            hi = mid
    return lo * resolution, calls


def longest_fitting(arch: str, checkpointing: bool, batch_size: int, budget_bytes: int, max_seconds: float,
                    resolution: float = 1.0, train_feature_encoder: bool = False) -> tuple[float, int]:
    """(longest utterance whose step keeps a fresh process under `budget_bytes`, probes run)."""
    def fits(seconds: float) -> bool:
        result = run_child(dict(arch=arch, checkpointing=checkpointing, seconds=seconds, batch_size=batch_size,
                                train_feature_encoder=train_feature_encoder), budget_bytes)
        ok = result is not None and result["peak"] <= budget_bytes
        logger.info("checkpointing=%s, %g s x %d: %s", checkpointing, seconds, batch_size,
                    f"fits ({result['peak'] / GIB:.2f} GiB)" if ok else "does not fit")
        return ok

    return longest_passing(fits, max_seconds, resolution)


def render(args: argparse.Namespace, measured: dict[bool, dict[str, Any] | None],
           fitting: dict[bool, tuple[float, int]], info: dict[str, Any]) -> str:
    """The two tables and what was measured."""
    plain = measured[False]
    rows = []
    for checkpointing in SETTINGS:
        m = measured[checkpointing]
        name = "gradient checkpointing" if checkpointing else "no checkpointing"
        if m is None:
            rows.append([name, None, None, None, None, None, f"over the {args.limit_gb:g} GiB safety limit"])
            continue
        step_ratio = ratio(m["step_peak"], plain["step_peak"]) if plain else float("nan")
        total_ratio = ratio(m["peak"], plain["peak"]) if plain else float("nan")
        rows.append([name, m["peak"] / GIB, m["step_peak"] / GIB, f"{step_ratio:.2f}x", f"{total_ratio:.2f}x",
                     m["step_seconds"], f"{m['loss']:.4f}"])
    any_m = next((m for m in measured.values() if m), None)
    header = (f"## Training-step memory: {args.arch}"
              + (f" ({any_m['params']:,} parameters, {any_m['trainable']:,} trainable)" if any_m else "")
              + f", {args.batch_size} x {args.seconds:g} s"
              + (f" ({any_m['frames']} frames each)" if any_m else "") + "\n\n"
              f"Forward + CTC loss + backward, fresh process per row, peak RSS; feature encoder "
              f"{'trained' if args.train_feature_encoder else 'frozen'}; {info['cpus']} CPUs, "
              f"load average {info['load_average_1min']}.\n\n")
    text = header + markdown_table(["setting", "peak RSS GiB", "step peak GiB", "step vs none", "peak vs none",
                                    "step s", "loss"], rows)
    if any_m is not None and not any_m["peak_reset"]:
        text += "\nThe kernel refused to reset the RSS high-water mark: step peaks may include the set-up.\n"
    if fitting:
        text += (f"\nLongest utterance whose step keeps the process under {args.budget_gb:g} GiB (batch "
                 f"{args.batch_size}, searched to {args.max_seconds:g} s in {args.resolution:g} s steps):\n\n")
        frows = []
        for checkpointing, (seconds, probes) in fitting.items():
            shown = f">= {seconds:g}" if seconds >= args.max_seconds else f"{seconds:g}"
            frows.append(["gradient checkpointing" if checkpointing else "no checkpointing", shown, probes])
        text += markdown_table(["setting", "longest utterance s", "probes"], frows)
    return text


def available_bytes() -> int:
    """MemAvailable of /proc/meminfo."""
    for line in Path("/proc/meminfo").read_text().splitlines():
        if line.startswith("MemAvailable:"):
            return int(line.split()[1]) * 1024
    raise RuntimeError("/proc/meminfo has no MemAvailable line; pass --limit-gb.")


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    """Command-line arguments."""
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--arch", choices=sorted(ARCHITECTURES), default="base", help="model architecture")
    p.add_argument("--seconds", type=float, default=15.0, help="utterance length of the fixed-length comparison")
    p.add_argument("--batch-size", type=int, default=4, help="utterances per step")
    p.add_argument("--train-feature-encoder", action="store_true", help="train the conv encoder too (from scratch)")
    p.add_argument("--budget-gb", type=float, default=8.0, help="memory budget (GiB) of the search; 0 skips it")
    p.add_argument("--max-seconds", type=float, default=120.0, help="longest utterance the search tries")
    p.add_argument("--resolution", type=float, default=5.0,
                   help="search step in seconds (each probe that fits runs a whole step: 20 min for 45 s x 4 on 2 cores)")
    p.add_argument("--limit-gb", type=float, default=None,
                   help="abort a fixed-length run above this RSS (default: 85%% of available memory)")
    p.add_argument("--output", type=Path, default=None, help="also write memory.md and memory.json here")
    p.add_argument("--child", default=None, help=argparse.SUPPRESS)  # internal: run one measurement
    args = p.parse_args(argv)
    if args.limit_gb is None and args.child is None:
        args.limit_gb = round(0.85 * available_bytes() / GIB, 1)
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if args.child is not None:
        return child_main(args.child)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s", datefmt="%H:%M:%S")
    info = machine_info()
    measured = compare_checkpointing(args.arch, args.seconds, args.batch_size, int(args.limit_gb * GIB),
                                     args.train_feature_encoder)
    fitting = {}
    if args.budget_gb > 0:
        for checkpointing in SETTINGS:
            fitting[checkpointing] = longest_fitting(args.arch, checkpointing, args.batch_size,
                                                     int(args.budget_gb * GIB), args.max_seconds, args.resolution,
                                                     args.train_feature_encoder)
    markdown = render(args, measured, fitting, info)
    print("\n" + markdown)
    if args.output is not None:
        data = {"machine": info, "command": " ".join(sys.argv), "measured": {str(k): v for k, v in measured.items()},
                "longest_fitting_seconds": {str(k): v[0] for k, v in fitting.items()},
                "budget_gb": args.budget_gb, "arch": args.arch, "batch_size": args.batch_size}
        write_report(args.output, "memory", markdown, data)
    return 0

if __name__ == "__main__":
    sys.exit(main())
