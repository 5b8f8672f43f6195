"""Console commands (issue 16): every entry point in scripts/ is an installed command (asr-train, asr-eval, ...),
in the set-up's editable install and in a wheel built from the checkout; the commands run the scripts' main().
"""

from __future__ import annotations

import importlib.metadata
import shutil
import subprocess
import sys
import tomllib
import zipfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent
COMMANDS = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["scripts"]


# The command of each script (a new script without one fails the first test).
EXPECTED = {"train": "asr-train", "eval": "asr-eval", "transcribe": "asr-transcribe", "build_lm": "asr-build-lm",
            "export": "asr-export", "make_corpus": "asr-make-corpus", "align": "asr-align",
            "publish_model": "asr-publish", "compare_runs": "asr-compare-runs", "deepen_model": "asr-deepen",
            "average_checkpoints": "asr-average"}


def test_every_entry_script_has_a_console_command():
    import asr_scripts

    scripts = {p.stem for p in (ROOT / "scripts").glob("*.py") if p.stem != "__init__"}
    assert scripts == set(EXPECTED), f"scripts without a command: {sorted(scripts - set(EXPECTED))}"
    for stem, name in EXPECTED.items():
        module, function = COMMANDS[name].split(":")
        assert module == "asr_scripts" and getattr(asr_scripts, function).__name__ == stem
    assert set(COMMANDS) == set(EXPECTED.values())


def test_the_installed_commands_are_the_declared_ones():
    installed = {e.name: e.value for e in importlib.metadata.entry_points(group="console_scripts")
                 if e.name.startswith("asr-")}
    assert installed == COMMANDS, "run `bash scripts/setup.sh` after changing [project.scripts]"


@pytest.mark.parametrize("command", ["asr-eval", "asr-build-lm", "asr-transcribe", "asr-train"])
def test_a_command_runs_its_script(command):
    proc = subprocess.run([str(BIN / command), "--help"], capture_output=True, text=True, timeout=120, cwd="/")
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert proc.stdout.startswith(f"usage: {command} ")  # argparse names the command, not scripts/x.py


def test_a_command_keeps_the_script_s_exit_codes(tmp_path):
    """A user error is the script's one line and exit code 2, through the command too."""
    proc = subprocess.run([str(BIN / "asr-make-corpus"), "--out", str(tmp_path / "c"), "--train", "-3"],
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2 and "fix --train/--dev/--test" in proc.stderr and proc.stderr.count("\n") == 1
    assert "Traceback" not in proc.stderr and not (tmp_path / "c").exists()


def test_a_wheel_holds_the_library_the_scripts_and_the_commands(tmp_path):
    """`pip install .` installs from a wheel: built here (offline, from a copy of the checkout) and read."""
    source = tmp_path / "src"
    for name in ("asr", "lm", "scripts"):
        shutil.copytree(ROOT / name, source / name, ignore=shutil.ignore_patterns("__pycache__"))
    for name in ("pyproject.toml", "README.md"):
        shutil.copy(ROOT / name, source / name)
    proc = subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q",
                           "--disable-pip-version-check", "-w", str(tmp_path / "dist"), str(source)],
                          capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    (wheel,) = (tmp_path / "dist").glob("asr_toolkit-*.whl")
    with zipfile.ZipFile(wheel) as zf:
        names = set(zf.namelist())
        entry_points = next(zf.read(n).decode() for n in names if n.endswith(".dist-info/entry_points.txt"))
    scripts = {f"asr_scripts/{p.name}" for p in (ROOT / "scripts").glob("*.py")}
    assert scripts <= names and "asr/__init__.py" in names and "lm/build.py" in names
    assert not any(n.startswith(("tests/", "bench/")) for n in names)
    for name, target in COMMANDS.items():
        assert f"{name} = {target}" in entry_points
