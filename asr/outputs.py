"""The output directory of a transcription run: crash-safe JSONL records and per-file .txt/.srt/.vtt/.ctm/.tsv.

`OutputDir` names the files of one rank and merges them at the end; `ResultSink` writes each result of
`asr.transcribe.Transcriber` as it comes; `render` turns a Transcript into a side file.

Output directory layout (OUT):
    transcripts.jsonl        one Transcript per line, in input order once a run completes
    errors.jsonl             one Failure per line: files that could not be transcribed, and why
    nemo_manifest.jsonl      with the "nemo" format: {audio_filepath, duration, pred_text} per transcript
    .parts/                  while running: other ranks' transcripts and every rank's failures
    .lock                    the pid of the run writing here (flock'd by its main process while it runs)
    <mirror of inputs>/      optional .txt/.srt/.vtt/.ctm/.tsv per file

Crash safety: a line is appended with a single write() and fsync'd, after the file's .txt/.srt/.vtt
(written to a temporary name and renamed), so a transcript line means the file is completely done.
`repair_jsonl` drops a line torn by a power loss. Failures are retried by the next run.

One run at a time: the main process holds an exclusive `flock` on `.lock` from before it repairs or
clears anything until it has merged the results (released by the kernel if it dies), and a second run
on the same directory is refused naming the first one's pid, instead of clearing the first run's error
records. flock is local to a machine: on a network file system shared by several machines, give each
machine's runs their own --output.

File names that are not valid UTF-8 (Linux allows any bytes but '/' and NUL): Python reads such a
name with each undecodable byte as a lone surrogate (U+DC80..U+DCFF, its "surrogateescape"); the
records write those as JSON escapes (`"caf\udce9.wav"` for the bytes `caf\xe9.wav`), so every line
is valid UTF-8, `json.loads` gives back the same string and `os.fsencode(record["path"])` the exact bytes.
"""

from __future__ import annotations

import fcntl
import json
import logging
import os
import re
import shutil
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

from asr.defaults import NEMO_MANIFEST_FILE, SIDE_FORMATS
from asr.files import write_text_atomic
from asr.transcribe import AudioItem, Failure, Transcript, WordTime

logger = logging.getLogger(__name__)

TRANSCRIPTS_FILE = "transcripts.jsonl"
ERRORS_FILE = "errors.jsonl"
SUMMARY_FILE = "summary.json"
PARTS_DIR = ".parts"
LOCK_FILE = ".lock"

CUE_LINE_CHARS = 42  # characters per subtitle line, the usual broadcast (Netflix, BBC) limit
CUE_MAX_LINES = 2  # lines per cue; a third covers too much of the picture
CUE_MAX_CHARS = CUE_MAX_LINES * CUE_LINE_CHARS  # text of a cue, not counting the line break
CUE_MAX_SECONDS = 7.0  # longer cues are hard to read along with
CUE_MAX_PAUSE = 1.0  # seconds of silence that start a new cue
TORN_TAIL_SCAN_BYTES = 1 << 16  # how far back from the end to look for the last newline at a time
_SURROGATE = re.compile("[\ud800-\udfff]")  # what os.fsdecode makes of bytes that are not UTF-8; unencodable


def json_line(record: Mapping[str, Any]) -> str:
    """`record` as one line of JSON text ending in a newline, encodable as UTF-8 whatever its strings hold.

    Lone surrogates (undecodable bytes of a file name) become `\\udcXX` escapes, which `json.loads`
    turns back into the same string; everything else stays as readable as `ensure_ascii=False` makes it.
    """
    text = json.dumps(record, ensure_ascii=False)  # a surrogate can only be inside a JSON string here
    return _SURROGATE.sub(lambda m: f"\\u{ord(m.group()):04x}", text) + "\n"


class OutputBusy(RuntimeError):
    """Another run is writing to the output directory."""


