"""Every supported corpus layout, read into one list of `Utterance` records.

Layouts (`SourceConfig.kind`, or `auto` to detect from the path):

- `manifest`: JSONL / CSV / TSV manifests, NeMo style (`audio_filepath,duration,text`) or `audio,text`;
  relative audio paths are resolved against the manifest's folder.
- `audiofolder`: Hugging Face audiofolder, a folder with `metadata.csv`/`metadata.jsonl`
  (`file_name,<text column>`).
- `librispeech`: a LibriSpeech tree of `<spk>/<chapter>/<spk>-<chapter>.trans.txt` plus flac files.
- `folder`: a folder of audio plus one transcript file: `<stem><TAB><text>` lines, LJSpeech
  `<stem>|<text>|<normalized text>` lines, Kaldi `<stem> <text>` lines, or one plain line per audio
  file in sorted path order.
- `hf`: any `datasets` dataset: a local `save_to_disk` directory (Dataset or DatasetDict), parquet
  or arrow file(s) (hub layout `data/<split>-00000-of-00001.parquet`), or a hub name with config
  and split (streaming too); audio/text column names are configurable.

Audio is not decoded here; `Utterance` carries a path or the encoded bytes. `datasets` 4+ decodes
`Audio` columns through torchcodec, so they are read undecoded (`Audio(decode=False)`).

    utterances = load_source(SourceConfig(path="data/minds14", split="train",
                                          text_column="english_transcription"))
"""

from __future__ import annotations

import csv
import dataclasses
import json
import logging
import os
import re
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from asr.audio import AUDIO_EXTENSIONS

logger = logging.getLogger(__name__)

SourceKind = Literal["auto", "manifest", "audiofolder", "librispeech", "folder", "hf"]
SOURCE_KINDS: tuple[str, ...] = ("auto", "manifest", "audiofolder", "librispeech", "folder", "hf")

# Column names tried, in order, when the config does not name one.
AUDIO_KEYS = ("audio_filepath", "audio", "path", "file_name", "file", "filename", "wav")
TEXT_KEYS = ("text", "transcription", "transcript", "sentence", "normalized_text", "english_transcription")
ID_KEYS = ("id", "utt_id", "utterance_id", "segment_id")
SPEAKER_KEYS = ("speaker", "speaker_id", "client_id")
TRANSCRIPT_FILES = ("transcripts.txt", "transcript.txt", "text.txt", "metadata.txt", "metadata.csv", "text")
MANIFEST_SUFFIXES = (".jsonl", ".json", ".csv", ".tsv")
HF_FILE_SUFFIXES = (".parquet", ".arrow")
_HF_BATCH_ROWS = 64  # rows per arrow batch when iterating a `datasets` dataset (holds encoded audio)
_SHARD_SUFFIX = re.compile(r"-\d+-of-\d+$")  # hub shard names: train-00000-of-00003


@dataclass(frozen=True)
class Utterance:
    """One labelled recording: a path to an audio file or its encoded bytes, and the raw transcript."""

    id: str
    text: str
    audio_path: str | None = None
    audio_bytes: bytes | None = None
    duration: float | None = None  # seconds, when the source knows it
    speaker: str | None = None
    # Other manifest columns with string or boolean values (accent, channel, seen_voice, ...): what eval breaks
    # WER down by. Not part of the record's identity, so equal records stay equal whatever they carry.
    metadata: Mapping[str, str] = field(default_factory=dict, compare=False)

    def to_dict(self) -> dict[str, Any]:
        """Plain fields (bytes included)."""
        return {**dataclasses.asdict(self), "metadata": dict(self.metadata)}

    @property
    def audio(self) -> str | bytes | None:
        """What `asr.audio.load_audio` takes: the encoded bytes when present, else the path."""
        return self.audio_bytes if self.audio_bytes is not None else self.audio_path


