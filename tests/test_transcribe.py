"""Batch transcription: streaming/chunking/stitching, resumable outputs, bad files, kill + resume, 2 processes.

Fast tests use a randomly initialised tiny model (its transcripts are noise, but deterministic);
quality tests (chunked vs unchunked words) use the shipped base checkpoint and are slow.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
import soxr

from asr.audio import AudioError, load_audio, stream_audio
from asr.chunking import Chunk, ChunkSpec, Stitcher, chunked_log_probs, iter_chunks
from asr.model import conv_output_frames
from asr.outputs import append_line, cues, open_append, render, repair_jsonl
from asr.transcribe import (
    AudioItem,
    Transcript,
    TranscribeOptions,
    WordTime,
    assign_by_cost,
    find_audio,
    plan_work,
    read_path_list,
    side_file_bases,
)

from compare import same_transcripts
from trainrun import env, free_port

ROOT = Path(__file__).resolve().parents[1]
SCRIPT = ROOT / "scripts" / "transcribe.py"
ACCELERATE = str(Path(sys.executable).with_name("accelerate"))
WAV2VEC2_KERNELS, WAV2VEC2_STRIDES = (10, 3, 3, 3, 3, 2, 2), (5, 2, 2, 2, 2, 2, 2)
FRAME = 320  # samples per wav2vec2 frame


def frames(n: int) -> int:
    return conv_output_frames(n, WAV2VEC2_KERNELS, WAV2VEC2_STRIDES)


def run_cli(*args: str, timeout: float = 300) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, str(SCRIPT), *args], capture_output=True, text=True, env=env(), cwd=ROOT,
                          timeout=timeout)


def load_script():
    """scripts/transcribe.py as a module (for its argument checks)."""
    import importlib.util

    spec = importlib.util.spec_from_file_location("transcribe_script", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def read_jsonl(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines()]


def tree_listing(root: Path) -> dict[str, int]:
    return {p.relative_to(root).as_posix(): p.stat().st_size for p in sorted(root.rglob("*")) if p.is_file()}


def write_audio(path: Path, audio16k: np.ndarray, rate: int, channels: int, fmt: str, subtype: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    x = soxr.resample(audio16k, 16000, rate) if rate != 16000 else audio16k
    if channels == 2:
        x = np.stack([x, 0.5 * x], axis=1)  # different channels, so a wrong down-mix would show
    sf.write(path, x, rate, format=fmt, subtype=subtype)


# ------------------------------------------------------------------------------------------ fixtures
@pytest.fixture(scope="module")
def tiny_model(tmp_path_factory) -> Path:
    """A randomly initialised 2-layer wav2vec2 CTC model directory (noise out, deterministic)."""
    import torch

    from asr.model import ModelConfig, build_model
    from asr.text import TextNormalizer, build_vocab, make_processor, save_processor

    out = tmp_path_factory.mktemp("tiny_model")
    torch.manual_seed(0)
    vocab = build_vocab(["the quick brown fox jumps over the lazy dog's back"])
    arch = dict(model_type="wav2vec2", hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
                intermediate_size=64, conv_dim=[32] * 7, num_conv_pos_embeddings=16, num_conv_pos_embedding_groups=4)
    build_model(ModelConfig(architecture=arch), vocab, pad_token_id=vocab["[PAD]"]).save_pretrained(out)
    save_processor(make_processor(vocab, return_attention_mask=False), TextNormalizer(), out)
    return out


@pytest.fixture(scope="module")
def utterances(synth_corpus) -> list[np.ndarray]:
    return [load_audio(p) for p in sorted(synth_corpus.glob("audio/*/*.wav"))]


@pytest.fixture(scope="module")
def messy_tree(tmp_path_factory, utterances) -> Path:
    """Nested speech in several formats, rates and channel counts, plus three broken files under bad/."""
    root = tmp_path_factory.mktemp("messy") / "in"
    write_audio(root / "a" / "one.wav", utterances[0], 8000, 2, "WAV", "PCM_16")
    write_audio(root / "a" / "b" / "two.flac", utterances[1], 44100, 1, "FLAC", "PCM_24")
    write_audio(root / "a" / "b" / "three.ogg", utterances[2], 22050, 2, "OGG", "VORBIS")
    write_audio(root / "c" / "four.mp3", utterances[3], 16000, 2, "MP3", "MPEG_LAYER_III")
    write_audio(root / "five.wav", utterances[4], 16000, 1, "WAV", "FLOAT")
    write_audio(root / "a" / "blip.wav", utterances[4][:200], 16000, 1, "WAV", "PCM_16")  # under one frame
    if shutil.which("ffmpeg"):  # a format only FFmpeg decodes
        subprocess.run(["ffmpeg", "-loglevel", "error", "-i", str(root / "five.wav"), "-c:a", "aac",
                        str(root / "c" / "six.m4a")], check=True)
    bad = root / "bad"
    bad.mkdir()
    (bad / "empty.wav").write_bytes(b"")
    (bad / "notes.wav").write_text("these are my notes, not audio\n")
    write_audio(bad / "cut.flac", utterances[5], 16000, 1, "FLAC", "PCM_16")
    data = (bad / "cut.flac").read_bytes()
    (bad / "cut.flac").write_bytes(data[: len(data) // 2])  # a copy that stopped half-way
    (root / "readme.txt").write_text("not audio, not picked up\n")
    (root / ".hidden.wav").write_bytes(b"")  # hidden names (macOS ._ files) are skipped
    return root


# ------------------------------------------------------------------------------- chunking, stitching
@pytest.mark.parametrize("num_samples", [400, 5_000, 32_000, 32_001, 32_320, 40_000, 123_457, 500_000])
@pytest.mark.parametrize("block", [1_000, 7_777, 100_000])
@pytest.mark.parametrize("segmenter", [None, "energy", "webrtc", "silero"])
def test_stitched_frames_are_the_unchunked_frame_grid(num_samples, block, segmenter):
    # A fake model whose frame t says which global sample it starts at: stitching must put every frame
    # of the file exactly once, in order, at the unchunked model's frame count.
    spec = ChunkSpec.from_seconds(2.0, 0.5, FRAME, segmenter)
    # noise with a quiet stretch every 0.7 s, so that pause cuts move around
    audio = np.random.default_rng(num_samples).normal(0, 1, num_samples).astype(np.float32)
    audio[(np.arange(num_samples) % 11_200) < 3_000] *= 1e-3

    def forward(audios):
        starts = [_locate(audio, a) for a in audios]
        return [np.repeat((s + np.arange(frames(len(a))) * FRAME)[:, None], 3, axis=1).astype(np.float32)
                for s, a in zip(starts, audios)]

    log_probs, n = chunked_log_probs((audio[i : i + block] for i in range(0, num_samples, block)), spec, forward, 3)
    assert n == num_samples
    assert log_probs.shape == (frames(num_samples), 3)
    np.testing.assert_array_equal(log_probs[:, 0], np.arange(frames(num_samples)) * FRAME)


def _locate(audio: np.ndarray, piece: np.ndarray) -> int:
    """Where `piece` starts in `audio` (on the frame grid)."""
    for start in range(0, len(audio) - len(piece) + 1, FRAME):
        if np.array_equal(audio[start : start + len(piece)], piece):
            return start
    raise AssertionError("piece not found in the audio")


def test_pause_cuts_fall_in_pauses_and_pieces_stay_short():
    rng = np.random.default_rng(0)
    audio = rng.normal(0, 0.1, 60 * 16_000).astype(np.float32)  # a minute of loud noise ...
    pauses = (7, 19, 26, 41, 52)  # ... with half-second pauses
    for t in pauses:
        audio[t * 16_000 : int((t + 0.5) * 16_000)] *= 1e-3
    spec = ChunkSpec.from_seconds(15, 5, FRAME, "energy")
    consumed = []

    def blocks():
        for i in range(60):
            consumed.append(i)
            yield audio[i * 16_000 : (i + 1) * 16_000]

    chunks = []
    for chunk in iter_chunks(blocks(), spec):
        if not chunks:
            assert len(consumed) <= 17  # read lazily: the first piece comes out after ~15 s
        chunks.append(chunk)
    cuts = [c.keep_end / 16_000 for c in chunks[:-1]]
    assert len(cuts) == len(pauses) and all(t <= cut <= t + 0.5 for t, cut in zip(pauses, cuts)), cuts
    assert chunks[0].keep_start == 0 and chunks[-1].keep_end is None
    assert all(c.ends_in_silence for c in chunks[:-1]) and not chunks[-1].ends_in_silence
    for chunk, following in zip(chunks, chunks[1:]):
        assert following.start == following.keep_start == chunk.keep_end  # no overlap, no gap
        assert len(chunk.audio) == chunk.keep_end - chunk.start + 3_200  # 0.2 s past the cut, no more
        assert len(chunk.audio) <= spec.chunk_samples + 3_200 and chunk.keep_end % FRAME == 0
    assert chunks[-1].start + len(chunks[-1].audio) == len(audio)
    # Without pauses (constant noise) pieces still never exceed --chunk-seconds
    flat = list(iter_chunks([rng.normal(0, 0.1, 50 * 16_000).astype(np.float32)], spec))
    assert all(spec.chunk_samples // 3 <= c.keep_end - c.start <= spec.chunk_samples for c in flat[:-1])
    assert not any(c.ends_in_silence for c in flat)  # quietest is not silent: no word boundary is forced


@pytest.mark.parametrize("delimiter, silent, marked", [(2, True, True), (2, False, False), (None, True, False)])
def test_a_cut_in_silence_becomes_a_word_boundary(delimiter, silent, marked):
    # Two pieces whose model output is all blank (id 0): a cut in silence puts a certain "|" (id 2)
    # at the first frame of the next piece, which keeps the words on either side apart.
    first = Chunk(np.zeros(16_000 + 3_200, np.float32), 0, 0, 16_000, silent)
    second = Chunk(np.zeros(8_000, np.float32), 16_000, 16_000, None)
    blank = np.log(np.full((frames(len(first.audio)), 4), 1e-6, np.float32))
    blank[:, 0] = 0.0
    stitcher = Stitcher(FRAME, delimiter)
    stitcher.add(first, blank)
    stitcher.add(second, blank[: frames(len(second.audio))])
    out = stitcher.result()
    assert out.shape == (frames(24_000), 4)
    boundary = 16_000 // FRAME
    assert (out[boundary].argmax() == 2) == marked
    assert (np.delete(out, boundary, axis=0).argmax(1) == 0).all()  # nothing else changed


def test_pause_cutting_is_the_default_and_ignores_the_overlap_option():
    # the default 5 s overlap would not fit 8 s chunks on the grid
    assert TranscribeOptions(chunk_seconds=8).chunk_spec(FRAME).segmenter == "silero"
    assert TranscribeOptions(chunk_seconds=8, cut_at_pauses=True).chunk_spec(FRAME).segmenter == "energy"
    assert TranscribeOptions(segmenter="grid").chunk_spec(FRAME).segmenter is None
    with pytest.raises(ValueError, match="use one of grid, energy, webrtc, silero"):
        TranscribeOptions(segmenter="vad")


def test_cut_at_pauses_is_a_deprecated_name_of_the_energy_segmenter(tiny_model, tmp_path, caplog):
    script = load_script()
    args = script.parse_args([str(tmp_path / "in"), "--model", str(tiny_model), "--output", str(tmp_path / "out"),
                              "--cut-at-pauses"])
    assert script.options_from(args)[0].chunk_spec(FRAME).segmenter == "energy"
    assert "--cut-at-pauses is deprecated; use --segmenter energy" in caplog.text


def test_chunks_overlap_keep_their_centres_and_are_read_lazily():
    spec = ChunkSpec.from_seconds(30, 5, FRAME)
    consumed = []

    def blocks():  # 10 minutes in 1 s blocks, recording how far the reader got
        for i in range(600):
            consumed.append(i)
            yield np.zeros(16_000, dtype=np.float32)

    chunks = []
    for chunk in iter_chunks(blocks(), spec):
        if not chunks:
            assert len(consumed) <= 32  # the first chunk comes out after ~30 s were read, not 10 minutes
        chunks.append((chunk.start, chunk.keep_start, chunk.keep_end, len(chunk.audio)))
    assert all(length == spec.chunk_samples for *_, length in chunks)
    assert chunks[0][:3] == (0, 0, 27.5 * 16_000)
    for (start, _, keep_end, _), (next_start, next_keep_start, _, _) in zip(chunks, chunks[1:]):
        assert next_keep_start == keep_end  # no frame lost or doubled
        assert keep_end - next_start >= spec.overlap_samples // 2  # left context of the next chunk
        assert start + spec.chunk_samples - keep_end == spec.overlap_samples // 2  # right context of this one
    assert chunks[-1][2] is None and chunks[-1][0] + chunks[-1][3] == 600 * 16_000


def test_stitcher_rejects_out_of_order_chunks():
    spec = ChunkSpec.from_seconds(2.0, 0.5, FRAME)
    chunks = list(iter_chunks([np.zeros(100_000, np.float32)], spec))
    stitcher = Stitcher(FRAME)
    with pytest.raises(ValueError, match="in order"):
        stitcher.add(chunks[1], np.zeros((frames(len(chunks[1].audio)), 3)))


@pytest.mark.parametrize("chunk, overlap, message", [(30, 0, "positive"), (10, 6, "at most half"),
                                                     (-1, 5, "0 to never chunk")])
def test_bad_chunk_options_name_the_fix(chunk, overlap, message):
    with pytest.raises(ValueError, match=message):
        TranscribeOptions(chunk_seconds=chunk, overlap_seconds=overlap, segmenter="grid")


# ---------------------------------------------------------------------------------------- reading
def test_streamed_audio_equals_load_audio_for_every_format(messy_tree):
    audio = [p for p in sorted(messy_tree.rglob("*")) if p.is_file() and p.parent.name != "bad"
             and p.suffix != ".txt" and not p.name.startswith(".")]
    assert len(audio) >= 5
    for path in audio:
        streamed = np.concatenate(list(stream_audio(path, block_seconds=0.37)))
        whole = load_audio(path)
        assert streamed.shape == whole.shape, path
        np.testing.assert_allclose(streamed, whole, atol=1e-6, err_msg=str(path))


def test_truncated_wav_is_an_error_although_libsndfile_reads_it(tmp_path, utterances):
    path = tmp_path / "cut.wav"
    write_audio(path, utterances[0], 16000, 1, "WAV", "PCM_16")
    data = path.read_bytes()
    path.write_bytes(data[: len(data) * 2 // 3])
    assert len(load_audio(path)) > 0  # libsndfile quietly returns what is there
    with pytest.raises(AudioError, match="truncated: its header declares"):
        list(stream_audio(path))


# ------------------------------------------------------------------------------------ inputs, plans
def test_manifests_of_every_kind_list_paths(tmp_path):
    (tmp_path / "m.jsonl").write_text('{"audio_filepath": "x/a.wav", "text": "hi"}\n\n{"audio": "/abs/b.flac"}\n')
    (tmp_path / "m.csv").write_text("file_name,text\nx/a.wav,hi\nc.mp3,yo\n")
    (tmp_path / "m.txt").write_text("# a comment\nx/a.wav\n  c.mp3  \n")
    assert read_path_list(tmp_path / "m.jsonl") == ["x/a.wav", "/abs/b.flac"]
    assert read_path_list(tmp_path / "m.csv") == ["x/a.wav", "c.mp3"]
    assert read_path_list(tmp_path / "m.txt") == ["x/a.wav", "c.mp3"]
    items = find_audio([], [tmp_path / "m.txt"])
    assert [(i.path, i.file) for i in items] == [("x/a.wav", tmp_path / "x/a.wav"), ("c.mp3", tmp_path / "c.mp3")]
    (tmp_path / "bad.jsonl").write_text('{"text": "no audio"}\n')
    with pytest.raises(ValueError, match="without an audio path"):
        read_path_list(tmp_path / "bad.jsonl")


def test_side_files_mirror_each_input_and_avoid_name_clashes(tmp_path):
    items = [AudioItem(0, "/data/in", "a/x.wav", Path("/data/in/a/x.wav")),
             AudioItem(1, "/data/in", "a/x.flac", Path("/data/in/a/x.flac")),
             AudioItem(2, "/data/in", "y.mp3", Path("/data/in/y.mp3")),
             AudioItem(3, "/lists/in.txt", "../z.wav", Path("/lists/z.wav"))]
    out = tmp_path / "out"
    assert side_file_bases(items, out, in_place=False) == [out / "in/a/x.wav", out / "in/a/x.flac", out / "in/y",
                                                           out / "in-2/__/z"]
    assert side_file_bases(items[2:3], out, in_place=False) == [out / "y"]
    assert side_file_bases(items[2:3], out, in_place=True) == [Path("/data/in/y")]


def test_work_is_batched_by_duration_and_balanced_over_ranks():
    durations = [3.0, 40.0, 2.0, 5.0, 125.0, 3.5, 1.0, 4.0]
    units = plan_work(durations, TranscribeOptions(chunk_seconds=30, overlap_seconds=5, max_batch_seconds=8))
    assert sorted(i for u in units for i in u.items) == list(range(len(durations)))
    assert {u.items for u in units if u.chunked} == {(1,), (4,)}
    assert all(u.seconds <= 8 for u in units if not u.chunked)
    ranks = assign_by_cost([u.seconds for u in units], 2)
    loads = [sum(u.seconds for u, r in zip(units, ranks) if r == rank) for rank in (0, 1)]
    assert ranks == assign_by_cost([u.seconds for u in units], 2)  # deterministic
    assert max(loads) == pytest.approx(max(u.seconds for u in units))  # the 125 s file alone, the rest elsewhere
    assert all(not u.chunked for u in plan_work(durations, TranscribeOptions(chunk_seconds=0)))


# ------------------------------------------------------------------------------------------ outputs
def test_torn_last_line_is_dropped_and_appends_continue(tmp_path):
    path = tmp_path / "t.jsonl"
    fd = open_append(path)
    append_line(fd, {"a": 1})
    os.write(fd, b'{"a": 2, "b": "tor')  # what a power loss mid-write could leave
    os.close(fd)
    assert repair_jsonl(path) == len(b'{"a": 2, "b": "tor')
    assert repair_jsonl(path) == 0
    fd = open_append(path)
    append_line(fd, {"a": 3})
    os.close(fd)
    assert read_jsonl(path) == [{"a": 1}, {"a": 3}]


def test_subtitles_split_at_pauses_and_format_times():
    words = (WordTime("hello", 0.5, 0.9), WordTime("there", 1.0, 1.4), WordTime("again", 3.0, 3.5))
    assert cues(words) == [(0.5, 1.4, "hello there"), (3.0, 3.5, "again")]
    record = Transcript("/in", "a.wav", 3661.5, "hello there again", words, "greedy", "/m")
    assert render(record, "srt").startswith("1\n00:00:00,500 --> 00:00:01,400\nhello there\n\n2\n00:00:03,000")
    assert render(record, "vtt").startswith("WEBVTT\n\n00:00:00.500 --> 00:00:01.400\nhello there\n")
    assert render(record, "txt") == "hello there again\n"
    long = tuple(WordTime(f"word{i}", i * 0.5, i * 0.5 + 0.4) for i in range(40))
    assert all(len(text) <= 84 and end - start <= 7 for start, end, text in cues(long))
    assert " ".join(text for *_, text in cues(long)) == " ".join(w.word for w in long)


# ------------------------------------------------------------------------------------------ the CLI
def test_directory_run_transcribes_good_files_and_lists_bad_ones(messy_tree, tiny_model, tmp_path):
    before = tree_listing(messy_tree)
    out = tmp_path / "out"
    proc = run_cli(str(messy_tree), "--model", str(tiny_model), "--output", str(out), "--formats", "txt,srt,vtt",
                   "--max-batch-seconds", "6")
    assert proc.returncode == 3, proc.stderr[-3000:]  # some files failed
    assert tree_listing(messy_tree) == before  # nothing written into the input tree

    errors = {e["path"]: e for e in read_jsonl(out / "errors.jsonl")}
    assert sorted(errors) == ["a/blip.wav", "bad/cut.flac", "bad/empty.wav", "bad/notes.wav"]
    assert errors["a/blip.wav"]["reason"] == "too_short"  # under one frame: nothing the model could say
    assert errors["bad/empty.wav"]["reason"] == "empty"
    assert errors["bad/notes.wav"]["reason"] == "unreadable"
    assert errors["bad/cut.flac"]["reason"] == "unreadable" and "truncated" in errors["bad/cut.flac"]["error"]

    records = read_jsonl(out / "transcripts.jsonl")
    good = ["a/b/three.ogg", "a/b/two.flac", "a/one.wav", "c/four.mp3"] + (
        ["c/six.m4a"] if shutil.which("ffmpeg") else []) + ["five.wav"]
    assert [r["path"] for r in records] == good  # input order: sorted relative paths
    for record in records:
        assert set(record) >= {"path", "duration", "text", "words", "decoder", "model"}
        assert record["decoder"] == "greedy" and record["model"] == str(tiny_model.resolve())
        assert record["text"] == " ".join(w["word"] for w in record["words"])
        times = [t for w in record["words"] for t in (w["start"], w["end"])]
        assert times == sorted(times) and all(0 <= t <= record["duration"] for t in times)
        stem = out / Path(record["path"]).with_suffix("")
        assert stem.with_suffix(".txt").read_text() == record["text"] + "\n"
        assert stem.with_suffix(".vtt").read_text().startswith("WEBVTT")
        assert stem.with_suffix(".srt").exists()
    durations = {r["path"]: r["duration"] for r in records}
    assert durations["a/one.wav"] == pytest.approx(len(load_audio(messy_tree / "a/one.wav")) / 16000, abs=1e-3)
    assert not (out / ".parts").exists()
    assert json.loads((out / "summary.json").read_text())["failed"] == 4


def test_onnx_backend_reads_the_messy_tree_like_torch(messy_tree, tiny_model, tmp_path):
    from asr.onnx_export import ExportOptions, export_onnx

    export_onnx(tiny_model, tmp_path / "onnx", options=ExportOptions(parity_seconds=(1.0, 2.5), batch_sizes=(1, 2)),
                audios=[load_audio(messy_tree / "five.wav")])
    common = [str(messy_tree), "--formats", "txt", "--max-batch-seconds", "6"]
    proc = run_cli(*common, "--backend", "onnx", "--model", str(tmp_path / "onnx"), "--output", str(tmp_path / "o"))
    assert proc.returncode == 3, proc.stderr[-3000:]  # the broken files, as with torch
    assert load_script().main([*common, "--model", str(tiny_model), "--output", str(tmp_path / "t")]) == 3
    onnx_rows = read_jsonl(tmp_path / "o" / "transcripts.jsonl")
    torch_rows = read_jsonl(tmp_path / "t" / "transcripts.jsonl")
    assert len(onnx_rows) >= 6
    same_transcripts(onnx_rows, torch_rows)
    assert read_jsonl(tmp_path / "o" / "errors.jsonl") == read_jsonl(tmp_path / "t" / "errors.jsonl")


def test_exit_codes_tell_a_crash_from_failed_files(utterances, tiny_model, tmp_path):
    """0 all done, 3 some files failed, 1 a crash (here: a folder where a side file must go), 2 bad arguments."""
    inputs = tmp_path / "in"
    write_audio(inputs / "one.wav", utterances[0], 16000, 1, "WAV", "PCM_16")
    write_audio(inputs / "two.wav", utterances[1], 16000, 1, "WAV", "PCM_16")
    common = [str(inputs), "--model", str(tiny_model), "--formats", "txt"]
    assert run_cli(*common, "--output", str(tmp_path / "ok")).returncode == 0
    (tmp_path / "crash" / "two.txt").mkdir(parents=True)  # os.replace cannot put the transcript there
    crash = run_cli(*common, "--output", str(tmp_path / "crash"))
    assert crash.returncode == 1 and "IsADirectoryError" in crash.stderr, crash.stderr[-3000:]
    (inputs / "three.wav").write_bytes(b"RIFF")
    failed = run_cli(*common, "--output", str(tmp_path / "failed"))
    assert failed.returncode == 3 and "Traceback" not in failed.stderr, failed.stderr[-3000:]
    assert [e["path"] for e in read_jsonl(tmp_path / "failed" / "errors.jsonl")] == ["three.wav"]
    usage = run_cli(*common, "--output", str(inputs / "one.wav" / "out"))
    assert usage.returncode == 2 and "is a file, not a directory" in usage.stderr, usage.stderr[-3000:]
    assert "Traceback" not in usage.stderr


@pytest.fixture(scope="module")
def noisy_meeting(synth_corpus, tmp_path_factory):
    """40 s of the corpus's utterances joined with 0.2-1.5 s pauses in pink noise at 20 dB, as a wav file."""
    from asr.long_recordings import RecordingOptions, join_utterances, read_manifest

    rec = join_utterances(read_manifest(synth_corpus / "train.jsonl"),
                          RecordingOptions(minutes=40 / 60, noise="pink", snr_db=20, seed=1))
    path = tmp_path_factory.mktemp("long") / "in" / "meeting.wav"
    path.parent.mkdir()
    sf.write(path, rec.audio, 16_000, subtype="PCM_16")
    return path, rec


