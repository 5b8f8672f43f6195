"""Transcript normalisation, character vocabularies and the wav2vec2 processor.

The same `TextNormalizer` must be applied to training labels, to evaluation references and to the
language model's text, so it is saved next to the processor (`normalizer.json`) and loaded with it:

    >>> normalizer = TextNormalizer()
    >>> texts = [normalizer(t) for t in raw_texts]
    >>> processor = make_processor(build_vocab(texts), return_attention_mask=False)
    >>> save_processor(processor, normalizer, "runs/x/processor")
    >>> processor, normalizer = load_processor("runs/x/processor")

Vocabulary convention: `[PAD]` = 0 (the CTC blank), `[UNK]` = 1, `|` = 2 (the word delimiter that
stands for a space), then every character of the data sorted by code point.
"""

from __future__ import annotations

import json
import logging
import os
import tempfile
import unicodedata
from collections import Counter
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import asdict, dataclass, fields
from functools import lru_cache
from pathlib import Path
from typing import TYPE_CHECKING, Any

import regex

from asr.constants import PAD, SAMPLE_RATE, UNK, WORD_DELIMITER

if TYPE_CHECKING:  # transformers pulls in torch (seconds); only the processor functions need it
    from transformers import Wav2Vec2CTCTokenizer, Wav2Vec2Processor

logger = logging.getLogger(__name__)

NORMALIZER_FILE = "normalizer.json"
# The processor's files, as transformers 5 writes them (4.x reads the feature extractor's own file).
PROCESSOR_FILE = "processor_config.json"
FEATURE_EXTRACTOR_FILE = "preprocessor_config.json"
TOKENIZER_CONFIG_FILE = "tokenizer_config.json"
VOCAB_FILE = "vocab.json"
# The class a directory with a KenLM beside the model names: transformers' ASR pipeline then decodes with
# the LM ("ctc_with_lm"); it reads the name from the feature extractor's settings, not the processor's.
PROCESSOR_WITH_LM = "Wav2Vec2ProcessorWithLM"
# How one session loaded the files, not what they are: `local_files_only` saved in a published directory
# makes every later load refuse the hub.
_LOADING_KEYS = ("local_files_only", "is_local")
SPECIAL_TOKENS = (PAD, UNK, WORD_DELIMITER)  # ids 0, 1, 2 in that order

# Every Unicode punctuation (P*) and symbol (S*) character except the ASCII apostrophe. The
# pattern is for the `regex` module (a transformers dependency), which knows \p{...} classes.
DEFAULT_REMOVE_CHARS = r"(?!')[\p{P}\p{S}]"
# Characters written for an apostrophe: right/left single quotes, modifier letter apostrophe,
# grave and acute accents, prime. Mapped before Unicode normalisation, which would otherwise turn
# the acute accent into a space plus a combining mark.
APOSTROPHE_VARIANTS = "\u2019\u2018\u02bc`\u00b4\u2032"
UNICODE_FORMS = ("NFC", "NFKC", "NFD", "NFKD")
_EXAMPLE_CHARS = 80  # example texts in coverage reports are cut to this length


@lru_cache(maxsize=64)
def _compile(pattern: str) -> regex.Pattern:
    """Compile a pattern once per process."""
    return regex.compile(pattern)


_APOSTROPHE_VARIANT_RE = _compile(f"[{APOSTROPHE_VARIANTS}]")
# An apostrophe is kept only with a word character on both sides (rock'n'roll, don't, 90's).
_EDGE_APOSTROPHE_RE = _compile(r"(?<!\w)'|'(?!\w)")


