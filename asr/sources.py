"""Every supported corpus layout, read into one list of `Utterance` records.

Layouts (`SourceConfig.kind`, or `auto` to detect from the path):

- `manifest`: JSONL / CSV / TSV manifests, NeMo style (`audio_filepath,duration,text`) or `audio,text`.
- `audiofolder`: Hugging Face audiofolder, a folder with `metadata.csv` (`file_name,<text column>`).
- `librispeech`: a LibriSpeech tree of `<spk>/<chapter>/<spk>-<chapter>.trans.txt` plus flac files.
- `folder`: a folder of audio plus one transcript file (`<stem><TAB or |><text>` per line, or one
  plain line per audio file in sorted file-name order).
- `hf`: any `datasets` dataset: a local `save_to_disk` directory, parquet file(s), or a hub name with
  config and split (streaming too); audio/text column names are configurable.

Audio is not decoded here; `Utterance` carries a path or the encoded bytes.
"""

from __future__ import annotations

import csv
import dataclasses
import json
import logging
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

from asr.audio import AUDIO_EXTENSIONS

logger = logging.getLogger(__name__)

SourceKind = Literal["auto", "manifest", "audiofolder", "librispeech", "folder", "hf"]

# Column names tried, in order, when the config does not name one.
AUDIO_KEYS = ("audio_filepath", "audio", "path", "file_name", "file", "filename", "wav")
TEXT_KEYS = ("text", "transcription", "transcript", "sentence", "normalized_text", "english_transcription")
TRANSCRIPT_FILES = ("transcripts.txt", "transcript.txt", "text.txt", "metadata.txt", "metadata.csv", "text")


@dataclass(frozen=True)
class Utterance:
    """One labelled recording: a path to an audio file or its encoded bytes, and the raw transcript."""

    id: str
    text: str
    audio_path: str | None = None
    audio_bytes: bytes | None = None
    duration: float | None = None  # seconds, when the source knows it
    speaker: str | None = None

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @property
    def audio(self) -> str | bytes:
        """What `asr.audio.load_audio` takes."""
        return self.audio_bytes if self.audio_bytes is not None else self.audio_path  # type: ignore[return-value]


@dataclass
class SourceConfig:
    """Where one split of a corpus comes from."""

    kind: SourceKind = "auto"  # auto detects manifest files, librispeech trees, audiofolders, folders, parquet
    path: str = ""  # a file, a directory, or a hub dataset name (kind: hf)
    name: str | None = None  # hub dataset config, e.g. "en-US" for PolyAI/minds14
    split: str | None = None  # hub/save_to_disk split, or audiofolder/librispeech subfolder
    audio_column: str | None = None  # None: first of AUDIO_KEYS present
    text_column: str | None = None  # None: first of TEXT_KEYS present (MINDS-14: english_transcription)
    transcript_file: str | None = None  # folder layout: None tries TRANSCRIPT_FILES in the folder
    streaming: bool = False  # hf only: iterate without downloading/decoding the whole corpus
    trust_remote_code: bool = False  # hub datasets with loading scripts run code: opt in explicitly


def load_source(cfg: SourceConfig) -> list[Utterance]:
    """Reads every utterance of one source.

    Raises:
        ValueError: the path does not exist, the layout is not recognised, or a column is missing.
    """
    kind = detect_kind(cfg.path) if cfg.kind == "auto" else cfg.kind
    readers = {
        "manifest": lambda: read_manifest(cfg.path, cfg.audio_column, cfg.text_column),
        "audiofolder": lambda: read_audiofolder(_subdir(cfg.path, cfg.split), cfg.text_column),
        "librispeech": lambda: read_librispeech(_subdir(cfg.path, cfg.split)),
        "folder": lambda: read_folder(_subdir(cfg.path, cfg.split), cfg.transcript_file),
        "hf": lambda: list(iter_hf(cfg)),
    }
    utterances = readers[kind]()
    if not utterances:
        raise ValueError(f"no utterances found in {cfg.path} (read as {kind}); check the path and layout")
    _check_unique_ids(utterances, cfg.path)
    logger.info("read %d utterances from %s (%s)", len(utterances), cfg.path, kind)
    return utterances


