"""Build KenLM n-gram language models for CTC beam search, normalised exactly like the model's labels.

    $ .venv/bin/python scripts/build_lm.py --model runs/x/final --text data/synth/lm.txt --heldout-fraction 0.02

Pipeline: text -> the model's `TextNormalizer` -> check against the model's vocabulary (characters
it cannot emit are reported; their sentences dropped or kept) -> one sentence per line, deduplicated
-> `lmplz` (ARPA) -> `build_binary` -> pyctcdecode's `save_to_dir` layout, beside the model or
standalone:

    DIR/alphabet.json                  labels in token-id order ([PAD] -> "", "|" -> " ", [UNK] -> "⁇")
    DIR/language_model/attrs.json      alpha, beta, unk_score_offset, score_boundary (pyctcdecode)
    DIR/language_model/lm.bin          KenLM binary (or lm.arpa)
    DIR/language_model/unigrams.txt    the LM's words, one a line (pyctcdecode cannot read them from a binary)
    DIR/lm_info.json                   how it was built: corpus report, n-gram counts, size, held-out perplexity

`language_model/` must hold exactly those three files (pyctcdecode refuses anything else), so the
build report sits one level up. With the model's files in DIR too, `Wav2Vec2ProcessorWithLM` and
`BeamSearchDecoderCTC.load_from_dir` load DIR as is.

`lmplz` and `build_binary` are found in $ASR_KENLM_BIN, then on PATH, then in tools/kenlm/bin (where
scripts/setup.sh builds them); `LMBuildOptions.kenlm_bin` (--kenlm-bin) looks only in its directory.
Built into a model directory (one with the processor files), the LM becomes part of the model for
Hugging Face users: the processor files name `Wav2Vec2ProcessorWithLM`, so `pipeline(...)` decodes
with it, and the model card is rewritten to describe it (`asr.model_card`).
"""

from __future__ import annotations

import json
import logging
import os
import random
import re
import shutil
import subprocess
import tempfile
import time
import unicodedata
from collections import Counter
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Literal

from asr.beam import (
    PyCTCDecodeOptions,
    pyctcdecode_labels,
    read_arpa_unigrams,
)
from asr.constants import PAD, UNK, WORD_DELIMITER
from asr.decoders import ALPHABET_FILE, ATTRS_FILE, INFO_FILE, LM_SUBDIR, UNIGRAMS_FILE
from asr.files import replace_dir
from asr.text import PROCESSOR_FILE, TextNormalizer, declare_processor_class


logger = logging.getLogger(__name__)

KENLM_BIN_DIR = Path(__file__).resolve().parents[1] / "tools" / "kenlm" / "bin"  # where scripts/setup.sh builds them
KENLM_BIN_ENV = "ASR_KENLM_BIN"  # a directory holding lmplz and build_binary, looked in before PATH
KENLM_MAX_ORDER = 6  # the kenlm module and build_binary are compiled with KenLM's default maximum order
_SETUP_HINT = (f"put KenLM's bin directory on PATH, set {KENLM_BIN_ENV} to it, or run `bash scripts/setup.sh` to "
               "build it into tools/kenlm/bin")
_MEMORY_RE = re.compile(r"^\d+(\.\d+)?[%bKMGTPEZY]?$")  # lmplz/build_binary -S syntax, as GNU sort's
_EXAMPLE_CHARS = 80  # example sentences in reports are cut to this length
_TOOL_LOG_LINES = 15  # tail of a failing tool's output quoted in the error