@dataclass(frozen=True)
class TextNormalizer:
    """Transcript normaliser for any script; a callable str -> str.

    Steps, in order: apostrophe variants -> "'" (or removed when `keep_apostrophes` is False);
    Unicode normalisation; lowercasing; `replacements`; characters matching `delete_chars` are
    deleted; characters matching `remove_chars` become spaces; apostrophes not inside a word are
    dropped; Unicode normalisation again (removals can leave combining marks out of order); runs
    of whitespace become one space and the ends are stripped. Letters, digits and combining marks
    (Arabic tashkeel, accents) are never touched by the defaults.
    """

    lowercase: bool = True  # one case halves the letters CTC must learn (str.lower, not casefold: ß stays)
    unicode_form: str | None = "NFKC"  # folds ligatures, full-width and presentation forms; None: as given
    keep_apostrophes: bool = True  # "don't" != "dont" in English; False deletes every apostrophe
    remove_chars: str = DEFAULT_REMOVE_CHARS  # regex (`regex` module) of characters that become a space; "" = none
    replacements: tuple[tuple[str, str], ...] = ()  # literal (old, new) pairs applied after lowercasing, in order
    delete_chars: str = ""  # regex of characters deleted outright, e.g. r"\p{Mn}" strips tashkeel and accents

    def __post_init__(self) -> None:
        if self.unicode_form is not None and self.unicode_form not in UNICODE_FORMS:
            raise ValueError(f"TextNormalizer.unicode_form is {self.unicode_form!r}; use one of "
                             f"{UNICODE_FORMS} or None.")
        for name in ("remove_chars", "delete_chars"):
            pattern = getattr(self, name)
            try:
                _compile(pattern)
            except regex.error as e:
                raise ValueError(f"TextNormalizer.{name} {pattern!r} is not a valid regex ({e}); fix the "
                                 "pattern or use '' to match nothing.") from e
        # JSON gives lists; store tuples so the dataclass stays hashable and comparable.
        pairs = tuple(tuple(pair) for pair in self.replacements)
        for pair in pairs:
            if len(pair) != 2 or not all(isinstance(s, str) for s in pair) or not pair[0]:
                raise ValueError(f"TextNormalizer.replacements entry {pair!r} is not a pair of strings "
                                 "with a non-empty first string; write it as ('old', 'new').")
            if self.lowercase and pair[0] != pair[0].lower():
                raise ValueError(f"TextNormalizer.replacements key {pair[0]!r} has uppercase letters but "
                                 f"replacements run after lowercasing; write it as {pair[0].lower()!r}.")
        object.__setattr__(self, "replacements", pairs)

    def __call__(self, text: str) -> str:
        """Normalise one transcript.

        Args:
            text: Raw transcript.

        Returns:
            The normalised text: words separated by single spaces, no leading/trailing space.
        """
        text = self._unicode(self._apostrophes(text))
        if self.lowercase:
            # Case mapping works on code points and need not keep the normal form: normalise again.
            text = self._unicode(text.lower())
        # Again: compatibility forms can yield an apostrophe variant (NFKC: U+0149 -> U+02BC n).
        text = self._apostrophes(text)
        for old, new in self.replacements:
            text = text.replace(old, new)
        if self.delete_chars:
            text = _compile(self.delete_chars).sub("", text)
        if self.remove_chars:
            text = _compile(self.remove_chars).sub(" ", text)
        if self.keep_apostrophes:
            text = _EDGE_APOSTROPHE_RE.sub("", text)
        # Removals can bring combining marks together out of canonical order: normalise once more.
        return " ".join(self._unicode(text).split())

    def _apostrophes(self, text: str) -> str:
        """Map apostrophe variants to "'", or delete all apostrophes when they are not kept."""
        if self.keep_apostrophes:
            return _APOSTROPHE_VARIANT_RE.sub("'", text)
        return _APOSTROPHE_VARIANT_RE.sub("", text).replace("'", "")

    def _unicode(self, text: str) -> str:
        """Apply the configured Unicode normal form."""
        return unicodedata.normalize(self.unicode_form, text) if self.unicode_form else text

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready dict of every field."""
        data = asdict(self)
        data["replacements"] = [list(pair) for pair in self.replacements]
        return data

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> TextNormalizer:
        """Build from `to_dict()` output; unknown keys are an error, missing keys take defaults."""
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(data) - known)
        if unknown:
            raise ValueError(f"TextNormalizer got unknown keys {unknown}; valid keys are {sorted(known)}.")
        kwargs = dict(data)
        if "replacements" in kwargs:
            kwargs["replacements"] = tuple(tuple(pair) for pair in kwargs["replacements"])
        return cls(**kwargs)

    def save(self, directory: str | os.PathLike) -> Path:
        """Write `normalizer.json` into `directory` (created if needed) and return its path."""
        path = Path(directory) / NORMALIZER_FILE
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(self.to_dict(), ensure_ascii=False, indent=2) + "\n", encoding="utf-8")
        return path

    @classmethod
    def load(cls, path: str | os.PathLike) -> TextNormalizer:
        """Read a normaliser from a directory holding `normalizer.json`, or from the file itself."""
        path = Path(path)
        file = path / NORMALIZER_FILE if path.is_dir() else path
        if not file.is_file():
            raise FileNotFoundError(f"No {NORMALIZER_FILE} at {str(file)!r}; save the normaliser with "
                                    "TextNormalizer.save() or save_processor() first.")
        return cls.from_dict(json.loads(file.read_text(encoding="utf-8")))


def build_vocab(texts: Iterable[str]) -> dict[str, int]:
    """Character vocabulary of normalised transcripts, in the project's convention.

    `[PAD]` = 0 (CTC blank), `[UNK]` = 1, `|` = 2 (stands for a space), then every other character
    seen, sorted by code point, so the result depends only on the set of characters.

    Args:
        texts: Normalised transcripts (see `TextNormalizer`).

    Returns:
        Token -> id, ids 0..N-1.

    Raises:
        ValueError: A text contains "|": it would be indistinguishable from a word boundary. The
            default `TextNormalizer` removes it.
    """
    chars: set[str] = set()
    other_whitespace: set[str] = set()
    for text in texts:
        if WORD_DELIMITER in text:
            raise ValueError(f"Transcript {text[:_EXAMPLE_CHARS]!r} contains the word delimiter "
                             f"{WORD_DELIMITER!r}; normalise transcripts with TextNormalizer (which removes "
                             "it) or replace it before building the vocabulary.")
        chars.update(text)
    for char in list(chars):
        if char.isspace():
            chars.discard(char)
            if char != " ":
                other_whitespace.add(char)
    if other_whitespace:
        # The tokenizer maps only " " to "|"; a tab or newline would become [UNK] in the labels.
        logger.warning("Transcripts contain whitespace other than ' ' (%s), which the tokenizer will encode "
                       "as %s; normalise them with TextNormalizer.", sorted(other_whitespace), UNK)
    vocab = {token: i for i, token in enumerate(SPECIAL_TOKENS)}
    for char in sorted(chars):
        vocab[char] = len(vocab)
    return vocab


@dataclass(frozen=True)
class MissingChar:
    """A character of the data that a tokenizer cannot represent."""

    char: str
    name: str  # Unicode name, so invisible or look-alike characters can be told apart
    count: int
    example: str  # the first text containing it (cut to 80 characters)


@dataclass(frozen=True)
class CoverageReport:
    """How well a pretrained tokenizer's vocabulary covers a set of transcripts.

    Characters are counted after the tokenizer's own case mapping (`do_lower_case` uppercases);
    spaces are excluded, as they map to the word delimiter.
    """

    num_texts: int
    num_chars: int  # non-space characters checked
    num_unknown: int  # of those, how many would be encoded as the unknown token
    missing: tuple[MissingChar, ...]  # most frequent first
    pad_token: str  # the CTC blank
    pad_token_id: int
    word_delimiter_token: str
    word_delimiter_token_id: int
    unk_token: str | None
    do_lower_case: bool

    @property
    def coverage(self) -> float:
        """Fraction of characters the vocabulary represents (1.0 for no text)."""
        return 1.0 - self.num_unknown / self.num_chars if self.num_chars else 1.0

    @property
    def ok(self) -> bool:
        """True when every character is representable."""
        return not self.missing

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready dict, including `coverage`."""
        data = asdict(self)
        data["missing"] = [asdict(m) for m in self.missing]
        data["coverage"] = self.coverage
        return data