def detect_kind(path: str) -> SourceKind:
    """Guesses the layout of `path`; hub names (no such local path) are `hf`."""
    p = Path(path)
    if p.is_file():
        if p.suffix in (".jsonl", ".json", ".csv", ".tsv"):
            return "manifest"
        if p.suffix in (".parquet", ".arrow"):
            return "hf"
        raise ValueError(f"cannot tell the layout of {p}; set kind: manifest|hf in the source config")
    if not p.exists():
        if not path or path.startswith((".", "/")) or path.count("/") > 1:
            raise ValueError(f"data path {path!r} does not exist; check the path (or give a hub dataset name)")
        return "hf"
    if (p / "dataset_dict.json").exists() or (p / "state.json").exists() or any(p.rglob("*.parquet")):
        return "hf"
    if (p / "metadata.csv").exists() or (p / "metadata.jsonl").exists():
        # audiofolder's metadata.csv has a file_name column; an LJSpeech-style metadata.csv does not
        with open(p / "metadata.csv" if (p / "metadata.csv").exists() else p / "metadata.jsonl") as f:
            if "file_name" in f.readline():
                return "audiofolder"
    if next(p.rglob("*.trans.txt"), None) is not None:
        return "librispeech"
    if any((p / name).is_file() for name in TRANSCRIPT_FILES):
        return "folder"
    raise ValueError(
        f"cannot tell the layout of {p}: no manifest, metadata.csv, *.trans.txt, transcript file or parquet; "
        "set kind: in the source config"
    )


def read_manifest(path: str | Path, audio_key: str | None = None, text_key: str | None = None) -> list[Utterance]:
    """Reads a JSONL, CSV or TSV manifest; relative audio paths are resolved against its folder."""
    path = Path(path)
    if not path.is_file():
        raise ValueError(f"manifest {path} does not exist; check data.*.path")
    rows = list(_read_rows(path))
    if not rows:
        return []
    audio_key = _pick_column(rows[0].keys(), audio_key, AUDIO_KEYS, "audio", path)
    text_key = _pick_column(rows[0].keys(), text_key, TEXT_KEYS, "text", path)
    out = []
    for i, row in enumerate(rows):
        audio = Path(str(row[audio_key]))
        audio = audio if audio.is_absolute() else path.parent / audio
        duration = row.get("duration")
        out.append(
            Utterance(
                id=str(row.get("id") or row.get("utt_id") or audio.stem or i),
                text=str(row[text_key] if row[text_key] is not None else ""),
                audio_path=str(audio),
                duration=float(duration) if duration not in (None, "") else None,
                speaker=_opt_str(row.get("speaker") or row.get("speaker_id") or row.get("client_id")),
            )
        )
    return out


def read_audiofolder(path: str | Path, text_key: str | None = None) -> list[Utterance]:
    """Reads a Hugging Face audiofolder (`metadata.csv` or `metadata.jsonl` with `file_name`)."""
    path = Path(path)
    meta = path / "metadata.csv" if (path / "metadata.csv").exists() else path / "metadata.jsonl"
    if not meta.exists():
        raise ValueError(f"{path} has no metadata.csv or metadata.jsonl; is it an audiofolder?")
    rows = list(_read_rows(meta))
    if not rows:
        return []
    if "file_name" not in rows[0]:
        raise ValueError(f"{meta} has no file_name column (columns: {', '.join(rows[0])})")
    text_key = _pick_column(rows[0].keys(), text_key, TEXT_KEYS, "text", meta)
    return [
        Utterance(
            id=Path(row["file_name"]).stem,
            text=str(row[text_key] or ""),
            audio_path=str(meta.parent / row["file_name"]),
            speaker=_opt_str(row.get("speaker") or row.get("speaker_id")),
        )
        for row in rows
    ]


def read_librispeech(path: str | Path) -> list[Utterance]:
    """Reads a LibriSpeech tree: every `*.trans.txt` line `<utt-id> <TEXT>` and its audio file."""
    path = Path(path)
    out = []
    for trans in sorted(path.rglob("*.trans.txt")):
        for line in trans.read_text(encoding="utf-8").splitlines():
            if not line.strip():
                continue
            utt_id, _, text = line.strip().partition(" ")
            audio = _find_audio(trans.parent, utt_id)
            out.append(
                Utterance(
                    id=utt_id,
                    text=text,
                    audio_path=str(audio if audio else trans.parent / f"{utt_id}.flac"),
                    speaker=utt_id.split("-")[0],
                )
            )
    return out


