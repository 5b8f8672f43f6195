"""Every script's command line (issue 16, item 5; asr.cli): the docstring's examples parse, --help shows the
defaults and the common flags (--quiet, --log-level, --no-progress), a user error is one line on stderr with exit
code 2, and train.py --print-config lists every config key with its reason. Real files, real subprocesses."""

from __future__ import annotations

import ast
import dataclasses
import functools
import json
import os
import re
import shlex
import subprocess
import sys
from pathlib import Path

import pytest

from asr.constants import EXIT_USAGE

ROOT = Path(__file__).resolve().parents[1]
SCRIPTS = sorted(p.stem for p in (ROOT / "scripts").glob("*.py") if p.stem != "__init__")
BASE_MODEL = ROOT / "assets" / "base_model"
ENV = {**os.environ, "ASR_ALLOCATOR": "system"}  # no re-execution under jemalloc, and no note when it is missing
# A default each script's --help must show (besides --log-level's INFO, which every script shows).
SHOWN_DEFAULTS = {"eval": "(default: 60.0)", "transcribe": "(default: 30.0)", "build_lm": "(default: 4)",
                  "export": "(default: 17)", "make_corpus": "(default: 2000)", "align": "(default: -3.0)",
                  "publish_model": "(default: float16)", "compare_runs": "(default: [15, 30, 45, 60, 90, 120])"}


def run(script: str, *args: str, env: dict | None = None) -> subprocess.CompletedProcess:
    """scripts/<script>.py with `args`, as a user runs it."""
    return subprocess.run([sys.executable, str(ROOT / "scripts" / f"{script}.py"), *map(str, args)],
                          capture_output=True, text=True, env=env or ENV, cwd=ROOT, timeout=300)


@functools.cache
def help_text(script: str) -> str:
    proc = run(script, "--help")
    assert proc.returncode == 0 and not proc.stderr, proc.stderr[-2000:]
    return proc.stdout


def examples() -> list[tuple[str, str, list[str]]]:
    """(script whose docstring holds it, script it runs, its arguments) for every `$ ...` example line."""
    found = []
    for name in SCRIPTS:
        doc = ast.get_docstring(ast.parse((ROOT / "scripts" / f"{name}.py").read_text(encoding="utf-8")))
        for command in re.findall(r"^\s*\$ ((?:.*\\\n)*.*)", doc, flags=re.M):
            command = re.sub(r"\\\n\s*", " ", command).split("  #")[0]  # continuation lines joined, comment cut
            words = shlex.split(command.split(" | ")[0])  # a pipe's reader is not the script's
            target = next(w for w in words if re.fullmatch(r"scripts/\w+\.py", w))
            found.append((name, Path(target).stem, words[words.index(target) + 1:]))
    return found


@pytest.mark.parametrize("source, script, args", examples(), ids=lambda v: v if isinstance(v, str) else None)
def test_every_docstring_example_parses(source, script, args):
    proc = run(script, *args, "--help")
    assert proc.returncode == 0, f"{source}'s example `{script} {' '.join(args)}`: {proc.stderr[-2000:]}"
    flags = {a.split("=")[0] for a in args if a.startswith("--")}
    unknown = sorted(f for f in flags if not re.search(rf"{re.escape(f)}\b", help_text(script)))
    assert not unknown, f"{source}'s example uses {unknown}, which {script}.py does not take"


@pytest.mark.parametrize("script", SCRIPTS)
def test_help_shows_the_defaults_and_the_common_flags(script):
    text = help_text(script)
    assert text.startswith(f"usage: {script}.py")
    for flag in ("--quiet", "--log-level LEVEL", "--no-progress"):
        assert flag in text, f"{script}.py lacks {flag}: add asr.cli.add_common_flags to its parser"
    assert "(default: INFO)" in text and "(default: None)" not in text and "(default: False)" not in text
    assert SHOWN_DEFAULTS.get(script, "(default: INFO)") in " ".join(text.split())  # argparse wraps lines
    assert text.count("Exit code") <= 1