def vocab_from_tokenizer(
    tokenizer: Wav2Vec2CTCTokenizer, texts: Iterable[str]
) -> tuple[dict[str, int], CoverageReport]:
    """Take a pretrained CTC tokenizer's vocabulary and check it against the transcripts.

    Args:
        tokenizer: A `Wav2Vec2CTCTokenizer` (e.g. from a fine-tuned checkpoint).
        texts: Normalised transcripts.

    Returns:
        (vocab, report): the tokenizer's token -> id map (added tokens included), ordered by id, and
        which characters of `texts` it cannot represent. A warning is logged when some are missing.

    Raises:
        ValueError: The tokenizer's pad token (the CTC blank) or word delimiter is not in its base
            vocabulary (vocab.json); transformers appends such tokens as extra ids that a CTC head
            trained with that vocabulary does not predict.
    """
    vocab = dict(sorted(tokenizer.get_vocab().items(), key=lambda item: item[1]))
    base_size = tokenizer.vocab_size  # ids of vocab.json; added tokens come after them
    pad = tokenizer.pad_token
    if pad is None or vocab.get(pad, base_size) >= base_size:
        raise ValueError(f"Tokenizer pad token {pad!r} is not in its vocab.json, so CTC has no blank; use a "
                         "tokenizer whose vocabulary has a pad token or build a new one with build_vocab().")
    delimiter = tokenizer.word_delimiter_token
    if delimiter is None or vocab.get(delimiter, base_size) >= base_size:
        raise ValueError(f"Tokenizer word delimiter {delimiter!r} is not in its vocab.json, so spaces cannot be "
                         "encoded; set word_delimiter_token to a token of the vocabulary or use build_vocab().")
    unk = tokenizer.unk_token if tokenizer.unk_token in vocab else None
    if unk is None:
        logger.warning("Tokenizer unk token %r is not in its vocabulary; unknown characters cannot be encoded.",
                       tokenizer.unk_token)
    do_lower_case = bool(getattr(tokenizer, "do_lower_case", False))

    counts: Counter[str] = Counter()
    examples: dict[str, str] = {}
    num_texts = num_chars = 0
    for text in texts:
        num_texts += 1
        # Mirror Wav2Vec2CTCTokenizer._tokenize: it uppercases when do_lower_case is set.
        checked = text.upper() if do_lower_case else text
        for char in checked:
            if char == " ":
                continue
            num_chars += 1
            if char not in vocab:
                counts[char] += 1
                examples.setdefault(char, text[:_EXAMPLE_CHARS])
    missing = tuple(
        MissingChar(char=c, name=unicodedata.name(c, f"U+{ord(c):04X}"), count=n, example=examples[c])
        for c, n in sorted(counts.items(), key=lambda item: (-item[1], item[0]))
    )
    report = CoverageReport(
        num_texts=num_texts, num_chars=num_chars, num_unknown=sum(counts.values()), missing=missing,
        pad_token=pad, pad_token_id=vocab[pad], word_delimiter_token=delimiter,
        word_delimiter_token_id=vocab[delimiter], unk_token=unk, do_lower_case=do_lower_case,
    )
    if missing:
        shown = ", ".join(f"{m.char!r} ({m.count})" for m in missing[:10])
        logger.warning("%d of %d characters (%.2f%%) are not in the tokenizer's vocabulary and become %s: %s%s; "
                       "map them with TextNormalizer.replacements or build a new vocabulary.",
                       report.num_unknown, num_chars, 100 * (1 - report.coverage), unk or "unencodable", shown,
                       ", ..." if len(missing) > 10 else "")
    return vocab, report