@dataclass(frozen=True)
class LMBuildOptions:
    """How the LM is built; every default with its reason."""

    order: int = 4  # n-gram order; 4-5 suits a few MB of text, 3 a few thousand sentences; 6 for unit="token"
    unit: Literal["word", "token"] = "word"  # "token": n-grams of "t h e | c a t", for lexicon-free decoding
    prune: tuple[int, ...] = ()  # lmplz --prune counts per order, non-decreasing, e.g. (0, 0, 1); () keeps all
    dedupe: bool = True  # repeated sentences skew Kneser-Ney discounts (lmplz's own advice); False keeps frequencies
    drop_unemittable: bool = True  # a sentence with characters the model cannot emit teaches words it can never output
    binary: bool = True  # build_binary: loads in milliseconds instead of parsing text; False keeps the ARPA
    binary_type: Literal["probing", "trie"] = "probing"  # probing is fastest to query, trie about 3x smaller
    quantize_bits: int | None = None  # trie only: quantise probabilities/backoffs to this many bits (e.g. 8)
    discount_fallback: bool | None = None  # None: retry with --discount_fallback only if lmplz fails (small corpora)
    memory: str = "1G"  # lmplz/build_binary -S; their default, 80% of RAM, starves everything else on the machine
    temp_dir: str | None = None  # lmplz/build_binary -T and the corpus file; None: a hidden folder in the output dir
    heldout_fraction: float = 0.0  # share of the sentences kept out of training to measure perplexity
    seed: int = 0  # which sentences are held out
    kenlm_bin: str | None = None  # directory with lmplz/build_binary; None: $ASR_KENLM_BIN, PATH, tools/kenlm/bin

    def __post_init__(self) -> None:
        if not 1 <= self.order <= KENLM_MAX_ORDER:
            raise ValueError(f"LMBuildOptions.order is {self.order}; use 1..{KENLM_MAX_ORDER} (KenLM's compiled "
                             "maximum order).")
        prune = tuple(int(p) for p in self.prune)
        if len(prune) > self.order or any(p < 0 for p in prune) or list(prune) != sorted(prune):
            raise ValueError(f"LMBuildOptions.prune is {prune}; give at most {self.order} non-negative, "
                             "non-decreasing counts, e.g. (0, 0, 1) to drop singleton trigrams and above.")
        object.__setattr__(self, "prune", prune)
        if self.unit not in ("word", "token"):
            raise ValueError(f"LMBuildOptions.unit is {self.unit!r}; use 'word' or 'token'.")
        if self.binary_type not in ("probing", "trie"):
            raise ValueError(f"LMBuildOptions.binary_type is {self.binary_type!r}; use 'probing' or 'trie'.")
        if self.quantize_bits is not None and (self.binary_type != "trie" or not 1 <= self.quantize_bits <= 25):
            raise ValueError(f"LMBuildOptions.quantize_bits is {self.quantize_bits} with binary_type "
                             f"{self.binary_type!r}; quantisation needs binary_type='trie' and 1..25 bits.")
        if not _MEMORY_RE.match(self.memory):
            raise ValueError(f"LMBuildOptions.memory is {self.memory!r}; write it like GNU sort's -S, e.g. '1G', "
                             "'500M' or '20%'.")
        if not 0.0 <= self.heldout_fraction < 1.0:
            raise ValueError(f"LMBuildOptions.heldout_fraction is {self.heldout_fraction}; use 0 <= f < 1.")


@dataclass(frozen=True)
class UnemittableChar:
    """A character of the LM text that the model's vocabulary has no token for."""

    char: str
    name: str  # Unicode name, so invisible or look-alike characters can be told apart
    count: int  # occurrences in the normalised text
    example: str  # the first sentence containing it (cut to 80 characters)


