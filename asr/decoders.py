"""The front door of decoding: the decoders' names, their stored settings, the LM directory's layout, and
`build_decoder`.

    >>> decoder = build_decoder("flashlight", vocab, "runs/x/model")      # greedy | beam | flashlight
    >>> decoder.decode_batch([log_probs])[0].text                         # log_probs: [T, V] numpy
    >>> settings = load_decoder_settings("runs/x/model")                  # tuned values, else defaults

The implementations live in `asr.beam` (GreedyCTC, PyCTCDecodeBeam, FlashlightBeam) and know nothing of
directories: they take a vocabulary, a KenLM file and its words. What is on disk is this module's:

    DIR/alphabet.json                 pyctcdecode's labels (so `BeamSearchDecoderCTC.load_from_dir(DIR)` works)
    DIR/language_model/attrs.json     pyctcdecode's alpha, beta, ... (tuning rewrites alpha and beta)
    DIR/language_model/unigrams.txt   the LM's words
    DIR/language_model/lm.bin|.arpa   the KenLM model
    DIR/lm_info.json                  how `lm.build_lm` made it (order, sizes, held-out perplexity)
    DIR/decoder.json                  tuned settings of both beam decoders and where they came from

DIR is a model directory (the LM beside the model) or any folder `scripts/build_lm.py` wrote. `lm.build`
writes the first five files with the names below, `asr.tuning` the last one through `save_decoder_settings`.

A new decoder touches two files besides its test: its implementation (a class with `decode`/`decode_batch`,
e.g. in asr/beam.py) and this module (its name in DECODERS, its line in DESCRIPTIONS, its branch in
`build_decoder`, and its stored settings in DecoderSettings if it has any).
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field, fields, replace
from pathlib import Path
from typing import Any

from asr.beam import (
    LN10,
    CTCDecoder,
    FlashlightBeam,
    FlashlightOptions,
    GreedyCTC,
    PyCTCDecodeBeam,
    PyCTCDecodeOptions,
    hotword_words,
    spellable_words,
)
from asr.constants import WORD_DELIMITER
from asr.defaults import BEAM_DECODERS, DECODERS
from asr.files import write_text_atomic
from asr.text import load_vocab

DESCRIPTIONS = {  # what each one is, for plots and cards
    "greedy": "greedy CTC (best token per frame)",
    "beam": "pyctcdecode beam search + KenLM",
    "flashlight": "flashlight-text lexicon beam search + KenLM",
}

# The LM directory (pyctcdecode's save_to_dir layout, whose own constants are private, plus ours).
ALPHABET_FILE = "alphabet.json"
LM_SUBDIR = "language_model"
ATTRS_FILE = "attrs.json"
UNIGRAMS_FILE = "unigrams.txt"
KENLM_SUFFIXES = (".bin", ".binary", ".arpa")  # what pyctcdecode accepts as the KenLM file
INFO_FILE = "lm_info.json"
DECODER_FILE = "decoder.json"
LM_SPECIAL_WORDS = frozenset({"<s>", "</s>", "<unk>"})  # KenLM vocabulary entries that are not words


# ------------------------------------------------------------------------------------------ reading
@dataclass(frozen=True)
class LMFiles:
    """Where the KenLM file of an LM directory is, and the LM's words."""

    kenlm_path: Path
    unigrams: tuple[str, ...]  # the LM's words, without <s>, </s>, <unk>


def load_lm_files(directory: str | os.PathLike) -> LMFiles:
    """Find the KenLM file and unigram list of an LM directory.

    Args:
        directory: A directory holding `language_model/` (a model dir or `lm.build_lm`'s output), or
            the `language_model/` directory itself.

    Returns:
        The KenLM path and the words of `unigrams.txt`.
    """
    directory = Path(directory)
    lm_dir = directory / LM_SUBDIR if (directory / LM_SUBDIR).is_dir() else directory
    candidates = sorted(p for p in lm_dir.glob("*") if p.suffix in KENLM_SUFFIXES and not p.name.startswith("."))
    if len(candidates) != 1:
        raise FileNotFoundError(f"Expected one KenLM file ({'/'.join(KENLM_SUFFIXES)}) in {str(lm_dir)!r}, found "
                                f"{[p.name for p in candidates]}; build the LM with scripts/build_lm.py.")
    unigrams_path = lm_dir / UNIGRAMS_FILE
    if not unigrams_path.is_file():
        raise FileNotFoundError(f"No {UNIGRAMS_FILE} in {str(lm_dir)!r}; a binary LM needs its word list: rebuild "
                                "the LM with scripts/build_lm.py.")
    words = unigrams_path.read_text(encoding="utf-8").split()
    return LMFiles(kenlm_path=candidates[0], unigrams=tuple(w for w in words if w not in LM_SPECIAL_WORDS))


