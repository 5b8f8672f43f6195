"""How a multi-process script leaves (asr/launch.py): a C++ thread still busy when the interpreter tears down
aborts the process ("terminate called without an active exception", the message of CI's rare 2-process
failures); a process that joined a group ends through `exit_process`, which skips that teardown."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

from trainrun import env, launcher

ROOT = Path(__file__).resolve().parents[1]

# A thread inside torch ops (they release the GIL) when the script ends, as gloo's worker threads can be.
SCRIPT = """
import os, sys, threading
import torch
from asr import launch
from asr.cli import exit_with

mode = sys.argv[1]
if mode != "plain":
    accelerator = launch.make_accelerator(int(os.environ.get("WORLD_SIZE", "1")))
if mode != "no-thread":
    a = torch.randn(300, 300)

    def spin():
        while True:
            torch.mm(a, a)

    threading.Thread(target=spin, daemon=True).start()
if mode == "plain":
    sys.exit(0)
accelerator.wait_for_everyone()
launch.finish(accelerator)
# one write with its newline: the launcher runs python -u, where print's text and end are two writes that the
# other rank's line can land between ("rank 0 leftrank 1 left")
sys.stdout.write(f"rank {accelerator.process_index} left\\n")
sys.stdout.flush()
exit_with(int(os.environ.get("EXIT_CODE", "0")))
"""


def run(cmd: list[str], **extra: str) -> subprocess.CompletedProcess:
    return subprocess.run(cmd, capture_output=True, text=True, env={**env(), **extra}, cwd=ROOT, timeout=600)


def test_a_thread_busy_in_torch_aborts_the_teardown_and_a_group_member_skips_it(tmp_path):
    script = tmp_path / "leave.py"
    script.write_text(SCRIPT)
    # the hazard, in one plain process: the interpreter's teardown kills the thread inside a destructor
    plain = run([sys.executable, str(script), "plain"])
    assert plain.returncode != 0 and "terminate called without an active exception" in plain.stderr, plain.stderr
    # two processes in a gloo group, the same thread in each: both leave the group and exit cleanly
    two = run([*launcher("ddp2"), str(script), "group"])
    assert two.returncode == 0, two.stderr[-3000:]
    assert "terminate called" not in two.stderr
    assert sorted(line for line in two.stdout.splitlines() if line.endswith(" left")) == ["rank 0 left",
                                                                                         "rank 1 left"]


def test_a_process_outside_a_group_exits_normally_with_its_code(tmp_path):
    script = tmp_path / "leave.py"
    script.write_text(SCRIPT)
    alone = run([sys.executable, str(script), "no-thread"], EXIT_CODE="5")
    assert alone.returncode == 5, alone.stderr[-3000:]
    assert alone.stdout.strip() == "rank 0 left"