def _check_vocab(vocab: Mapping[str, int]) -> None:
    """Raise ValueError unless the vocabulary has the special tokens and ids 0..N-1 exactly once."""
    absent = [token for token in SPECIAL_TOKENS if token not in vocab]
    if absent:
        raise ValueError(f"Vocabulary lacks the special tokens {absent}; build it with build_vocab(), or load a "
                         "pretrained tokenizer's processor with Wav2Vec2Processor.from_pretrained().")
    ids = sorted(vocab.values())
    if ids != list(range(len(vocab))):
        raise ValueError(f"Vocabulary ids must be 0..{len(vocab) - 1}, each used once (the model's output layer "
                         f"is indexed by them), got {ids[:10]}{'...' if len(ids) > 10 else ''}; renumber it.")


def make_processor(
    vocab: Mapping[str, int], *, return_attention_mask: bool, do_normalize: bool = True, filterbank: bool = False
) -> Wav2Vec2Processor:
    """Create a Wav2Vec2Processor (CTC tokenizer + feature extractor) for a character vocabulary.

    With `filterbank`, a Wav2Vec2BertProcessor instead: the same tokenizer with a
    SeamlessM4TFeatureExtractor (80 log-mel bins per 10 ms, normalised per utterance, stacked in
    pairs), the input of wav2vec2-bert models; `return_attention_mask`/`do_normalize` do not apply.

    Args:
        vocab: Token -> id with `[PAD]`, `[UNK]`, `|` and ids 0..N-1 (see `build_vocab`).
        return_attention_mask: True for checkpoints whose feature encoder uses layer norm
            (wav2vec2-large-lv60, XLS-R, MMS); False for group-norm ones (wav2vec2-base), which were
            trained on zero-padded batches without a mask.
        do_normalize: Zero-mean unit-variance per utterance; keep it as the checkpoint was pre-trained.

    Returns:
        The processor; `len(processor.tokenizer) == len(vocab)` (no bos/eos tokens are added).
    """
    from transformers import Wav2Vec2CTCTokenizer, Wav2Vec2FeatureExtractor, Wav2Vec2Processor

    _check_vocab(vocab)
    # The tokenizer only reads its vocabulary from a file.
    with tempfile.TemporaryDirectory(prefix="asr_vocab_") as tmp:
        vocab_file = Path(tmp) / "vocab.json"
        vocab_file.write_text(json.dumps(dict(vocab), ensure_ascii=False), encoding="utf-8")
        tokenizer = Wav2Vec2CTCTokenizer(
            str(vocab_file), unk_token=UNK, pad_token=PAD, word_delimiter_token=WORD_DELIMITER,
            # bos/eos would be appended as extra ids that the CTC output layer does not have.
            bos_token=None, eos_token=None,
            do_lower_case=False,  # casing is the TextNormalizer's job
        )
    if filterbank:
        from transformers import SeamlessM4TFeatureExtractor, Wav2Vec2BertProcessor

        return Wav2Vec2BertProcessor(
            feature_extractor=SeamlessM4TFeatureExtractor(sampling_rate=SAMPLE_RATE, return_attention_mask=True),
            tokenizer=tokenizer,
        )
    feature_extractor = Wav2Vec2FeatureExtractor(
        feature_size=1, sampling_rate=SAMPLE_RATE, padding_value=0.0,
        do_normalize=do_normalize, return_attention_mask=return_attention_mask,
    )
    return Wav2Vec2Processor(feature_extractor=feature_extractor, tokenizer=tokenizer)