@pytest.mark.parametrize("segmenter", ["energy", "webrtc", "silero"])
def test_segmenter_cuts_a_long_file_into_pieces_with_file_timestamps(noisy_meeting, tmp_path, segmenter):
    from asr.metrics import error_rates

    path, rec = noisy_meeting
    duration = len(rec.audio) / 16_000
    proc = run_cli(str(path.parent), "--model", str(ROOT / "assets" / "base_model"), "--chunk-seconds", "8",
                   "--segmenter", segmenter, "--output", str(tmp_path / "out"))
    assert proc.returncode == 0, proc.stderr[-3000:]
    [record] = read_jsonl(tmp_path / "out" / "transcripts.jsonl")
    assert record["duration"] == pytest.approx(duration, abs=0.01)
    words = record["words"]
    assert [w["word"] for w in words] == record["text"].split()
    starts = [w["start"] for w in words]
    assert starts == sorted(starts) and all(0 <= w["start"] < w["end"] <= duration + 0.02 for w in words)
    assert words[-1]["end"] > duration - 8  # in file seconds: the last piece's words are near the end, not at 0-8 s
    # the shipped base checkpoint reads these voices: most of the reference, whatever the cuts
    assert error_rates([rec.text], [record["text"]]).cer < 0.5


def test_a_segmenter_whose_package_is_missing_is_a_one_line_error(utterances, tiny_model, tmp_path):
    inputs = tmp_path / "in"
    write_audio(inputs / "one.wav", utterances[0], 16000, 1, "WAV", "PCM_16")
    (tmp_path / "shadow").mkdir()  # first on the path: a webrtcvad that cannot be imported, as if not installed
    (tmp_path / "shadow" / "webrtcvad.py").write_text("raise ImportError('No module named webrtcvad')\n")
    environment = env()
    environment["PYTHONPATH"] = f"{tmp_path / 'shadow'}{os.pathsep}{environment['PYTHONPATH']}"
    proc = subprocess.run([sys.executable, str(SCRIPT), str(inputs), "--model", str(tiny_model), "--segmenter",
                           "webrtc", "--output", str(tmp_path / "out")], capture_output=True, text=True,
                          env=environment, cwd=ROOT, timeout=300)
    assert proc.returncode == 2 and "Traceback" not in proc.stderr, proc.stderr[-3000:]
    [line] = [line for line in proc.stderr.splitlines() if "webrtcvad" in line]
    assert "--segmenter webrtc needs the webrtcvad-wheels package" in line
    assert "pip install webrtcvad-wheels==2.0.14.post1" in line
    assert not (tmp_path / "out" / "transcripts.jsonl").exists()


