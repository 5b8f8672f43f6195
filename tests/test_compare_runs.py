"""scripts/compare_runs.py: runs read at equal CPU minutes from their metrics.jsonl."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

from trainrun import ROOT


def _run(tmp: Path, name: str, evals: list[tuple[int, float, float]]) -> Path:
    run = tmp / name
    run.mkdir()
    lines = [{"kind": "train", "step": 1, "loss": 3.0}]
    lines += [{"kind": "eval", "step": s, "cer": c, "wer": min(1.0, 2 * c), "cpu_s": m * 60} for s, m, c in evals]
    (run / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in lines))
    return run


def test_runs_are_read_at_equal_cpu_minutes_and_not_past_their_end(tmp_path):
    fast = _run(tmp_path, "fast", [(100, 10, 0.8), (200, 20, 0.5), (300, 30, 0.3)])
    slow = _run(tmp_path, "slow", [(100, 15, 0.9), (200, 31, 0.6)])
    proc = subprocess.run([sys.executable, "scripts/compare_runs.py", str(fast), str(slow), "--minutes", "10", "25",
                           "31", "--plot", str(tmp_path / "c.png")], capture_output=True, text=True, cwd=ROOT)
    assert proc.returncode == 0, proc.stderr
    rows = {line.split("|")[1].strip(): [c.strip() for c in line.split("|")[2:-1]]
            for line in proc.stdout.splitlines() if line.startswith("| ") and "CPU-min" not in line}
    # at 25 min: the last eval at or before it; at 31: the fast run has not got there, the slow one has
    assert rows[str(fast)][:3] == ["CER 80.0 / WER 100.0", "CER 50.0 / WER 100.0", "-"]
    assert rows[str(slow)][:3] == ["-", "CER 90.0 / WER 100.0", "CER 60.0 / WER 100.0"]
    assert (tmp_path / "c.png").stat().st_size > 1000


def test_a_run_without_cpu_accounting_is_a_one_line_error(tmp_path):
    run = tmp_path / "old"
    run.mkdir()
    (run / "metrics.jsonl").write_text(json.dumps({"kind": "eval", "step": 1, "cer": 1.0, "wer": 1.0}) + "\n")
    proc = subprocess.run([sys.executable, "scripts/compare_runs.py", str(run)], capture_output=True, text=True,
                          cwd=ROOT)
    assert proc.returncode == 2 and "no eval record with cpu_s" in proc.stderr and "Traceback" not in proc.stderr
