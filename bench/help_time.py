"""Wall time of every script's `--help`, as a user starts it (a fresh interpreter, the jemalloc re-execution of
the heavy scripts included), and whether torch got imported on the way.

    $ .venv/bin/python bench/help_time.py --repeats 5

The scripts parse their arguments before importing torch, transformers or the numpy-heavy library modules
(issue 16), so `--help` should take a fraction of a second; a script whose "torch" column says yes has an
import above its parse_args again. Times depend on the machine's load (the table prints the load average).
"""

from __future__ import annotations

import sys

if __package__ in (None, ""):  # run by path (python bench/help_time.py): the repository root, not bench/, goes first
    sys.path[0] = str(__import__("pathlib").Path(__file__).resolve().parents[1])

import argparse
import os
import subprocess
import time
from pathlib import Path

from bench.common import Timing, markdown_table, write_report

ROOT = Path(__file__).resolve().parents[1]
SCRIPTS = sorted(p.stem for p in (ROOT / "scripts").glob("*.py") if p.stem != "__init__")


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    """Command-line arguments."""
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--repeats", type=int, default=3, help="timed runs per script (default: 3)")
    p.add_argument("--scripts", nargs="+", default=SCRIPTS, choices=SCRIPTS, help="scripts to time (default: all)")
    p.add_argument("--output", type=Path, default=None, help="also write OUTPUT/help_time.md and .json")
    return p.parse_args(argv)


def time_help(script: str, repeats: int) -> tuple[Timing, bool]:
    """`--help` wall times of scripts/<script>.py, and whether torch was imported (python -X importtime)."""
    command = [sys.executable, str(ROOT / "scripts" / f"{script}.py"), "--help"]
    runs = []
    for _ in range(repeats):
        started = time.perf_counter()
        subprocess.run(command, capture_output=True, check=True, cwd=ROOT)
        runs.append(time.perf_counter() - started)
    traced = subprocess.run([sys.executable, "-X", "importtime", *command[1:]], capture_output=True, text=True,
                            check=True, cwd=ROOT, env={**os.environ, "ASR_ALLOCATOR": "system"})
    torch = any(line.rstrip().endswith("| torch") for line in traced.stderr.splitlines())
    return Timing(tuple(runs)), torch


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    rows, data = [], {"load_average_1min": round(os.getloadavg()[0], 2), "cpus": os.cpu_count(), "scripts": {}}
    for script in args.scripts:
        timing, torch = time_help(script, args.repeats)
        rows.append([f"{script}.py", timing.median, timing.best, torch])
        data["scripts"][script] = {"runs": list(timing.runs), "imports_torch": torch}
    markdown = (markdown_table(["script", "--help median (s)", "best (s)", "torch imported"], rows)
                + f"\n{args.repeats} runs each; load average {data['load_average_1min']} on {data['cpus']} CPUs.\n")
    print(markdown, end="")
    if args.output:
        write_report(args.output, "help_time", markdown, data)
    return 0


if __name__ == "__main__":
    sys.exit(main())