@dataclass(frozen=True)
class CorpusReport:
    """What happened to the LM text on its way to lmplz."""

    num_input: int  # texts read (lines, transcripts)
    num_empty: int  # empty after normalisation, dropped
    num_duplicates: int  # repeats of an earlier sentence, dropped when deduplicating
    num_unemittable: int  # sentences with characters the model cannot emit
    unemittable_dropped: bool  # whether those sentences were dropped (else kept)
    unemittable_chars: tuple[UnemittableChar, ...]  # most frequent first
    num_sentences: int  # sentences left (before any held-out split)
    num_words: int
    num_distinct_words: int

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready dict."""
        data = asdict(self)
        data["unemittable_chars"] = [asdict(c) for c in self.unemittable_chars]
        return data


@dataclass(frozen=True)
class HeldoutReport:
    """How well the LM predicts text it was not trained on."""

    num_sentences: int
    num_words: int
    perplexity: float  # per word (per token for a token LM), </s> included, unknown words scored as <unk>
    oov_rate: float  # share of held-out words (tokens) the LM has never seen


@dataclass(frozen=True)
class LMInfo:
    """The build report, also written to `lm_info.json`."""

    directory: str
    kenlm_file: str  # relative to `directory`
    format: str  # "arpa", "probing" or "trie"
    unit: str  # "word" or "token"
    order: int
    size_bytes: int
    ngram_counts: dict[int, int]  # order -> n-grams in the model
    num_unigrams: int  # words (tokens), without <s>, </s>, <unk>
    num_train_sentences: int
    discount_fallback: bool  # whether lmplz needed --discount_fallback
    corpus: CorpusReport
    heldout: HeldoutReport | None
    normalizer: dict[str, Any]
    vocab_size: int | None  # None when built without the model's vocabulary
    options: dict[str, Any]
    seconds: float
    lmplz_command: list[str] = field(default_factory=list)

    @property
    def kenlm_path(self) -> Path:
        """Absolute path of the KenLM file."""
        return Path(self.directory) / self.kenlm_file

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready dict."""
        data = asdict(self)
        data["corpus"] = self.corpus.to_dict()
        data["ngram_counts"] = {str(k): v for k, v in self.ngram_counts.items()}
        return data


# ------------------------------------------------------------------------------------------ tools
class KenLMNotFoundError(RuntimeError):
    """A KenLM program is in none of the places looked in; the message names them and how to fix it."""


def find_kenlm_tool(name: str, bin_dir: str | os.PathLike | None = None) -> Path:
    """Path of a KenLM program (`lmplz`, `build_binary`).

    Args:
        name: Program name.
        bin_dir: Look only here; None looks in $ASR_KENLM_BIN (when set), on PATH, then in
            tools/kenlm/bin of this repository (scripts/setup.sh's build).

    Raises:
        KenLMNotFoundError: The program is not found; the one-line message names every place looked in.
    """
    if bin_dir is not None:
        candidates = [Path(bin_dir) / name]
    else:
        env_dir = os.environ.get(KENLM_BIN_ENV)
        on_path = shutil.which(name)
        candidates = ([Path(env_dir) / name] if env_dir else []) + ([Path(on_path)] if on_path else []) \
            + [KENLM_BIN_DIR / name]
    for candidate in candidates:
        if candidate.is_file() and os.access(candidate, os.X_OK):
            return candidate
    if bin_dir is not None:
        raise KenLMNotFoundError(f"KenLM's {name} was not found in {bin_dir} (the kenlm_bin given); pass the "
                                 f"directory that holds it, or leave kenlm_bin unset and {_SETUP_HINT}.")
    env_value = os.environ.get(KENLM_BIN_ENV)
    env_text = f"{KENLM_BIN_ENV}={env_value}" if env_value else f"{KENLM_BIN_ENV} (unset)"
    raise KenLMNotFoundError(f"KenLM's {name} was not found on PATH, in {env_text} or in {KENLM_BIN_DIR}; "
                             f"{_SETUP_HINT}.")


@dataclass(frozen=True)
class _ToolRun:
    """Exit code and merged stdout/stderr of a KenLM program."""

    returncode: int
    output: str


def _run_tool(argv: list[str], what: str) -> _ToolRun:
    """Run a KenLM program, logging its command and its stage lines ("=== 2/5 ... ===") as progress."""
    logger.info("%s: %s", what, " ".join(argv))
    lines = []
    try:
        with subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                              errors="replace") as proc:
            for line in proc.stdout:
                lines.append(line)
                if line.startswith("==="):
                    logger.info("%s %s", what, line.strip().strip("= "))
    except OSError as e:
        raise RuntimeError(f"Could not start {argv[0]} ({e}); {_SETUP_HINT}.") from e
    return _ToolRun(proc.returncode, "".join(lines))