@dataclass
class SourceConfig:
    """Where one split of a corpus comes from."""

    kind: SourceKind = "auto"  # auto detects manifest files, librispeech trees, audiofolders, folders, parquet
    path: str = ""  # a file, a directory, or a hub dataset name (kind: hf)
    name: str | None = None  # hub dataset config, e.g. "en-US" for PolyAI/minds14 (local parquet: a subfolder)
    split: str | None = None  # hub/save_to_disk/parquet split, or audiofolder/librispeech/folder subfolder
    audio_column: str | None = None  # None: first of AUDIO_KEYS present
    text_column: str | None = None  # None: first of TEXT_KEYS present (MINDS-14: english_transcription)
    transcript_file: str | None = None  # folder layout: None tries TRANSCRIPT_FILES in the folder
    streaming: bool = False  # hf only: iterate without downloading/decoding the whole corpus
    trust_remote_code: bool = False  # hub datasets with loading scripts run code: opt in explicitly

    def __post_init__(self) -> None:
        if self.kind not in SOURCE_KINDS:
            raise ValueError(f"source kind {self.kind!r} is unknown; use one of {', '.join(SOURCE_KINDS)}")


def load_source(cfg: SourceConfig) -> list[Utterance]:
    """Reads every utterance of one source.

    Args:
        cfg: the source; `kind: auto` detects the layout (see `detect_kind`).

    Returns:
        The utterances in source order, ids unique.

    Raises:
        ValueError: the path does not exist, the layout is not recognised, a column is missing,
            the source is empty or two utterances share an id.
    """
    kind = detect_kind(cfg.path, cfg.split) if cfg.kind == "auto" else cfg.kind
    readers = {
        "manifest": lambda: read_manifest(cfg.path, cfg.audio_column, cfg.text_column),
        "audiofolder": lambda: read_audiofolder(_subdir(cfg.path, cfg.split), cfg.text_column),
        "librispeech": lambda: read_librispeech(_subdir(cfg.path, cfg.split)),
        "folder": lambda: read_folder(_subdir(cfg.path, cfg.split), cfg.transcript_file),
        "hf": lambda: list(iter_hf(cfg)),
    }
    utterances = readers[kind]()
    if not utterances:
        raise ValueError(f"no utterances found in {cfg.path} (read as {kind}); check the path, split and layout")
    _check_unique_ids(utterances, cfg.path)
    logger.info("read %d utterances from %s (%s)", len(utterances), cfg.path, kind)
    return utterances


def detect_kind(path: str, split: str | None = None) -> SourceKind:
    """Guesses the layout of `path` (looking into `path/split` when that folder exists).

    Args:
        path: a manifest/parquet/arrow file, a corpus folder, or a hub dataset name.
        split: the split subfolder of folder layouts (audiofolder `train/`, ...), if any.

    Returns:
        The kind; a name that is not a local path but looks like `owner/name` is `hf`.

    Raises:
        ValueError: the path does not exist or matches no layout.
    """
    p = Path(path)
    if p.is_file():
        suffix = p.suffix.lower()
        if suffix in MANIFEST_SUFFIXES:
            return "manifest"
        if suffix in HF_FILE_SUFFIXES:
            return "hf"
        raise ValueError(f"cannot tell the layout of {p}; set kind: manifest|hf in the source config")
    if not p.exists():
        if _looks_like_hub_name(path):
            return "hf"
        raise ValueError(f"data path {path!r} does not exist; check the path (or give a hub dataset name)")
    if not p.is_dir():
        raise ValueError(f"data path {path!r} is neither a file nor a folder; give a manifest or a corpus folder")
    folder = _subdir(path, split)
    if _is_saved_dataset(p) or _is_saved_dataset(folder):
        return "hf"
    if _audiofolder_metadata(folder) is not None:
        return "audiofolder"
    if any((folder / name).is_file() for name in TRANSCRIPT_FILES):
        return "folder"
    if _first_file(p, lambda name: name.endswith(HF_FILE_SUFFIXES)) is not None:
        return "hf"
    if _first_file(folder, lambda name: name.endswith(".trans.txt")) is not None:
        return "librispeech"
    where = f"{folder} (split {split!r})" if folder != p else str(p)
    raise ValueError(
        f"cannot tell the layout of {where}: no manifest, metadata.csv with file_name, *.trans.txt, "
        "transcript file, save_to_disk folder or parquet; set kind: (and split:) in the source config"
    )


