"""The entry points. In a checkout they run by path (`python scripts/eval.py`, `accelerate launch scripts/train.py`);
installed (`pip install .`, or the set-up's editable install) this folder is the package `asr_scripts`, and each
entry point is also a console command: asr-train, asr-eval, asr-transcribe, asr-build-lm, asr-export,
asr-make-corpus, asr-align, asr-publish, asr-compare-runs, asr-deepen, asr-average (pyproject.toml [project.scripts]).

A command runs the same `main()` as the script, after the same jemalloc re-execution the heavy scripts do
first (asr/allocator.py). Multi-process training keeps its documented form, or runs the module:
`accelerate launch -m asr_scripts.train --config ...`.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable

from asr.cli import exit_with

# The scripts that re-execute themselves under jemalloc before importing torch (see each script's top).
_UNDER_JEMALLOC = ("train", "transcribe", "align")


def _command(script: str) -> Callable[[], None]:
    """The console command of `scripts/<script>.py`: its main() with the process's argv, as its exit code."""

    def run() -> None:
        note = None
        if script in _UNDER_JEMALLOC:
            from asr.allocator import relaunch_under_jemalloc

            note = relaunch_under_jemalloc()  # re-executes this command (same argv) and does not return, or says why not
        module = importlib.import_module(f"{__name__}.{script}")
        if note:
            module.ALLOCATOR_NOTE = note
        exit_with(module.main())

    run.__name__ = script
    return run


train = _command("train")
evaluate = _command("eval")
transcribe = _command("transcribe")
build_lm = _command("build_lm")
export = _command("export")
make_corpus = _command("make_corpus")
align = _command("align")
publish = _command("publish_model")
compare_runs = _command("compare_runs")
deepen = _command("deepen_model")
average = _command("average_checkpoints")