def _tool_error(run: _ToolRun, what: str, fix: str) -> RuntimeError:
    """A RuntimeError quoting the tail of a failed tool's output."""
    lines = [line for line in run.output.strip().splitlines() if not line.startswith(("----", "****"))]
    tail = "\n".join(lines[-_TOOL_LOG_LINES:])
    return RuntimeError(f"{what} failed with exit code {run.returncode}; {fix}. Its output ends:\n{tail}")


# ------------------------------------------------------------------------------------------- text
def read_text_files(paths: Iterable[str | os.PathLike], encoding: str = "utf-8") -> Iterator[str]:
    """Lines of text files (one sentence per line is best: each line becomes one LM sentence).

    Decoding is strict: a byte sequence that is not `encoding` stops the read with its file, line and
    byte offset, instead of becoming replacement characters (mangled words in the LM).

    Raises:
        ValueError: a file is missing, or is not `encoding` text (or `encoding` is unknown).
    """
    try:
        ascii_compatible = "\n".encode(encoding) == b"\n"  # not UTF-16/32: those need the text layer
    except LookupError as e:
        raise ValueError(f"Text encoding {encoding!r} is unknown; use a Python codec name such as utf-8 or "
                         "latin-1.") from e
    for path in paths:
        path = Path(path)
        if not path.is_file():
            raise ValueError(f"Text file {str(path)!r} does not exist; pass files with one sentence per line.")
        yield from (_ascii_compatible_lines if ascii_compatible else _other_lines)(path, encoding)


def _ascii_compatible_lines(path: Path, encoding: str) -> Iterator[str]:
    """Lines of a file in an encoding where b"\\n" is the newline (UTF-8, Latin-1, ...), split on the bytes."""
    offset = 0
    with open(path, "rb") as f:
        for number, raw in enumerate(f, 1):
            try:
                line = raw.decode(encoding)
            except UnicodeDecodeError as e:
                raise ValueError(f"{path}:{number}: byte {offset + e.start} of the file (0x{raw[e.start]:02x}, "
                                 f"column {e.start + 1} of the line's bytes) is not valid {encoding} text; convert "
                                 f"the file (e.g. `iconv -f LATIN1 -t UTF-8`) or pass --encoding") from e
            offset += len(raw)
            yield line.rstrip("\r\n")


def _other_lines(path: Path, encoding: str) -> Iterator[str]:
    """Lines of a file in an encoding such as UTF-16, decoded by Python's text layer (no byte offsets then)."""
    number = 0
    try:
        with open(path, encoding=encoding) as f:
            for number, line in enumerate(f, 1):
                yield line.rstrip("\n")
    except UnicodeError as e:  # UnicodeDecodeError, or UTF-16's missing byte-order mark
        raise ValueError(f"{path}: after line {number}, the text is not valid {encoding} ({getattr(e, 'reason', e)}); "
                         "convert the file or pass the right --encoding") from e


def emittable_chars(vocab: Mapping[str, int]) -> frozenset[str]:
    """Characters a CTC model with this vocabulary can output: single-character tokens, plus the space."""
    specials = {PAD, UNK, WORD_DELIMITER}
    return frozenset(t for t in vocab if len(t) == 1 and t not in specials) | {" "}


