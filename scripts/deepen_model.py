"""Grow a trained pre-LN model to more transformer layers, starting as the same function.

    $ .venv/bin/python scripts/deepen_model.py --model runs/base3/model --output runs/base4/init --layers 8

The added layers start as the identity (zeroed residual projections), so the grown model's logits
equal the original's; a training run from `--output` then uses the extra depth (stage 4 of
scripts/build_base_model.sh). Prints the layer and parameter counts and the largest logit change.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from asr.cli import ArgumentParser, add_common_flags, run_reporting, setup_logging


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    """Command-line arguments."""
    p = ArgumentParser(description=__doc__)
    p.add_argument("--model", type=Path, required=True, help="a model directory exported by scripts/train.py")
    p.add_argument("--output", type=Path, required=True, help="directory to write (replaced atomically)")
    p.add_argument("--layers", type=int, required=True, help="transformer layers of the grown model")
    add_common_flags(p)
    return p.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    """Writes --model grown to --layers layers into --output; returns the exit code."""
    args = parse_args(argv)
    setup_logging(args)
    from asr.model import deepen_model  # torch: after parsing, so that --help is instant

    return run_reporting("deepen_model", lambda: {"output": str(args.output),
                                                  **deepen_model(args.model, args.output, args.layers)})


if __name__ == "__main__":
    sys.exit(main())