@pytest.mark.parametrize("decoder", ["beam", "flashlight"])
def test_an_lm_for_another_alphabet_is_refused(messy_tree, tiny_model, greek_lm, tmp_path, decoder):
    proc = run_cli(str(messy_tree), "--model", str(tiny_model), "--lm", str(greek_lm), "--decoder", decoder,
                   "--output", str(tmp_path / "out"))
    assert proc.returncode == 2, proc.stderr[-3000:]
    assert "Traceback" not in proc.stderr
    [line] = [line for line in proc.stderr.splitlines() if "can be spelled" in line]
    assert "the LM was built for another alphabet or language" in line
    assert not (tmp_path / "out" / "transcripts.jsonl").exists()


def test_bad_arguments_exit_2_with_one_line(messy_tree, tiny_model, tmp_path):
    proc = run_cli(str(messy_tree), "--model", str(tiny_model), "--output", str(messy_tree / "out"))
    assert proc.returncode == 2, proc.stderr[-2000:]
    assert "is inside the input" in proc.stderr and "Traceback" not in proc.stderr
    assert not (messy_tree / "out").exists()


@pytest.mark.parametrize("extra, message", [
    (["--decoder", "beam"], "needs a language model"),
    (["--formats", "txt,docx"], "unknown"),
    (["--lm", "lm_dir", "--decoder", "greedy"], "ignored by --decoder greedy"),
    (["--overlap-seconds", "20", "--segmenter", "grid"], "at most half"),
    (["--cut-at-pauses", "--segmenter", "webrtc"], "drop --cut-at-pauses"),
])
def test_bad_options_are_one_sentence_errors(messy_tree, tiny_model, tmp_path, extra, message):
    script = load_script()
    args = script.parse_args([str(messy_tree), "--model", str(tiny_model), "--output", str(tmp_path), *extra])
    with pytest.raises(ValueError, match=message):
        script.options_from(args)