def prepare_corpus(
    texts: Iterable[str],
    normalizer: TextNormalizer,
    vocab: Mapping[str, int] | None = None,
    *,
    dedupe: bool = True,
    drop_unemittable: bool = True,
) -> tuple[list[str], CorpusReport]:
    """Normalise LM text like the model's labels and check it against the model's vocabulary.

    Args:
        texts: Raw sentences or transcripts.
        normalizer: The model's `TextNormalizer` (the same one applied to training labels).
        vocab: The model's token -> id map; None skips the character check.
        dedupe: Keep only the first occurrence of each normalised sentence.
        drop_unemittable: Drop sentences with characters the model cannot emit (else keep them).

    Returns:
        (sentences, report): normalised sentences in input order, and what was dropped and why. A
        warning lists the unemittable characters with counts.
    """
    allowed = emittable_chars(vocab) if vocab is not None else None
    sentences: list[str] = []
    seen: set[str] = set()
    char_counts: Counter[str] = Counter()
    examples: dict[str, str] = {}
    num_input = num_empty = num_duplicates = num_unemittable = 0
    for text in texts:
        num_input += 1
        sentence = normalizer(text)
        if not sentence:
            num_empty += 1
            continue
        if dedupe:
            if sentence in seen:
                num_duplicates += 1
                continue
            seen.add(sentence)
        if allowed is not None:
            bad = [c for c in sentence if c not in allowed]
            if bad:
                num_unemittable += 1
                char_counts.update(bad)
                for c in bad:
                    examples.setdefault(c, sentence[:_EXAMPLE_CHARS])
                if drop_unemittable:
                    continue
        sentences.append(sentence)
    words = Counter(w for s in sentences for w in s.split())
    report = CorpusReport(
        num_input=num_input, num_empty=num_empty, num_duplicates=num_duplicates,
        num_unemittable=num_unemittable, unemittable_dropped=drop_unemittable,
        unemittable_chars=tuple(
            UnemittableChar(char=c, name=unicodedata.name(c, f"U+{ord(c):04X}"), count=n, example=examples[c])
            for c, n in sorted(char_counts.items(), key=lambda item: (-item[1], item[0]))
        ),
        num_sentences=len(sentences), num_words=sum(words.values()), num_distinct_words=len(words),
    )
    if char_counts:
        shown = ", ".join(f"{c.char!r} {c.name} ({c.count})" for c in report.unemittable_chars[:10])
        logger.warning("%d sentences hold characters the model cannot emit: %s%s; %s. Map them with the "
                       "normaliser's replacements if they should count.", num_unemittable, shown,
                       ", ..." if len(char_counts) > 10 else "",
                       "they were dropped" if drop_unemittable else "they were kept")
    logger.info("LM text: %d read, %d empty after normalisation, %d duplicates, %d with unemittable characters "
                "(%s); %d sentences, %d words, %d distinct", num_input, num_empty, num_duplicates, num_unemittable,
                "dropped" if drop_unemittable else "kept", report.num_sentences, report.num_words,
                report.num_distinct_words)
    if not sentences:
        raise ValueError(f"No LM sentence is left of {num_input} texts after normalisation and checks (see the "
                         "log); pass text in the model's language, or keep_unemittable if its characters differ.")
    return sentences, report


def to_token_sentence(sentence: str) -> str:
    """A normalised sentence as space-separated CTC tokens, the word delimiter for each space: "t h e | c a t"."""
    return " ".join(WORD_DELIMITER if char == " " else char for char in sentence)


def split_heldout(sentences: Sequence[str], fraction: float, seed: int = 0) -> tuple[list[str], list[str]]:
    """(train, held out): a seeded random `fraction` of the sentences is held out, order otherwise kept."""
    count = int(round(len(sentences) * fraction))
    if fraction > 0 and count == 0:
        count = 1
    if count >= len(sentences):
        raise ValueError(f"Holding out {fraction} of {len(sentences)} sentences leaves nothing to train on; "
                         "use a smaller heldout_fraction or more text.")
    held = set(random.Random(seed).sample(range(len(sentences)), count))
    train = [s for i, s in enumerate(sentences) if i not in held]
    return train, [s for i, s in enumerate(sentences) if i in held]


