"""asr.sources: every layout read from the same real synthesised corpus yields the same utterances and audio."""

from __future__ import annotations

import csv
import json
import shutil
from pathlib import Path

import datasets
import numpy as np
import pyarrow.parquet as pq
import pytest

from asr.audio import load_audio
from asr.layouts import combine_corpora, export_layout
from asr.sources import SourceConfig, Utterance, detect_kind, iter_hf, load_source, open_hf_dataset, read_folder
from asr.text import TextNormalizer

NORMALIZE = TextNormalizer()


def manifest_rows(corpus: Path, split: str) -> list[dict]:
    """Rows of the corpus's native manifest, with the absolute audio path under `path`."""
    rows = [json.loads(line) for line in (corpus / f"{split}.jsonl").read_text().splitlines() if line]
    for r in rows:
        r["path"] = str(corpus / r["audio_filepath"])
    return rows


def audio_dataset(rows: list[dict], text_column: str = "text", embed: bool = True) -> datasets.Dataset:
    """A `datasets.Dataset` with an `Audio` feature, built without torchcodec (cast, not encode)."""
    audio = [{"bytes": Path(r["path"]).read_bytes() if embed else None,
              "path": f"{r['id']}.wav" if embed else r["path"]} for r in rows]
    ds = datasets.Dataset.from_dict({"audio": audio, text_column: [r["text"] for r in rows],
                                     "path": [f"clips/{r['id']}.wav" for r in rows]})
    return ds.cast_column("audio", datasets.Audio(sampling_rate=16_000))


@pytest.fixture(scope="module")
def layouts(synth_corpus: Path, tmp_path_factory: pytest.TempPathFactory) -> dict[str, SourceConfig]:
    """The train split in every layout, as the source config that reads it (auto-detected kinds)."""
    root = tmp_path_factory.mktemp("layouts")
    for layout in ("librispeech", "audiofolder", "folder", "parquet", "nemo_csv", "tsv"):
        export_layout(synth_corpus, layout, root / layout, splits=("train",))
    rows = manifest_rows(synth_corpus, "train")

    # CSV `audio,text` with paths relative to the CSV and a spreadsheet byte-order mark.
    with open(root / "nemo_csv" / "plain.csv", "w", newline="", encoding="utf-8-sig") as f:
        writer = csv.writer(f)
        writer.writerow(["audio", "text"])
        writer.writerows([[f"audio/train/{r['id']}.wav", r["text"]] for r in rows])
    # LJSpeech: wavs/ + header-less metadata.csv `id|text|normalized text`.
    lj = root / "ljspeech"
    (lj / "wavs").mkdir(parents=True)
    for r in rows:
        shutil.copy(r["path"], lj / "wavs" / f"{r['id']}.wav")
    (lj / "metadata.csv").write_text("".join(f"{r['id']}|{r['text'].upper()}|{r['text']}\n" for r in rows))
    # Plain lines, one per file in sorted order.
    plain = root / "plain_folder"
    shutil.copytree(lj / "wavs", plain / "wavs")
    (plain / "transcripts.txt").write_text("".join(r["text"] + "\n" for r in sorted(rows, key=lambda r: r["id"])))
    # datasets: save_to_disk Dataset and DatasetDict (MINDS-14-style text column), hub-style parquet.
    audio_dataset(rows).save_to_disk(str(root / "saved"))
    minds = datasets.DatasetDict({"train": audio_dataset(rows, "english_transcription"),
                                  "validation": audio_dataset(rows[:2], "english_transcription")})
    minds.save_to_disk(str(root / "saved_dict"))
    (root / "parquet_paths").mkdir()
    audio_dataset(rows, embed=False).to_parquet(str(root / "parquet_paths" / "train.parquet"))  # paths, no bytes
    (root / "hub" / "data").mkdir(parents=True)
    for split, part in (("train", rows), ("test", rows[:2])):
        shard = root / "hub" / "data" / f"{split}-00000-of-00001.parquet"
        audio_dataset(part, "english_transcription").to_parquet(str(shard))

    return {
        "manifest": SourceConfig(path=str(synth_corpus / "train.jsonl")),
        "nemo_csv": SourceConfig(path=str(root / "nemo_csv" / "train.csv")),
        "tsv": SourceConfig(path=str(root / "tsv" / "train.tsv")),
        "csv_audio_text": SourceConfig(path=str(root / "nemo_csv" / "plain.csv")),
        "audiofolder": SourceConfig(path=str(root / "audiofolder"), split="train"),
        "librispeech": SourceConfig(path=str(root / "librispeech"), split="train"),
        "folder_tab": SourceConfig(path=str(root / "folder"), split="train"),
        "folder_ljspeech": SourceConfig(path=str(lj)),
        "folder_plain": SourceConfig(path=str(plain)),
        "parquet": SourceConfig(path=str(root / "parquet"), split="train"),
        "parquet_file": SourceConfig(path=str(root / "parquet" / "data" / "train-00000-of-00001.parquet")),
        "save_to_disk": SourceConfig(path=str(root / "saved")),
        "parquet_audio_paths": SourceConfig(path=str(root / "parquet_paths")),
        "save_to_disk_dict": SourceConfig(path=str(root / "saved_dict"), split="train",
                                          text_column="english_transcription"),
        "hub_parquet_audio_feature": SourceConfig(path=str(root / "hub"), split="train",
                                                  text_column="english_transcription"),
        "hub_parquet_streaming": SourceConfig(path=str(root / "hub"), split="train", streaming=True,
                                              text_column="english_transcription"),
    }