# ------------------------------------------------------------------------------------ jsonl on disk
def append_line(fd: int, record: Mapping[str, Any]) -> None:
    """Append one JSON line with a single write() on an O_APPEND descriptor, then fsync it.

    A killed process leaves either the whole line or none of it; only a power loss can tear one,
    which `repair_jsonl` drops on the next start.
    """
    data = json_line(record).encode("utf-8")
    written = os.write(fd, data)
    while written < len(data):  # regular files take it all at once; this is for exotic file systems
        written += os.write(fd, data[written:])
    os.fsync(fd)


def open_append(path: Path) -> int:
    """An O_APPEND descriptor for `path`, created if missing."""
    path.parent.mkdir(parents=True, exist_ok=True)
    return os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)


def repair_jsonl(path: Path) -> int:
    """Cut a torn last line (no newline at the end) off `path`; returns the bytes dropped."""
    if not path.is_file():
        return 0
    with open(path, "rb+") as f:
        size = f.seek(0, os.SEEK_END)
        end = size
        while end > 0:
            start = max(0, end - TORN_TAIL_SCAN_BYTES)
            f.seek(start)
            block = f.read(end - start)
            if end == size and block.endswith(b"\n"):
                return 0
            newline = block.rfind(b"\n")
            if newline >= 0:
                end = start + newline + 1
                break
            end = start
        f.truncate(end)
        f.flush()
        os.fsync(f.fileno())
    logger.warning("%s ended in a torn line (a crash while writing); dropped its %d bytes, that file is "
                   "transcribed again.", path, size - end)
    return size - end


def read_jsonl(path: Path) -> list[dict[str, Any]]:
    """The JSON objects of a JSONL file; unparsable lines are skipped with a warning."""
    if not path.is_file():
        return []
    rows = []
    with open(path, encoding="utf-8") as f:
        for number, line in enumerate(f, 1):
            if not line.strip():
                continue
            try:
                rows.append(json.loads(line))
            except json.JSONDecodeError:
                logger.warning("%s:%d is not valid JSON; ignoring it (that file is transcribed again).", path, number)
    return rows