def test_beam_decoders_use_the_lm_directorys_tuned_settings(tiny_model, tmp_path):
    """transcribe.py decodes as eval.py does: attrs.json's alpha/beta and decoder.json's tuned values."""
    from asr.corpus import load_sentences
    from asr.decoders import DECODER_FILE
    from asr.recognizer import make_decoder
    from asr.text import load_vocab
    from lm.build import LMBuildOptions, build_lm

    vocab = load_vocab(tiny_model)
    lm = tmp_path / "lm"
    build_lm(load_sentences()[:300], lm, vocab=vocab, options=LMBuildOptions(order=3))
    attrs = json.loads((lm / "language_model" / "attrs.json").read_text())
    (lm / "language_model" / "attrs.json").write_text(json.dumps({**attrs, "alpha": 0.75, "beta": 2.0}))
    (lm / DECODER_FILE).write_text(json.dumps({"pyctcdecode": {"beam_width": 64},
                                               "flashlight": {"lm_weight": 2.3, "word_score": 0.0, "beam_size": 50}}))
    beam, flashlight = make_decoder("beam", lm, vocab), make_decoder("flashlight", lm, vocab)
    assert (beam.options.alpha, beam.options.beta, beam.options.beam_width) == (0.75, 2.0, 64)
    assert (flashlight.options.lm_weight, flashlight.options.word_score, flashlight.options.beam_size) == (2.3, 0.0, 50)