def read_manifest(path: str | Path, audio_key: str | None = None, text_key: str | None = None) -> list[Utterance]:
    """Reads a JSONL, CSV or TSV manifest; relative audio paths are resolved against its folder.

    Args:
        path: the manifest (`.jsonl`/`.json`: one object per line or a JSON array; `.csv`; `.tsv`).
        audio_key: audio path column; None tries AUDIO_KEYS.
        text_key: transcript column; None tries TEXT_KEYS.

    Returns:
        One utterance per row; a row without an audio path gets no audio (the filters drop it). Other
        string and boolean columns go to `Utterance.metadata`.

    Raises:
        ValueError: the file is missing, is not valid JSON lines, or lacks the audio/text column.
    """
    path = Path(path)
    if not path.is_file():
        raise ValueError(f"manifest {path} does not exist; check data.*.path")
    rows = _read_rows(path)
    if not rows:
        return []
    audio_key = _pick_column(rows[0].keys(), audio_key, AUDIO_KEYS, "audio", path)
    text_key = _pick_column(rows[0].keys(), text_key, TEXT_KEYS, "text", path)
    out = []
    for i, row in enumerate(rows):
        raw_audio = _opt_str(row.get(audio_key))
        audio = None if raw_audio is None else _resolve(raw_audio, path.parent)
        default_id = Path(raw_audio).stem if raw_audio else f"{path.stem}-{i:06d}"
        out.append(
            Utterance(
                id=_first_value(row, ID_KEYS) or default_id,
                text=_opt_str(row.get(text_key)) or "",
                audio_path=audio,
                duration=_opt_float(row.get("duration")),
                speaker=_first_value(row, SPEAKER_KEYS),
                metadata=_metadata(row, (audio_key, text_key)),
            )
        )
    return out


def read_audiofolder(path: str | Path, text_key: str | None = None) -> list[Utterance]:
    """Reads a Hugging Face audiofolder (`metadata.csv` or `metadata.jsonl` with `file_name`).

    Args:
        path: the folder holding the metadata file (a split subfolder such as `train/`).
        text_key: transcript column; None tries TEXT_KEYS (audiofolder exports use `transcription`).

    Returns:
        One utterance per metadata row, id = the file name's stem.

    Raises:
        ValueError: no metadata file, or it lacks `file_name` or the text column.
    """
    path = Path(path)
    meta = _audiofolder_metadata(path) or path / "metadata.csv"
    if not meta.exists():
        raise ValueError(f"{path} has no metadata.csv or metadata.jsonl; is it an audiofolder? (set split: too)")
    rows = _read_rows(meta)
    if not rows:
        return []
    if "file_name" not in rows[0]:
        raise ValueError(f"{meta} has no file_name column (columns: {', '.join(rows[0])}); add one naming each file")
    text_key = _pick_column(rows[0].keys(), text_key, TEXT_KEYS, "text", meta)
    out = []
    for row in rows:
        file_name = _opt_str(row.get("file_name"))
        out.append(
            Utterance(
                id=_first_value(row, ID_KEYS) or Path(file_name or "").stem,
                text=_opt_str(row.get(text_key)) or "",
                audio_path=_resolve(file_name, meta.parent) if file_name else None,
                speaker=_first_value(row, SPEAKER_KEYS),
                metadata=_metadata(row, ("file_name", text_key)),
            )
        )
    return out


def read_librispeech(path: str | Path) -> list[Utterance]:
    """Reads a LibriSpeech tree: every `*.trans.txt` line `<utt-id> <TEXT>` and its audio file.

    Args:
        path: the split folder (e.g. `LibriSpeech/dev-clean`), or any folder above the chapters.

    Returns:
        One utterance per transcript line, in sorted chapter order; a missing audio file keeps its
        expected `.flac` path so that the filters report it.
    """
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
                    text=text.strip(),
                    audio_path=str(audio if audio else trans.parent / f"{utt_id}.flac"),
                    speaker=utt_id.split("-")[0],
                )
            )
    return out