@pytest.mark.parametrize("script", SCRIPTS)
def test_a_bad_argument_is_one_line_with_exit_2(script):
    proc = run(script, "--log-level", "LOUD")
    assert proc.returncode == EXIT_USAGE and proc.stderr.count("\n") == 1, proc.stderr
    assert "invalid choice: 'LOUD'" in proc.stderr and proc.stderr.startswith(f"{script}.py: error:")


def _bad_inputs(tmp: Path) -> dict[str, list[tuple[list, str]]]:
    """Per script: (arguments naming real but wrong files, what the one line must say)."""
    text = tmp / "lm.txt"
    text.write_text("the cat sat on the mat\n")
    a_file = tmp / "a_file"
    a_file.write_text("not a directory\n")
    manifest = tmp / "m.jsonl"
    manifest.write_text(json.dumps({"id": "a", "audio_filepath": "a.wav", "text": "hi", "duration": 1.0}) + "\n")
    broken = tmp / "broken_run"
    broken.mkdir()
    (broken / "metrics.jsonl").write_text("{not json\n")
    missing = tmp / "missing"
    return {
        "train": [(["--config", missing / "run.yaml"], "does not exist"),
                  (["--config", ROOT / "configs/train/tiny_cpu.yaml", "optim.bogus=1"], "unknown key(s) bogus"),
                  (["optim.lr=1e-4"], "--config is required")],
        "eval": [(["--model", missing, "--data", manifest, "--output", tmp / "e", "--decoder", "greedy"], "vocab.json"),
                 (["--model", BASE_MODEL, "--data", manifest, "--output", tmp / "e"], "no KenLM language model")],
        "transcribe": [([missing, "--model", BASE_MODEL, "--output", tmp / "t"], "neither a directory nor a file")],
        "build_lm": [(["--text", missing / "lm.txt", "--output", tmp / "lm"], "does not exist"),
                     (["--text", text, "--model", missing], "does not exist"),
                     (["--text", text, "--output", tmp / "lm", "--kenlm-bin", missing], "lmplz was not found")],
        "export": [(["--model", missing, "--output", tmp / "onnx"], "does not exist")],
        "make_corpus": [(["--out", tmp / "c", "--text", missing / "s.txt"], "does not exist"),
                        (["--out", a_file], "is a file, not a directory"),
                        (["--out", tmp / "c", "--engines", "flite,bogus"], "unknown engine(s) bogus"),
                        (["--combine", missing, "--out", tmp / "m.jsonl"], "has no train.jsonl")],
        "align": [([missing / "book.wav", "--text", text, "--model", BASE_MODEL, "--out", tmp / "al"], "does not exist")],
        "publish_model": [(["--model", missing, "--output", tmp / "p"], "has no config.json"),
                          (["--model", BASE_MODEL, "--output", a_file], "is a file, not a directory")],
        "compare_runs": [([missing], "does not exist"), ([broken], "is not JSON lines")],
        "deepen_model": [(["--model", missing, "--output", tmp / "d", "--layers", "8"], "has no config.json"),
                         (["--model", BASE_MODEL, "--output", a_file, "--layers", "8"], "is a file, not a directory")],
        "average_checkpoints": [(["--run", missing, "--last", "2", "--output", tmp / "a"], "holds no complete checkpoint"),
                                (["--run", BASE_MODEL, "--steps", "5", "--output", tmp / "a"], "holds no complete checkpoint")],
    }


@pytest.mark.parametrize("script", SCRIPTS)
def test_bad_input_is_one_line_on_stderr_with_exit_2(script, tmp_path):
    cases = _bad_inputs(tmp_path)
    assert set(cases) == set(SCRIPTS), "give every script a bad-input case here"
    for args, message in cases[script]:
        proc = run(script, *args)
        where = f"{script}.py {' '.join(map(str, args))}"
        assert proc.returncode == EXIT_USAGE, f"{where}: exit {proc.returncode}\n{proc.stderr[-3000:]}"
        assert proc.stderr.count("\n") == 1 and "Traceback" not in proc.stderr, f"{where}:\n{proc.stderr[-3000:]}"
        assert message in proc.stderr, f"{where}: {proc.stderr}"
    assert (tmp_path / "a_file").read_text() == "not a directory\n"  # never replaced by an output directory