def test_hotwords_bring_words_outside_the_lm_into_the_transcripts(trained_model, tmp_path):
    """Real speech, the trained model, and an LM whose text lacks the longest word of each utterance: flashlight's
    lexicon cannot write those words until they are --hotwords; then both beam decoders write them (as does
    Recognizer.transcribe(hotwords=...)). Greedy refuses hotwords in one sentence."""
    from asr.decoders import load_lm_files
    from asr.recognizer import Recognizer
    from lm.build import LMBuildOptions, build_lm

    corpus = trained_model.parents[1] / "corpus"
    items = read_jsonl(corpus / "train.jsonl")[:3]
    rare = [max(item["text"].split(), key=len) for item in items]  # moment, knitting, didn't
    lm = tmp_path / "lm"
    lm_text = [line for line in (corpus / "lm.txt").read_text().splitlines() if not set(line.split()) & set(rare)]
    build_lm(lm_text, lm, options=LMBuildOptions(order=3))
    assert not set(rare) & set(load_lm_files(lm).unigrams)
    inputs = tmp_path / "in"
    inputs.mkdir()
    for item in items:
        shutil.copy(corpus / item["audio_filepath"], inputs / Path(item["audio_filepath"]).name)
    script = load_script()

    def words_written(decoder: str, *extra: str) -> list[set[str]]:
        out = tmp_path / f"{decoder}{len(extra)}"
        assert script.main([str(inputs), "--model", str(trained_model), "--lm", str(lm), "--decoder", decoder,
                            "--output", str(out), *extra]) == 0
        return [set(r["text"].split()) for r in read_jsonl(out / "transcripts.jsonl")]

    assert not any(word in written for word, written in zip(rare, words_written("flashlight")))
    for decoder in ("flashlight", "beam"):
        assert all(word in written for word, written in zip(rare, words_written(decoder, "--hotwords", *rare))), decoder
    # each transcript records what was boosted; the same --output with other hotwords is refused, not mixed
    boosted = tmp_path / f"flashlight{1 + len(rare)}"
    assert {json.dumps(r["hotwords"]) for r in read_jsonl(boosted / "transcripts.jsonl")} == {
        json.dumps({"words": rare, "weight": 10.0})}
    assert "hotwords" not in read_jsonl(tmp_path / "flashlight0" / "transcripts.jsonl")[0]
    common = [str(inputs), "--model", str(trained_model), "--lm", str(lm), "--decoder", "flashlight", "--output",
              str(boosted)]
    assert script.main([*common, "--hotwords", *rare[:1]]) == 2
    assert script.main([*common, "--hotwords", *rare]) == 0  # the same hotwords: a resume, nothing left to do
    recognizer = Recognizer.from_pretrained(trained_model, lm=lm)
    audio = corpus / items[0]["audio_filepath"]
    assert rare[0] not in recognizer.transcribe(audio, decoder="flashlight").text.split()
    assert rare[0] in recognizer.transcribe(audio, decoder="flashlight", hotwords=rare[:1]).text.split()
    args = script.parse_args([str(inputs), "--model", str(trained_model), "--output", str(tmp_path), "--hotwords", "x"])
    with pytest.raises(ValueError, match="--hotwords need a beam decoder"):
        script.options_from(args)


def test_sigkill_mid_run_then_rerun_transcribes_every_file_exactly_once(utterances, tiny_model, tmp_path):
    inputs = tmp_path / "in"
    for i in range(5):
        write_audio(inputs / "src" / f"u{i}.wav", utterances[i], 16000, 1, "WAV", "PCM_16")
    for d in range(3):
        (inputs / f"d{d}").mkdir()
    for i in range(90):  # a slow, big input set: 90 files of ~3 s (hard links), one per batch
        os.link(inputs / "src" / f"u{i % 5}.wav", inputs / f"d{i // 30}" / f"f{i:03d}.wav")
    (inputs / "d2" / "f999.wav").write_bytes(b"RIFF")  # and one broken file
    out = tmp_path / "out"
    args = [str(inputs), "--model", str(tiny_model), "--output", str(out), "--max-batch-seconds", "1"]
    proc = subprocess.Popen([sys.executable, str(SCRIPT), *args], env=env(), cwd=ROOT, stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL)
    transcripts = out / "transcripts.jsonl"
    deadline = time.time() + 120
    while not (transcripts.exists() and transcripts.read_bytes().count(b"\n") >= 10):
        assert proc.poll() is None and time.time() < deadline, "the run ended before it could be killed"
        time.sleep(0.005)
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    done_before = transcripts.read_bytes().count(b"\n")
    assert 10 <= done_before < 95
    with open(transcripts, "ab") as f:
        f.write(b'{"path": "d0/f0')  # and a line torn by a power loss on top

    rerun = run_cli(*args)
    assert rerun.returncode == 3, rerun.stderr[-3000:]  # the broken file, retried and reported once
    assert "torn line" in rerun.stderr
    assert [e["path"] for e in read_jsonl(out / "errors.jsonl")] == ["d2/f999.wav"]
    records = read_jsonl(transcripts)
    paths = [r["path"] for r in records]
    assert len(paths) == len(set(paths)) == 95
    assert paths == sorted(paths)  # merged back into input order
    by_source: dict[int, set[str]] = {}
    for record in records:  # hard links of one recording must read the same, whichever run did them
        number = int(Path(record["path"]).stem[1:])
        by_source.setdefault(number % 5, set()).add(record["text"])
    assert all(len(texts) == 1 for texts in by_source.values())


def test_a_second_run_on_a_busy_output_is_refused_and_the_first_keeps_its_errors(utterances, tiny_model, tmp_path):
    """The first run is paused (SIGSTOP) while it holds the output, so the second meets it whatever the speed."""
    inputs = tmp_path / "in"
    for i in range(30):
        write_audio(inputs / f"f{i:02d}.wav", utterances[i % 5], 16000, 1, "WAV", "PCM_16")
    (inputs / "f99.wav").write_bytes(b"RIFF")  # a broken file: the first run's error record to keep
    out = tmp_path / "out"
    args = [str(inputs), "--model", str(tiny_model), "--output", str(out), "--max-batch-seconds", "1"]
    first = subprocess.Popen([sys.executable, str(SCRIPT), *args], env=env(), cwd=ROOT, stdout=subprocess.DEVNULL,
                             stderr=subprocess.PIPE, text=True)
    transcripts = out / "transcripts.jsonl"
    deadline = time.time() + 120
    while not (transcripts.exists() and transcripts.read_bytes().count(b"\n") >= 1):
        assert first.poll() is None and time.time() < deadline, "the first run ended before it could be paused"
        time.sleep(0.005)
    first.send_signal(signal.SIGSTOP)
    try:
        second = run_cli(*args)
    finally:
        first.send_signal(signal.SIGCONT)
    first_stderr = first.communicate(timeout=300)[1]
    assert second.returncode == 2, second.stderr[-3000:]
    [line] = [line for line in second.stderr.splitlines() if "in use" in line]
    assert f"{out} is in use by another transcription run (pid {first.pid})" in line
    assert "Traceback" not in second.stderr
    assert first.returncode == 3, first_stderr[-3000:]  # its broken file
    assert [e["path"] for e in read_jsonl(out / "errors.jsonl")] == ["f99.wav"]
    assert len(read_jsonl(transcripts)) == 30
    assert run_cli(*args).returncode == 3  # released: the next run goes ahead (and retries the broken file)