class OutputDir:
    """The files of one output directory, for one rank of a run.

    Args:
        root: The output directory.
        rank: This process's rank; rank 0 appends to transcripts.jsonl itself, others to part files.
    """

    def __init__(self, root: str | os.PathLike, rank: int = 0) -> None:
        self.root = Path(root)
        self.rank = rank
        self.parts = self.root / PARTS_DIR
        self._lock_fd: int | None = None

    @property
    def transcripts_path(self) -> Path:
        """Where this rank appends transcripts."""
        return self.root / TRANSCRIPTS_FILE if self.rank == 0 else self.parts / f"transcripts.rank{self.rank}.jsonl"

    @property
    def failures_path(self) -> Path:
        """Where this rank appends failures (merged into errors.jsonl at the end)."""
        return self.parts / f"errors.rank{self.rank}.jsonl"

    def transcript_files(self) -> list[Path]:
        """Every file holding transcripts: the final one and any rank's part (also from killed runs)."""
        return [self.root / TRANSCRIPTS_FILE, *sorted(self.parts.glob("transcripts.rank*.jsonl"))]

    def lock(self) -> None:
        """Main process, first: take the directory for this run, until `unlock` (or the process's end).

        Raises:
            OutputBusy: another run holds it; the message names its pid.
        """
        self.root.mkdir(parents=True, exist_ok=True)
        fd = os.open(self.root / LOCK_FILE, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            owner = os.read(fd, 32).decode("ascii", "replace").strip() or "unknown"
            os.close(fd)
            raise OutputBusy(f"{self.root} is in use by another transcription run (pid {owner}); wait for it to "
                             "finish or choose another --output.") from None
        os.ftruncate(fd, 0)
        os.write(fd, f"{os.getpid()}\n".encode("ascii"))
        self._lock_fd = fd

    def unlock(self) -> None:
        """Let other runs use the directory (the lock file stays: removing it would race with a waiting run)."""
        if self._lock_fd is not None:
            os.close(self._lock_fd)  # closing the descriptor releases the flock
            self._lock_fd = None

    def prepare(self) -> None:
        """Main process, before any rank writes: repair torn lines, forget the last run's failures."""
        self.root.mkdir(parents=True, exist_ok=True)
        self.parts.mkdir(exist_ok=True)
        for path in self.transcript_files():
            repair_jsonl(path)
        for path in self.parts.glob("errors.rank*.jsonl"):
            path.unlink()  # failures are retried: this run reports its own

    def done(self) -> dict[tuple[str, str], Transcript]:
        """Transcripts already written, by key (first one wins)."""
        out: dict[tuple[str, str], Transcript] = {}
        for path in self.transcript_files():
            for row in read_jsonl(path):
                try:
                    record = Transcript.from_dict(row)
                except (KeyError, TypeError, ValueError):
                    logger.warning("%s has a line that is not a transcript record; ignoring it.", path)
                    continue
                out.setdefault(record.key, record)
        return out

    def merge(self, items: Sequence[AudioItem]) -> tuple[list[Transcript], list[Failure]]:
        """Main process, after every rank finished: final transcripts.jsonl and errors.jsonl in input order.

        Transcripts of files that are not among `items` (an earlier run's other inputs) are kept, after
        the others. Part files are removed once their content is in the final files.

        Returns:
            (transcripts, failures) as written.
        """
        order = {item.key: item.index for item in items}
        transcripts = sorted(self.done().values(), key=lambda t: (t.key not in order, order.get(t.key, 0)))
        failures: dict[tuple[str, str], Failure] = {}
        for path in sorted(self.parts.glob("errors.rank*.jsonl")):
            for row in read_jsonl(path):
                failure = Failure.from_dict(row)
                failures.setdefault(failure.key, failure)
        done = {t.key for t in transcripts}
        failed = sorted((f for k, f in failures.items() if k not in done), key=lambda f: order.get(f.key, len(order)))
        write_text_atomic(self.root / TRANSCRIPTS_FILE, "".join(json_line(t.to_dict()) for t in transcripts))
        write_text_atomic(self.root / ERRORS_FILE, "".join(json_line(f.to_dict()) for f in failed))
        shutil.rmtree(self.parts, ignore_errors=True)
        return transcripts, failed


class ResultSink:
    """Writes each result as it comes: side files first, then the line that marks the file done.

    Args:
        out: The output directory (for this rank).
        side_bases: Item index -> side file path without suffix (see `side_file_bases`).
        formats: The formats of the run; the per-file ones among them (txt, srt, vtt, ctm, tsv) are written.
        mark_below: Words whose confidence is below this are marked in txt/srt/vtt/tsv (see `render`).
    """

    def __init__(self, out: OutputDir, side_bases: Mapping[int, Path], formats: Sequence[str],
                 mark_below: float | None = None) -> None:
        self.side_bases = side_bases
        self.formats = tuple(f for f in formats if f in SIDE_FORMATS)
        self.mark_below = mark_below
        self._transcripts = open_append(out.transcripts_path)
        self._failures = open_append(out.failures_path)

    def write(self, item: AudioItem, result: Transcript | Failure) -> None:
        """Record one finished file."""
        if isinstance(result, Failure):
            append_line(self._failures, result.to_dict())
            return
        base = self.side_bases.get(item.index)
        for fmt in self.formats:
            write_text_atomic(base.with_name(f"{base.name}.{fmt}"), render(result, fmt, self.mark_below))
        append_line(self._transcripts, result.to_dict())

    def write_missing(self, item: AudioItem, transcript: Transcript) -> int:
        """Side files of a file transcribed by an earlier run that this run's formats ask for and that do not
        exist (a re-run with more --formats, or a side file deleted); the transcript is not decoded again.
        Returns how many were written."""
        base = self.side_bases.get(item.index)
        missing = [fmt for fmt in self.formats if not base.with_name(f"{base.name}.{fmt}").exists()]
        for fmt in missing:
            write_text_atomic(base.with_name(f"{base.name}.{fmt}"), render(transcript, fmt, self.mark_below))
        return len(missing)

    def close(self) -> None:
        """Close the files."""
        os.close(self._transcripts)
        os.close(self._failures)


# -------------------------------------------------------------------------------------- side files
def cues(words: Sequence[WordTime]) -> list[tuple[float, float, str]]:
    """Words grouped into subtitle cues (start s, end s, text): split at pauses, and wherever the text would
    no longer wrap into CUE_MAX_LINES lines of CUE_LINE_CHARS or the cue would last over CUE_MAX_SECONDS.

    A long stretch of speech thus becomes several cues, each timed by its own words; `wrap_cue` breaks
    a cue's text into its lines.
    """
    out: list[tuple[float, float, str]] = []
    current: list[WordTime] = []
    for word in _line_sized(words):
        if current:
            text = " ".join(w.word for w in current) + " " + word.word
            if (word.start - current[-1].end >= CUE_MAX_PAUSE or len(text) > CUE_MAX_CHARS
                    or len(wrap_cue(text)) > CUE_MAX_LINES or word.end - current[0].start > CUE_MAX_SECONDS):
                out.append((current[0].start, current[-1].end, " ".join(w.word for w in current)))
                current = []
        current.append(word)
    if current:
        out.append((current[0].start, current[-1].end, " ".join(w.word for w in current)))
    return out


def wrap_cue(text: str, width: int = CUE_LINE_CHARS) -> list[str]:
    """The lines of a cue: one line if it fits, else balanced lines of at most `width` characters
    (the split whose longest line is shortest), more than two only for text `cues` would not make."""
    words = text.split()
    if len(text) <= width or len(words) < 2:
        return [text] if text else []
    best: list[str] | None = None
    for cut in range(1, len(words)):
        lines = [" ".join(words[:cut]), " ".join(words[cut:])]
        if max(map(len, lines)) <= width and (best is None or max(map(len, lines)) < max(map(len, best))):
            best = lines
    if best is not None:
        return best
    lines, line = [], ""  # no two-line split fits: fill lines greedily
    for word in words:
        if line and len(line) + 1 + len(word) > width:
            lines.append(line)
            line = word
        else:
            line = f"{line} {word}" if line else word
    return lines + [line]


def _line_sized(words: Sequence[WordTime]) -> Iterator[WordTime]:
    """The words, each longer than a subtitle line cut into line-sized pieces timed in proportion."""
    for w in words:
        pieces = [w.word[i:i + CUE_LINE_CHARS] for i in range(0, len(w.word), CUE_LINE_CHARS)] or [w.word]
        step = (w.end - w.start) / len(pieces)
        for k, piece in enumerate(pieces):
            yield w if len(pieces) == 1 else WordTime(piece, round(w.start + k * step, 3),
                                                      round(w.start + (k + 1) * step, 3), w.confidence)


def _timestamp(seconds: float, separator: str) -> str:
    """HH:MM:SS<sep>mmm."""
    millis = int(round(seconds * 1000))
    hours, millis = divmod(millis, 3_600_000)
    minutes, millis = divmod(millis, 60_000)
    secs, millis = divmod(millis, 1000)
    return f"{hours:02d}:{minutes:02d}:{secs:02d}{separator}{millis:03d}"


def ctm_file_id(path: str) -> str:
    """The CTM file id of a transcript's path: the path without its suffix, whitespace made `_` (CTM fields
    are whitespace-separated)."""
    stem = str(Path(path).with_suffix("")) if Path(path).suffix else path
    return re.sub(r"\s", "_", stem) or "_"


UNSURE_MARK = "(?)"  # appended to a word whose confidence is below --mark-below in txt/srt/vtt/tsv


def mark_unsure(words: Sequence[WordTime], below: float | None) -> tuple[WordTime, ...]:
    """The words, each with a confidence under `below` spelled with UNSURE_MARK after it (None: unchanged)."""
    if below is None:
        return tuple(words)
    return tuple(WordTime(w.word + UNSURE_MARK, w.start, w.end, w.confidence)
                 if w.confidence is not None and w.confidence < below else w for w in words)


def render(transcript: Transcript, fmt: str, mark_below: float | None = None) -> str:
    """The text of one side file.

    Formats: "txt" (the transcript); "srt" and "vtt" (timed cues, see `cues`, of at most two lines of 42
    characters); "ctm" (NIST CTM, a word a line: `<file-id> 1 <start> <duration> <word>`, seconds, and the
    word's confidence as the optional sixth field when it has one); "tsv" (Whisper's layout: a
    `start<TAB>end<TAB>text` header, then a cue a line, times in integer milliseconds). With `mark_below`,
    txt/srt/vtt/tsv spell each word whose confidence is below it as "word(?)" (UNSURE_MARK).
    """
    words = mark_unsure(transcript.words, mark_below)
    if fmt == "txt":
        return (" ".join(w.word for w in words) if mark_below is not None else transcript.text) + "\n"
    if fmt == "ctm":
        file_id = ctm_file_id(transcript.path)
        return "".join(f"{file_id} 1 {w.start:.3f} {max(0.0, w.end - w.start):.3f} {w.word}"
                       + (f" {w.confidence:.4f}" if w.confidence is not None else "") + "\n"
                       for w in transcript.words)
    if fmt == "tsv":
        rows = [f"{round(start * 1000)}\t{round(end * 1000)}\t{text}\n" for start, end, text in cues(words)]
        return "start\tend\ttext\n" + "".join(rows)
    if fmt not in ("srt", "vtt"):
        raise ValueError(f"Format {fmt!r} is unknown; use one of {', '.join(SIDE_FORMATS)}.")
    blocks = []
    for number, (start, end, text) in enumerate(cues(words), 1):
        lines = "\n".join(wrap_cue(text))
        if fmt == "srt":
            blocks.append(f"{number}\n{_timestamp(start, ',')} --> {_timestamp(end, ',')}\n{lines}\n")
        else:
            blocks.append(f"{_timestamp(start, '.')} --> {_timestamp(end, '.')}\n{lines}\n")
    return ("WEBVTT\n\n" if fmt == "vtt" else "") + "\n".join(blocks)


# ------------------------------------------------------------------------------------- run outputs
def nemo_manifest_line(transcript: Transcript, audio_file: str | os.PathLike) -> str:
    """One line of a NeMo manifest: `{"audio_filepath", "duration", "pred_text"}` (what NeMo's
    transcribe_speech.py writes and its scoring and training scripts read)."""
    return json_line({"audio_filepath": os.fspath(audio_file), "duration": transcript.duration,
                      "pred_text": transcript.text})


def write_nemo_manifest(path: Path, transcripts: Sequence[Transcript], items: Sequence[AudioItem]) -> None:
    """`path` as a NeMo manifest of `transcripts`, audio paths absolute.

    A transcript of a file that is not among `items` (an earlier run's other input) gets its path
    from its record: relative to its input directory, or to its manifest's directory.
    """
    files = {item.key: item.file for item in items}

    def audio_file(t: Transcript) -> Path:
        if t.key in files:
            return Path(files[t.key]).absolute()
        given = Path(os.path.expanduser(t.path))
        base = Path(t.input) if Path(t.input).is_dir() else Path(t.input).parent
        return given if given.is_absolute() else base / given

    write_text_atomic(path, "".join(nemo_manifest_line(t, audio_file(t)) for t in transcripts))