def has_lm(directory: str | os.PathLike) -> bool:
    """Whether `directory` holds a KenLM LM in `lm.build_lm`'s layout."""
    try:
        load_lm_files(directory)
    except FileNotFoundError:
        return False
    return (Path(directory) / LM_SUBDIR).is_dir()


def find_lm(model_dir: str | os.PathLike, lm_dir: str | os.PathLike | None, needed: bool) -> Path | None:
    """The LM directory to decode with: `lm_dir` if given, else the model directory when it holds an LM.

    Raises:
        ValueError: `needed` (a beam decoder or tuning asked for) and there is none; the message names the fix.
    """
    lm = Path(lm_dir) if lm_dir is not None else (Path(model_dir) if has_lm(model_dir) else None)
    if needed and (lm is None or not has_lm(lm)):
        where = f"{lm_dir}" if lm_dir is not None else f"the model directory {model_dir}"
        raise ValueError(f"no KenLM language model in {where} for the beam decoders; build one with "
                         f"`python scripts/build_lm.py --model {model_dir} --text LM_TEXT.txt`, pass --lm DIR, "
                         "or use --decoder greedy")
    return lm


def check_lm_fits(lm_dir: str | os.PathLike, vocab: Mapping[str, int], hotwords: Iterable[str] = ()) -> None:
    """Refuses (ValueError, one line) an LM directory whose words the model cannot spell, or such hotwords; reads
    only the LM's word list.

    The decoders check this too, but only once the KenLM file is loaded: callers that run a model
    first (eval) check here, before any work.
    """
    hotword_words(hotwords, vocab)
    files = load_lm_files(lm_dir)
    if WORD_DELIMITER not in files.unigrams:  # a token LM spells with the tokens themselves
        spellable_words(files.unigrams, vocab, str(files.kenlm_path))


def load_lm_info(directory: str | os.PathLike) -> dict[str, Any]:
    """The `lm_info.json` that `lm.build_lm` wrote into `directory`, as a dict."""
    path = Path(directory) / INFO_FILE
    if not path.is_file():
        raise FileNotFoundError(f"No {INFO_FILE} in {str(directory)!r}; build the LM with scripts/build_lm.py.")
    return json.loads(path.read_text(encoding="utf-8"))


@dataclass(frozen=True)
class DecoderSettings:
    """Search settings of both beam decoders, as stored in an LM directory."""

    pyctcdecode: PyCTCDecodeOptions = field(default_factory=PyCTCDecodeOptions)
    flashlight: FlashlightOptions = field(default_factory=FlashlightOptions)

    def with_overrides(self, **values: Any) -> DecoderSettings:
        """These settings with each given option replaced in the decoder that has it; None values are skipped.

        Raises:
            TypeError: An option neither decoder has.
        """
        given = {k: v for k, v in values.items() if v is not None}
        py_names = {f.name for f in fields(PyCTCDecodeOptions)}
        fl_names = {f.name for f in fields(FlashlightOptions)}
        unknown = set(given) - py_names - fl_names
        if unknown:
            raise TypeError(f"no decoder has the option(s) {sorted(unknown)}")
        return DecoderSettings(replace(self.pyctcdecode, **{k: v for k, v in given.items() if k in py_names}),
                               replace(self.flashlight, **{k: v for k, v in given.items() if k in fl_names}))


def load_decoder_settings(lm_dir: str | os.PathLike | None) -> DecoderSettings:
    """Decoder settings stored in an LM directory: attrs.json (alpha, beta) and decoder.json (tuned values).

    Missing files fall back to the asr.beam defaults; flashlight without decoder.json follows
    attrs.json (`lm_weight = alpha * ln 10`, `word_score = beta`).
    """
    if lm_dir is None:
        return DecoderSettings()
    lm_dir = Path(lm_dir)
    attrs = read_json(lm_dir / LM_SUBDIR / ATTRS_FILE)
    tuned = read_json(lm_dir / DECODER_FILE)
    py = tuned.get("pyctcdecode", {})
    pyctc = PyCTCDecodeOptions(
        alpha=float(attrs.get("alpha", py.get("alpha", PyCTCDecodeOptions.alpha))),
        beta=float(attrs.get("beta", py.get("beta", PyCTCDecodeOptions.beta))),
        unk_score_offset=float(attrs.get("unk_score_offset", PyCTCDecodeOptions.unk_score_offset)),
        score_boundary=bool(attrs.get("score_boundary", PyCTCDecodeOptions.score_boundary)),
        beam_width=int(py.get("beam_width", PyCTCDecodeOptions.beam_width)))
    fl = tuned.get("flashlight", {})
    flashlight = FlashlightOptions(
        lm_weight=float(fl.get("lm_weight", pyctc.alpha * LN10)),
        word_score=float(fl.get("word_score", pyctc.beta)),
        beam_size=int(fl.get("beam_size", FlashlightOptions.beam_size)))
    return DecoderSettings(pyctc, flashlight)