def test_too_short_files_are_errors_and_digital_silence_reads_as_nothing(trained_model, tmp_path):
    """1 sample, 10 ms and 399 samples give no output frame: reported. Silence (zeros, a DC offset, 16-bit
    dither; short, and long enough to be chunked) is "", while speech at a -60 dBFS peak is still read."""
    from asr.beam import GreedyCTC
    from asr.inference import load_acoustic_model, log_probs_batch

    speech = load_audio(sorted((trained_model.parents[1] / "corpus").glob("audio/*/*.wav"))[0])
    loaded = load_acoustic_model(trained_model, "torch", __import__("torch").device("cpu"))
    ungated = GreedyCTC(loaded.vocab).decode(log_probs_batch(loaded, [np.zeros(32_000, np.float32)])[0]).text
    assert ungated, "this model reads nothing into zeros: the test would not show the gate working"
    inputs = tmp_path / "in"
    inputs.mkdir()
    files = {"one_sample": np.array([0.3]), "ten_ms": speech[8000:8160], "399_samples": speech[8000:8399],
             "400_samples": speech[8000:8400], "zeros": np.zeros(32_000), "dc_offset": np.full(32_000, 0.25),
             "dither": np.random.default_rng(0).integers(-1, 2, 32_000) / 32768, "zeros_25s": np.zeros(16_000 * 25),
             "quiet_speech": speech * 10 ** (-60 / 20) / np.abs(speech).max(), "speech": speech}
    for name, audio in files.items():
        sf.write(inputs / f"{name}.wav", audio, 16000, subtype="FLOAT" if name == "dc_offset" else "PCM_16")
    out = tmp_path / "out"
    proc = run_cli(str(inputs), "--model", str(trained_model), "--output", str(out), "--chunk-seconds", "10",
                   "--overlap-seconds", "2")
    assert proc.returncode == 3, proc.stderr[-3000:]  # the too-short files
    errors = {e["path"]: e for e in read_jsonl(out / "errors.jsonl")}
    assert sorted(errors) == ["399_samples.wav", "one_sample.wav", "ten_ms.wav"]
    assert {e["reason"] for e in errors.values()} == {"too_short"}
    assert errors["ten_ms.wav"]["error"] == ("160 samples (10.0 ms at 16 kHz), shorter than the 400 samples (25 ms) "
                                             "the model needs for one output frame")
    texts = {r["path"]: r["text"] for r in read_jsonl(out / "transcripts.jsonl")}
    for name in ("zeros", "dc_offset", "dither", "zeros_25s"):  # zeros_25s goes through the chunked path
        assert texts[f"{name}.wav"] == "", name
    assert "400_samples.wav" in texts
    loud, quiet = texts["speech.wav"].split(), texts["quiet_speech.wav"].split()
    assert len(loud) >= 6 and len(set(loud) & set(quiet)) >= len(loud) / 2, (loud, quiet)  # the gate spares it


# Linux allows any bytes but "/" and NUL in a name: Latin-1, broken UTF-8, a newline, and the literal text
# "\\xe9" beside the byte \xe9 (an escaping that confused the two would transcribe one file twice).
ODD_NAMES = [b"caf\xe9.wav", b"caf\\xe9.wav", b"\xff\xfe.wav", b"new\nline.wav", b"plain.wav"]


def test_names_that_are_not_utf8_are_transcribed_reported_and_skipped_on_rerun(utterances, tiny_model, tmp_path):
    inputs = tmp_path / "in"
    folder = os.path.join(os.fsencode(inputs), b"d\xe8r")  # the folder's name is not UTF-8 either
    os.makedirs(folder)
    for i, name in enumerate(ODD_NAMES):
        write_audio(tmp_path / "tmp.wav", utterances[i], 16000, 1, "WAV", "PCM_16")
        os.rename(tmp_path / "tmp.wav", os.path.join(folder, name))
    with open(os.path.join(folder, b"bro\xefken.wav"), "wb") as f:
        f.write(b"not audio")
    out = tmp_path / "out"
    args = [str(inputs), "--model", str(tiny_model), "--output", str(out), "--formats", "txt"]
    proc = run_cli(*args)
    assert proc.returncode == 3, proc.stderr[-3000:]  # the broken file only
    assert "Traceback" not in proc.stderr
    for name in ("transcripts.jsonl", "errors.jsonl"):
        (out / name).read_bytes().decode("utf-8")  # strict: every line is valid UTF-8
    records = read_jsonl(out / "transcripts.jsonl")
    written = [os.fsencode(r["path"]) for r in records]
    assert sorted(written) == sorted(b"d\xe8r/" + name for name in ODD_NAMES)
    for record in records:  # each record leads back to its file, and its side file is beside the mirror
        assert os.path.isfile(os.path.join(os.fsencode(record["input"]), os.fsencode(record["path"])))
        assert record["text"] and record["duration"] > 0
        side = os.path.splitext(os.path.join(os.fsencode(out), os.fsencode(record["path"])))[0] + b".txt"
        with open(side, "rb") as f:
            assert f.read().decode() == record["text"] + "\n"
    [error] = read_jsonl(out / "errors.jsonl")
    assert os.fsencode(error["path"]) == b"d\xe8r/bro\xefken.wav" and error["reason"] == "unreadable"

    rerun = run_cli(*args)
    assert rerun.returncode == 3, rerun.stderr[-3000:]
    assert f"{len(ODD_NAMES) + 1} audio files, {len(ODD_NAMES)} already transcribed, 1 to do" in rerun.stderr
    assert read_jsonl(out / "transcripts.jsonl") == records


# ------------------------------------------------------------------------------------ slow: quality
def long_recording(corpus: Path, path: Path, minutes: float) -> tuple[str, float]:
    """Join a corpus's test utterances (0.4 s apart) into one file; returns (reference, first end s)."""
    rows = [json.loads(line) for line in (corpus / "test.jsonl").read_text().splitlines()]
    gap = np.zeros(int(0.4 * 16000), dtype=np.float32)
    parts, texts, total = [], [], 0
    while total < minutes * 60 * 16000:
        row = rows[len(texts) % len(rows)]
        audio = load_audio(corpus / row["audio_filepath"])
        parts += [audio, gap]
        texts.append(row["text"])
        total += len(audio) + len(gap)
    path.parent.mkdir(parents=True, exist_ok=True)
    sf.write(path, np.concatenate(parts), 16000, subtype="PCM_16")
    return " ".join(texts), len(parts[0]) / 16000


# Measured with the shipped bases (the test prints them). The wav2vec2 base of 2026-12-03, 4 minutes:
# characters 0.924, words 0.638 (> 2 s from chunk edges), overall 0.616, control 0.62. The wav2vec2-bert
# base of 2026-12-04, 75 s: characters 0.880, words 0.489, overall 0.469, control 0.536; WER chunked
# 0.738, unchunked 0.769. Its stage-3 successor (2026-12-05): characters 0.896, words 0.560, overall 0.544,
# control 0.604; WER chunked 0.672, unchunked 0.692; 157 words stitched, 149 unchunked. The stage-4 base
# (2026-12-05): characters 0.892, words 0.504, overall 0.51, control 0.618; WER chunked 0.656, unchunked 0.733.
# Agreement is a property of the model (how much a frame's reading depends on distant context): the control
# bounded it for three bases, not for the fourth (0.504 < 0.618 - 0.1) although its chunked reading is the
# more accurate, so the test now bounds accuracy and letters, and prints the word agreement and the control.


def transcribe_one(src: Path, model: Path, out: Path, *chunking: str) -> dict | list[dict]:
    """scripts/transcribe.py on a file or directory: the one record, or all of them for several files."""
    proc = run_cli(str(src), "--model", str(model), "--output", str(out), *chunking, timeout=900)
    assert proc.returncode == 0, proc.stderr[-3000:]
    records = read_jsonl(out / "transcripts.jsonl")
    return records[0] if src.is_file() or len(records) == 1 else records


def words_between(record: dict, lo: float, hi: float, shift: float = 0.0) -> list[str]:
    """The words of a transcript lying wholly in [lo, hi] s, its times shifted by `shift` s first."""
    return [w["word"] for w in record["words"] if w["start"] + shift >= lo and w["end"] + shift <= hi]