def read_folder(path: str | Path, transcript_file: str | None = None) -> list[Utterance]:
    """Reads a folder of audio files plus one transcript file.

    Transcript lines are `<stem><TAB><text>`, `<stem>|<text>` (LJSpeech), or, when no line names a
    file, one plain transcript per audio file in sorted file-name order (the count must match).
    """
    path = Path(path)
    if transcript_file:
        tfile = Path(transcript_file)
        tfile = tfile if tfile.is_absolute() or tfile.exists() else path / tfile
    else:
        tfile = next((path / n for n in TRANSCRIPT_FILES if (path / n).is_file()), path / TRANSCRIPT_FILES[0])
    if not tfile.is_file():
        raise ValueError(f"transcript file {tfile} not found; set transcript_file: in the source config")
    audio_files = sorted(p for p in path.rglob("*") if p.suffix.lower() in AUDIO_EXTENSIONS and p.is_file())
    by_stem = {p.stem: p for p in audio_files}
    lines = [line for line in tfile.read_text(encoding="utf-8").splitlines() if line.strip()]
    keyed = [_split_keyed_line(line, by_stem) for line in lines]
    if all(k is not None for k in keyed):
        return [
            Utterance(id=stem, text=text, audio_path=str(by_stem[stem]))
            for stem, text in keyed  # type: ignore[misc]
        ]
    if len(lines) != len(audio_files):
        raise ValueError(
            f"{tfile} has {len(lines)} lines but {path} has {len(audio_files)} audio files; with plain lines "
            "there must be one line per file (sorted by name), or start each line with the file name and a TAB"
        )
    return [Utterance(id=a.stem, text=line.strip(), audio_path=str(a)) for a, line in zip(audio_files, lines)]


def iter_hf(cfg: SourceConfig, ds=None) -> Iterator[Utterance]:
    """Yields the utterances of a `datasets` dataset (local save_to_disk/parquet or hub name).

    Audio is read undecoded (`Audio(decode=False)`): the bytes or path are passed on, so no
    torchcodec/FFmpeg is needed to read a hub-style dataset.

    Args:
        ds: an already opened (e.g. rank-sharded) dataset; None opens `cfg`.
    """
    ds = open_hf_dataset(cfg) if ds is None else ds
    columns = list(ds.column_names or ds.features.keys())
    audio_key = _pick_column(columns, cfg.audio_column, AUDIO_KEYS, "audio", cfg.path)
    text_key = _pick_column(columns, cfg.text_column, TEXT_KEYS, "text", cfg.path)
    ds = _undecoded_audio(ds, audio_key)
    for i, row in enumerate(ds):
        audio = row[audio_key]
        audio_path, audio_bytes = (audio, None) if isinstance(audio, str) else (audio.get("path"), audio.get("bytes"))
        uid = row.get("id") or row.get("path") or (Path(audio_path).stem if audio_path else None) or f"{i:08d}"
        duration = row.get("duration")
        yield Utterance(
            id=str(uid),
            text=str(row[text_key] or ""),
            audio_path=audio_path if audio_bytes is None else None,
            audio_bytes=audio_bytes,
            duration=float(duration) if isinstance(duration, (int, float)) else None,
            speaker=_opt_str(row.get("speaker") or row.get("speaker_id") or row.get("client_id")),
        )


def open_hf_dataset(cfg: SourceConfig):  # -> datasets.Dataset | datasets.IterableDataset
    """Opens a `datasets` dataset from a save_to_disk folder, parquet file(s)/folder, or the hub."""
    import datasets

    path = Path(cfg.path)
    try:
        if path.is_dir() and ((path / "dataset_dict.json").exists() or (path / "state.json").exists()):
            ds = datasets.load_from_disk(str(path))
            if isinstance(ds, datasets.DatasetDict):
                ds = ds[_pick_split(list(ds.keys()), cfg.split, cfg.path)]
            return ds.to_iterable_dataset() if cfg.streaming else ds
        if path.exists():
            files = [path] if path.is_file() else sorted(path.rglob("*.parquet"))
            data_files = _parquet_splits(files)
            split = _pick_split(list(data_files), cfg.split, cfg.path)
            return datasets.load_dataset(
                "parquet", data_files={split: data_files[split]}, split=split, streaming=cfg.streaming
            )
        return datasets.load_dataset(
            cfg.path,
            cfg.name,
            split=cfg.split or "train",
            streaming=cfg.streaming,
            trust_remote_code=cfg.trust_remote_code or None,
        )
    except (FileNotFoundError, ConnectionError) as e:
        raise ValueError(
            f"could not open dataset {cfg.path!r} (config {cfg.name!r}, split {cfg.split!r}): {e}; "
            "offline, give a local save_to_disk folder or parquet files"
        ) from e