EXPECTED_KIND = {
    "manifest": "manifest", "nemo_csv": "manifest", "tsv": "manifest", "csv_audio_text": "manifest",
    "audiofolder": "audiofolder", "librispeech": "librispeech", "folder_tab": "folder",
    "folder_ljspeech": "folder", "folder_plain": "folder",
}


@pytest.fixture(scope="module")
def reference(synth_corpus: Path) -> dict[str, tuple[str, np.ndarray]]:
    """Native manifest: id -> (normalised text, decoded samples)."""
    return {r["id"]: (NORMALIZE(r["text"]), load_audio(r["path"])) for r in manifest_rows(synth_corpus, "train")}


@pytest.mark.parametrize("layout", [
    "manifest", "nemo_csv", "tsv", "csv_audio_text", "audiofolder", "librispeech", "folder_tab", "folder_ljspeech",
    "folder_plain", "parquet", "parquet_file", "save_to_disk", "parquet_audio_paths", "save_to_disk_dict", "hub_parquet_audio_feature",
    "hub_parquet_streaming",
])
def test_every_layout_yields_the_native_utterances_and_samples(layout, layouts, reference):
    cfg = layouts[layout]
    assert detect_kind(cfg.path, cfg.split) == EXPECTED_KIND.get(layout, "hf")
    utterances = load_source(cfg)

    assert all(isinstance(u, Utterance) for u in utterances)
    got = {(u.id, NORMALIZE(u.text)) for u in utterances}
    if layout == "librispeech":  # renumbered <spk>-<chapter>-<n> ids: compare the texts
        assert sorted(text for _, text in got) == sorted(text for text, _ in reference.values())
    else:
        assert got == {(uid, text) for uid, (text, _) in reference.items()}
    if layout == "parquet_audio_paths":
        assert all(u.audio_bytes is None and Path(u.audio_path).is_file() for u in utterances)
    by_text = {text: samples for text, samples in reference.values()}
    for u in utterances:
        assert u.audio is not None
        np.testing.assert_array_equal(load_audio(u.audio), by_text[NORMALIZE(u.text)], err_msg=f"{layout} {u.id}")


