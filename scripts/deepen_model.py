"""Grow a trained pre-LN model to more transformer layers, starting as the same function.

    $ .venv/bin/python scripts/deepen_model.py --model runs/base3/model --output runs/base4/init --layers 8

The added layers start as the identity (zeroed residual projections), so the grown model's logits
equal the original's; a training run from `--output` then uses the extra depth (stage 4 of
scripts/build_base_model.sh). Prints the layer and parameter counts and the largest logit change.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from asr.model import deepen_model


def main(argv: list[str] | None = None) -> None:
    """Writes --model grown to --layers layers into --output."""
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", type=Path, required=True, help="a model directory exported by scripts/train.py")
    p.add_argument("--output", type=Path, required=True, help="directory to write (replaced atomically)")
    p.add_argument("--layers", type=int, required=True, help="transformer layers of the grown model")
    args = p.parse_args(argv)
    try:
        report = deepen_model(args.model, args.output, args.layers)
    except ValueError as e:
        print(f"deepen_model: {e}", file=sys.stderr)
        sys.exit(2)
    print(json.dumps({"output": str(args.output), **report}))


if __name__ == "__main__":
    main()
