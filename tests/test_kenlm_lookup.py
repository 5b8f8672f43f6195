"""Where lm.build finds KenLM's lmplz/build_binary: $ASR_KENLM_BIN, PATH, tools/kenlm/bin, else one line naming all three.

The real programs (scripts/setup.sh builds them into tools/kenlm/bin) are linked into temporary folders that
stand for each place; PATH, the variable and the set-up folder are changed for the test only.
"""

from __future__ import annotations

import importlib.util
import os
from pathlib import Path

import pytest

import lm.build
from lm.build import KENLM_BIN_DIR, KENLM_BIN_ENV, KenLMNotFoundError, LMBuildOptions, build_lm, find_kenlm_tool

ROOT = Path(__file__).resolve().parents[1]
TOOLS = ("lmplz", "build_binary")
SENTENCES = ["the cat sat on the mat", "the dog sat on the log", "a cat and a dog", "the mat and the log"] * 3

pytestmark = pytest.mark.skipif(not all((KENLM_BIN_DIR / t).is_file() for t in TOOLS),
                                reason="KenLM's programs are built by `bash scripts/setup.sh` into tools/kenlm/bin")


def _bin_dir(folder: Path) -> Path:
    """A folder holding links to the real lmplz and build_binary."""
    folder.mkdir(parents=True)
    for tool in TOOLS:
        (folder / tool).symlink_to(KENLM_BIN_DIR / tool)
    return folder


@pytest.fixture
def nowhere(tmp_path, monkeypatch) -> Path:
    """No KenLM anywhere: PATH without it, the variable unset, the set-up folder moved to an empty one."""
    empty = tmp_path / "empty"
    empty.mkdir()
    monkeypatch.setenv("PATH", str(empty))
    monkeypatch.delenv(KENLM_BIN_ENV, raising=False)
    monkeypatch.setattr(lm.build, "KENLM_BIN_DIR", tmp_path / "setup" / "tools" / "kenlm" / "bin")
    return tmp_path


def _build_with_found_tools(out: Path) -> str:
    """Build a real 2-gram and return the lmplz it ran."""
    info = build_lm(SENTENCES, out, options=LMBuildOptions(order=2, discount_fallback=True))
    assert (out / "language_model" / "lm.bin").stat().st_size > 0
    return info.lmplz_command[0]


def test_found_on_path(nowhere, monkeypatch):
    on_path = _bin_dir(nowhere / "on_path")
    monkeypatch.setenv("PATH", f"{nowhere / 'empty'}{os.pathsep}{on_path}")
    assert find_kenlm_tool("build_binary") == on_path / "build_binary"
    assert _build_with_found_tools(nowhere / "lm") == str(on_path / "lmplz")


def test_found_in_the_environment_variable_before_path(nowhere, monkeypatch):
    from_env, on_path = _bin_dir(nowhere / "from_env"), _bin_dir(nowhere / "on_path")
    monkeypatch.setenv("PATH", str(on_path))
    monkeypatch.setenv(KENLM_BIN_ENV, str(from_env))
    assert find_kenlm_tool("lmplz") == from_env / "lmplz"
    assert _build_with_found_tools(nowhere / "lm") == str(from_env / "lmplz")


def test_found_in_the_setup_folder(nowhere, monkeypatch):
    setup = _bin_dir(nowhere / "setup" / "tools" / "kenlm" / "bin")
    assert find_kenlm_tool("lmplz") == setup / "lmplz"
    assert _build_with_found_tools(nowhere / "lm") == str(setup / "lmplz")


def test_missing_everywhere_is_one_line_naming_all_three(nowhere, monkeypatch, capsys):
    with pytest.raises(KenLMNotFoundError) as raised:
        find_kenlm_tool("lmplz")
    message = str(raised.value)
    assert "\n" not in message
    assert "PATH" in message and f"{KENLM_BIN_ENV} (unset)" in message and str(lm.build.KENLM_BIN_DIR) in message
    assert "bash scripts/setup.sh" in message
    # a variable pointing to the wrong folder is named with its value
    monkeypatch.setenv(KENLM_BIN_ENV, str(nowhere / "wrong"))
    with pytest.raises(KenLMNotFoundError, match=f"{KENLM_BIN_ENV}={nowhere / 'wrong'}"):
        find_kenlm_tool("build_binary")
    # the script: exit 2 and that one line, before reading any text
    text = nowhere / "lm.txt"
    text.write_text("\n".join(SENTENCES) + "\n")
    spec = importlib.util.spec_from_file_location("build_lm_script", ROOT / "scripts" / "build_lm.py")
    script = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(script)
    capsys.readouterr()
    assert script.main(["--text", str(text), "--output", str(nowhere / "out"), "--order", "2"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "lmplz was not found on PATH" in err and KENLM_BIN_ENV in err
    assert not (nowhere / "out" / "language_model").exists()