@pytest.mark.parametrize("args, env, shown, no_progress", [
    ([], {}, ["info line", "warning line"], False),
    (["--quiet"], {}, ["warning line"], True),
    (["--log-level", "error"], {}, [], False),
    (["--log-level", "DEBUG"], {}, ["debug line", "info line", "warning line"], False),
    (["--no-progress"], {}, ["info line", "warning line"], True),
    ([], {"TQDM_DISABLE": "1"}, ["info line", "warning line"], True),
])
def test_common_flags_set_the_log_level_and_the_progress_bars(args, env, shown, no_progress):
    code = ("import logging, os, sys\n"
            "from asr.cli import ArgumentParser, add_common_flags, setup_logging\n"
            "p = ArgumentParser(); add_common_flags(p); args = p.parse_args(sys.argv[1:]); setup_logging(args)\n"
            "log = logging.getLogger('x'); log.debug('debug line'); log.info('info line'); log.warning('warning line')\n"
            "print(args.no_progress, os.environ.get('HF_HUB_DISABLE_PROGRESS_BARS'))")
    base = {k: v for k, v in ENV.items() if k not in ("TQDM_DISABLE", "HF_HUB_DISABLE_PROGRESS_BARS")}
    proc = subprocess.run([sys.executable, "-c", code, *args], capture_output=True, text=True, cwd=ROOT,
                          env={**base, **env}, timeout=60)
    assert proc.returncode == 0, proc.stderr
    logged = [line.split(": ", 1)[1] for line in proc.stderr.splitlines()]
    assert logged == shown
    assert proc.stdout.split() == [str(no_progress), "1" if no_progress else "None"]


def _config_sections(cls: type, prefix: str = ""):
    """(dotted key, field, its class) of every field of a config dataclass tree."""
    from typing import get_type_hints

    hints = get_type_hints(cls)
    for f in dataclasses.fields(cls):
        yield f"{prefix}{f.name}", f, cls
        if dataclasses.is_dataclass(hints[f.name]):
            yield from _config_sections(hints[f.name], f"{prefix}{f.name}.")


def test_every_config_field_has_a_reason():
    from asr.config import field_reasons
    from asr.train import TrainConfig

    missing = [key for key, f, cls in _config_sections(TrainConfig) if not field_reasons(cls)[f.name]
               and not (dataclasses.is_dataclass(f.type) or key.count(".") == 0)]
    assert not missing, f"give these fields a one-line reason comment: {missing}"


def test_print_config_lists_every_key_with_its_default_and_reason():
    from asr.config import to_dict
    from asr.train import TrainConfig

    proc = run("train", "--print-config")
    assert proc.returncode == 0, proc.stderr[-2000:]
    lines = proc.stdout.splitlines()
    assert all(re.fullmatch(r"( *)[a-z_0-9]+: ?\S*.*  # \S.*", line) for line in lines), proc.stdout
    flat = []

    def walk(prefix: str, data: dict) -> None:
        for key, value in data.items():
            flat.append(prefix + key)
            if isinstance(value, dict) and key not in ("codecs", "extra"):
                walk(f"{prefix}{key}.", value)
    walk("", to_dict(TrainConfig()))
    assert len(lines) == len(flat)
    assert "  lr: 0.0001  # peak learning rate after warmup" in lines

    proc = run("train", "--print-config", "--config", ROOT / "configs/train/tiny_cpu.yaml", "optim.lr=3e-4")
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert "  lr: 0.0003  # (default 0.0001) peak learning rate after warmup" in proc.stdout.splitlines()
    bad = run("train", "--print-config", "optim.bogus=1")
    assert bad.returncode == EXIT_USAGE and bad.stderr.count("\n") == 1 and "unknown key(s) bogus" in bad.stderr