def read_folder(path: str | Path, transcript_file: str | None = None) -> list[Utterance]:
    """Reads a folder of audio files (searched recursively) plus one transcript file.

    The transcript format is decided for the whole file: `<stem><TAB><text>` when every line has a
    tab, LJSpeech `<stem>|<text>[|<normalized>]` (the last field is used) when every line has a
    `|`, Kaldi `<stem> <text>` when every line starts with an audio file's stem, and otherwise
    one plain transcript per audio file in sorted path order.

    Args:
        path: the folder.
        transcript_file: the transcript's path (absolute, or relative to the working directory or
            to `path`); None tries TRANSCRIPT_FILES in `path`.

    Returns:
        One utterance per transcript line; a named file that does not exist keeps its path so the
        filters report it as missing.

    Raises:
        ValueError: no transcript file, or plain lines whose count differs from the audio files'.
    """
    path = Path(path)
    if transcript_file:
        tfile = Path(transcript_file)
        tfile = tfile if tfile.is_absolute() or tfile.exists() else path / tfile
    else:
        tfile = next((path / n for n in TRANSCRIPT_FILES if (path / n).is_file()), path / TRANSCRIPT_FILES[0])
    if not tfile.is_file():
        raise ValueError(
            f"transcript file {tfile} not found (tried {', '.join(TRANSCRIPT_FILES)}); "
            "set transcript_file: in the source config"
        )
    audio_files = sorted(p for p in path.rglob("*") if p.suffix.lower() in AUDIO_EXTENSIONS and p.is_file())
    by_name = {**{p.stem: p for p in audio_files}, **{p.relative_to(path).as_posix(): p for p in audio_files}}
    lines = [line.strip() for line in tfile.read_text(encoding="utf-8-sig").splitlines() if line.strip()]
    separator = _transcript_separator(lines, by_name)
    if separator is None:
        if len(lines) != len(audio_files):
            raise ValueError(
                f"{tfile} has {len(lines)} plain lines but {path} has {len(audio_files)} audio files; give one "
                "line per file in sorted path order, or start each line with the file name and a TAB"
            )
        return [Utterance(id=a.stem, text=line, audio_path=str(a)) for a, line in zip(audio_files, lines)]
    out = []
    for line in lines:
        key, _, rest = line.partition(separator)
        key = key.strip()
        # LJSpeech: id|text|normalized text; the normalized field spells numbers out (may be empty).
        fields = [f.strip() for f in rest.split("|")] if separator == "|" else [rest.strip()]
        text = next((f for f in reversed(fields) if f), "")
        audio = _lookup_audio(key, by_name)
        out.append(Utterance(
            id=audio.stem if audio else Path(key).stem or key,
            text=text,
            audio_path=str(audio if audio else path / key),
        ))
    unnamed = len(audio_files) - len({u.audio_path for u in out} & {str(a) for a in audio_files})
    if unnamed:
        logger.warning("%d audio files in %s have no line in %s and are ignored", unnamed, path, tfile)
    return out


def iter_hf(cfg: SourceConfig, ds: Any = None) -> Iterator[Utterance]:
    """Yields the utterances of a `datasets` dataset (local save_to_disk/parquet/arrow or hub name).

    Audio is read undecoded (`Audio(decode=False)`): the bytes or path are passed on, so no
    torchcodec/FFmpeg is needed to read a hub-style dataset. Rows are read in batches with
    `.iter()`, which, unlike `iter(ds)`, does not re-shard a stream by DataLoader worker: the
    caller's sharding (`split_dataset_by_node`) is the only one.

    Args:
        cfg: the source (column names, split).
        ds: an already opened (e.g. rank-sharded) `Dataset` or `IterableDataset`; None opens `cfg`
            (local parquet/arrow files are streamed, which avoids copying them into the HF cache).

    Yields:
        One utterance per row; id from an id column, else the audio file's stem, else the row index.

    Raises:
        ValueError: the dataset cannot be opened or lacks the audio/text column.
    """
    if ds is None:
        local_files = Path(cfg.path).exists() and not _is_saved_dataset(Path(cfg.path))
        ds = open_hf_dataset(dataclasses.replace(cfg, streaming=True) if local_files else cfg)
    columns = _hf_columns(ds)
    audio_key = _pick_column(columns, cfg.audio_column, AUDIO_KEYS, "audio", cfg.path)
    text_key = _pick_column(columns, cfg.text_column, TEXT_KEYS, "text", cfg.path)
    # Only the columns used: fewer bytes read, and no other Audio/Image column gets decoded.
    wanted = {audio_key, text_key, "path", "duration", *ID_KEYS, *SPEAKER_KEYS}
    ds = _undecoded_audio(ds.select_columns([c for c in columns if c in wanted]))
    for i, row in enumerate(_hf_rows(ds)):
        audio = row[audio_key]
        if isinstance(audio, dict):
            audio_path, audio_bytes = _opt_str(audio.get("path")), audio.get("bytes") or None
        else:
            audio_path, audio_bytes = _opt_str(audio), None
        # An embedded file's `path` is only its original name: keep it for the id, not for loading.
        name = audio_path or _opt_str(row.get("path"))
        yield Utterance(
            id=_first_value(row, ID_KEYS) or (Path(name).stem if name else f"{i:08d}"),
            text=_opt_str(row.get(text_key)) or "",
            audio_path=audio_path if audio_bytes is None else None,
            audio_bytes=bytes(audio_bytes) if audio_bytes is not None else None,
            duration=_opt_float(row.get("duration")),
            speaker=_first_value(row, SPEAKER_KEYS),
        )