def save_processor(processor: Wav2Vec2Processor, normalizer: TextNormalizer, out_dir: str | os.PathLike) -> Path:
    """Write the processor's standard files plus `normalizer.json` into `out_dir`; return it.

    The files name the plain processor class (see `declare_processor_class`) and carry no loading
    options of this session (`local_files_only`), so the directory can be published as it is.
    """
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    processor.save_pretrained(str(out))
    # transformers 5 writes one processor_config.json; older loaders (and tools such as
    # pyctcdecode's processor-with-LM) look for the feature extractor's own file too.
    processor.feature_extractor.save_pretrained(str(out))
    declare_processor_class(out, with_lm=False)  # also drops this session's loading options
    normalizer.save(out)
    return out


def plain_processor_class(directory: str | os.PathLike) -> str:
    """`Wav2Vec2BertProcessor` for a filterbank feature extractor (wav2vec2-bert), else `Wav2Vec2Processor`."""
    directory = Path(directory)
    settings = _read_json_file(directory / PROCESSOR_FILE).get("feature_extractor") \
        or _read_json_file(directory / FEATURE_EXTRACTOR_FILE)
    filterbank = settings.get("feature_extractor_type") == "SeamlessM4TFeatureExtractor"
    return "Wav2Vec2BertProcessor" if filterbank else "Wav2Vec2Processor"


def declare_processor_class(directory: str | os.PathLike, with_lm: bool) -> str:
    """Name the processor class in every processor file of `directory`; returns the name written.

    With an LM (`lm.build_lm` wrote `language_model/` beside the model) the name is
    `Wav2Vec2ProcessorWithLM`: transformers' ASR pipeline then loads the LM and decodes with it,
    and `Wav2Vec2ProcessorWithLM.from_pretrained` / `AutoProcessor` load it. Without one it is the
    plain class, which loads with no LM. `load_processor` reads either. The tokenizer config loses
    this session's loading options (`local_files_only`), which would follow a published copy.
    """
    directory = Path(directory)
    name = PROCESSOR_WITH_LM if with_lm else plain_processor_class(directory)

    def set_processor(data: dict[str, Any]) -> None:
        data["processor_class"] = name
        if isinstance(data.get("feature_extractor"), dict):  # where transformers 5's pipeline reads it
            data["feature_extractor"]["processor_class"] = name

    def set_tokenizer(data: dict[str, Any]) -> None:
        set_processor(data)
        for key in _LOADING_KEYS:
            data.pop(key, None)

    _edit_json(directory / PROCESSOR_FILE, set_processor)
    _edit_json(directory / FEATURE_EXTRACTOR_FILE, set_processor)
    _edit_json(directory / TOKENIZER_CONFIG_FILE, set_tokenizer)
    return name


def _read_json_file(path: Path) -> dict[str, Any]:
    """A JSON object from `path`, or {} when the file is absent."""
    return json.loads(path.read_text(encoding="utf-8")) if path.is_file() else {}


