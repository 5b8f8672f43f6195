"""asr.data and asr.datasets: the prepared-split cache, lazy decoding and rank/worker-sharded streaming on real audio."""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import datasets
import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import torch
from transformers import Wav2Vec2Config

import asr.data
from asr.audio import load_audio, normalize_audio
from asr.collate import CTCCollator
from asr.data import prepare_split
from asr.datasets import SpeechDataset, StreamingSpeechDataset, collate_skip_none
from asr.filters import FilterConfig
from asr.layouts import export_layout
from asr.model import frames_fn_for
from asr.sources import SourceConfig
from asr.text import TextNormalizer, build_vocab, encode

NORMALIZE = TextNormalizer()
FILTERS = FilterConfig(min_duration=0.5, max_duration=10.0)
FRAMES = frames_fn_for(Wav2Vec2Config())


def corpus_rows(corpus: Path, split: str = "train") -> list[dict]:
    """Native manifest rows with absolute audio paths."""
    rows = [json.loads(line) for line in (corpus / f"{split}.jsonl").read_text().splitlines() if line]
    for r in rows:
        r["audio_filepath"] = str(corpus / r["audio_filepath"])
    return rows


def write_manifest(path: Path, rows: list[dict]) -> SourceConfig:
    """A JSONL manifest of `rows`, as a source."""
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return SourceConfig(path=str(path))


@pytest.fixture(scope="module")
def rows(synth_corpus: Path) -> list[dict]:
    return corpus_rows(synth_corpus)


@pytest.fixture(scope="module")
def vocab(rows: list[dict]) -> dict[str, int]:
    return build_vocab(NORMALIZE(r["text"]) for r in rows)


@pytest.fixture
def source(tmp_path: Path, rows: list[dict]) -> SourceConfig:
    """The train split as a manifest this test may change."""
    return write_manifest(tmp_path / "train.jsonl", rows)


@pytest.fixture
def count_filtering(monkeypatch: pytest.MonkeyPatch) -> list[int]:
    """Counts calls of apply_filters made by prepare_split (the expensive step a cache hit skips)."""
    calls: list[int] = []
    real = asr.data.apply_filters

    def counted(utterances, *args, **kwargs):
        calls.append(len(utterances))
        return real(utterances, *args, **kwargs)

    monkeypatch.setattr(asr.data, "apply_filters", counted)
    return calls


def prepare(source, vocab, cache_dir, normalizer=NORMALIZE, filters=FILTERS, frames_fn=FRAMES):
    """prepare_split with this module's defaults, serial."""
    return prepare_split(source, normalizer, vocab, filters, frames_fn, cache_dir, num_workers=1)


# ------------------------------------------------------------------------------------ prepare_split
def test_prepare_split_tabulates_kept_items_and_reports_drops(tmp_path, rows, vocab):
    broken = [
        {"id": "gone", "audio_filepath": str(tmp_path / "gone.wav"), "text": "hello"},
        {"id": "punct", "audio_filepath": rows[0]["audio_filepath"], "text": "?!"},
    ]
    split = prepare(write_manifest(tmp_path / "m.jsonl", rows + broken), vocab, tmp_path / "cache")

    assert len(split) == len(rows) and split.drop_counts == {"missing_audio": 1, "empty_transcript": 1}
    assert split.table["id"][:] == [r["id"] for r in rows]
    assert split.table["labels"][:] == [encode(NORMALIZE(r["text"]), vocab) for r in rows]
    assert split.durations == pytest.approx([r["duration"] for r in rows], abs=1e-3)
    assert 0 < split.hours < 0.05
    report = [json.loads(line) for line in split.report_path.read_text().splitlines()]
    assert [(d["id"], d["reason"]) for d in report] == [("gone", "missing_audio"), ("punct", "empty_transcript")]


def test_second_call_reuses_the_cache_without_filtering(source, vocab, tmp_path, count_filtering, monkeypatch):
    first = prepare(source, vocab, tmp_path / "cache")
    assert count_filtering == [12]

    def unreadable(*args, **kwargs):
        raise AssertionError("the source must not be read again on a cache hit")

    monkeypatch.setattr(asr.data, "load_source", unreadable)
    second = prepare(source, vocab, tmp_path / "cache")
    assert count_filtering == [12]
    assert second.report_path == first.report_path
    assert second.table["labels"][:] == first.table["labels"][:] and second.durations == first.durations