def test_datasets_sources_need_no_torchcodec(layouts, monkeypatch):
    # Any decode through `datasets` now raises ImportError, as it does where torchcodec is absent.
    monkeypatch.setattr(datasets.config, "TORCHCODEC_AVAILABLE", False)
    parquet = next(Path(layouts["hub_parquet_audio_feature"].path).rglob("train-*.parquet"))
    features = json.loads(pq.read_schema(parquet).metadata[b"huggingface"])["info"]["features"]
    assert features["audio"]["_type"] == "Audio"
    utterances = load_source(layouts["hub_parquet_audio_feature"])
    assert all(u.audio_bytes and u.audio_bytes[:4] == b"RIFF" and u.audio_path is None for u in utterances)
    ds = open_hf_dataset(layouts["save_to_disk"])
    assert isinstance(ds.features["audio"], datasets.Audio) and ds.features["audio"].decode
    assert len(list(iter_hf(layouts["save_to_disk"], ds))) == len(ds)


def test_split_names_choose_the_split(layouts):
    hub = layouts["hub_parquet_audio_feature"]
    assert len(load_source(SourceConfig(**{**vars(hub), "split": "test"}))) == 2
    saved = layouts["save_to_disk_dict"]
    assert len(load_source(SourceConfig(**{**vars(saved), "split": "validation"}))) == 2
    with pytest.raises(ValueError, match=r"split 'dev' not in .*splits: test, train"):
        load_source(SourceConfig(**{**vars(hub), "split": "dev"}))
    with pytest.raises(ValueError, match=r"splits: train, validation\); set split:"):
        load_source(SourceConfig(path=saved.path))


@pytest.mark.parametrize("layout", ["save_to_disk_dict", "hub_parquet_audio_feature", "csv_audio_text"])
def test_missing_column_is_a_one_line_error_listing_the_columns(layout, layouts):
    cfg = SourceConfig(**{**vars(layouts[layout]), "text_column": "transcription"})
    with pytest.raises(ValueError) as info:
        load_source(cfg)
    message = str(info.value)
    assert "\n" not in message
    assert "text column 'transcription' not found" in message and "set text_column:" in message
    assert ("audio, english_transcription, path" in message) or ("audio, text" in message)


def test_default_text_column_not_found_names_the_columns(layouts):
    cfg = SourceConfig(path=layouts["save_to_disk_dict"].path, split="train", text_column=None, audio_column="path")
    # english_transcription is a known name, so this reads; a dataset without any known name does not.
    assert len(load_source(cfg)) == 12
    with pytest.raises(ValueError, match=r"no audio column in .* \(columns: english_transcription\)"):
        list(iter_hf(SourceConfig(path="x"), datasets.Dataset.from_dict({"english_transcription": ["a"]})))


def test_folder_with_mismatched_plain_lines_is_a_clear_error(layouts, tmp_path):
    folder = tmp_path / "f"
    shutil.copytree(Path(layouts["folder_plain"].path), folder)
    (folder / "transcripts.txt").write_text("only one line\nand another\n")
    with pytest.raises(ValueError, match=r"has 2 plain lines but .* has 12 audio files"):
        read_folder(folder)


def test_folder_keyed_line_without_its_file_is_kept_for_the_report(layouts, tmp_path):
    folder = tmp_path / "f"
    shutil.copytree(Path(layouts["folder_tab"].path) / "train", folder)
    with open(folder / "transcripts.txt", "a") as f:
        f.write("ghost-000001\tno such recording\n")
    utterances = load_source(SourceConfig(path=str(folder)))
    ghost = next(u for u in utterances if u.id == "ghost-000001")
    assert len(utterances) == 13 and not Path(ghost.audio_path).exists()


def test_transcript_file_option_and_kaldi_style_lines(layouts, tmp_path):
    folder = tmp_path / "f"
    shutil.copytree(Path(layouts["folder_plain"].path) / "wavs", folder / "wavs")
    lines = Path(layouts["folder_tab"].path, "train", "transcripts.txt").read_text().replace("\t", " ")
    (tmp_path / "text.kaldi").write_text(lines)
    cfg = SourceConfig(kind="folder", path=str(folder), transcript_file=str(tmp_path / "text.kaldi"))
    utterances = load_source(cfg)
    reference = {line.split(" ", 1)[0]: line.split(" ", 1)[1] for line in lines.splitlines()}
    assert {u.id: u.text for u in utterances} == reference