def _edit_json(path: Path, edit) -> None:
    """Apply `edit` (which changes the dict in place) to the JSON object in `path`, if the file exists."""
    if not path.is_file():
        return
    data = json.loads(path.read_text(encoding="utf-8"))
    edit(data)
    path.write_text(json.dumps(data, indent=2, sort_keys=True, ensure_ascii=False) + "\n", encoding="utf-8")


def load_processor(path: str | os.PathLike) -> tuple[Wav2Vec2Processor, TextNormalizer]:
    """Load what `save_processor` wrote.

    The processor is always the plain one (`Wav2Vec2Processor`, or `Wav2Vec2BertProcessor` for a
    filterbank model), also when the files name `Wav2Vec2ProcessorWithLM`: our decoders load the LM
    themselves (`asr.beam`), so it is not loaded twice.

    Args:
        path: Directory with the processor files and `normalizer.json`.

    Returns:
        (processor, normalizer).

    Raises:
        FileNotFoundError: The directory or its `normalizer.json` is missing; for a hub checkpoint
            without one, use Wav2Vec2Processor.from_pretrained and choose a TextNormalizer yourself.
    """
    import transformers

    path = Path(path)
    if not path.is_dir():
        raise FileNotFoundError(f"Processor directory {str(path)!r} does not exist; pass the directory "
                                "that save_processor() wrote.")
    normalizer = TextNormalizer.load(path)
    feature_extractor = transformers.AutoFeatureExtractor.from_pretrained(str(path))
    tokenizer = transformers.Wav2Vec2CTCTokenizer.from_pretrained(str(path))
    processor_class = getattr(transformers, plain_processor_class(path))
    return processor_class(feature_extractor=feature_extractor, tokenizer=tokenizer), normalizer


def encode(text: str, vocab: Mapping[str, int], *, unk_token: str = UNK,
           word_delimiter: str = WORD_DELIMITER) -> list[int]:
    """Label ids of a normalised transcript, without the tokenizer's overhead.

    Agrees with `tokenizer(text).input_ids` for a tokenizer from `make_processor` on any normalised
    text: each space becomes the word delimiter, each other character its id or the unknown id. (The
    tokenizer additionally matches literal "[PAD]"/"[UNK]" substrings, which normalisation removes.)

    Args:
        text: Normalised transcript.
        vocab: Token -> id.
        unk_token: Token for characters not in `vocab`.
        word_delimiter: Token that stands for a space.

    Returns:
        One id per character of `text`.
    """
    absent = [token for token in (unk_token, word_delimiter) if token not in vocab]
    if absent:
        raise ValueError(f"Vocabulary has no {absent} token; build it with build_vocab() or pass the "
                         "vocabulary's own unk_token/word_delimiter.")
    unk_id = vocab[unk_token]
    return [vocab.get(char, unk_id) for char in text.replace(" ", word_delimiter)]


def load_vocab(directory: str | os.PathLike) -> dict[str, int]:
    """Read `vocab.json` from a model or processor directory."""
    path = Path(directory) / VOCAB_FILE
    if not path.is_file():
        raise FileNotFoundError(f"No {VOCAB_FILE} in {str(directory)!r}; pass the model's processor directory "
                                "or the vocabulary itself.")
    return json.loads(path.read_text(encoding="utf-8"))


def load_model_text_config(model_dir: str | os.PathLike) -> tuple[TextNormalizer, dict[str, int]]:
    """The normaliser (`normalizer.json`) and vocabulary (`vocab.json`) saved with a model's processor."""
    model_dir = Path(model_dir)
    if not model_dir.is_dir():
        raise FileNotFoundError(f"Model directory {str(model_dir)!r} does not exist; pass the directory holding "
                                "the model's normalizer.json and vocab.json.")
    return TextNormalizer.load(model_dir), load_vocab(model_dir)


def ids_to_text(ids: Sequence[int], id_to_token: Mapping[int, str]) -> str:
    """Label ids (no CTC blanks, repeats kept) -> text: the word delimiter is a space, spaces are collapsed, and
    [UNK] stays literal (a reference character outside the vocabulary counts as an error). The one label-to-text;
    frames -> text (the CTC collapse) is `asr.beam.GreedyCTC`'s."""
    text = "".join(" " if id_to_token[i] == WORD_DELIMITER else id_to_token[i] for i in ids)
    return " ".join(text.split())
