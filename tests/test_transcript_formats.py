"""Transcription outputs: subtitle cues of <= 2 lines of <= 42 characters, CTM, TSV, a NeMo manifest,
`--output -` (JSONL on stdout, logs on stderr), and progress weighted by audio seconds.

The CLI tests run scripts/transcribe.py on real speech with the real trained model (conftest's `trained_model`).
"""

from __future__ import annotations

import importlib.util
import json
import random
import re
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf

from asr.audio import load_audio
from asr.outputs import CUE_LINE_CHARS, CUE_MAX_LINES, CUE_MAX_SECONDS, cues, render, wrap_cue
from asr.transcribe import Transcript, WordTime

from trainrun import env

ROOT = Path(__file__).resolve().parents[1]
SCRIPT = ROOT / "scripts" / "transcribe.py"


def load_script():
    """scripts/transcribe.py as a module, to call its main() in this process."""
    spec = importlib.util.spec_from_file_location("transcribe_script", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def random_words(seed: int, count: int, longest: int) -> tuple[WordTime, ...]:
    """Words of 1..longest letters, 0.1-0.4 s apart (sometimes a pause of 1.5 s)."""
    rng = random.Random(seed)
    words, t = [], 0.0
    for _ in range(count):
        length = rng.randint(1, longest)
        word = "".join(rng.choice("abcdefghijklmnopqrstuvwxyz'") for _ in range(length))
        words.append(WordTime(word, round(t, 3), round(t + 0.05 * length, 3)))
        t += 0.05 * length + (1.5 if rng.random() < 0.03 else rng.uniform(0.1, 0.4))
    return tuple(words)


def subtitle_blocks(text: str, fmt: str) -> list[tuple[str, list[str]]]:
    """(timing line, text lines) of each cue of an srt/vtt file."""
    body = text.removeprefix("WEBVTT\n\n")
    blocks = []
    for block in body.strip("\n").split("\n\n"):
        lines = block.split("\n")
        if fmt == "srt":
            lines = lines[1:]  # the cue number
        blocks.append((lines[0], lines[1:]))
    return blocks


@pytest.mark.parametrize("seed,longest", [(0, 8), (1, 14), (2, 30), (3, 60)])
def test_cues_wrap_into_at_most_two_lines_of_42_characters(seed, longest):
    words = random_words(seed, 400, longest)
    found = cues(words)
    pieces = []
    for start, end, text in found:
        lines = wrap_cue(text)
        assert 1 <= len(lines) <= CUE_MAX_LINES and all(0 < len(line) <= CUE_LINE_CHARS for line in lines), lines
        assert " ".join(lines) == text
        assert start < end and end - start <= CUE_MAX_SECONDS + 0.05 * longest
        pieces.extend(text.split())
    starts = [start for start, _, _ in found]
    assert starts == sorted(starts) and all(a[1] <= b[0] for a, b in zip(found, found[1:]))  # split by time
    assert "".join(pieces) == "".join(w.word for w in words)  # every letter, in order (long words cut in pieces)
    if longest <= CUE_LINE_CHARS:
        assert pieces == [w.word for w in words]
    transcript = Transcript("/in", "a.wav", 999.0, " ".join(w.word for w in words), words, "greedy", "/m")
    for fmt in ("srt", "vtt"):
        blocks = subtitle_blocks(render(transcript, fmt), fmt)
        assert len(blocks) == len(found)
        assert all(1 <= len(lines) <= 2 and all(len(line) <= 42 for line in lines) for _, lines in blocks)


def test_a_cue_is_balanced_over_its_two_lines():
    assert wrap_cue("short one") == ["short one"]
    text = "the quick brown fox jumps over the lazy dog and then runs away"
    assert wrap_cue(text) == ["the quick brown fox jumps over", "the lazy dog and then runs away"]


def test_ctm_and_tsv_layouts():
    words = (WordTime("hello", 0.5, 0.9), WordTime("there", 1.0, 1.42), WordTime("again", 3.0, 3.5))
    record = Transcript("/in", "sub dir/a b.wav", 4.0, "hello there again", words, "greedy", "/m")
    assert render(record, "ctm") == ("sub_dir/a_b 1 0.500 0.400 hello\n"
                                     "sub_dir/a_b 1 1.000 0.420 there\n"
                                     "sub_dir/a_b 1 3.000 0.500 again\n")
    assert render(record, "tsv") == "start\tend\ttext\n500\t1420\thello there\n3000\t3500\tagain\n"
    empty = Transcript("/in", "s.wav", 1.0, "", (), "greedy", "/m")
    assert render(empty, "ctm") == "" and render(empty, "tsv") == "start\tend\ttext\n"


def test_words_below_a_confidence_are_marked_and_ctm_carries_the_confidence():
    words = (WordTime("hello", 0.5, 0.9, 0.93), WordTime("thare", 1.0, 1.42, 0.31), WordTime("again", 3.0, 3.5, 0.5))
    record = Transcript("/in", "a.wav", 4.0, "hello thare again", words, "greedy", "/m", None, "calibrated")
    assert render(record, "txt", mark_below=0.5) == "hello thare(?) again\n"  # 0.5 is not below 0.5
    assert render(record, "txt") == "hello thare again\n"  # no marks unless asked
    assert render(record, "tsv", mark_below=0.6) == "start\tend\ttext\n500\t1420\thello thare(?)\n3000\t3500\tagain(?)\n"
    assert "hello thare(?)" in render(record, "srt", mark_below=0.5) and "again(?)" not in render(record, "vtt", 0.5)
    assert render(record, "ctm", mark_below=0.5).splitlines() == [
        "a 1 0.500 0.400 hello 0.9300", "a 1 1.000 0.420 thare 0.3100", "a 1 3.000 0.500 again 0.5000"]


@pytest.fixture(scope="module")
def speech_dir(trained_model: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Two utterances of the model's corpus (one in a sub-folder) and one ~20 s file joining eight others."""
    wavs = sorted((trained_model.parents[1] / "corpus" / "audio").rglob("*.wav"))
    out = tmp_path_factory.mktemp("speech")
    shutil.copy(wavs[0], out / wavs[0].name)
    (out / "sub").mkdir()
    shutil.copy(wavs[1], out / "sub" / wavs[1].name)
    sf.write(out / "long.wav", np.concatenate([load_audio(w) for w in wavs[2:10]]), 16000, subtype="FLOAT")
    return out


def test_cli_writes_ctm_tsv_subtitles_and_a_nemo_manifest(trained_model, speech_dir, tmp_path):
    out = tmp_path / "out"
    code = load_script().main([str(speech_dir), "--model", str(trained_model), "--output", str(out),
                               "--formats", "txt,srt,vtt,ctm,tsv,nemo", "--chunk-seconds", "8",
                               "--overlap-seconds", "2", "--segmenter", "grid"])
    assert code == 0
    records = [json.loads(line) for line in (out / "transcripts.jsonl").read_text().splitlines()]
    assert [r["path"] for r in records] == sorted(r["path"] for r in records) and len(records) == 3
    long = next(r for r in records if r["path"] == "long.wav")
    assert len(long["words"]) >= 30
    for record in records:
        base = out / Path(record["path"]).with_suffix("")
        ctm = base.with_suffix(".ctm").read_text().splitlines()
        file_id = record["path"].removesuffix(".wav")
        assert ctm == [f"{file_id} 1 {w['start']:.3f} {w['end'] - w['start']:.3f} {w['word']} {w['confidence']:.4f}"
                       for w in record["words"]]  # CTM's sixth field: the word's confidence
        tsv = base.with_suffix(".tsv").read_text().splitlines()
        assert tsv[0] == "start\tend\ttext"
        assert " ".join(row.split("\t")[2] for row in tsv[1:]) == record["text"]
        for fmt in ("srt", "vtt"):
            blocks = subtitle_blocks(base.with_suffix(f".{fmt}").read_text(), fmt)
            assert " ".join(" ".join(lines) for _, lines in blocks) == record["text"]
            assert all(1 <= len(lines) <= 2 and all(len(line) <= 42 for line in lines) for _, lines in blocks)
        assert base.with_suffix(".txt").read_text() == record["text"] + "\n"
    assert len(subtitle_blocks((out / "long.srt").read_text(), "srt")) >= 3  # ~20 s of speech: several cues
    nemo = [json.loads(line) for line in (out / "nemo_manifest.jsonl").read_text().splitlines()]
    assert nemo == [{"audio_filepath": str(speech_dir / r["path"]), "duration": r["duration"], "pred_text": r["text"]}
                    for r in records]
    assert all(Path(row["audio_filepath"]).is_file() for row in nemo)


def test_output_dash_prints_jsonl_on_stdout_and_the_progress_bar_counts_audio_seconds(trained_model, speech_dir):
    proc = subprocess.run([sys.executable, str(SCRIPT), str(speech_dir), "--model", str(trained_model),
                           "--output", "-", "--chunk-seconds", "8", "--overlap-seconds", "2", "--segmenter", "grid"],
                          capture_output=True, text=True, cwd=ROOT, timeout=900,
                          env={**env(), "PYTHONPATH": str(ROOT)})  # this checkout's asr, not the installed one
    assert proc.returncode == 0, proc.stderr[-3000:]
    records = [json.loads(line) for line in proc.stdout.splitlines()]  # nothing but JSON lines on stdout
    assert [r["path"] for r in records] == ["long.wav", "sub/" + next(speech_dir.glob("sub/*.wav")).name,
                                            next(speech_dir.glob("train-*.wav")).name]
    assert all(r["text"] and r["words"] for r in records)
    assert "done: 3 of 3 files transcribed" in proc.stderr
    total = sum(r["duration"] for r in records)
    bars = re.findall(r"(\d+)/(\d+) s audio", proc.stderr)
    assert bars and bars[-1] == (f"{total:.0f}", f"{total:.0f}"), proc.stderr[-2000:]


@pytest.mark.parametrize("extra,message", [
    (["--formats", "nemo"], "--formats nemo writes a file into --output"),
    (["--formats", "srt"], "add --in-place"),
    (["--formats", "docx"], "unknown"),
])
def test_output_dash_refuses_outputs_it_cannot_keep(trained_model, speech_dir, extra, message, caplog):
    code = load_script().main([str(speech_dir), "--model", str(trained_model), "--output", "-", *extra])
    assert code == 2
    assert message in caplog.text


def test_progress_moves_within_one_long_file_by_audio_seconds(trained_model, speech_dir):
    from asr.beam import GreedyCTC
    from asr.inference import load_acoustic_model
    from asr.transcribe import TranscribeOptions, Transcriber, find_audio

    loaded = load_acoustic_model(trained_model)
    options = TranscribeOptions(chunk_seconds=4, overlap_seconds=1, segmenter="grid", max_batch_seconds=8)  # 2 chunks a pass
    transcriber = Transcriber(loaded, GreedyCTC(loaded.vocab), options)
    item = next(i for i in find_audio([speech_dir]) if i.path == "long.wav")
    steps: list[float] = []
    [(_, result)] = transcriber.transcribe([item], chunked=True, on_audio=steps.append)
    duration = sf.info(speech_dir / "long.wav").duration
    assert len(steps) >= 3 and all(s > 0 for s in steps)  # ~20 s in 4 s chunks, 2 per pass: moves along
    assert max(steps) < duration / 2
    assert sum(steps) == pytest.approx(duration, abs=0.01) and result.duration == pytest.approx(duration, abs=1e-3)
    short = [i for i in find_audio([speech_dir]) if i.path != "long.wav"]
    steps.clear()
    results = list(transcriber.transcribe(short, on_audio=steps.append))
    assert len(results) == 2 and sum(steps) == pytest.approx(sum(r.duration for _, r in results), abs=0.01)
