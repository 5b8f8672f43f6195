"""Batch transcription of audio trees: discovery, duration batching, sharding, chunked long files, resumable outputs.

The pieces `scripts/transcribe.py` puts together, in pipeline order:

    >>> items = find_audio(["recordings/"])                       # deterministic order, any depth
    >>> units = plan_work(durations, options)                      # short files batched, long ones alone
    >>> ranks = assign_by_cost([u.seconds for u in units], world)  # balanced shards
    >>> transcriber = Transcriber(load_model("run/model"), GreedyCTC(vocab), options)
    >>> for result in transcriber.transcribe([items[i] for i in units[0].items]):
    ...     sink.write(result)                                     # Transcript or Failure, appended + fsync'd

The output directory (transcripts.jsonl, errors.jsonl, side files; crash-safe appends) is `asr.outputs`.
"""

from __future__ import annotations

import csv
import heapq
import json
import logging
import os
import shutil
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from asr.audio import AUDIO_EXTENSIONS, BLOCK_SECONDS, AudioError, audio_duration, stream_audio
from asr.beam import CTCDecoder, Hypothesis
from asr.chunking import ChunkSpec, chunked_log_probs
from asr.confidence import Calibration, WordLM, raw_confidence, word_features
from asr.constants import SAMPLE_RATE, WORD_DELIMITER
from asr.defaults import (
    CHUNK_SECONDS,
    CUTS,
    DECODERS,
    DEFAULT_MAX_BATCH_SECONDS,
    DEFAULT_SEGMENTER,
    FORMATS,
    GRID,
    OVERLAP_SECONDS,
    SIDE_FORMATS,
)
from asr.inference import AcousticModel, log_probs_batch, plan_batches
from asr.segmenters import make_segmenter
from asr.sources import AUDIO_KEYS

logger = logging.getLogger(__name__)


# libsndfile reads these besides AUDIO_EXTENSIONS; FFmpeg adds the others when it is on PATH.
SOUNDFILE_EXTENSIONS = (".aif", ".aiff", ".au", ".caf", ".w64")
FFMPEG_EXTENSIONS = (".mp4", ".mkv", ".mka", ".mov", ".wma", ".amr", ".3gp", ".ac3", ".spx", ".wv")

# Digital silence: a file (or chunk) whose samples never stray further than this from their mean. The
# model would read garbage into it (per-utterance normalisation blows the tiny signal up: a trained test
# model read all-zero audio as "tb'", 16-bit LSB dither as "a s enfs onasn saa"), so it is given blank
# frames instead and transcribes as "". -80 dBFS is 3 steps of 16-bit audio; speech quantised to 16 bits
# is still readable at a -70 dBFS peak and already garbage at -75, so the gate loses nothing readable.
SILENCE_PEAK_DBFS = -80.0
SILENCE_PEAK = 10 ** (SILENCE_PEAK_DBFS / 20)  # 1e-4 in float samples (full scale 1.0)
SILENT_TOKEN_LOGP = -30.0  # log-prob of every non-blank token in a silent frame (e^-30: never chosen)