def open_hf_dataset(cfg: SourceConfig) -> Any:
    """Opens a `datasets` dataset from a save_to_disk folder, parquet/arrow file(s), or the hub.

    Args:
        cfg: `path` (folder, file or hub name), `name` (hub config; for a local parquet tree, a
            subfolder), `split` (needed when there are several), `streaming`.

    Returns:
        A `datasets.Dataset`, or a `datasets.IterableDataset` when `cfg.streaming`.

    Raises:
        ValueError: the dataset or split does not exist, or the hub cannot be reached.
    """
    import datasets

    path = Path(cfg.path)
    try:
        if _is_saved_dataset(path):
            ds = datasets.load_from_disk(str(path))
            if isinstance(ds, datasets.DatasetDict):
                ds = ds[_pick_split(list(ds.keys()), cfg.split, cfg.path)]
            return ds.to_iterable_dataset() if cfg.streaming else ds
        if path.exists():
            builder, files = _local_data_files(path, cfg.name, cfg.split)
            return datasets.load_dataset(builder, data_files={"data": files}, split="data", streaming=cfg.streaming)
        if not _looks_like_hub_name(cfg.path):
            raise FileNotFoundError(f"no such file or folder: {cfg.path}")
        kwargs = {"trust_remote_code": True} if cfg.trust_remote_code else {}
        return datasets.load_dataset(cfg.path, cfg.name, split=cfg.split or "train", streaming=cfg.streaming, **kwargs)
    except (FileNotFoundError, ConnectionError) as e:
        raise ValueError(
            f"could not open dataset {cfg.path!r} (config {cfg.name!r}, split {cfg.split!r}): "
            f"{str(e).splitlines()[0] if str(e) else type(e).__name__}; "
            "offline, give a local save_to_disk folder or parquet files"
        ) from e


def _local_data_files(path: Path, name: str | None, split: str | None) -> tuple[str, list[str]]:
    """(`datasets` builder, files) of one split of local parquet/arrow files."""
    if path.is_file():
        # One named file is the split, whatever its name says.
        return ("arrow" if path.suffix.lower() == ".arrow" else "parquet"), [str(path)]
    root = path / name if name and (path / name).is_dir() else path
    for suffix, builder in ((".parquet", "parquet"), (".arrow", "arrow")):
        files = sorted(f for f in root.rglob(f"*{suffix}") if f.is_file() and not f.name.startswith("."))
        if files:
            splits = _split_files(files)
            return builder, splits[_pick_split(list(splits), split, str(root))]
    raise FileNotFoundError(f"no .parquet or .arrow files under {root}")


def _split_files(files: list[Path]) -> dict[str, list[str]]:
    """Groups data files by split: `<split>-00000-of-00001.parquet`, `<split>.parquet` or `<split>/0000.parquet`."""
    splits: dict[str, list[str]] = {}
    for f in files:
        stem = _SHARD_SUFFIX.sub("", f.stem)
        split = f.parent.name if stem.isdigit() or not stem else stem.split("-")[0]
        splits.setdefault(split, []).append(str(f))
    return splits


