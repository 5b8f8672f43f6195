"""Memory and time of training steps on variable-length batches, by precision and oneDNN kernel-cache size.

    $ .venv/bin/python bench/onednn_cache.py                      # the shipped base, 120 steps per row
    $ .venv/bin/python bench/onednn_cache.py --steps 20 --model DIR --output runs/bench/

oneDNN compiles a kernel (with scratch memory) for each distinct input shape and keeps up to
ONEDNN_PRIMITIVE_CACHE_CAPACITY of them (1,024 by default). Training batches have a new shape at nearly
every step, so that cache only grows; bf16 autocast sends the matmuls through oneDNN too. Each row is a
fresh process under jemalloc (as scripts/train.py runs) with torch's threads on every core, training the
model with AdamW for --steps steps on random log-mel batches of 60-750 frames (~40 s of audio each, the
same seeded shapes in every row); it reports the resident memory after a quarter of the steps and at the
end, and the seconds the steps took. asr/allocator.py sets the capacity the scripts use
(ONEDNN_CACHE_CAPACITY) unless the environment already names one.
"""

from __future__ import annotations

import sys

if __package__ in (None, ""):  # run by path (python bench/onednn_cache.py): the repository root goes first
    sys.path[0] = str(__import__("pathlib").Path(__file__).resolve().parents[1])

import argparse
import logging
import os
import random
import time
from pathlib import Path

from asr.allocator import ONEDNN_CACHE_CAPACITY, ONEDNN_CACHE_ENV
from bench.common import machine_info, markdown_table, print_json, rss_bytes, run_json_child, write_report

logger = logging.getLogger("bench.onednn_cache")
DEFAULT_MODEL = Path("assets/base_model")
ONEDNN_DEFAULT = "1024"  # oneDNN's own capacity
ROWS = (("float32", ONEDNN_DEFAULT), ("float32", ONEDNN_CACHE_CAPACITY), ("bf16", ONEDNN_DEFAULT),
        ("bf16", ONEDNN_CACHE_CAPACITY))


def child(model_dir: Path, precision: str, steps: int) -> dict:
    """In a fresh process: train `steps` steps, return memory and time."""
    import torch
    from transformers import AutoModelForCTC

    torch.manual_seed(0)
    shapes = random.Random(0)
    model = AutoModelForCTC.from_pretrained(model_dir).train()
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-5)
    features = model.config.feature_projection_input_dim
    marks, started = {}, time.perf_counter()
    for step in range(1, steps + 1):
        frames = shapes.randint(60, 750)
        batch = max(1, 2000 // frames)  # ~40 s of audio at 50 frames a second
        inputs = torch.randn(batch, frames, features)
        labels = torch.randint(1, model.config.vocab_size, (batch, frames // 5))
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=precision == "bf16"):
            loss = model(input_features=inputs, labels=labels).loss
        loss.backward()
        optimizer.step()
        optimizer.zero_grad()
        if step in (max(1, steps // 4), steps):
            marks[step] = rss_bytes() / 2**20
    return {"rss_mb": marks, "seconds": time.perf_counter() - started,
            "capacity_seen": int(os.environ[ONEDNN_CACHE_ENV])}  # what this process's oneDNN read


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", type=Path, default=DEFAULT_MODEL, help="a filterbank (wav2vec2-bert) CTC model dir")
    p.add_argument("--steps", type=int, default=120, help="training steps per row")
    p.add_argument("--output", type=Path, default=None, help="also write onednn_cache.md and .json here")
    p.add_argument("--child", default=None, help=argparse.SUPPRESS)  # internal: one row, as precision
    return p.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if args.child:
        from asr.allocator import relaunch_under_jemalloc

        relaunch_under_jemalloc()  # as the scripts run; keeps the capacity the parent put in the environment
        print_json(child(args.model, args.child, args.steps))
        return 0
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s", datefmt="%H:%M:%S")
    if not (args.model / "config.json").is_file():
        logger.error("%s is not a model directory; pass --model DIR", args.model)
        return 2
    rows, data = [], {"machine": machine_info(), "steps": args.steps, "model": str(args.model), "rows": []}
    for precision, capacity in ROWS:
        logger.info("%s, kernel cache %s: %d steps", precision, capacity, args.steps)
        result = run_json_child([str(Path(__file__).resolve()), "--child", precision, "--model", str(args.model),
                                 "--steps", str(args.steps)], env={ONEDNN_CACHE_ENV: capacity}).data
        marks = list(result["rss_mb"].values())
        rows.append([precision, int(capacity), round(marks[0]), round(marks[-1]), round(result["seconds"], 1)])
        data["rows"].append({"precision": precision, "capacity": int(capacity), **result})
    quarter = max(1, args.steps // 4)
    markdown = (f"## Training steps on variable-length batches: {args.steps} steps of `{args.model}`\n\n"
                + markdown_table(["precision", "oneDNN kernel cache", f"RSS MB at step {quarter}",
                                  f"RSS MB at step {args.steps}", "seconds"], rows)
                + f"\n{data['machine']['cpus']} CPUs, load average {data['machine']['load_average_1min']} at the start.\n")
    print(markdown)
    if args.output:
        write_report(args.output, "onednn_cache", markdown, data)
    return 0


if __name__ == "__main__":
    sys.exit(main())