# ------------------------------------------------------------------------------------------ options
@dataclass(frozen=True)
class TranscribeOptions:
    """How audio is batched, chunked and written; every check is here, one sentence each."""

    decoder: str = "greedy"  # one of DECODERS (what the records name)
    chunk_seconds: float = CHUNK_SECONDS  # longer files are cut into chunks of this length; 0 never chunks
    overlap_seconds: float = OVERLAP_SECONDS  # audio shared by neighbouring chunks; half of it is context on each side
    segmenter: str = DEFAULT_SEGMENTER  # long files: pieces <= chunk_seconds cut at the pauses it finds, or "grid"
    cut_at_pauses: bool = False  # deprecated: segmenter="energy" (it wins over `segmenter`)
    max_batch_seconds: float = DEFAULT_MAX_BATCH_SECONDS  # padded audio seconds per forward pass (memory bound)
    formats: tuple[str, ...] = ()  # outputs besides transcripts.jsonl: per file txt/srt/vtt/ctm/tsv, per run nemo
    in_place: bool = False  # write .txt/.srt/.vtt next to the audio instead of under the output dir
    mark_below: float | None = None  # txt/srt/vtt/tsv: words whose confidence is below this get "(?)" after them

    def __post_init__(self) -> None:
        if self.decoder not in DECODERS:
            raise ValueError(f"Decoder {self.decoder!r} is unknown; use one of {', '.join(DECODERS)}.")
        unknown = [f for f in self.formats if f not in FORMATS]
        if unknown:
            raise ValueError(f"Output format(s) {unknown} are unknown; use a comma list of {', '.join(FORMATS)}.")
        if self.mark_below is not None and not 0 < self.mark_below < 1:
            raise ValueError(f"--mark-below is {self.mark_below}; use a confidence between 0 and 1, e.g. 0.5.")
        if self.max_batch_seconds <= 0:
            raise ValueError(f"--max-batch-seconds is {self.max_batch_seconds}; use a positive number of seconds.")
        if self.chunk_seconds < 0:
            raise ValueError(f"--chunk-seconds is {self.chunk_seconds}; use a positive length, or 0 to never chunk.")
        if self.segmenter not in CUTS:
            raise ValueError(f"--segmenter {self.segmenter!r} is unknown; use one of {', '.join(CUTS)}.")
        if self.chunk_seconds and not self.pause_segmenter and not 0 < 2 * self.overlap_seconds <= self.chunk_seconds:
            raise ValueError(f"--overlap-seconds {self.overlap_seconds} must be positive and at most half of "
                             f"--chunk-seconds {self.chunk_seconds}; 5 s of overlap for 30 s chunks works well.")

    @property
    def pause_segmenter(self) -> str | None:
        """The segmenter that cuts long files at pauses (cut_at_pauses meaning "energy"); None: the fixed grid."""
        if self.cut_at_pauses:
            return "energy"
        return None if self.segmenter == GRID else self.segmenter

    def chunk_spec(self, frame_samples: int) -> ChunkSpec | None:
        """The chunk geometry on the model's frame grid, or None when chunking is off."""
        if not self.chunk_seconds:
            return None
        return ChunkSpec.from_seconds(self.chunk_seconds, self.overlap_seconds, frame_samples, self.pause_segmenter)


# ------------------------------------------------------------------------------------------- inputs
@dataclass(frozen=True)
class AudioItem:
    """One file to transcribe.

    Attributes:
        index: Position in the run's deterministic order (inputs as given, then sorted paths).
        input: The input directory or manifest, as an absolute path.
        path: The file as given: relative to its input directory, or as the manifest lists it.
        file: Where to read it.
        audio: The samples themselves (float32 [num_samples] at 16 kHz), for audio given in memory
            (asr.recognizer); None reads `file`.
    """

    index: int
    input: str
    path: str
    file: Path
    audio: np.ndarray | None = field(default=None, compare=False, repr=False)

    @property
    def key(self) -> tuple[str, str]:
        """Identity across runs: (input, path)."""
        return self.input, self.path


def audio_extensions() -> tuple[str, ...]:
    """Lower-case file extensions that discovery picks up (FFmpeg's only when ffmpeg is installed)."""
    extra = FFMPEG_EXTENSIONS if shutil.which("ffmpeg") else ()
    return tuple(dict.fromkeys((*AUDIO_EXTENSIONS, *SOUNDFILE_EXTENSIONS, *extra)))


