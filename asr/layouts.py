"""Exporting a synthetic corpus (`asr.corpus`) into other dataset layouts, so every loader is tested on real audio.

    export_layout(Path("data/synth"), "librispeech", Path("data/synth_librispeech"))

Layouts: LibriSpeech (flac + trans.txt), audiofolder (metadata.csv), folder (wavs/ + transcripts.txt),
hub-style parquet, NeMo CSV and TSV manifests; wavs are hard-linked where possible.
"""

from __future__ import annotations

import csv
import io
import json
import logging
import os
import shutil
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import soundfile as sf

from asr.corpus import SPLITS
from asr.files import atomic_path, write_text_atomic

logger = logging.getLogger(__name__)

LAYOUTS = ("librispeech", "audiofolder", "folder", "parquet", "nemo_csv", "tsv")


# -------------------------------------------------------------------------------------- combining
def combine_corpora(corpora: Sequence[Path], out_file: Path, split: str = "train") -> int:
    """Writes one manifest holding the `split` of several corpora: a training mix without copying audio.

    Each row keeps its fields; its id gets the corpus folder's name as a prefix (`synth-train-000001`: ids
    stay unique, and augmentation draws, keyed by id, differ between corpora) and its audio path becomes
    absolute, so the manifest can live anywhere. Written atomically.

    Returns:
        The number of rows written.

    Raises:
        ValueError: a corpus without `<split>.jsonl`, two corpora of the same folder name, `out_file` a directory.
    """
    names = [Path(os.path.abspath(c)).name for c in corpora]  # abspath: a symlinked folder keeps its own name
    if len(set(names)) != len(names):
        raise ValueError(f"corpora {', '.join(map(str, corpora))} share a folder name, which prefixes their ids; "
                         "rename one folder")
    if Path(out_file).is_dir():
        raise ValueError(f"{out_file} is a directory; give the manifest file to write, e.g. {out_file}/train.jsonl")
    lines = []
    for corpus, name in zip(corpora, names):
        if not (Path(corpus) / f"{split}.jsonl").is_file():
            raise ValueError(f"{corpus} has no {split}.jsonl; pass corpus folders made by scripts/make_corpus.py")
        for row in _read_corpus_manifest(Path(corpus), split):
            path = row.pop("path")
            row["id"] = f"{name}-{row['id']}"
            row["audio_filepath"] = os.path.abspath(path)
            lines.append(json.dumps(row) + "\n")
    Path(out_file).parent.mkdir(parents=True, exist_ok=True)
    write_text_atomic(out_file, "".join(lines))
    logger.info("wrote %d utterances of %s into %s", len(lines), ", ".join(map(str, corpora)), out_file)
    return len(lines)


# -------------------------------------------------------------------------------------- layouts
def export_layout(corpus_dir: Path, layout: str, out_dir: Path, splits: Sequence[str] = SPLITS) -> dict[str, int]:
    """Copies a corpus into another dataset layout, so every loader can be tested on real audio.

    Layouts (audio files are hard links to the corpus's wavs where possible, flac for librispeech):
        librispeech: `<out>/<split>/<spk>/<chap>/<spk>-<chap>-<NNNN>.flac` + `<spk>-<chap>.trans.txt`
            (`<utt-id> <UPPERCASE TEXT>`); speakers numbered 1.. over the whole corpus, chapter = split.
        audiofolder: `<out>/<split>/<id>.wav` + `metadata.csv` (`file_name,transcription`).
        folder: `<out>/<split>/wavs/<id>.wav` + `<out>/<split>/transcripts.txt` (`<id>\\t<text>`).
        parquet: `<out>/data/<split>-00000-of-00001.parquet`, columns audio {bytes, path}, text, id,
            speaker, duration (the hub's layout; audio bytes are the encoded wav file).
        nemo_csv / tsv: `<out>/<split>.csv|.tsv` (`audio_filepath,duration,text`, paths relative to
            it) + `<out>/audio/<split>/<id>.wav`.

    Args:
        corpus_dir: a directory written by make_corpus.
        layout: one of LAYOUTS.
        out_dir: destination, created if needed.
        splits: splits to export.

    Returns:
        Utterances written per split.
    """
    if layout not in LAYOUTS:
        raise ValueError(f"unknown layout {layout!r}; use one of {', '.join(LAYOUTS)}")
    corpus_dir, out_dir = Path(corpus_dir), Path(out_dir)
    if not (corpus_dir / "corpus.json").is_file():
        raise ValueError(f"{corpus_dir} is not a complete corpus (no corpus.json); run scripts/make_corpus.py first")
    bad = sorted(set(splits) - set(SPLITS))
    if bad:
        raise ValueError(f"unknown split(s) {', '.join(bad)}; use some of {', '.join(SPLITS)}")
    manifests = {s: _read_corpus_manifest(corpus_dir, s) for s in SPLITS}
    speakers = sorted({r["speaker"] for rows in manifests.values() for r in rows})
    speaker_nums = {spk: i + 1 for i, spk in enumerate(speakers)}  # the same number in every split
    for split in splits:
        rows = manifests[split]
        if layout == "librispeech":
            _write_librispeech(rows, out_dir / split, speaker_nums, chapter=SPLITS.index(split) + 1)
        elif layout == "audiofolder":
            for r in rows:
                _link_or_copy(r["path"], out_dir / split / f"{r['id']}.wav")
            table = [[f"{r['id']}.wav", r["text"]] for r in rows]
            _write_csv(out_dir / split / "metadata.csv", ["file_name", "transcription"], table)
        elif layout == "folder":
            for r in rows:
                _link_or_copy(r["path"], out_dir / split / "wavs" / f"{r['id']}.wav")
            write_text_atomic(out_dir / split / "transcripts.txt", "".join(f"{r['id']}\t{r['text']}\n" for r in rows))
        elif layout == "parquet":
            _write_parquet(rows, out_dir / "data" / f"{split}-00000-of-00001.parquet")
        else:
            for r in rows:
                _link_or_copy(r["path"], out_dir / "audio" / split / f"{r['id']}.wav")
            suffix, delimiter = (".csv", ",") if layout == "nemo_csv" else (".tsv", "\t")
            table = [[f"audio/{split}/{r['id']}.wav", r["duration"], r["text"]] for r in rows]
            _write_csv(out_dir / f"{split}{suffix}", ["audio_filepath", "duration", "text"], table, delimiter)
    logger.info("exported %s as %s to %s", ", ".join(splits), layout, out_dir)
    return {s: len(manifests[s]) for s in splits}