@pytest.mark.parametrize(
    "change", ["normalizer", "vocab", "filters", "frames_fn", "manifest_edited", "manifest_touched"]
)
def test_cache_is_invalidated_by_anything_that_changes_the_table(change, source, vocab, tmp_path, count_filtering):
    first = prepare(source, vocab, tmp_path / "cache")
    kwargs = {}
    if change == "normalizer":
        kwargs["normalizer"] = TextNormalizer(keep_apostrophes=False)
    elif change == "vocab":
        vocab = {**vocab, "ß": len(vocab)}
    elif change == "filters":
        kwargs["filters"] = FilterConfig(min_duration=0.6, max_duration=10.0)
    elif change == "frames_fn":
        kwargs["frames_fn"] = frames_fn_for(Wav2Vec2Config(conv_stride=(5, 4, 2, 2, 2, 2, 2)))
    elif change == "manifest_edited":
        path = Path(source.path)
        path.write_text("\n".join(path.read_text().splitlines()[:-1]) + "\n")
    else:
        stat = os.stat(source.path)
        os.utime(source.path, ns=(stat.st_atime_ns, stat.st_mtime_ns + 10**9))
    second = prepare(source, vocab, tmp_path / "cache", **kwargs)
    assert len(count_filtering) == 2
    assert second.report_path.parent != first.report_path.parent
    if change == "manifest_edited":
        assert len(second) == len(first) - 1


def test_an_entry_without_done_json_is_recomputed(source, vocab, tmp_path, count_filtering):
    first = prepare(source, vocab, tmp_path / "cache")
    (first.report_path.parent / "done.json").unlink()  # as if the run died before the rename
    second = prepare(source, vocab, tmp_path / "cache")
    assert len(count_filtering) == 2 and len(second) == len(first)
    assert (second.report_path.parent / "done.json").is_file()
    assert not [p for p in (tmp_path / "cache").iterdir() if ".tmp" in p.name]


def test_all_dropped_is_a_clear_error_with_a_report(source, vocab, tmp_path):
    with pytest.raises(ValueError, match=r"all 12 utterances of .* were dropped \(12 too_short\); see .*dropped.jsonl"):
        prepare(source, vocab, tmp_path / "cache", filters=FilterConfig(min_duration=9.0, max_duration=10.0))
    (entry,) = (tmp_path / "cache").iterdir()
    assert len((entry / "dropped.jsonl").read_text().splitlines()) == 12
    assert not (entry / "done.json").exists()


# ------------------------------------------------------------------------------------ SpeechDataset
def test_speech_dataset_items_are_normalised_audio_and_encoded_labels(source, rows, vocab, tmp_path):
    ds = SpeechDataset(prepare(source, vocab, tmp_path / "cache").table)
    assert len(ds) == len(rows)
    for i, row in enumerate(rows):
        item = ds[i]
        audio = item["input_values"]
        assert item["id"] == row["id"] and item["labels"] == encode(NORMALIZE(row["text"]), vocab)
        assert audio.dtype == np.float32 and audio.ndim == 1
        assert abs(float(audio.mean())) < 1e-4 and float(audio.std()) == pytest.approx(1.0, abs=1e-3)
        np.testing.assert_allclose(audio, normalize_audio(load_audio(row["audio_filepath"])), rtol=0, atol=1e-6)
    raw = SpeechDataset(ds.table, do_normalize=False)[0]["input_values"]
    np.testing.assert_array_equal(raw, load_audio(rows[0]["audio_filepath"]))


def test_a_file_deleted_after_preparation_yields_none_and_is_skipped(tmp_path, rows, vocab):
    copies = []
    for r in rows[:3]:
        shutil.copy(r["audio_filepath"], tmp_path / f"{r['id']}.wav")
        copies.append({**r, "audio_filepath": str(tmp_path / f"{r['id']}.wav")})
    split = prepare(write_manifest(tmp_path / "m.jsonl", copies), vocab, tmp_path / "cache")
    (tmp_path / f"{rows[1]['id']}.wav").unlink()
    ds = SpeechDataset(split.table)
    assert ds[1] is None and ds[0] is not None

    collate = collate_skip_none(CTCCollator(return_attention_mask=False))
    batch = collate([ds[0], ds[1], ds[2]])
    assert batch["input_values"].shape[0] == 2 and batch["labels"].shape[0] == 2
    assert collate([ds[1]]) is None


