"""One-call transcription from Python: a model directory in, text and word times in seconds out.

    >>> from asr import Recognizer
    >>> recognizer = Recognizer.from_pretrained("runs/tiny/model")       # or backend="onnx" on an export
    >>> result = recognizer.transcribe("meeting.wav", decoder="beam")    # beam/flashlight need the LM dir
    >>> result.text, [(w.word, w.start, w.end) for w in result.words]
    >>> recognizer.transcribe([audio_8k, "b.flac"], sample_rate=8000)   # a list: batched, results in order

It runs exactly what `scripts/transcribe.py` runs (`asr.transcribe.Transcriber`): the same model
loading, decoders with the LM directory's (tuned) settings, duration batching, chunking of long inputs
and digital-silence gate, so a file gives the same transcript here as in the script's transcripts.jsonl.
"""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any, Union

import numpy as np
import soxr

from asr.beam import CTCDecoder
from asr.confidence import load_calibrations
from asr.constants import SAMPLE_RATE
from asr.decoders import BEAM_DECODERS, DECODERS, build_decoder, has_lm, load_decoder_settings
from asr.inference import AcousticModel, load_acoustic_model
from asr.transcribe import AudioItem, Failure, Transcript, TranscribeOptions, Transcriber, plan_work, \
    probe_durations

AudioInput = Union[str, os.PathLike, np.ndarray]  # a file, or mono float samples
ARRAY_INPUT = "<array>"  # the `input` of a transcript of in-memory audio; its `path` is "<array N>"


def make_decoder(name: str, lm: str | os.PathLike | None, vocab: Mapping[str, int], **overrides: Any) -> CTCDecoder:
    """The decoder called `name` over the model's vocabulary, with the LM directory's settings (its
    attrs.json alpha/beta and what `eval.py --tune` stored in decoder.json), as eval.py decodes; `overrides`
    (e.g. hotwords, hotword_weight; None values skipped) replace them, see `DecoderSettings.with_overrides`."""
    if name == "greedy":
        if any(v is not None and v != () for v in overrides.values()):
            raise ValueError(f"greedy decoding has no options ({', '.join(sorted(overrides))} given); use the beam "
                             "or flashlight decoder.")
        return build_decoder(name, vocab, lm)
    return build_decoder(name, vocab, lm, load_decoder_settings(lm).with_overrides(**overrides))