# ---------------------------------------------------------------------------------------- KenLM
def run_lmplz(corpus: Path, arpa: Path, options: LMBuildOptions, temp_dir: Path) -> tuple[bool, list[str]]:
    """Estimate the ARPA model; returns (whether --discount_fallback was used, the command)."""
    argv = [str(find_kenlm_tool("lmplz", options.kenlm_bin)), "-o", str(options.order), "-S", options.memory,
            "-T", f"{temp_dir}{os.sep}", "--text", str(corpus), "--arpa", str(arpa),
            # <s>, </s>, <unk> inside a sentence would abort lmplz; they are markup, not words.
            "--skip_symbols"]
    if options.prune:
        argv += ["--prune", *map(str, options.prune)]
    # A few dozen token types leave no singleton unigrams, so Kneser-Ney discounts cannot be estimated.
    fallback = bool(options.discount_fallback) or (options.discount_fallback is None and options.unit == "token")
    proc = _run_tool(argv + (["--discount_fallback"] if fallback else []), "lmplz")
    if proc.returncode != 0 and not fallback and options.discount_fallback is None \
            and "--discount_fallback" in proc.output:
        # Small or repetitive corpora lack the singletons Kneser-Ney needs to estimate discounts.
        logger.warning("lmplz could not estimate Kneser-Ney discounts (corpus too small or repetitive); retrying "
                       "with --discount_fallback. More text gives a better LM.")
        fallback = True
        proc = _run_tool(argv + ["--discount_fallback"], "lmplz")
    if proc.returncode != 0:
        fix = ("pass discount_fallback=True (--discount-fallback) or use more text" if "--discount_fallback"
               in proc.output else "check the message below (memory -S, temp dir -T, pruning)")
        raise _tool_error(proc, "lmplz", fix)
    return fallback, argv + (["--discount_fallback"] if fallback else [])


def run_build_binary(arpa: Path, binary: Path, options: LMBuildOptions, temp_dir: Path) -> None:
    """Convert an ARPA file to KenLM's binary format."""
    argv = [str(find_kenlm_tool("build_binary", options.kenlm_bin)), "-S", options.memory,
            "-T", f"{temp_dir}{os.sep}"]
    if options.quantize_bits is not None:
        argv += ["-q", str(options.quantize_bits), "-b", str(options.quantize_bits)]
    argv += [options.binary_type, str(arpa), str(binary)]
    proc = _run_tool(argv, "build_binary")
    if proc.returncode != 0:
        raise _tool_error(proc, "build_binary", "check the message below (memory -S, disk space)")


def arpa_ngram_counts(path: str | os.PathLike) -> dict[int, int]:
    """Order -> n-gram count from an ARPA file's `\\data\\` header."""
    counts: dict[int, int] = {}
    with open(path, encoding="utf-8") as f:
        for line in f:
            line = line.strip()
            if line.startswith("ngram "):
                order, count = line[len("ngram "):].split("=")
                counts[int(order)] = int(count)
            elif line.startswith("\\1-grams:"):
                break
    return counts


def evaluate_heldout(kenlm_path: str | os.PathLike, sentences: Sequence[str]) -> HeldoutReport:
    """Per-word perplexity (with </s>) and OOV rate of normalised sentences under a KenLM model."""
    import kenlm

    model = kenlm.Model(str(kenlm_path))
    log10_total = 0.0
    num_tokens = num_words = num_oov = 0
    for sentence in sentences:
        words = sentence.split()
        log10_total += model.score(sentence, bos=True, eos=True)
        num_words += len(words)
        num_tokens += len(words) + 1  # </s> is predicted too
        num_oov += sum(w not in model for w in words)
    if num_tokens == 0:
        raise ValueError("No held-out words to measure perplexity on; pass non-empty held-out sentences.")
    return HeldoutReport(num_sentences=len(sentences), num_words=num_words,
                         perplexity=10.0 ** (-log10_total / num_tokens), oov_rate=num_oov / max(num_words, 1))