def test_manifest_rows_resolve_relative_paths_and_tolerate_gaps(tmp_path, synth_corpus):
    rows = manifest_rows(synth_corpus, "dev")
    manifest = tmp_path / "sub" / "m.jsonl"
    manifest.parent.mkdir()
    shutil.copy(rows[0]["path"], tmp_path / "sub" / "a.wav")
    manifest.write_text(
        json.dumps({"audio_filepath": "a.wav", "text": "Hi.", "duration": "n/a", "speaker": 7}) + "\n"
        + json.dumps({"audio_filepath": None, "text": None, "id": "no-audio"}) + "\n"
    )
    a, b = load_source(SourceConfig(path=str(manifest)))
    assert (a.id, a.audio_path, a.duration, a.speaker) == ("a", str(tmp_path / "sub" / "a.wav"), None, "7")
    assert (b.id, b.text, b.audio) == ("no-audio", "", None)


def test_bad_manifests_and_paths_are_clear_errors(tmp_path):
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"audio": "a.wav", "text": "x"}\n{not json}\n')
    with pytest.raises(ValueError, match=r"bad.jsonl:2 is not valid JSON"):
        load_source(SourceConfig(path=str(bad)))
    dup = tmp_path / "dup.jsonl"
    dup.write_text('{"id": "a", "audio": "a.wav", "text": "x"}\n{"id": "a", "audio": "b.wav", "text": "y"}\n')
    with pytest.raises(ValueError, match=r"duplicate utterance id 'a'"):
        load_source(SourceConfig(path=str(dup)))
    with pytest.raises(ValueError, match=r"does not exist"):
        detect_kind(str(tmp_path / "nope.jsonl"))
    with pytest.raises(ValueError, match=r"cannot tell the layout"):
        detect_kind(str(tmp_path))
    with pytest.raises(ValueError, match=r"source kind 'csv' is unknown"):
        SourceConfig(kind="csv")


def test_hub_name_offline_is_a_clear_error():
    assert detect_kind("PolyAI/minds14") == "hf"
    with pytest.raises(ValueError, match=r"could not open dataset 'PolyAI/minds14'.*offline, give a local"):
        load_source(SourceConfig(path="PolyAI/minds14", name="en-US", split="train"))


def test_combined_corpora_are_one_manifest_of_both_with_prefixed_ids(tmp_path, synth_corpus):
    """make_corpus.py --combine: the demo's fine-tuning mix and the base's mixed-text stage."""
    other = tmp_path / "other"
    other.mkdir()
    for name in ("train.jsonl", "audio"):  # a second corpus: the same rows under another folder name
        (other / name).symlink_to(synth_corpus / name)
    out = tmp_path / "mix" / "train.jsonl"
    assert combine_corpora([synth_corpus, other], out) == 2 * len(manifest_rows(synth_corpus, "train"))
    mixed = load_source(SourceConfig(path=str(out)))  # ids unique across both: the loader checks it
    originals = [json.loads(line) for line in (synth_corpus / "train.jsonl").read_text().splitlines()]
    assert [u.id for u in mixed] == [f"{synth_corpus.name}-{r['id']}" for r in originals] + \
        [f"other-{r['id']}" for r in originals]
    assert [u.text for u in mixed] == [r["text"] for r in originals] * 2
    rows = [json.loads(line) for line in out.read_text().splitlines()]
    assert all(Path(r["audio_filepath"]).is_absolute() and Path(r["audio_filepath"]).is_file() for r in rows)
    assert rows[0]["speaker"] == originals[0]["speaker"]  # every other field kept
    with pytest.raises(ValueError, match="share a folder name"):
        combine_corpora([synth_corpus, synth_corpus], tmp_path / "x.jsonl")
    with pytest.raises(ValueError, match="has no train.jsonl"):
        combine_corpora([synth_corpus, tmp_path / "empty"], tmp_path / "x.jsonl")
    assert not (tmp_path / "x.jsonl").exists()