class Recognizer:
    """A loaded model that transcribes files and arrays, with any of the decoders.

    Args:
        model: The acoustic model (asr.inference.load_acoustic_model).
        lm: The KenLM directory for the beam decoders (scripts/build_lm.py), or None.
        options: Chunking and batching (`decoder` and `formats` are ignored: the decoder is chosen per call).
    """

    def __init__(self, model: AcousticModel, lm: str | os.PathLike | None = None,
                 options: TranscribeOptions | None = None) -> None:
        self.model = model
        self.lm = Path(lm).resolve() if lm is not None else None
        self.options = options or TranscribeOptions()
        self._transcribers: dict[tuple, Transcriber] = {}  # by (decoder, hotwords, hotword_weight)

    @classmethod
    def from_pretrained(cls, path: str | os.PathLike, *, backend: str = "torch", lm: str | os.PathLike | None = None,
                        device: str = "cpu", **options: Any) -> Recognizer:
        """Load a model directory (a training run's model/, or scripts/export.py's output with backend="onnx").

        Args:
            path: The model directory.
            backend: "torch" or "onnx".
            lm: The LM directory for decoder="beam"/"flashlight"; default: `path`, when it holds one.
            device: Where the PyTorch model runs.
            **options: `asr.transcribe.TranscribeOptions` fields: chunk_seconds, overlap_seconds,
                segmenter (silero, webrtc, energy or grid), max_batch_seconds (defaults as in
                scripts/transcribe.py).

        Raises:
            ValueError: Not a model directory for `backend`, or an unknown option.
        """
        known = {f.name for f in dataclasses.fields(TranscribeOptions)} - {"decoder", "formats", "in_place"}
        unknown = sorted(set(options) - known)
        if unknown:
            raise ValueError(f"Recognizer.from_pretrained got unknown option(s) {unknown}; use {sorted(known)}.")
        model = load_acoustic_model(path, backend, device)
        if lm is None and has_lm(path):
            lm = path
        return cls(model, lm, TranscribeOptions(**options))

    def transcribe(self, audio: AudioInput | Sequence[AudioInput], decoder: str = "greedy",
                   sample_rate: int | None = None, hotwords: Sequence[str] = (),
                   hotword_weight: float | None = None) -> Transcript | list[Transcript]:
        """Transcribe one input, or a list of them batched together.

        Args:
            audio: An audio file path (any format and rate scripts/transcribe.py reads), a mono float
                array [num_samples] (16 kHz unless `sample_rate` says otherwise), or a list of these.
            decoder: "greedy", "beam" (pyctcdecode + KenLM) or "flashlight" (flashlight-text + KenLM).
            sample_rate: The rate of the arrays given; they are resampled to 16 kHz (files carry their own).
            hotwords: Words or phrases to boost (beam decoders; flashlight boosts a phrase word by word), spelled
                as the model's transcripts are (normalised); they may be outside the LM.
            hotword_weight: Score added per hotword in a transcript; None: the decoders' default (10).

        Returns:
            A Transcript (`.text`, `.words` with `.start`/`.end` in seconds, `.duration`) per input: one,
            or a list in input order.

        Raises:
            ValueError: A bad decoder or array, a beam decoder without an LM, hotwords with greedy decoding or
                that the model cannot spell, or an input that cannot be transcribed (unreadable, or too short
                for one output frame); the message says which.
        """
        single = isinstance(audio, (str, os.PathLike, np.ndarray))
        inputs = [audio] if single else list(audio)
        hotwords = (hotwords,) if isinstance(hotwords, str) else tuple(hotwords)  # one word, not its letters
        transcriber = self._transcriber(decoder, hotwords, hotword_weight)
        items = [self._item(i, x, sample_rate) for i, x in enumerate(inputs)]
        durations = probe_durations(items)
        for item, duration in zip(items, durations):
            if isinstance(duration, Failure):
                raise _error(duration)
        results: dict[int, Transcript] = {}
        for unit in plan_work(durations, self.options):
            for item, result in transcriber.transcribe([items[i] for i in unit.items], unit.chunked):
                if isinstance(result, Failure):
                    raise _error(result)
                results[item.index] = result
        ordered = [results[i] for i in range(len(items))]
        return ordered[0] if single else ordered

    def _transcriber(self, decoder: str, hotwords: tuple[str, ...], hotword_weight: float | None) -> Transcriber:
        """The Transcriber for `decoder` and these hotwords, built on first use (a beam decoder loads its LM once
        per hotword list)."""
        if decoder not in DECODERS:
            raise ValueError(f"decoder={decoder!r} is unknown; use one of {', '.join(DECODERS)}.")
        key = (decoder, hotwords, hotword_weight)
        if key not in self._transcribers:
            if decoder in BEAM_DECODERS and (self.lm is None or not has_lm(self.lm)):
                where = self.lm or self.model.path
                raise ValueError(f"decoder={decoder!r} needs a KenLM language model but {str(where)!r} has none; build "
                                 f"one into the model directory with `python scripts/build_lm.py --model "
                                 f"{self.model.path} --text LM_TEXT.txt`, pass lm=DIR, or use decoder='greedy'.")
            lm = self.lm if decoder in BEAM_DECODERS else None
            options = dataclasses.replace(self.options, decoder=decoder, formats=())
            made = make_decoder(decoder, lm, self.model.vocab, hotwords=hotwords, hotword_weight=hotword_weight)
            self._transcribers[key] = Transcriber(self.model, made, options, lm=str(lm) if lm else None,
                                                  calibration=load_calibrations(self.model.path).get(decoder))
        return self._transcribers[key]

    @staticmethod
    def _item(index: int, audio: AudioInput, sample_rate: int | None) -> AudioItem:
        """The AudioItem of one input: a file, or checked (and resampled) samples."""
        if not isinstance(audio, np.ndarray):
            file = Path(audio)
            if file.is_dir():
                raise ValueError(f"{str(audio)!r} is a directory; give audio files or arrays (scripts/transcribe.py "
                                 "transcribes directories).")
            return AudioItem(index, str(file.absolute().parent), file.name, file)
        return AudioItem(index, ARRAY_INPUT, f"<array {index}>", Path(ARRAY_INPUT), _checked_array(audio, sample_rate))


def _checked_array(audio: np.ndarray, sample_rate: int | None) -> np.ndarray:
    """`audio` as float32 [num_samples] at 16 kHz; one sentence on what is wrong otherwise."""
    if audio.ndim != 1:
        raise ValueError(f"An audio array must be mono, of shape [num_samples]; got shape {audio.shape}. Average "
                         "the channels first (audio.mean(axis=1) for [num_samples, channels]).")
    if not np.issubdtype(audio.dtype, np.floating):
        raise ValueError(f"An audio array must hold floats in [-1, 1]; got dtype {audio.dtype}. Scale integer "
                         "samples first (int16: audio / 32768).")
    if not np.isfinite(audio).all():
        raise ValueError("The audio array contains NaN or infinite samples.")
    audio = np.ascontiguousarray(audio, dtype=np.float32)
    if sample_rate is not None and sample_rate != SAMPLE_RATE:
        if sample_rate <= 0:
            raise ValueError(f"sample_rate is {sample_rate}; give the array's rate in Hz.")
        audio = soxr.resample(audio, sample_rate, SAMPLE_RATE, quality="HQ")  # as asr.audio resamples files
    return audio


def _error(failure: Failure) -> ValueError:
    """The exception for an input that cannot be transcribed."""
    name = failure.path if failure.input == ARRAY_INPUT else str(Path(failure.input) / failure.path)
    return ValueError(f"{name} cannot be transcribed ({failure.reason}): {failure.error}")