def _read_corpus_manifest(corpus_dir: Path, split: str) -> list[dict[str, Any]]:
    """Rows of `<split>.jsonl` with `path` = absolute audio path."""
    lines = (corpus_dir / f"{split}.jsonl").read_text(encoding="utf-8").splitlines()
    rows = [json.loads(line) for line in lines if line]
    for r in rows:
        r["path"] = corpus_dir / r["audio_filepath"]
    return rows


def _write_librispeech(rows: list[dict[str, Any]], split_dir: Path, speaker_nums: dict[str, int], chapter: int) -> None:
    """One chapter per speaker: numbered flac files and the chapter's trans.txt."""
    by_speaker: dict[int, list[dict[str, Any]]] = {}
    for r in rows:
        by_speaker.setdefault(speaker_nums[r["speaker"]], []).append(r)
    for spk, utts in sorted(by_speaker.items()):
        folder = split_dir / str(spk) / str(chapter)
        folder.mkdir(parents=True, exist_ok=True)
        lines = []
        for n, r in enumerate(utts):
            utt_id = f"{spk}-{chapter}-{n:04d}"
            audio, rate = sf.read(r["path"], dtype="int16")
            sf.write(folder / f"{utt_id}.flac", audio, rate, format="FLAC", subtype="PCM_16")
            lines.append(f"{utt_id} {r['text'].upper()}\n")
        write_text_atomic(folder / f"{spk}-{chapter}.trans.txt", "".join(lines))


def _write_parquet(rows: list[dict[str, Any]], path: Path) -> None:
    """A hub-style parquet shard whose audio column holds the encoded files."""
    import pyarrow as pa  # deferred: only this layout needs it
    import pyarrow.parquet as pq

    audio_type = pa.struct([("bytes", pa.binary()), ("path", pa.string())])
    audio = [{"bytes": Path(r["path"]).read_bytes(), "path": f"{r['id']}.wav"} for r in rows]
    table = pa.table({
        "audio": pa.array(audio, type=audio_type),
        "text": pa.array([r["text"] for r in rows], type=pa.string()),
        "id": pa.array([r["id"] for r in rows], type=pa.string()),
        "speaker": pa.array([r["speaker"] for r in rows], type=pa.string()),
        "duration": pa.array([float(r["duration"]) for r in rows], type=pa.float64()),
    })
    with atomic_path(path) as partial:
        pq.write_table(table, partial)


def _write_csv(path: Path, header: list[str], rows: list[list[Any]], delimiter: str = ",") -> None:
    """Writes a CSV/TSV table atomically."""
    buffer = io.StringIO()
    writer = csv.writer(buffer, delimiter=delimiter, lineterminator="\n")
    writer.writerow(header)
    writer.writerows(rows)
    path.parent.mkdir(parents=True, exist_ok=True)
    write_text_atomic(path, buffer.getvalue())


def _link_or_copy(src: Path, dst: Path) -> None:
    """Hard-links `src` to `dst` (no extra disk), copying across file systems."""
    dst.parent.mkdir(parents=True, exist_ok=True)
    dst.unlink(missing_ok=True)
    try:
        os.link(src, dst)
    except OSError:
        shutil.copyfile(src, dst)