def test_in_memory_audio_survives_the_cache(synth_corpus, rows, vocab, tmp_path):
    parquet = tmp_path / "parquet"
    export_layout(synth_corpus, "parquet", parquet, splits=("train",))
    split = prepare(SourceConfig(path=str(parquet), split="train"), vocab, tmp_path / "cache")
    assert all(b is not None for b in split.table["audio_bytes"]) and split.table["audio_path"][:] == [None] * 12
    item = SpeechDataset(split.table)[3]
    np.testing.assert_allclose(item["input_values"], normalize_audio(load_audio(rows[3]["audio_filepath"])), atol=1e-6)


# ------------------------------------------------------------------------------------ streaming
@pytest.fixture(scope="module")
def stream_sources(rows: list[dict], tmp_path_factory: pytest.TempPathFactory) -> dict[str, SourceConfig]:
    """The train rows plus 3 broken ones, as two hub-style parquet shards and as a save_to_disk folder."""
    root = tmp_path_factory.mktemp("stream")
    table_rows = [{"id": r["id"], "text": r["text"], "bytes": Path(r["audio_filepath"]).read_bytes()} for r in rows]
    table_rows += [
        {"id": "bad-text-file", "text": "hello", "bytes": b"not audio at all " * 50},
        {"id": "bad-punctuation", "text": "...", "bytes": table_rows[0]["bytes"]},
        {"id": "bad-truncated", "text": "hello", "bytes": table_rows[1]["bytes"][:3000]},
    ]
    audio_type = pa.struct([("bytes", pa.binary()), ("path", pa.string())])

    def table(part: list[dict]) -> pa.Table:
        return pa.table({
            "audio": pa.array([{"bytes": r["bytes"], "path": f"{r['id']}.wav"} for r in part], type=audio_type),
            "sentence": [r["text"] for r in part],
            "id": [r["id"] for r in part],
        })

    (root / "parquet" / "data").mkdir(parents=True)
    half = len(table_rows) // 2
    pq.write_table(table(table_rows[:half]), root / "parquet" / "data" / "train-00000-of-00002.parquet")
    pq.write_table(table(table_rows[half:]), root / "parquet" / "data" / "train-00001-of-00002.parquet")
    ds = datasets.Dataset(table(table_rows)).cast_column("audio", datasets.Audio(sampling_rate=16_000))
    ds.save_to_disk(str(root / "saved"))
    return {
        "parquet": SourceConfig(kind="hf", path=str(root / "parquet"), split="train", text_column="sentence"),
        "save_to_disk": SourceConfig(path=str(root / "saved"), text_column="sentence"),
    }


def _identity(item):
    """DataLoader collate for unbatched items (module level: picklable)."""
    return item


@pytest.mark.parametrize("num_workers", [0, 2])
@pytest.mark.parametrize("kind", ["parquet", "save_to_disk"])
def test_streaming_reads_every_item_exactly_once_across_ranks(kind, num_workers, stream_sources, rows, vocab, tmp_path):
    seen: list[str] = []
    for rank in (0, 1):
        dataset = StreamingSpeechDataset(
            stream_sources[kind], NORMALIZE, vocab, FILTERS, FRAMES, rank=rank, world_size=2,
            report_path=tmp_path / f"dropped.rank{rank}.jsonl",
        )
        loader = torch.utils.data.DataLoader(dataset, batch_size=None, num_workers=num_workers, collate_fn=_identity)
        for item in loader:
            assert item["input_values"].dtype == np.float32
            assert abs(float(item["input_values"].mean())) < 1e-4
            seen.append(item["id"])
            expected_text = next(r["text"] for r in rows if r["id"] == item["id"])
            assert item["labels"] == encode(NORMALIZE(expected_text), vocab)
    assert sorted(seen) == sorted(r["id"] for r in rows)
    reports = sorted(tmp_path.glob("dropped.rank*.jsonl"))
    drops = [json.loads(line) for f in reports for line in f.read_text().splitlines()]
    assert sorted((d["id"], d["reason"]) for d in drops) == [
        ("bad-punctuation", "empty_transcript"), ("bad-text-file", "unreadable_audio"),
        ("bad-truncated", "unreadable_audio"),
    ]
    assert all(set(d) == {"id", "audio", "reason", "detail"} for d in drops)


def test_streaming_rejects_sources_that_are_not_datasets(source, vocab):
    with pytest.raises(ValueError, match=r"streaming needs a datasets source .* is kind: manifest"):
        StreamingSpeechDataset(source, NORMALIZE, vocab, FILTERS, FRAMES)
    with pytest.raises(ValueError, match=r"rank 2 is not in \[0, world_size=2\)"):
        StreamingSpeechDataset(SourceConfig(kind="hf", path="x/y"), NORMALIZE, vocab, FILTERS, FRAMES,
                               rank=2, world_size=2)