def _undecoded_audio(ds, audio_key: str):
    """Switches an Audio column to undecoded bytes/path (datasets 4+ would decode via torchcodec)."""
    import datasets

    feature = ds.features.get(audio_key) if ds.features else None
    if isinstance(feature, datasets.Audio) and feature.decode:
        return ds.cast_column(audio_key, datasets.Audio(decode=False))
    return ds


def _parquet_splits(files: list[Path]) -> dict[str, list[str]]:
    """Groups hub-style parquet shards (`<split>-00000-of-00001.parquet`) by split name."""
    splits: dict[str, list[str]] = {}
    for f in files:
        split = f.stem.split("-")[0] if "-of-" in f.stem else f.parent.name if f.parent.name != "data" else "train"
        splits.setdefault(split, []).append(str(f))
    return splits


def _pick_split(available: list[str], wanted: str | None, path: str) -> str:
    """The requested split, or the only one."""
    if wanted is None and len(available) == 1:
        return available[0]
    if wanted not in available:
        raise ValueError(f"split {wanted!r} not in {path} (splits: {', '.join(sorted(available))}); set split:")
    return wanted


def _pick_column(columns, wanted: str | None, candidates: tuple[str, ...], what: str, where) -> str:
    """The configured column, or the first known name present; a clear error otherwise."""
    columns = list(columns)
    if wanted is not None:
        if wanted not in columns:
            raise ValueError(
                f"{what} column {wanted!r} not found in {where} (columns: {', '.join(columns)}); "
                f"set {what}_column: to one of them"
            )
        return wanted
    for name in candidates:
        if name in columns:
            return name
    raise ValueError(
        f"no {what} column in {where} (columns: {', '.join(columns)}); set {what}_column: to the one that holds it"
    )


def _read_rows(path: Path) -> Iterator[dict[str, Any]]:
    """Rows of a JSONL, JSON-lines, CSV or TSV file as dicts."""
    if path.suffix in (".jsonl", ".json"):
        with open(path, encoding="utf-8") as f:
            for n, line in enumerate(f, 1):
                if line.strip():
                    try:
                        yield json.loads(line)
                    except json.JSONDecodeError as e:
                        raise ValueError(f"{path}:{n} is not valid JSON ({e.msg}); one JSON object per line") from e
        return
    with open(path, encoding="utf-8", newline="") as f:
        delimiter = "\t" if path.suffix == ".tsv" else ","
        yield from csv.DictReader(f, delimiter=delimiter)


def _split_keyed_line(line: str, by_stem: dict[str, Path]) -> tuple[str, str] | None:
    """(`stem`, text) when the line starts with a known audio file name, else None."""
    for sep in ("\t", "|", " "):
        key, found, text = line.partition(sep)
        key = Path(key.strip()).stem if found else ""
        if key in by_stem:
            return key, text.split("|")[-1].strip() if sep == "|" else text.strip()
    return None


def _find_audio(folder: Path, stem: str) -> Path | None:
    """The audio file `<stem>.<ext>` in `folder`, any supported extension."""
    for ext in AUDIO_EXTENSIONS:
        candidate = folder / f"{stem}{ext}"
        if candidate.exists():
            return candidate
    return None


def _subdir(path: str, split: str | None) -> Path:
    """`path/split` when that folder exists (e.g. audiofolder train/), else `path`."""
    if split and (Path(path) / split).is_dir():
        return Path(path) / split
    return Path(path)


def _opt_str(value: Any) -> str | None:
    return None if value in (None, "") else str(value)


def _check_unique_ids(utterances: list[Utterance], where: str) -> None:
    """Duplicate ids would silently merge items in reports and outputs."""
    seen: set[str] = set()
    for u in utterances:
        if u.id in seen:
            raise ValueError(f"duplicate utterance id {u.id!r} in {where}; ids must be unique within a split")
        seen.add(u.id)