def _hf_columns(ds: Any) -> list[str]:
    """Column names of a dataset; a stream of unknown features is peeked at."""
    names = getattr(ds, "column_names", None)
    if names:
        return list(names)
    first = next(_hf_rows(ds), None)
    return list(first) if first else []


def _hf_rows(ds: Any) -> Iterator[dict[str, Any]]:
    """Rows of a Dataset/IterableDataset, read in batches (see `iter_hf` on sharding)."""
    for batch in ds.iter(batch_size=_HF_BATCH_ROWS):
        keys = list(batch)
        for values in zip(*(batch[k] for k in keys)):
            yield dict(zip(keys, values))


def _undecoded_audio(ds: Any) -> Any:
    """Switches every Audio column to undecoded bytes/path (datasets 4+ would decode via torchcodec)."""
    import datasets

    for name, feature in (ds.features or {}).items():
        if isinstance(feature, datasets.Audio) and feature.decode:
            ds = ds.cast_column(name, datasets.Audio(decode=False))
    return ds


def _pick_split(available: list[str], wanted: str | None, path: str) -> str:
    """The requested split, or the only one."""
    if wanted is None and len(available) == 1:
        return available[0]
    if wanted not in available:
        need = "set split: to one of them" if wanted is None else "set split: to one that exists"
        raise ValueError(f"split {wanted!r} not in {path} (splits: {', '.join(sorted(available))}); {need}")
    return wanted


def _pick_column(columns: Iterable[str], wanted: str | None, candidates: tuple[str, ...], what: str, where) -> str:
    """The configured column, or the first known name present; a one-line error otherwise."""
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


def _read_rows(path: Path) -> list[dict[str, Any]]:
    """Rows of a JSON-lines/JSON-array, CSV or TSV file as dicts."""
    if path.suffix.lower() in (".jsonl", ".json"):
        text = path.read_text(encoding="utf-8-sig")
        if path.suffix.lower() == ".json" and text.lstrip().startswith("["):
            rows = json.loads(text)
        else:
            rows = []
            for n, line in enumerate(text.splitlines(), 1):
                if line.strip():
                    try:
                        rows.append(json.loads(line))
                    except json.JSONDecodeError as e:
                        msg = f"{path}:{n} is not valid JSON ({e.msg}); write one JSON object per line"
                        raise ValueError(msg) from e
        bad = next((r for r in rows if not isinstance(r, dict)), None)
        if bad is not None:
            raise ValueError(f"{path} holds {type(bad).__name__} rows; each row must be a JSON object")
        return rows
    # utf-8-sig: spreadsheet exports start with a byte-order mark that would glue onto the first header.
    with open(path, encoding="utf-8-sig", newline="") as f:
        return list(csv.DictReader(f, delimiter="\t" if path.suffix.lower() == ".tsv" else ","))


def _transcript_separator(lines: list[str], by_name: dict[str, Path]) -> str | None:
    """The key separator used by every line (TAB, `|` or a space before a known file), or None for plain lines."""
    if not lines:
        return None
    for sep in ("\t", "|"):
        if all(sep in line for line in lines):
            return sep
    if all(_lookup_audio(line.split(maxsplit=1)[0], by_name) is not None for line in lines):
        return " "
    return None


def _lookup_audio(key: str, by_name: dict[str, Path]) -> Path | None:
    """The audio file a transcript key names: a stem, a relative path, or either with an extension."""
    return by_name.get(key) or by_name.get(Path(key).as_posix()) or (
        by_name.get(Path(key).stem) if Path(key).suffix.lower() in AUDIO_EXTENSIONS else None
    )


def _find_audio(folder: Path, stem: str) -> Path | None:
    """The audio file `<stem>.<ext>` in `folder`, any supported extension."""
    for ext in AUDIO_EXTENSIONS:
        candidate = folder / f"{stem}{ext}"
        if candidate.exists():
            return candidate
    return None


def _resolve(audio: str, base: Path) -> str:
    """An absolute path for `audio`, relative ones taken from `base` (corpora are relocatable)."""
    p = Path(os.path.expanduser(audio))
    return str(p if p.is_absolute() else base / p)


