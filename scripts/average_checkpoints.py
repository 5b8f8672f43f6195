"""Average the weights of a run's last checkpoints into one model directory.

    $ .venv/bin/python scripts/average_checkpoints.py --run runs/base --last 4 --output runs/base/avg4
    $ .venv/bin/python scripts/average_checkpoints.py --run runs/base --steps 1500 1650 1800 --output runs/base/avg

The run must keep its checkpoints (train.save_total_limit: the number averaged, or null) and have exported
its model (`--run`/model: its processor, normaliser and LM folder are copied beside the averaged weights).
Checkpoints of one process, DDP and DeepSpeed ZeRO-1/2/3 runs are read without running code, each checked
against its manifest first. `--output` is an ordinary model directory: eval.py, transcribe.py,
publish_model.py and `AutoModelForCTC.from_pretrained` take it. Prints the steps averaged and the largest
logit difference from the exported model. An LM's tuned alpha/beta (decoder.json) are copied as they were
tuned on the exported model; re-tune with `scripts/eval.py --tune`.

Exit code: 0 done, 2 bad arguments or input (no such step, a damaged checkpoint, no exported model).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from asr.cli import ArgumentParser, add_common_flags, run_reporting, setup_logging


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    """Command-line arguments."""
    p = ArgumentParser(description=__doc__)
    p.add_argument("--run", type=Path, required=True, help="a training run's output_dir (checkpoints/, model/)")
    which = p.add_mutually_exclusive_group(required=True)
    which.add_argument("--last", type=int, help="average the newest N checkpoints")
    which.add_argument("--steps", type=int, nargs="+", help="average the checkpoints of these steps")
    p.add_argument("--output", type=Path, required=True, help="directory to write (replaced atomically)")
    add_common_flags(p)
    return p.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    """Writes the average of --run's checkpoints into --output; returns the exit code."""
    args = parse_args(argv)
    setup_logging(args)
    from asr.model import average_checkpoints  # torch: after parsing, so that --help is instant

    # a damaged or refused checkpoint (CheckpointError) is a ValueError too: one line, exit 2
    return run_reporting("average_checkpoints", lambda: {
        "output": str(args.output), **average_checkpoints(args.run, args.output, last=args.last, steps=args.steps)})


if __name__ == "__main__":
    sys.exit(main())