def find_audio(inputs: Sequence[str | os.PathLike], manifests: Sequence[str | os.PathLike] = (),
               exclude: Sequence[str | os.PathLike] = ()) -> list[AudioItem]:
    """Every audio file under the input directories, then every file the manifests list.

    Directories are walked recursively (symlinked files followed, symlinked directories not, hidden
    names skipped) and sorted by relative path, so the order never depends on the file system.

    Args:
        inputs: Directories (or single audio files).
        manifests: JSONL/JSON, CSV/TSV (with a header naming the audio column) or plain lists of paths;
            relative paths resolve against the manifest's directory.
        exclude: Directories not to descend into (the output directory).

    Returns:
        Items indexed 0..N-1 in that order; a file reachable twice under one input appears once.

    Raises:
        ValueError: An input or manifest does not exist, or a manifest cannot be parsed.
    """
    extensions = audio_extensions()
    excluded = {Path(p).resolve() for p in exclude}
    found: list[tuple[str, str, Path]] = []
    for given in inputs:
        root = Path(given)
        if root.is_file():
            found.append((str(root.parent.resolve()), root.name, root.resolve()))
            continue
        if not root.is_dir():
            raise ValueError(f"Input {str(given)!r} is neither a directory nor a file; check the path.")
        base = root.resolve()
        paths = []
        for folder, dirs, files in os.walk(base):
            dirs[:] = [d for d in dirs if not d.startswith(".") and (Path(folder) / d).resolve() not in excluded]
            paths.extend(Path(folder, f).relative_to(base).as_posix() for f in files
                         if not f.startswith(".") and Path(f).suffix.lower() in extensions)
        found.extend((str(base), rel, base / rel) for rel in sorted(paths))
    for manifest in manifests:
        manifest = Path(manifest)
        base = manifest.resolve().parent
        for entry in read_path_list(manifest):
            file = Path(os.path.expanduser(entry))
            found.append((str(manifest.resolve()), entry, file if file.is_absolute() else base / file))
    items, seen = [], set()
    for input_, path, file in found:
        if (input_, path) not in seen:
            seen.add((input_, path))
            items.append(AudioItem(len(items), input_, path, file))
    return items


def read_path_list(path: str | os.PathLike) -> list[str]:
    """Audio paths listed by a manifest: JSONL/JSON objects, CSV/TSV rows with a header, or one path a line.

    Raises:
        ValueError: The file is missing, a JSON line is invalid, or no audio column is found.
    """
    path = Path(path)
    if not path.is_file():
        raise ValueError(f"Manifest {str(path)!r} does not exist; check --manifest.")
    suffix = path.suffix.lower()
    text = path.read_text(encoding="utf-8-sig", errors="surrogateescape")  # a listed name may not be UTF-8
    if suffix in (".jsonl", ".json"):
        rows: list[Any] = []
        if suffix == ".json" and text.lstrip().startswith("["):
            rows = json.loads(text)
        else:
            for number, line in enumerate(text.splitlines(), 1):
                if line.strip():
                    try:
                        rows.append(json.loads(line))
                    except json.JSONDecodeError as e:
                        raise ValueError(f"{path}:{number} is not valid JSON ({e.msg}); write one object per "
                                         "line.") from e
        return [_audio_field(row, path) for row in rows]
    if suffix in (".csv", ".tsv"):
        reader = csv.DictReader(text.splitlines(), delimiter="\t" if suffix == ".tsv" else ",")
        return [_audio_field(row, path) for row in reader]
    return [line.strip() for line in text.splitlines() if line.strip() and not line.lstrip().startswith("#")]


def _audio_field(row: Any, path: Path) -> str:
    """The audio path of one manifest row (a string row is the path itself)."""
    if isinstance(row, str):
        return row
    if isinstance(row, Mapping):
        for key in AUDIO_KEYS:
            if row.get(key):
                return str(row[key])
    raise ValueError(f"{path} has a row without an audio path ({str(row)[:80]}); give each row one of the keys "
                     f"{', '.join(AUDIO_KEYS)}.")


