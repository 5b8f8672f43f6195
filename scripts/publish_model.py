"""Copy a trained model directory as a compact checkpoint to ship (weights stored in float16).

    $ .venv/bin/python scripts/publish_model.py --model runs/base/model --output assets/base_model

Keeps the processor, normaliser, model card and training config beside the weights; loads back in
float32 with `AutoModelForCTC.from_pretrained`. Prints the size and the largest logit change.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from asr.model import publish_model


def main(argv: list[str] | None = None) -> None:
    """Publishes --model into --output."""
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", type=Path, required=True, help="a model directory exported by scripts/train.py")
    p.add_argument("--output", type=Path, required=True, help="directory to write (replaced atomically)")
    p.add_argument("--dtype", default="float16", choices=("float16", "bfloat16", "float32"), help="stored weight type")
    args = p.parse_args(argv)
    try:
        report = publish_model(args.model, args.output, args.dtype)
    except ValueError as e:
        print(f"publish_model: {e}", file=sys.stderr)
        sys.exit(2)
    print(json.dumps({"output": str(args.output), **report}))


if __name__ == "__main__":
    main()
