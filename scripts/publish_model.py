"""Copy a trained model directory as a compact checkpoint to ship (weights stored in float16), and/or push it
to the Hugging Face Hub.

    $ .venv/bin/python scripts/publish_model.py --model runs/base/model --output assets/base_model
    $ .venv/bin/python scripts/publish_model.py --model runs/demo/model --output runs/demo/publish --push me/asr-demo
    $ .venv/bin/python scripts/publish_model.py --model runs/demo/model --push me/asr-demo --private

--output keeps the processor, normaliser, KenLM directory, model card and training config beside the
weights; it loads back in float32 with `AutoModelForCTC.from_pretrained`. Prints the size and the largest
logit change. --push uploads --output (or, without it, --model as it is) in one commit through
huggingface_hub; offline (HF_HUB_OFFLINE=1) it fails at once, before any copying.

Exit code: 0 done, 1 the push failed (network, the hub refused), 2 bad arguments or input.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from asr.cli import ArgumentParser, add_common_flags, setup_logging
from asr.constants import EXIT_CRASH, EXIT_OK, EXIT_USAGE


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    """Command-line arguments."""
    p = ArgumentParser(description=__doc__)
    p.add_argument("--model", type=Path, required=True, help="a model directory exported by scripts/train.py")
    p.add_argument("--output", type=Path, default=None, help="directory to write (replaced atomically)")
    p.add_argument("--dtype", default="float16", choices=("float16", "bfloat16", "float32"),
                   help="stored weight type of --output")
    p.add_argument("--push", metavar="REPO_ID", default=None, help="hub repo (owner/name) to upload to")
    p.add_argument("--private", action="store_true", help="create the hub repo private")
    add_common_flags(p)
    args = p.parse_args(argv)
    if args.output is None and args.push is None:
        p.error("nothing to do: give --output, --push, or both")
    return args


def main(argv: list[str] | None = None) -> int:
    """Publishes --model into --output and/or pushes it to --push; returns the exit code."""
    args = parse_args(argv)
    setup_logging(args)
    from asr.hub import HubError, HubSetupError, check_can_push, push_model
    from asr.model import publish_model

    try:
        if args.push:
            check_can_push(args.push)
        result: dict = {}
        if args.output is not None:
            result = {"output": str(args.output), **publish_model(args.model, args.output, args.dtype)}
        if args.push:
            result["pushed"] = push_model(args.output or args.model, args.push, private=args.private)
    except (ValueError, HubSetupError) as e:
        print(f"publish_model: {e}", file=sys.stderr)
        return EXIT_USAGE
    except HubError as e:
        print(f"publish_model: {e}", file=sys.stderr)
        return EXIT_CRASH
    print(json.dumps(result))
    return EXIT_OK


if __name__ == "__main__":
    sys.exit(main())