def side_file_bases(items: Sequence[AudioItem], out: Path, in_place: bool) -> list[Path]:
    """Where each item's .txt/.srt/.vtt go, without the suffix.

    Under `out`, the input tree is mirrored (one folder per input when there are several); with
    `in_place`, next to the audio. `a/b.wav` -> `a/b.txt`, or `a/b.wav.txt` when another file of
    the run would get the same name (`a/b.flac`).
    """
    inputs = list(dict.fromkeys(item.input for item in items))
    roots: dict[str, Path] = {}
    for input_ in inputs:
        if len(inputs) == 1:
            roots[input_] = out
            continue
        label, n = Path(input_).stem or "input", 2
        while out / label in roots.values():
            label, n = f"{Path(input_).stem}-{n}", n + 1
        roots[input_] = out / label
    full = []
    for item in items:
        if in_place:
            full.append(item.file)
        else:
            # Manifest paths may be absolute or climb out with "..": keep them inside the mirror.
            given = Path(item.path)
            parts = ["__" if p == ".." else p for p in given.parts if p not in (given.anchor, ".")]
            full.append(roots[item.input].joinpath(*parts))
    stems = [p.with_suffix("") for p in full]
    counts: dict[Path, int] = {}
    for stem in stems:
        counts[stem] = counts.get(stem, 0) + 1
    return [stem if counts[stem] == 1 else path for stem, path in zip(stems, full)]


# ------------------------------------------------------------------------------------------ records
@dataclass(frozen=True)
class WordTime:
    """A word and when it was spoken, in seconds from the start of the file."""

    word: str
    start: float
    end: float
    confidence: float | None = None  # probability the word is right (calibrated) or the raw score; asr.confidence


@dataclass(frozen=True)
class Transcript:
    """One transcribed file: a line of transcripts.jsonl."""

    input: str
    path: str
    duration: float  # seconds of decoded audio
    text: str
    words: tuple[WordTime, ...]
    decoder: str
    model: str
    lm: str | None = None
    confidence: str | None = None  # what the words' confidences are: "calibrated", "raw" or None (none given)
    hotwords: Mapping[str, Any] | None = None  # {"words": [...], "weight": w} the beam search boosted; None: none

    @property
    def key(self) -> tuple[str, str]:
        """Identity across runs: (input, path)."""
        return self.input, self.path

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready dict; words as {word, start, end[, confidence]}."""
        words = [{"word": w.word, "start": w.start, "end": w.end,
                  **({"confidence": w.confidence} if w.confidence is not None else {})} for w in self.words]
        return {"path": self.path, "input": self.input, "duration": self.duration, "text": self.text,
                "words": words, "decoder": self.decoder, "model": self.model, "lm": self.lm,
                "confidence": self.confidence, **({"hotwords": dict(self.hotwords)} if self.hotwords else {})}

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> Transcript:
        """Inverse of `to_dict`."""
        words = tuple(WordTime(w["word"], float(w["start"]), float(w["end"]), w.get("confidence"))
                      for w in data["words"])
        return cls(data["input"], data["path"], float(data["duration"]), data["text"], words, data["decoder"],
                   data["model"], data.get("lm"), data.get("confidence"), data.get("hotwords"))


@dataclass(frozen=True)
class Failure:
    """A file that could not be transcribed: a line of errors.jsonl."""

    input: str
    path: str
    reason: str  # AudioError.reason ("missing", "empty", "unreadable", "non_finite", "no_samples"), "too_short" or "error"
    error: str

    @property
    def key(self) -> tuple[str, str]:
        """Identity across runs: (input, path)."""
        return self.input, self.path

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready dict."""
        return {"path": self.path, "input": self.input, "reason": self.reason, "error": self.error}

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> Failure:
        """Inverse of `to_dict`."""
        return cls(data["input"], data["path"], data["reason"], data["error"])

    @classmethod
    def of(cls, item: AudioItem, error: Exception) -> Failure:
        """The failure of `item` because of `error`."""
        reason = error.reason if isinstance(error, AudioError) else "error"
        return cls(item.input, item.path, reason, str(error).splitlines()[0] if str(error) else type(error).__name__)