@pytest.mark.slow
def test_long_file_chunked_matches_unchunked_away_from_chunk_edges(base_heldout_corpus, tmp_path):
    """Held-out sentences read by the shipped base checkpoint, joined into a 75-second recording.

    Three claims: (1) stitching adds nothing: inside each chunk's kept region the stitched transcript
    is word for word what the model reads from that chunk alone; (2) so chunked and unchunked differ
    only as the model's reading of a frame depends on how much audio it attends over, which the
    control shows with no chunking at all (the first 30 s vs the first 60 s of the file); (3) the
    differences change few letters and cost no accuracy.
    """
    import jiwer

    from conftest import BASE_MODEL

    long_wav = tmp_path / "in" / "long.wav"
    # 75 s, not minutes: the shipped wav2vec2-bert attends with relative-position embeddings of
    # frames x frames x 64 floats per layer, so reading a 4-minute file unchunked (the comparison) needs
    # ~40 GB; 75 s needs ~4 GB. Chunking exists for exactly this.
    reference, first_end = long_recording(base_heldout_corpus, long_wav, minutes=1.25)
    results = {name: transcribe_one(long_wav, BASE_MODEL, tmp_path / name, *chunking)
               for name, chunking in (("chunked", ["--chunk-seconds", "30", "--overlap-seconds", "5", "--segmenter", "grid"]),
                                      ("unchunked", ["--chunk-seconds", "0"]))}
    chunked, unchunked = results["chunked"], results["unchunked"]
    assert chunked["duration"] == unchunked["duration"] >= 75
    for record in (chunked, unchunked):
        times = [t for w in record["words"] for t in (w["start"], w["end"])]
        assert times == sorted(times) and 0 <= times[0] and times[-1] <= record["duration"]

    # (1) The chunks transcribe.py cuts (30 s every 25 s, the last pulled back to full length), each
    # written as a file of its own and read unchunked: every word lying 1 s or more inside a chunk's
    # kept region is the same word in the stitched transcript.
    audio = load_audio(long_wav)
    spec = ChunkSpec.from_seconds(30, 5, FRAME)
    chunks = list(iter_chunks([audio], spec))
    assert len(chunks) == 3
    (tmp_path / "chunks").mkdir()
    for k, chunk in enumerate(chunks):
        sf.write(tmp_path / "chunks" / f"c{k:02d}.wav", chunk.audio, 16000, subtype="FLOAT")
    alone = {Path(r["path"]).stem: r for r in transcribe_one(tmp_path / "chunks", BASE_MODEL, tmp_path / "alone",
                                                              "--chunk-seconds", "0")}
    compared = 0
    for k, chunk in enumerate(chunks):
        lo = chunk.keep_start / 16000 + 1.0
        hi = (chunk.keep_end / 16000 if chunk.keep_end else chunked["duration"] + 1.0) - 1.0
        stitched = words_between(chunked, lo, hi)
        assert stitched == words_between(alone[f"c{k:02d}"], lo, hi, shift=chunk.start / 16000), k
        compared += len(stitched)
    assert compared >= 0.8 * len(chunked["words"])

    # (2) The control: no chunking, only less audio after the words compared.
    prefixes = {}
    for seconds in (30, 60):
        (tmp_path / f"first{seconds}").mkdir()
        sf.write(tmp_path / f"first{seconds}" / "x.wav", audio[: seconds * 16000], 16000, subtype="FLOAT")
        prefixes[seconds] = transcribe_one(tmp_path / f"first{seconds}", BASE_MODEL, tmp_path / f"out{seconds}",
                                           "--chunk-seconds", "0")
    control = 1 - jiwer.wer(*(" ".join(words_between(prefixes[s], 0, 24)) for s in (30, 60)))

    # (3) Chunk edges: kept regions meet at 27.5 s, 52.5 s, ... (chunk - overlap/2 + k * stride).
    edges = np.arange(27.5, chunked["duration"], 25.0)

    def words(record, far_from_edges=False, before=np.inf):
        return " ".join(w["word"] for w in record["words"] if w["start"] < before and not (
            far_from_edges and np.abs(edges - (w["start"] + w["end"]) / 2).min() <= 2.0))

    # The first utterance, far from any edge, reads (almost: attention spans differ) the same either way;
    # its words by their start (a word's end moves with its reading, and a last word may straddle the gap).
    first = words(unchunked, before=first_end)
    assert first and jiwer.cer(first, words(chunked, before=first_end)) <= 0.15
    far_u, far_c = words(unchunked, far_from_edges=True), words(chunked, far_from_edges=True)
    agreement = {"words": 1 - jiwer.wer(far_u, far_c), "characters": 1 - jiwer.cer(far_u, far_c),
                 "words overall": 1 - jiwer.wer(unchunked["text"], chunked["text"])}
    wer = {name: jiwer.wer(reference, record["text"]) for name, record in results.items()}
    print(f"chunked vs unchunked agreement (> 2 s from chunk edges unless overall): "
          f"{ {k: round(v, 3) for k, v in agreement.items()} }; control (first 30 s vs first 60 s, unchunked): "
          f"words {control:.3f}; WER vs reference: { {k: round(v, 3) for k, v in wer.items()} }")
    # A chunk sees 30 s, the whole file 75 s: with global attention every frame's scores move a little,
    # and where the model hesitates between two characters that flips one, which changes the word. How much
    # is the model's: the control (30 s vs 60 s of context, no chunking) agreed on 0.618 of the words with the
    # stage-4 base and chunked vs unchunked (30 s vs 75 s) on 0.504, while the chunked reading was the MORE
    # accurate one (WER 0.656 vs 0.733: 75 s at once is far from the <= 15 s the model trained on). So the
    # word agreement is printed, not bounded; what chunking must not do is change letters wholesale or cost
    # accuracy, and the stitching itself is exact (above).
    assert agreement["characters"] >= 0.5 + agreement["words"] / 2  # a changed word is mostly the same letters
    assert wer["chunked"] <= wer["unchunked"] + 0.03  # chunking costs (almost) no accuracy
    # An overlap stitched twice would add ~5 s of words (~12) per edge, one dropped lose as many. Counted
    # against the chunks read alone, not against the unchunked reading: how many words a model reads
    # from 75 s at once is the model's business (the stage-3 base read 149 where the chunks gave 157),
    # what the stitcher keeps is ours. The words of each chunk read alone whose middle lies in its kept
    # region, summed, are the stitched count up to a word cut by an edge (one either side of it).
    def kept_words(k: int, chunk) -> int:
        lo, hi = chunk.keep_start / 16000, (chunk.keep_end / 16000 if chunk.keep_end else np.inf)
        shift = chunk.start / 16000
        return sum(lo <= (w["start"] + w["end"]) / 2 + shift < hi for w in alone[f"c{k:02d}"]["words"])

    n_kept = sum(kept_words(k, chunk) for k, chunk in enumerate(chunks))
    n_chunked, n_unchunked = len(chunked["words"]), len(unchunked["words"])
    print(f"words: stitched {n_chunked}, chunks alone in their kept regions {n_kept}, unchunked {n_unchunked}")
    assert abs(n_chunked - n_kept) <= len(edges), (n_chunked, n_kept)


@pytest.mark.slow
def test_two_process_run_equals_one_process_run(messy_tree, tiny_model, tmp_path):
    common = [str(messy_tree), "--model", str(tiny_model), "--formats", "txt,srt", "--max-batch-seconds", "4"]
    single = run_cli(*common, "--output", str(tmp_path / "one"))
    assert single.returncode == 3, single.stderr[-3000:]
    launch = [ACCELERATE, "launch", "--config_file", str(ROOT / "configs/accelerate/cpu_2proc.yaml"),
              "--main_process_port", str(free_port()), str(SCRIPT), *common, "--output", str(tmp_path / "two")]
    double = subprocess.run(launch, capture_output=True, text=True, env=env(), cwd=ROOT, timeout=600)
    assert double.returncode == 1, double.stderr[-3000:]  # the launcher turns any worker's non-zero exit into 1
    assert "exitcode  : 3" in double.stderr  # and names the worker's: some files failed
    assert json.loads((tmp_path / "two" / "summary.json").read_text())["this_run"]["processes"] == 2
    one, two = tree_listing(tmp_path / "one"), tree_listing(tmp_path / "two")
    assert one.keys() == two.keys()
    for name in one:
        if name not in ("summary.json", ".lock"):  # run times; the pid of the run
            assert (tmp_path / "one" / name).read_bytes() == (tmp_path / "two" / name).read_bytes(), name


