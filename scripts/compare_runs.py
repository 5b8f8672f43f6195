"""Compare training runs at equal compute: dev CER (and WER) against CPU minutes, as a table and a plot.

    $ .venv/bin/python scripts/compare_runs.py runs/nat_w2v2 runs/nat_w2v_bert --minutes 15 30 45 60 90 \
          --plot docs/frontends.png

Reads each run's metrics.jsonl: every eval record carries `cpu_s`, the CPU seconds of every rank and
its DataLoader workers up to that eval (summed, across resumes), so runs that shared the machine with
other work, or used another number of processes, are compared by the compute they got, not by wall time.
A run's value at M minutes is that of its last eval at or before M; "-" when it has not got that far.
`cpu_s` counts from the training loop's start: data preparation and a feature-cache fill are not in it.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from asr.cli import ArgumentParser, add_common_flags, setup_logging
from asr.constants import EXIT_OK, EXIT_USAGE


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    """Command-line arguments."""
    p = ArgumentParser(description=__doc__)
    p.add_argument("runs", nargs="+", type=Path, help="training output directories (with metrics.jsonl)")
    p.add_argument("--minutes", nargs="+", type=float, default=[15, 30, 45, 60, 90, 120],
                   help="CPU minutes at which to read each run")
    p.add_argument("--plot", type=Path, default=None, help="write dev CER vs CPU minutes as a PNG here")
    add_common_flags(p)
    return p.parse_args(argv)


def read_evals(run: Path) -> list[dict]:
    """The eval records of a run that carry CPU time, in step order."""
    path = run / "metrics.jsonl"
    if not path.is_file():
        raise ValueError(f"{path} does not exist; pass a training output directory")
    try:
        records = [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
    except json.JSONDecodeError as e:
        raise ValueError(f"{path} is not JSON lines ({e}); is it a training run's metrics.jsonl?") from e
    evals = [r for r in records if r.get("kind") == "eval" and "cpu_s" in r]
    if not evals:
        raise ValueError(f"{path} has no eval record with cpu_s; it predates CPU accounting or has not evaluated yet")
    return sorted(evals, key=lambda r: r["step"])


def at_minutes(evals: list[dict], minutes: float) -> dict | None:
    """The last eval at or before `minutes` of CPU time; None if the run has not got that far (no eval
    at or after it) or had not evaluated by then."""
    if evals[-1]["cpu_s"] / 60 < minutes:
        return None
    done = [r for r in evals if r["cpu_s"] / 60 <= minutes]
    return done[-1] if done else None


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    setup_logging(args)
    try:
        runs = {str(run): read_evals(run) for run in args.runs}
        if args.plot and args.plot.is_dir():
            raise ValueError(f"--plot {args.plot} is a directory; give the PNG file to write")
    except ValueError as e:
        print(f"compare_runs: {e}", file=sys.stderr)
        return EXIT_USAGE
    print("| run | " + " | ".join(f"{m:g} CPU-min" for m in args.minutes) + " | last (step, CPU-min) |")
    print("|---|" + "---|" * (len(args.minutes) + 1))
    for name, evals in runs.items():
        cells = []
        for m in args.minutes:
            r = at_minutes(evals, m)
            cells.append("-" if r is None else f"CER {100 * r['cer']:.1f} / WER {100 * r['wer']:.1f}")
        last = evals[-1]
        cells.append(f"CER {100 * last['cer']:.1f} ({last['step']}, {last['cpu_s'] / 60:.0f})")
        print(f"| {name} | " + " | ".join(cells) + " |")
    if args.plot:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt

        fig, ax = plt.subplots(figsize=(7, 4))
        for name, evals in runs.items():
            ax.plot([r["cpu_s"] / 60 for r in evals], [100 * r["cer"] for r in evals], marker="o", ms=3, label=name)
        ax.set_xlabel("CPU minutes (all ranks and DataLoader workers)")
        ax.set_ylabel("dev CER %")
        ax.grid(alpha=0.3)
        ax.legend()
        fig.tight_layout()
        args.plot.parent.mkdir(parents=True, exist_ok=True)
        fig.savefig(args.plot, dpi=100)
        print(f"plot: {args.plot}")
    return EXIT_OK


if __name__ == "__main__":
    sys.exit(main())