def hypothesis_to_transcript(item: AudioItem, hypothesis: Hypothesis, num_samples: int, seconds_per_frame: float,
                             decoder: str, model: str, lm: str | None,
                             confidences: Sequence[float] | None = None, confidence: str | None = None,
                             hotwords: Mapping[str, Any] | None = None) -> Transcript:
    """Frame spans -> seconds (the model's real frame period), clipped to the file's duration.

    `confidences` (one per word) and what they are (`confidence`: "calibrated" or "raw") go with the words;
    `hotwords` (what the search boosted) with the transcript.
    """
    duration = num_samples / SAMPLE_RATE
    scores = [round(float(c), 4) for c in confidences] if confidences is not None else [None] * len(hypothesis.words)
    words = tuple(WordTime(w.word, round(min(w.start * seconds_per_frame, duration), 3),
                           round(min(w.end * seconds_per_frame, duration), 3), c)
                  for w, c in zip(hypothesis.words, scores))
    return Transcript(item.input, item.path, round(duration, 3), hypothesis.text, words, decoder, model, lm,
                      confidence if confidences is not None else None, hotwords)


# ------------------------------------------------------------------------------------------- plans
@dataclass(frozen=True)
class WorkUnit:
    """Files processed together: a batch of short files, or one long file in chunks.

    Attributes:
        items: Indices into the list of files the plan was made for.
        seconds: Estimated compute, in padded audio seconds.
        chunked: One long file, cut into chunks.
    """

    items: tuple[int, ...]
    seconds: float
    chunked: bool = False


def plan_work(durations: Sequence[float], options: TranscribeOptions) -> list[WorkUnit]:
    """Batch files by duration (least padding), longer-than-a-chunk files alone; deterministic.

    Args:
        durations: Seconds per file (from the headers).
        options: Chunk length and batch budget.

    Returns:
        Units covering every index once.
    """
    long = [i for i, d in enumerate(durations) if options.chunk_seconds and d > options.chunk_seconds]
    long_set = set(long)
    short = [i for i in range(len(durations)) if i not in long_set]
    units = [WorkUnit((i,), durations[i] * options.chunk_seconds / max(1e-9, options.chunk_seconds
                                                                        - options.overlap_seconds), True)
             for i in long]
    lengths = [int(durations[i] * SAMPLE_RATE) for i in short]
    for batch in plan_batches(lengths, int(options.max_batch_seconds * SAMPLE_RATE)):
        padded = len(batch) * max(durations[short[j]] for j in batch)
        units.append(WorkUnit(tuple(short[j] for j in batch), padded))
    return units


def assign_by_cost(costs: Sequence[float], world_size: int) -> list[int]:
    """The rank of each unit: largest first to the least loaded rank (ties to the lower rank); deterministic."""
    loads = [(0.0, rank) for rank in range(world_size)]
    heapq.heapify(loads)
    ranks = [0] * len(costs)
    for i in sorted(range(len(costs)), key=lambda i: (-costs[i], i)):
        load, rank = heapq.heappop(loads)
        ranks[i] = rank
        heapq.heappush(loads, (load + costs[i], rank))
    return ranks


def probe_durations(items: Sequence[AudioItem]) -> list[float | Failure]:
    """Each file's duration from its header (an in-memory item's from its length), or the Failure that reading
    the header gave."""
    out: list[float | Failure] = []
    for item in items:
        try:
            out.append(len(item.audio) / SAMPLE_RATE if item.audio is not None else audio_duration(item.file))
        except AudioError as e:
            out.append(Failure.of(item, e))
    return out