@pytest.mark.slow
def test_beam_decoders_with_an_lm_give_word_times(trained_model, tmp_path):
    corpus = trained_model.parent.parent / "corpus"
    lm = tmp_path / "lm"
    build = subprocess.run([sys.executable, str(ROOT / "scripts/build_lm.py"), "--model", str(trained_model),
                            "--text", str(corpus / "lm.txt"), "--output", str(lm), "--order", "3"],
                           capture_output=True, text=True, env=env(), cwd=ROOT, timeout=300)
    assert build.returncode == 0, build.stderr[-3000:]
    inputs = tmp_path / "in"
    inputs.mkdir()
    for wav in sorted((corpus / "audio").rglob("*.wav"))[:4]:
        shutil.copy(wav, inputs / wav.name)
    for decoder in ("beam", "flashlight"):
        proc = run_cli(str(inputs), "--model", str(trained_model), "--lm", str(lm), "--decoder", decoder,
                       "--output", str(tmp_path / decoder))
        assert proc.returncode == 0, proc.stderr[-3000:]
        records = read_jsonl(tmp_path / decoder / "transcripts.jsonl")
        assert len(records) == 4 and all(r["decoder"] == decoder and r["lm"] == str(lm.resolve()) for r in records)
        assert any(r["words"] for r in records)
        for record in records:
            times = [t for w in record["words"] for t in (w["start"], w["end"])]
            assert times == sorted(times) and all(0 <= t <= record["duration"] for t in times)


def test_rerun_decodes_only_the_files_without_a_transcript(utterances, tiny_model, tmp_path, monkeypatch):
    """A finished directory: nothing is run through the model again. Records deleted: exactly those files are."""
    import asr.transcribe

    decoded: list[int] = []  # samples of each audio the real model is given, per call

    def counting(loaded, audios):
        decoded.extend(len(a) for a in audios)
        return real(loaded, audios)

    real = asr.transcribe.log_probs_batch
    monkeypatch.setattr(asr.transcribe, "log_probs_batch", counting)
    inputs = tmp_path / "in"
    for i in range(6):
        write_audio(inputs / f"d{i % 2}" / f"u{i}.wav", utterances[i], 16000, 1, "WAV", "PCM_16")
    out = tmp_path / "out"
    args = [str(inputs), "--model", str(tiny_model), "--output", str(out), "--formats", "txt",
            "--max-batch-seconds", "8"]
    script = load_script()

    def run() -> int:
        """Runs the script in-process; returns how many audios the model read."""
        decoded.clear()
        assert script.main(args) == 0
        assert json.loads((out / "summary.json").read_text())["this_run"]["files"] == len(decoded)
        return len(decoded)

    assert run() == 6
    first = read_jsonl(out / "transcripts.jsonl")
    assert len(first) == 6 and any(r["text"] for r in first)

    assert run() == 0  # finished: nothing decoded, nothing rewritten
    assert read_jsonl(out / "transcripts.jsonl") == first

    kept = [r for r in first if r["path"] not in ("d0/u2.wav", "d1/u5.wav")]
    (out / "transcripts.jsonl").write_text("".join(json.dumps(r) + "\n" for r in kept))
    (out / "d0" / "u2.txt").unlink()
    assert run() == 2  # exactly the two whose records were deleted
    assert sorted(decoded) == sorted(len(load_audio(inputs / p)) for p in ("d0/u2.wav", "d1/u5.wav"))
    assert read_jsonl(out / "transcripts.jsonl") == first  # each once, back in input order, the same text
    assert (out / "d0" / "u2.txt").read_text() == first[[r["path"] for r in first].index("d0/u2.wav")]["text"] + "\n"
    assert run() == 0

    # A re-run asking for more formats writes them for the finished files from their transcripts, decoding nothing;
    # a deleted side file of a finished file comes back. Both equal what a fresh run writes.
    (out / "d1" / "u1.txt").unlink()
    args[args.index("--formats") + 1] = "txt,srt"
    assert run() == 0
    fresh = tmp_path / "fresh"
    assert script.main([*args[:args.index("--output")], "--output", str(fresh), *args[args.index("--output") + 2:]]) == 0
    sides = sorted(p.relative_to(fresh) for p in fresh.rglob("*") if p.suffix in (".txt", ".srt"))
    assert len(sides) == 12 and any((fresh / p).read_text().strip() for p in sides)
    assert [(out / p).read_text() for p in sides] == [(fresh / p).read_text() for p in sides]


# ------------------------------------------------------------------------------------ inference precision
def test_bf16_inference_computes_in_bfloat16_and_reads_like_float32(trained_model, utterances):
    """--precision bf16: the layers run in bfloat16 (weights stay float32), the decoders get float32 log-probs,
    and the trained model's frame-by-frame choices barely move."""
    import torch

    from asr.inference import load_model, log_probs_batch

    exact, fast = load_model(trained_model), load_model(trained_model, precision="bf16")
    seen = []
    linear = next(m for m in fast.model.modules() if isinstance(m, torch.nn.Linear))
    linear.register_forward_hook(lambda module, inputs, output: seen.append(output.dtype))
    audios = utterances[:6]
    reference, bf16 = log_probs_batch(exact, audios), log_probs_batch(fast, audios)
    assert seen and set(seen) == {torch.bfloat16}
    assert all(p.dtype == torch.float32 for p in fast.model.parameters())
    assert all(b.dtype == np.float32 and b.shape == r.shape for r, b in zip(reference, bf16))
    agree = np.mean(np.concatenate([r.argmax(-1) == b.argmax(-1) for r, b in zip(reference, bf16)]))
    assert agree > 0.95, agree
    assert 0 < max(np.abs(np.exp(r) - np.exp(b)).max() for r, b in zip(reference, bf16)) < 0.2


@pytest.mark.parametrize("extra, message", [
    (["--precision", "fp16"], "--precision fp16 needs a GPU"),
    (["--precision", "bf16", "--backend", "onnx"], "--precision bf16 applies to --backend torch"),
])
def test_a_precision_the_backend_or_device_cannot_run_is_one_line(utterances, tiny_model, tmp_path, extra, message):
    import torch

    if torch.cuda.is_available() and extra == ["--precision", "fp16"]:
        pytest.skip("fp16 runs on this machine's GPU")
    write_audio(tmp_path / "in" / "one.wav", utterances[0], 16000, 1, "WAV", "PCM_16")
    proc = run_cli(str(tmp_path / "in"), "--model", str(tiny_model), "--output", str(tmp_path / "out"), *extra)
    assert proc.returncode == 2 and message in proc.stderr and "Traceback" not in proc.stderr, proc.stderr[-3000:]
    assert not (tmp_path / "out" / "transcripts.jsonl").exists()


def test_transcribe_with_bf16_writes_every_transcript(utterances, trained_model, tmp_path):
    inputs = tmp_path / "in"
    for i in range(3):
        write_audio(inputs / f"{i}.wav", utterances[i], 16000, 1, "WAV", "PCM_16")
    proc = run_cli(str(inputs), "--model", str(trained_model), "--precision", "bf16", "--output", str(tmp_path / "o"))
    assert proc.returncode == 0 and "acoustic model: torch, bfloat16 autocast" in proc.stderr, proc.stderr[-3000:]
    rows = read_jsonl(tmp_path / "o" / "transcripts.jsonl")
    assert sorted(r["path"] for r in rows) == ["0.wav", "1.wav", "2.wav"] and all(r["text"] for r in rows)
