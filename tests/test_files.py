"""asr.files: every writer's file or directory appears whole or not at all."""

from __future__ import annotations

import pytest

from asr.files import atomic_path, replace_dir, write_text_atomic


def test_a_failed_write_keeps_the_old_file_and_leaves_no_temporary(tmp_path):
    path = tmp_path / "deep" / "results.json"
    write_text_atomic(path, "old\n")
    with pytest.raises(RuntimeError), atomic_path(path) as tmp:
        tmp.write_text("half of the new")
        raise RuntimeError("crash mid-write")
    assert path.read_text() == "old\n"
    assert [p.name for p in path.parent.iterdir()] == ["results.json"]
    write_text_atomic(path, "new\n")
    assert path.read_text() == "new\n" and len(list(path.parent.iterdir())) == 1


def test_the_temporary_keeps_the_suffix_writers_pick_formats_from(tmp_path):
    with atomic_path(tmp_path / "comparison.png") as tmp:
        assert tmp.suffix == ".png" and tmp.parent == tmp_path and tmp.name.startswith(".")
        tmp.write_bytes(b"png")
    assert (tmp_path / "comparison.png").read_bytes() == b"png"


def test_replace_dir_swaps_a_whole_directory(tmp_path):
    (tmp_path / "new").mkdir()
    (tmp_path / "new" / "a").write_text("1")
    (tmp_path / "target").mkdir()
    (tmp_path / "target" / "old").write_text("0")
    replace_dir(tmp_path / "new", tmp_path / "target")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["target"]
    assert [p.name for p in (tmp_path / "target").iterdir()] == ["a"]