def _subdir(path: str, split: str | None) -> Path:
    """`path/split` when that folder exists (e.g. audiofolder train/), else `path`."""
    if split and (Path(path) / split).is_dir():
        return Path(path) / split
    return Path(path)


def _is_saved_dataset(path: Path) -> bool:
    """Whether `path` is a `save_to_disk` folder (Dataset or DatasetDict)."""
    return path.is_dir() and ((path / "dataset_dict.json").is_file() or (path / "state.json").is_file())


def _audiofolder_metadata(folder: Path) -> Path | None:
    """The audiofolder metadata file of `folder` (LJSpeech's header-less metadata.csv is not one)."""
    for name in ("metadata.csv", "metadata.jsonl"):
        meta = folder / name
        if meta.is_file():
            with open(meta, encoding="utf-8-sig") as f:
                if "file_name" in f.readline():
                    return meta
    return None


def _first_file(root: Path, match) -> Path | None:
    """The first file under `root` whose name satisfies `match` (stops walking at the first hit)."""
    for folder, _, names in os.walk(root):
        for name in names:
            if match(name):
                return Path(folder) / name
    return None


def _looks_like_hub_name(path: str) -> bool:
    """Whether a non-existent path could be a hub id such as `PolyAI/minds14` rather than a typo."""
    return (
        bool(path)
        and not path.startswith((".", "/", "~"))
        and path.count("/") <= 1
        and Path(path).suffix.lower() not in MANIFEST_SUFFIXES + HF_FILE_SUFFIXES
    )


def _metadata(row: Mapping[str, Any], used: Iterable[str]) -> dict[str, str]:
    """The row's other string and boolean columns (booleans as `true`/`false`), empty values left out."""
    taken = {*used, "duration", *ID_KEYS, *SPEAKER_KEYS, *AUDIO_KEYS, *TEXT_KEYS}
    out = {}
    for key, value in row.items():
        if key in taken:
            continue
        if isinstance(value, bool):
            out[key] = "true" if value else "false"
        elif isinstance(value, str) and value.strip():
            out[key] = value.strip()
    return out


def _first_value(row: dict[str, Any], keys: tuple[str, ...]) -> str | None:
    """The first non-empty value among `keys`, as a string."""
    for key in keys:
        value = _opt_str(row.get(key))
        if value is not None:
            return value
    return None


def _opt_str(value: Any) -> str | None:
    """`value` as a string, None when absent or empty."""
    return None if value is None or value == "" else str(value)


def _opt_float(value: Any) -> float | None:
    """`value` as a float, None when absent or not a number (a bad duration only costs a header read)."""
    try:
        return None if value is None or value == "" else float(value)
    except (TypeError, ValueError):
        return None


def _check_unique_ids(utterances: list[Utterance], where: str) -> None:
    """Duplicate ids would silently merge items in reports and outputs."""
    seen: set[str] = set()
    for u in utterances:
        if u.id in seen:
            raise ValueError(f"duplicate utterance id {u.id!r} in {where}; ids must be unique within a split")
        seen.add(u.id)


def read_source_texts(cfg: SourceConfig) -> list[str]:
    """Transcripts of a corpus source (`asr.sources.SourceConfig`): a manifest, a layout, or a dataset.

    A `datasets` dataset (kind `hf`) is read through its text column only, so text-only datasets
    work and no audio is decoded.
    """
    kind = detect_kind(cfg.path) if cfg.kind == "auto" else cfg.kind
    if kind != "hf":
        return [u.text for u in load_source(cfg)]
    ds = open_hf_dataset(cfg)
    columns = list(ds.column_names or ds.features.keys())
    column = cfg.text_column or next((c for c in TEXT_KEYS if c in columns), None)
    if column not in columns:
        raise ValueError(f"Dataset {cfg.path!r} has no text column {column!r} (columns: {', '.join(columns)}); "
                         "set the source's text_column to the one holding the sentences.")
    ds = ds.select_columns([column])
    texts = [str(row[column] or "") for row in ds]
    logger.info("read %d texts from column %r of %s", len(texts), column, cfg.path)
    return texts