def read_json(path: Path) -> dict[str, Any]:
    """A JSON object from `path`, or {} when the file is absent."""
    return json.loads(path.read_text(encoding="utf-8")) if path.is_file() else {}


# ------------------------------------------------------------------------------------------ writing
def save_decoder_settings(lm_dir: str | os.PathLike, updates: Mapping[str, Mapping[str, Any]],
                          tuned: Mapping[str, Any]) -> Path:
    """Store tuned values in an LM directory so later decodes use them by default.

    Args:
        lm_dir: The LM directory.
        updates: Decoder -> its new values ("pyctcdecode": alpha, beta, beam_width; "flashlight": lm_weight,
            word_score, beam_size); a decoder left out keeps its stored values. pyctcdecode's alpha and beta
            also go into `language_model/attrs.json` (pyctcdecode's format, other keys untouched), so that
            `BeamSearchDecoderCTC.load_from_dir` decodes with them too.
        tuned: Where the values came from (data, grid, error rates, date), stored under "tuned".

    Returns:
        The path of decoder.json.
    """
    lm_dir = Path(lm_dir)
    stored = read_json(lm_dir / DECODER_FILE)
    for decoder, values in updates.items():
        stored[decoder] = dict(values)
    if "pyctcdecode" in updates:
        attrs_path = lm_dir / LM_SUBDIR / ATTRS_FILE
        attrs = read_json(attrs_path)
        attrs.update(alpha=updates["pyctcdecode"]["alpha"], beta=updates["pyctcdecode"]["beta"])
        write_text_atomic(attrs_path, json.dumps(attrs) + "\n")
    stored["tuned"] = dict(tuned)
    path = lm_dir / DECODER_FILE
    write_text_atomic(path, json.dumps(stored, indent=1) + "\n")
    return path


# ------------------------------------------------------------------------------------------ building
def build_decoder(name: str, vocab: Mapping[str, int] | None, lm_dir: str | os.PathLike | None,
                  settings: DecoderSettings | PyCTCDecodeOptions | FlashlightOptions | None = None) -> CTCDecoder:
    """A decoder by name: greedy, beam (pyctcdecode) or flashlight.

    Args:
        name: One of DECODERS.
        vocab: Token -> id of the model; None reads `lm_dir`'s vocab.json (a model directory).
        lm_dir: The LM directory (beam decoders).
        settings: Both beam decoders' settings, or the options of the one asked for; None: the defaults
            (not what `lm_dir` stores: pass `load_decoder_settings(lm_dir)` for those).
    """
    if name not in DECODERS:
        raise ValueError(f"Decoder {name!r} is unknown; use one of {', '.join(DECODERS)}.")
    if isinstance(settings, PyCTCDecodeOptions):
        settings = DecoderSettings(pyctcdecode=settings)
    elif isinstance(settings, FlashlightOptions):
        settings = DecoderSettings(flashlight=settings)
    settings = settings or DecoderSettings()
    if vocab is None:
        if lm_dir is None:
            raise ValueError("build_decoder needs the vocabulary, or a model directory holding vocab.json.")
        vocab = load_vocab(lm_dir)
    if name == "greedy":
        return GreedyCTC(vocab)
    try:  # what has_lm checks, reading the word list once
        files = load_lm_files(lm_dir) if lm_dir is not None and (Path(lm_dir) / LM_SUBDIR).is_dir() else None
    except FileNotFoundError:
        files = None
    if files is None:
        raise FileNotFoundError(f"The {name} decoder needs a KenLM directory but {str(lm_dir)!r} has none; build one "
                                "with `python scripts/build_lm.py --model MODEL_DIR --text LM_TEXT` or pass --lm DIR.")
    if name == "beam":
        return PyCTCDecodeBeam(vocab, files.kenlm_path, files.unigrams, settings.pyctcdecode)
    return FlashlightBeam(vocab, files.kenlm_path, files.unigrams, settings.flashlight)


def describe_settings(name: str, settings: DecoderSettings) -> str:
    """`alpha=0.5 beta=1 beam=100` for a table row."""
    if name == "beam":
        o = settings.pyctcdecode
        text = f"alpha={o.alpha:g} beta={o.beta:g} beam={o.beam_width}"
        return text + (f" hotwords={len(o.hotwords)}" if o.hotwords else "")
    if name == "flashlight":
        o = settings.flashlight
        lexicon = "lexicon-free" if o.lexicon_free else "lexicon"
        text = f"lm_weight={o.lm_weight:.3g} word_score={o.word_score:g} beam={o.beam_size} {lexicon}"
        return text + (f" hotwords={len(o.hotwords)}" if o.hotwords else "")
    return ""