# ---------------------------------------------------------------------------------------- running
class Transcriber:
    """A model and a decoder turning files into Transcripts.

    Args:
        loaded: The model, PyTorch or ONNX (asr.inference.load_acoustic_model).
        decoder: GreedyCTC, PyCTCDecodeBeam or FlashlightBeam over the model's vocabulary.
        options: Chunking and batching.
        lm: The LM directory the decoder uses, recorded with each transcript.
        calibration: The decoder's word-confidence calibration (`asr.confidence.load_calibrations`); each
            word gets its calibrated probability of being right, or without one its raw confidence.
    """

    def __init__(self, loaded: AcousticModel, decoder: CTCDecoder, options: TranscribeOptions,
                 lm: str | None = None, calibration: Calibration | None = None) -> None:
        self.loaded, self.decoder, self.options, self.lm = loaded, decoder, options, lm
        self.calibration = calibration  # this decoder's word-confidence calibration (confidence.json); None: raw
        search = getattr(decoder, "options", None)  # a beam decoder's options; their hotwords go with each transcript
        self.hotwords = ({"words": list(search.hotwords), "weight": search.hotword_weight}
                         if getattr(search, "hotwords", ()) else None)
        # the LM's share of a beam decoder's confidence, when its calibration reads it
        self.word_lm = WordLM.from_dir(lm) if calibration is not None and calibration.uses_lm and lm else None
        self.model_name = str(Path(loaded.path).resolve())
        self.spec = options.chunk_spec(round(loaded.seconds_per_frame * SAMPLE_RATE))
        if self.spec is not None and self.spec.segmenter is not None:
            make_segmenter(self.spec.segmenter)  # now: a missing package is an error before any file is read
        self.min_samples = _min_samples(loaded)  # the shortest input giving one output frame (wav2vec2: 400, 25 ms)

    def transcribe(self, items: Sequence[AudioItem], chunked: bool = False,
                   on_audio: Callable[[float], None] | None = None) -> Iterator[tuple[AudioItem, Transcript | Failure]]:
        """Transcribe files together; yields each file's result as soon as it is known.

        Args:
            items: The files of one WorkUnit.
            chunked: Stream the (single) file through overlapping chunks instead of loading it.
            on_audio: Called with the seconds of audio just run through the model (after each forward
                pass, also inside one long file), e.g. to move a progress bar weighted by audio.

        Yields:
            (item, Transcript or Failure); unreadable files never stop the others.
        """
        if chunked and self.spec is not None:
            for item in items:
                yield item, self._guard(item, lambda: self._transcribe_streamed(item, on_audio=on_audio))
            return
        audios: list[tuple[AudioItem, np.ndarray]] = []
        for item in items:
            try:
                audio = _concatenate(_blocks(item))
            except AudioError as e:
                yield item, Failure.of(item, e)
                continue
            if self.spec is not None and len(audio) > self.spec.chunk_samples:
                # The header understated the length (VBR mp3), or in-memory audio: chunk it like any long file.
                yield item, self._guard(item, lambda: self._transcribe_streamed(item, [audio], on_audio))
            elif len(audio) < self.min_samples:  # no output frame at all: nothing the model could say
                yield item, Failure(item.input, item.path, "too_short",
                                    f"{len(audio)} samples ({1000 * len(audio) / SAMPLE_RATE:.1f} ms at 16 kHz), shorter "
                                    f"than the {self.min_samples} samples ({1000 * self.min_samples / SAMPLE_RATE:.0f} ms) "
                                    "the model needs for one output frame")
            else:
                audios.append((item, audio))
        if not audios:
            return
        log_probs = self._log_probs([audio for _, audio in audios])
        if on_audio is not None:
            on_audio(sum(len(audio) for _, audio in audios) / SAMPLE_RATE)
        for (item, audio), lp in zip(audios, log_probs):
            yield item, self._guard(item, lambda: self._to_transcript(item, lp, len(audio)))

    def _transcribe_streamed(self, item: AudioItem, blocks: Iterable[np.ndarray] | None = None,
                             on_audio: Callable[[float], None] | None = None) -> Transcript:
        """One file through overlapping chunks, its stitched log-probs decoded once."""
        per_batch = max(1, int(self.options.max_batch_seconds * SAMPLE_RATE // self.spec.chunk_samples))
        reported = [0]  # samples of the file already given to on_audio

        def covered(end: int) -> None:  # chunks overlap: report how far the file is done, not their lengths
            if on_audio is not None and end > reported[0]:
                on_audio((end - reported[0]) / SAMPLE_RATE)
                reported[0] = end

        log_probs, num_samples = chunked_log_probs(
            _blocks(item) if blocks is None else blocks, self.spec,
            self._log_probs, per_batch, self.loaded.vocab.get(WORD_DELIMITER), covered)
        return self._to_transcript(item, log_probs, num_samples)

    def _log_probs(self, audios: list[np.ndarray]) -> list[np.ndarray]:
        """`log_probs_batch` [frames_i, V] per audio; digitally silent audios get certain blanks, without the model."""
        out = [self._blank_frames(len(audio)) if is_digital_silence(audio) else None for audio in audios]
        loud = [i for i, lp in enumerate(out) if lp is None]
        if loud:
            for i, lp in zip(loud, log_probs_batch(self.loaded, [audios[i] for i in loud])):
                out[i] = lp
        return out

    def _blank_frames(self, num_samples: int) -> np.ndarray:
        """[frames, V] log-probs of a silent input: the blank, certainly, in every frame."""
        log_probs = np.full((self.loaded.frames(num_samples), len(self.loaded.vocab)), SILENT_TOKEN_LOGP, np.float32)
        log_probs[:, self.loaded.blank_id] = 0.0
        return log_probs

    def _to_transcript(self, item: AudioItem, log_probs: np.ndarray, num_samples: int) -> Transcript:
        """Decode [T, V] log-probs into a Transcript with word times in seconds."""
        hypothesis = self.decoder.decode(log_probs) if len(log_probs) else Hypothesis("", (), 0.0)
        features = word_features(log_probs, hypothesis, self.word_lm)
        calibrated = self.calibration is not None
        scores = self.calibration(features) if calibrated else raw_confidence(features)
        return hypothesis_to_transcript(item, hypothesis, num_samples, self.loaded.seconds_per_frame,
                                        self.options.decoder, self.model_name, self.lm, scores.tolist(),
                                        "calibrated" if calibrated else "raw", self.hotwords)

    @staticmethod
    def _guard(item: AudioItem, work) -> Transcript | Failure:
        """Run `work`; an unreadable file becomes its Failure instead of an exception."""
        try:
            return work()
        except AudioError as e:
            return Failure.of(item, e)


def is_digital_silence(audio: np.ndarray) -> bool:
    """True if no sample of `audio` [num_samples] strays SILENCE_PEAK (-80 dBFS) or more from their mean."""
    return not len(audio) or float(np.abs(audio - audio.mean(dtype=np.float64)).max()) < SILENCE_PEAK


def _min_samples(loaded: AcousticModel) -> int:
    """The fewest samples for which `loaded` gives an output frame (its front end's receptive field)."""
    low, high = 1, SAMPLE_RATE  # every model here gives frames for 1 s of audio
    while low < high:
        mid = (low + high) // 2
        low, high = (low, mid) if loaded.frames(mid) > 0 else (mid + 1, high)
    return low


def _blocks(item: AudioItem) -> Iterable[np.ndarray]:
    """The item's audio as 16 kHz blocks: its in-memory samples cut as a file would be read, or its file streamed."""
    if item.audio is None:
        return stream_audio(item.file)
    step = int(BLOCK_SECONDS * SAMPLE_RATE)
    return [item.audio[start:start + step] for start in range(0, len(item.audio), step)]


def _concatenate(blocks: Iterable[np.ndarray]) -> np.ndarray:
    """All blocks of a stream as one float32 array [num_samples]."""
    parts = [b for b in blocks if len(b)]
    return np.concatenate(parts) if parts else np.zeros(0, dtype=np.float32)