# --------------------------------------------------------------------------------------- building
def build_lm(
    texts: Iterable[str],
    out_dir: str | os.PathLike,
    *,
    normalizer: TextNormalizer | None = None,
    vocab: Mapping[str, int] | None = None,
    heldout: Iterable[str] | None = None,
    options: LMBuildOptions | None = None,
    decoder_options: PyCTCDecodeOptions | None = None,
) -> LMInfo:
    """Build a KenLM n-gram LM and write it in pyctcdecode's directory layout.

    Args:
        texts: Raw LM text: sentences, lines or transcripts (normalised here).
        out_dir: Directory to write into: the model's directory (one directory then holds model,
            processor and LM) or a standalone one. An existing `language_model/` there is replaced.
        normalizer: The model's normaliser; None uses `TextNormalizer()` defaults.
        vocab: The model's vocabulary: enables the character check and `alphabet.json`.
        heldout: Raw held-out text for perplexity; overrides `options.heldout_fraction`.
        options: Build options.
        decoder_options: alpha/beta/unk offset/boundary written to `attrs.json` for pyctcdecode.

    Returns:
        The build report (also written to `out_dir/lm_info.json`).

    Raises:
        ValueError: No usable text.
        RuntimeError: lmplz/build_binary are missing or fail.
    """
    options = options or LMBuildOptions()
    normalizer = normalizer or TextNormalizer()
    decoder_options = decoder_options or PyCTCDecodeOptions()
    out_dir = Path(out_dir)
    started = time.perf_counter()
    # Fail before reading the text when the tools are missing.
    find_kenlm_tool("lmplz", options.kenlm_bin)
    if options.binary:
        find_kenlm_tool("build_binary", options.kenlm_bin)

    sentences, report = prepare_corpus(texts, normalizer, vocab, dedupe=options.dedupe,
                                       drop_unemittable=options.drop_unemittable)
    if heldout is not None:
        heldout_sentences = [s for s in map(normalizer, heldout) if s]
        overlap = len(set(heldout_sentences) & set(sentences))
        if overlap:
            logger.warning("%d of %d held-out sentences are also in the LM text, so the perplexity is optimistic; "
                           "hold out text disjoint from the LM text.", overlap, len(heldout_sentences))
        train = sentences
    elif options.heldout_fraction > 0:
        train, heldout_sentences = split_heldout(sentences, options.heldout_fraction, options.seed)
    else:
        train, heldout_sentences = sentences, []
    if options.unit == "token":
        if options.order < 5:
            logger.warning("A %d-gram over characters sees less than a word of context; use order 5-6 for unit "
                           "'token'.", options.order)
        logger.info("token-level LM: for FlashlightBeam(lexicon_free=True); pyctcdecode and lexicon decoding need "
                    "a word LM")
        train = [to_token_sentence(s) for s in train]
        heldout_sentences = [to_token_sentence(s) for s in heldout_sentences]
    logger.info("training on %d sentences, %d held out", len(train), len(heldout_sentences))

    out_dir.mkdir(parents=True, exist_ok=True)
    work_parent = Path(options.temp_dir) if options.temp_dir else out_dir
    work_parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix=".lm-build-", dir=work_parent) as work:
        work = Path(work)
        corpus = work / "corpus.txt"
        # One sentence per line: lmplz adds <s>/</s> per line, and a model without </s> cannot be loaded.
        corpus.write_text("".join(s + "\n" for s in train), encoding="utf-8")
        arpa = work / "lm.arpa"
        fallback, lmplz_command = run_lmplz(corpus, arpa, options, work)
        counts = arpa_ngram_counts(arpa)
        unigrams = read_arpa_unigrams(arpa)
        logger.info("lmplz: %s", ", ".join(f"{c} {n}-grams" for n, c in sorted(counts.items())))

        staging = out_dir / f".{LM_SUBDIR}.new"  # hidden, so pyctcdecode ignores it if left behind
        shutil.rmtree(staging, ignore_errors=True)
        staging.mkdir()
        kenlm_name = "lm.bin" if options.binary else "lm.arpa"
        try:
            if options.binary:
                run_build_binary(arpa, staging / kenlm_name, options, work)
            else:
                shutil.move(str(arpa), staging / kenlm_name)
            (staging / UNIGRAMS_FILE).write_text("".join(w + "\n" for w in sorted(unigrams)), encoding="utf-8")
            attrs = {"alpha": decoder_options.alpha, "beta": decoder_options.beta,
                     "unk_score_offset": decoder_options.unk_score_offset,
                     "score_boundary": decoder_options.score_boundary}
            (staging / ATTRS_FILE).write_text(json.dumps(attrs) + "\n", encoding="utf-8")
        except BaseException:
            shutil.rmtree(staging, ignore_errors=True)
            raise
        replace_dir(staging, out_dir / LM_SUBDIR)

    if vocab is not None:
        alphabet = {"labels": pyctcdecode_labels(vocab), "is_bpe": False}  # pyctcdecode's Alphabet.dumps() format
        (out_dir / ALPHABET_FILE).write_text(json.dumps(alphabet, ensure_ascii=False) + "\n", encoding="utf-8")
    else:
        logger.warning("No vocabulary given: %s not written, so pyctcdecode's load_from_dir cannot load %s; pass "
                       "the model's vocabulary (--model DIR).", ALPHABET_FILE, out_dir)

    if (out_dir / PROCESSOR_FILE).is_file():  # beside a model: the LM becomes part of it for Hugging Face users
        declare_lm_processor(out_dir, usable=vocab is not None and options.unit == "word")

    kenlm_path = out_dir / LM_SUBDIR / kenlm_name
    heldout_report = evaluate_heldout(kenlm_path, heldout_sentences) if heldout_sentences else None
    info = LMInfo(
        directory=str(out_dir.resolve()), kenlm_file=f"{LM_SUBDIR}/{kenlm_name}",
        format=options.binary_type if options.binary else "arpa", unit=options.unit, order=options.order,
        size_bytes=kenlm_path.stat().st_size, ngram_counts=counts, num_unigrams=len(unigrams),
        num_train_sentences=len(train), discount_fallback=fallback, corpus=report, heldout=heldout_report,
        normalizer=normalizer.to_dict(), vocab_size=len(vocab) if vocab is not None else None,
        options=asdict(options), seconds=round(time.perf_counter() - started, 3), lmplz_command=lmplz_command,
    )
    (out_dir / INFO_FILE).write_text(json.dumps(info.to_dict(), ensure_ascii=False, indent=2) + "\n",
                                     encoding="utf-8")
    logger.info("wrote %s: %d-gram %s %s LM, %.1f MB, %d %ss%s, in %.1f s", kenlm_path, options.order, options.unit,
                info.format, info.size_bytes / 1e6, len(unigrams), options.unit,
                f", held-out perplexity {heldout_report.perplexity:.1f} (OOV {100 * heldout_report.oov_rate:.1f}%)"
                if heldout_report else " (no held-out text: perplexity not measured)", info.seconds)
    return info



def declare_lm_processor(model_dir: Path, usable: bool) -> None:
    """Name `Wav2Vec2ProcessorWithLM` in the model's processor files when pyctcdecode can use the LM.

    transformers' ASR pipeline then loads `language_model/` and decodes with it ("ctc_with_lm"). A
    token-level LM, or one built without the vocabulary (no alphabet.json), would break that
    pipeline, so the files keep the plain name and the pipeline decodes greedily.
    """
    name = declare_processor_class(model_dir, with_lm=usable)
    if usable:
        logger.info("%s now names %s: transformers' ASR pipeline decodes with this LM", model_dir, name)
    else:
        logger.warning("%s keeps naming %s: transformers' ASR pipeline decodes greedily, as pyctcdecode needs a "
                       "word LM and the model's vocabulary (build with --model DIR --unit word)", model_dir, name)
