"""CTC beam search with a KenLM n-gram LM over cached log-probs: pyctcdecode and flashlight-text.

Both decoders (and a greedy one, for comparison) share one small interface:

    >>> decoder = FlashlightBeam(vocab, "lm/lm.bin", unigrams)     # or asr.decoders.build_decoder(name, ...)
    >>> hyp = decoder.decode(log_probs, length)                    # log_probs: [T, V] numpy
    >>> hyp.text, hyp.words[0].start, hyp.score
    >>> decoder.decode_batch([lp1, lp2], [n1, n2])                 # -> list[Hypothesis]
    >>> decoder.decode_nbest(log_probs, length, n=10)              # for oracle WER

The decoders take a KenLM file and its words; the LM directory that holds them (`lm.build_lm`'s output,
pyctcdecode's `save_to_dir` layout), reading it and choosing a decoder by name are `asr.decoders`'.

Vocabulary convention (see asr.text): `[PAD]` (the CTC blank) = 0, `[UNK]` = 1, `|` (the word
delimiter) = 2, then one character per id. Scores: the decoders add natural-log acoustic scores to
LM scores that KenLM gives in log10; pyctcdecode converts (`alpha` multiplies a natural log),
flashlight does not (`lm_weight` multiplies a log10). The same search objective is therefore
`lm_weight = alpha * ln(10)` and `word_score = beta`, which the defaults below follow.
"""

from __future__ import annotations

import logging
import math
import multiprocessing
import os
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

import numpy as np
from flashlight.lib.text.decoder import LM as FlashlightLM

from asr.constants import PAD, UNK, WORD_DELIMITER
from asr.forkpool import fork_map, in_item_order, interleaved_chunks
from asr.metrics import word_edits

logger = logging.getLogger(__name__)

PYCTCDECODE_UNK = "\u2047"  # "⁇": pyctcdecode's label for an unknown token
LM_SPECIAL_WORDS = frozenset({"<s>", "</s>", "<unk>"})  # KenLM vocabulary entries that are not words
FLASHLIGHT_UNK_WORD = "<unk>"

# An LM most of whose words the model's tokens cannot spell was built for another alphabet or language:
# a beam search over it only adds unknown-word penalties (a Greek LM with an English model decoded
# worse than greedy, silently). Some unspellable words are normal (LM text not normalised like the model's).
MIN_SPELLABLE_FRACTION = 0.5
LN10 = math.log(10)  # flashlight's lm_weight multiplies KenLM's log10 scores, pyctcdecode's alpha natural logs
DEFAULT_ALPHA = 0.5  # LM weight on a natural-log scale (pyctcdecode's default)
DEFAULT_BETA = 1.0  # bonus per word; offsets the LM's per-word cost, else the search prefers few long words
DEFAULT_BEAM_WIDTH = 100  # pyctcdecode's default; 300 gained 0.004 WER at 2.5x the time on synthetic logits
# Score (natural log) added per hotword in a transcript, pyctcdecode's default; it outweighs pyctcdecode's
# unknown-word offset (-10) plus the LM's doubt, so a clearly spoken hotword outside the LM can win.
DEFAULT_HOTWORD_WEIGHT = 10.0


@dataclass(frozen=True)
class PyCTCDecodeOptions:
    """Knobs of `PyCTCDecodeBeam`; defaults are pyctcdecode's except `beta` (see DEFAULT_BETA)."""

    alpha: float = DEFAULT_ALPHA  # LM weight (natural log); 0 decodes without the LM
    beta: float = DEFAULT_BETA  # score added per word
    beam_width: int = DEFAULT_BEAM_WIDTH  # beams kept after each frame
    beam_prune_logp: float = -10.0  # beams this far (natural log) below the best are dropped
    token_min_logp: float = -5.0  # a frame's tokens below this log-prob are skipped (its argmax never is)
    unk_score_offset: float = -10.0  # added per word (or partial word) outside the LM's unigrams
    score_boundary: bool = True  # score <s> at the start and </s> at the end, as the LM was trained
    hotwords: tuple[str, ...] = ()  # words or phrases to boost, may be outside the LM; phrases count word by word
    hotword_weight: float = DEFAULT_HOTWORD_WEIGHT  # score added per hotword word in the text (prefixes: pro rata)
    num_processes: int = 0  # decode_batch: fork-pool workers (pyctcdecode cannot use spawn); 0 or 1 = in-process
    skip_idle_frames: bool = True  # drop the frames the search cannot act on (see IdleFrames): same result, faster
    # False: the search of decode_beams, which transformers' pipeline runs, so both give the same text; True:
    # pyctcdecode's decode(), which merges beams ending in the same words: faster, not always the same best beam
    prune_history: bool = False

    def __post_init__(self) -> None:
        if self.beam_width < 1:
            raise ValueError(f"PyCTCDecodeOptions.beam_width is {self.beam_width}; use 1 or more.")
        if self.num_processes < 0:
            raise ValueError(f"PyCTCDecodeOptions.num_processes is {self.num_processes}; use 0 (in-process) or more.")
        # JSON/YAML give lists; keep a tuple so the options stay hashable.
        object.__setattr__(self, "hotwords", tuple(self.hotwords))


@dataclass(frozen=True)
class FlashlightOptions:
    """Knobs of `FlashlightBeam`; the defaults pose the same objective as `PyCTCDecodeOptions()`."""

    lm_weight: float = DEFAULT_ALPHA * LN10  # on KenLM's log10 scores (= alpha * ln 10); lexicon-free
    # decoding with a token LM did best near 2.0 on synthetic logits
    word_score: float = DEFAULT_BETA  # score added per word (= beta)
    beam_size: int = DEFAULT_BEAM_WIDTH  # hypotheses kept after each frame
    beam_size_token: int | None = None  # tokens tried per frame; None tries all
    beam_threshold: float = 25.0  # hypotheses this far below the best are dropped
    unk_score: float = -math.inf  # lexicon: score of emitting the unknown word <unk>; -inf never emits it
    sil_score: float = 0.0  # score added per word delimiter between words
    log_add: bool = False  # merge equal hypotheses by log-sum-exp, not max: -0.01 WER, 10% slower on synthetic logits
    lexicon_free: bool = False  # spell freely, scoring each token with the LM; only helps with a token-level LM
    # Frames whose blank is the argmax and every other token below this log-prob are dropped after the first of
    # each run (see IdleFrames): a token that far below the blank cannot survive beam_threshold unless the LM lifts
    # it by as much. None searches every frame.
    idle_token_logp: float | None = None
    # Lexicon only. Words to boost, added to the lexicon when outside the LM (which scores them as <unk>);
    # a phrase is boosted word by word, as pyctcdecode does. Costs ~1.5x decode time (bench/hotwords.py).
    hotwords: tuple[str, ...] = ()
    hotword_weight: float = DEFAULT_HOTWORD_WEIGHT  # score added per hotword word in the text, as pyctcdecode's
    num_processes: int = 0  # decode_batch: fork-pool workers, as PyCTCDecodeOptions'; 0 or 1 = in-process

    def __post_init__(self) -> None:
        if self.beam_size < 1:
            raise ValueError(f"FlashlightOptions.beam_size is {self.beam_size}; use 1 or more.")
        if self.num_processes < 0:
            raise ValueError(f"FlashlightOptions.num_processes is {self.num_processes}; use 0 (in-process) or more.")
        if self.beam_size_token is not None and self.beam_size_token < 1:
            raise ValueError(f"FlashlightOptions.beam_size_token is {self.beam_size_token}; use 1 or more, or None.")
        object.__setattr__(self, "hotwords", tuple(self.hotwords))  # as PyCTCDecodeOptions: hashable


@dataclass(frozen=True)
class WordSpan:
    """One decoded word and the frames it was spoken in: `start` inclusive, `end` exclusive.

    Frames are the model's output frames (20 ms each for wav2vec2: 320 samples at 16 kHz).
    """

    word: str
    start: int
    end: int


@dataclass(frozen=True)
class Hypothesis:
    """One decoded transcript.

    `score` is the decoder's own total (acoustic + weighted LM + bonuses): comparable between the
    hypotheses of one decoder and one utterance, not across decoders.
    """

    text: str
    words: tuple[WordSpan, ...]
    score: float


class CTCDecoder(Protocol):
    """What every decoder here offers."""

    def decode(self, logits: np.ndarray, length: int | None = None) -> Hypothesis: ...

    def decode_batch(
        self, logits: Sequence[np.ndarray], lengths: Sequence[int | None] | None = None
    ) -> list[Hypothesis]: ...

    def decode_nbest(self, logits: np.ndarray, length: int | None = None, n: int = 10) -> list[Hypothesis]: ...


# ---------------------------------------------------------------------------------------- helpers
def pyctcdecode_labels(vocab: Mapping[str, int]) -> list[str]:
    """pyctcdecode labels in token-id order: blank `[PAD]` -> "", `|` -> " ", `[UNK]` -> "⁇".

    Args:
        vocab: Token -> id, ids 0..V-1 (see asr.text.build_vocab).

    Returns:
        V labels; label i stands for logit column i.
    """
    tokens = tokens_in_id_order(vocab)
    mapping = {PAD: "", WORD_DELIMITER: " ", UNK: PYCTCDECODE_UNK}
    return [mapping.get(token, token) for token in tokens]


def tokens_in_id_order(vocab: Mapping[str, int]) -> list[str]:
    """Tokens sorted by id, after checking the project's special tokens and ids 0..V-1."""
    absent = [token for token in (PAD, WORD_DELIMITER) if token not in vocab]
    if absent:
        raise ValueError(f"Vocabulary lacks {absent}, which CTC decoding needs as blank and word delimiter; "
                         "use the model's vocab.json (built by asr.text.build_vocab).")
    tokens = sorted(vocab, key=vocab.__getitem__)
    if [vocab[t] for t in tokens] != list(range(len(tokens))):
        raise ValueError(f"Vocabulary ids must be 0..{len(tokens) - 1}, each once, to index the logit columns; "
                         "renumber it or use the model's vocab.json.")
    return tokens


def spellable_words(unigrams: Iterable[str], vocab: Mapping[str, int], lm_name: str) -> list[str]:
    """The LM's words that the vocabulary's tokens can spell, sorted; the LM must suit the model.

    Args:
        unigrams: The LM's words.
        vocab: Token -> id of the model.
        lm_name: How to name the LM in messages.

    Raises:
        ValueError: fewer than MIN_SPELLABLE_FRACTION of the words can be spelled (an LM for another
            alphabet); the message names a few of the others. Fewer unspellable words are a warning.
    """
    words = sorted(set(unigrams) - LM_SPECIAL_WORDS)
    spellable, others = [], []
    for word in words:
        (spellable if all(c in vocab and c not in (PAD, UNK, WORD_DELIMITER) for c in word) else others).append(word)
    if len(spellable) < MIN_SPELLABLE_FRACTION * len(words):
        raise ValueError(f"only {len(spellable)} of the {len(words)} words of {lm_name} can be spelled with the "
                         f"model's {len(vocab)} tokens (not e.g. {', '.join(others[:3])}): the LM was built for "
                         "another alphabet or language; build one from this model's text with "
                         "`python scripts/build_lm.py --model MODEL_DIR --text LM_TEXT`.")
    if others:
        logger.warning("%d of %d LM words use characters outside the vocabulary and are left out of the "
                       "lexicon; build the LM with `--model DIR` to normalise its text like the model's.",
                       len(others), len(words))
    return spellable


def hotword_words(hotwords: Iterable[str], vocab: Mapping[str, int]) -> list[str]:
    """The distinct words of `hotwords` (phrases split at spaces), in order; each must be spellable.

    Raises:
        ValueError: A word has a character outside the vocabulary, so no decoder could ever output it
            (e.g. upper case for a lower-case model); the message names the word and the characters.
    """
    words = list(dict.fromkeys(word for phrase in hotwords for word in phrase.split()))
    for word in words:
        absent = sorted({c for c in word if c not in vocab or c in (PAD, UNK, WORD_DELIMITER)})
        if absent:
            raise ValueError(f"hotword {word!r} has characters the model cannot spell ({''.join(absent)!r}); write it "
                             "as the model's transcripts are written (normalised: e.g. lower case, no punctuation).")
    return words


def read_arpa_unigrams(path: str | os.PathLike) -> list[str]:
    """The words of an ARPA file's 1-gram section, without <s>, </s> and <unk>."""
    words = []
    with open(path, encoding="utf-8") as f:
        in_unigrams = False
        for line in f:
            line = line.strip()
            if line == "\\1-grams:":
                in_unigrams = True
            elif in_unigrams:
                if not line or line.startswith("\\"):
                    break
                parts = line.split("\t")
                if len(parts) >= 2 and parts[1] not in LM_SPECIAL_WORDS:
                    words.append(parts[1])
    if not words:
        raise ValueError(f"{str(path)!r} has no 1-gram section; pass an ARPA file written by lmplz.")
    return words


def _log_probs(logits: np.ndarray, length: int | None, vocab_size: int) -> np.ndarray:
    """[length, V] float32 C-contiguous log-probs of one utterance (log-softmax is idempotent on log-probs)."""
    array = np.asarray(logits)
    if array.ndim != 2 or array.shape[1] != vocab_size:
        raise ValueError(f"Logits of shape {array.shape} do not fit a vocabulary of {vocab_size} tokens; pass one "
                         f"utterance as a [T, {vocab_size}] array.")
    if length is not None:
        if not 0 <= length <= array.shape[0]:
            raise ValueError(f"length {length} is outside 0..{array.shape[0]} (the logits' frames); pass the "
                             "utterance's valid frame count.")
        array = array[:length]
    array = array.astype(np.float32, copy=False)
    if array.shape[0] == 0:
        return np.ascontiguousarray(array)
    peak = array.max(axis=1, keepdims=True)
    log_norm = peak + np.log(np.exp(array - peak).sum(axis=1, keepdims=True))
    return np.ascontiguousarray(array - log_norm)


@dataclass(frozen=True)
class IdleFrames:
    """Log-probs without the frames a prefix beam search cannot act on, and the way back to the original frames.

    A frame whose only token at or above `token_min_logp` is the blank (which is then its argmax)
    extends every beam with the blank and nothing else. The first such frame after a character still
    matters: it ends the character, so a repeat of it becomes a new character. Every further frame of
    the run adds the same blank log-prob to every beam: no beam is created, merged, pruned or reordered
    (pruning compares scores with the best one, which moves by the same amount), so pyctcdecode's search
    is unchanged when they are dropped; CTC models spend most frames in such runs. Word frame spans are
    mapped back with `original_start`/`original_end`, and `dropped_blank_logp` (the same for every beam)
    is added back to the scores.
    """

    log_probs: np.ndarray  # [T_kept, V]
    kept: np.ndarray  # [T_kept] original index of each kept frame
    dropped_blank_logp: float

    @classmethod
    def none(cls, log_probs: np.ndarray) -> IdleFrames:
        """Every frame kept (skipping turned off)."""
        return cls(log_probs, np.arange(log_probs.shape[0]), 0.0)

    @classmethod
    def drop(cls, log_probs: np.ndarray, blank: int, token_min_logp: float) -> IdleFrames:
        """`log_probs` [T, V] (normalised) without the 2nd, 3rd, ... frame of each run of blank-only frames."""
        if log_probs.shape[0] == 0:
            return cls(log_probs, np.zeros(0, dtype=np.int64), 0.0)
        others = np.delete(log_probs, blank, axis=1)
        idle = (others.max(axis=1) < token_min_logp) & (log_probs.argmax(axis=1) == blank)
        dropped = idle & np.concatenate(([False], idle[:-1]))
        kept = np.flatnonzero(~dropped)
        return cls(np.ascontiguousarray(log_probs[kept]), kept, float(log_probs[dropped, blank].sum(dtype=np.float64)))

    def original_start(self, frame: int) -> int:
        return int(self.kept[frame])

    def original_end(self, frame: int) -> int:
        """An exclusive end frame of the kept frames -> the original exclusive end."""
        return int(self.kept[frame - 1]) + 1 if frame > 0 else 0


def _lengths(n: int, lengths: Sequence[int | None] | None) -> list[int | None]:
    """Per-utterance lengths, checked to pair up with the batch."""
    if lengths is None:
        return [None] * n
    if len(lengths) != n:
        raise ValueError(f"{len(lengths)} lengths for {n} utterances; pass one length (or None) per utterance.")
    return [None if x is None else int(x) for x in lengths]


def _words_from_frames(frame_tokens: Sequence[int], tokens: Sequence[str], blank: int, delimiter: int,
                       unk: int | None) -> tuple[WordSpan, ...]:
    """CTC-collapse per-frame token ids into words with [start, end) frame spans."""
    words: list[WordSpan] = []
    chars: list[str] = []
    in_word = False  # an [UNK]-only word has no characters but still occupies frames
    start = end = 0
    previous = blank
    for frame, token in enumerate(frame_tokens):
        if token == previous:
            if in_word and token not in (blank, delimiter):
                end = frame + 1  # a held character extends the word
            continue
        previous = token
        if token == blank:
            continue
        if token == delimiter:
            if chars:
                words.append(WordSpan("".join(chars), start, end))
            chars, in_word = [], False
            continue
        if not in_word:
            start, in_word = frame, True
        if token != unk:
            chars.append(tokens[token])
        end = frame + 1
    if chars:
        words.append(WordSpan("".join(chars), start, end))
    return tuple(words)


def _hypothesis(words: Iterable[WordSpan], score: float) -> Hypothesis:
    """A Hypothesis whose text is its words joined by spaces."""
    words = tuple(words)
    return Hypothesis(text=" ".join(w.word for w in words), words=words, score=float(score))


def _unique_texts(hypotheses: Iterable[Hypothesis], n: int) -> list[Hypothesis]:
    """The first `n` hypotheses with distinct text (decoders return near-duplicates differing in alignment)."""
    seen: set[str] = set()
    out = []
    for hyp in hypotheses:
        if hyp.text not in seen:
            seen.add(hyp.text)
            out.append(hyp)
            if len(out) == n:
                break
    return out


# ----------------------------------------------------------------------------------------- greedy
class GreedyCTC:
    """Best-path decoding (argmax per frame) behind the common interface; the baseline for beams.

    Args:
        vocab: Token -> id (the model's vocab.json).
    """

    def __init__(self, vocab: Mapping[str, int]) -> None:
        self.tokens = tokens_in_id_order(vocab)
        self._blank, self._delimiter, self._unk = vocab[PAD], vocab[WORD_DELIMITER], vocab.get(UNK)

    def decode(self, logits: np.ndarray, length: int | None = None) -> Hypothesis:
        """Best path of one utterance; `logits` [T, V], `length` valid frames (None: all T)."""
        log_probs = _log_probs(logits, length, len(self.tokens))
        best = log_probs.argmax(axis=1)
        score = float(log_probs[np.arange(len(best)), best].sum())
        return _hypothesis(_words_from_frames(best.tolist(), self.tokens, self._blank, self._delimiter, self._unk),
                           score)

    def decode_batch(self, logits: Sequence[np.ndarray],
                     lengths: Sequence[int | None] | None = None) -> list[Hypothesis]:
        """`decode` for each utterance of a list (or a padded [B, T, V] array)."""
        return [self.decode(x, n) for x, n in zip(logits, _lengths(len(logits), lengths))]

    def decode_nbest(self, logits: np.ndarray, length: int | None = None, n: int = 10) -> list[Hypothesis]:
        """Greedy decoding has one hypothesis."""
        return [self.decode(logits, length)]


# ------------------------------------------------------------------------------------- pyctcdecode
class PyCTCDecodeBeam:
    """pyctcdecode's prefix beam search with a KenLM word LM.

    Args:
        vocab: Token -> id (the model's vocab.json); label i is logit column i.
        kenlm_path: `.arpa` or KenLM binary file.
        unigrams: The LM's words. Needed for a binary LM (pyctcdecode reads them only from ARPA) and
            used to score partial words; None reads them from an ARPA file.
        options: Search knobs.
    """

    def __init__(self, vocab: Mapping[str, int], kenlm_path: str | os.PathLike,
                 unigrams: Iterable[str] | None = None, options: PyCTCDecodeOptions | None = None) -> None:
        import kenlm
        from pyctcdecode import Alphabet, BeamSearchDecoderCTC, LanguageModel
        from pyctcdecode.language_model import load_unigram_set_from_arpa

        self.options = options or PyCTCDecodeOptions()
        self.vocab_size = len(vocab)
        labels = pyctcdecode_labels(vocab)
        hotword_words(self.options.hotwords, vocab)  # one it cannot spell would never match, silently
        kenlm_path = Path(kenlm_path)
        if not kenlm_path.is_file():
            raise FileNotFoundError(f"KenLM file {str(kenlm_path)!r} does not exist; build one with "
                                    "scripts/build_lm.py.")
        if unigrams is None:
            if kenlm_path.suffix != ".arpa":
                raise ValueError(f"{kenlm_path.name} is a binary LM, from which pyctcdecode cannot read the words; "
                                 f"pass unigrams= (the LM directory's unigrams.txt, see asr.decoders).")
            unigrams = load_unigram_set_from_arpa(str(kenlm_path))
        unigrams = set(unigrams)
        if WORD_DELIMITER in unigrams:
            raise ValueError(f"{kenlm_path.name} is a token-level LM (its words include {WORD_DELIMITER!r}), which "
                             "pyctcdecode would treat as words; use FlashlightBeam with lexicon_free=True, or build "
                             "a word LM.")
        # before KenLM loads; words the tokens cannot spell never end a beam, so pyctcdecode needs only the others
        words = spellable_words(unigrams, vocab, str(kenlm_path))
        language_model = LanguageModel(
            kenlm.Model(str(kenlm_path)), words,
            alpha=self.options.alpha, beta=self.options.beta,
            unk_score_offset=self.options.unk_score_offset, score_boundary=self.options.score_boundary,
        )
        # Labels are given already mapped, so pyctcdecode's guessing (and its logging) is not relied on.
        self._decoder = BeamSearchDecoderCTC(Alphabet(labels, is_bpe=False), language_model)
        self._blank = vocab[PAD]


    def __del__(self) -> None:
        # pyctcdecode keeps every LM in a class-level dict; free ours with the decoder.
        decoder = getattr(self, "_decoder", None)
        if decoder is not None:
            decoder.cleanup()

    def _search_kwargs(self) -> dict[str, Any]:
        """Keyword arguments of pyctcdecode's decode_beams*."""
        o = self.options
        return dict(beam_width=o.beam_width, beam_prune_logp=o.beam_prune_logp, token_min_logp=o.token_min_logp,
                    hotwords=list(o.hotwords) or None, hotword_weight=o.hotword_weight)

    def _searched(self, log_probs: np.ndarray) -> IdleFrames:
        """What the search runs on: `log_probs` without idle frames (all of them when skipping is off)."""
        if not self.options.skip_idle_frames:
            return IdleFrames.none(log_probs)
        return IdleFrames.drop(log_probs, self._blank, self.options.token_min_logp)

    def _to_hypotheses(self, beams: Sequence[tuple], idle: IdleFrames) -> list[Hypothesis]:
        """pyctcdecode beams (text, ..., [(word, (start, end))], logit score, total score) on `idle.log_probs`
        -> Hypotheses with the frames and scores of the original log-probs."""
        out = []
        for beam in beams:
            frames, total = beam[-3], beam[-1]
            words = []
            for word, (start, end) in frames:
                word = word.replace(PYCTCDECODE_UNK, "")
                if word:
                    words.append(WordSpan(word, idle.original_start(start), idle.original_end(end)))
            out.append(_hypothesis(words, total + idle.dropped_blank_logp))
        return out

    def decode_nbest(self, logits: np.ndarray, length: int | None = None, n: int = 10) -> list[Hypothesis]:
        """Up to `n` hypotheses with distinct text, best first.

        Args:
            logits: [T, V] log-probs (raw logits are log-softmaxed) of one utterance.
            length: Valid frames; None uses all T.
            n: Hypotheses wanted; at most `options.beam_width` exist.
        """
        log_probs = _log_probs(logits, length, self.vocab_size)
        if log_probs.shape[0] == 0:
            return [Hypothesis("", (), 0.0)]
        idle = self._searched(log_probs)
        beams = self._decoder.decode_beams(idle.log_probs, prune_history=False, **self._search_kwargs())
        return _unique_texts(self._to_hypotheses(beams, idle), n)

    def decode(self, logits: np.ndarray, length: int | None = None) -> Hypothesis:
        """Best hypothesis of one utterance; `logits` [T, V] log-probs, `length` valid frames (None: all)."""
        log_probs = _log_probs(logits, length, self.vocab_size)
        if log_probs.shape[0] == 0:
            return Hypothesis("", (), 0.0)
        idle = self._searched(log_probs)
        beams = self._decoder.decode_beams(idle.log_probs, prune_history=self.options.prune_history,
                                           **self._search_kwargs())
        return self._to_hypotheses(beams[:1], idle)[0]

    def decode_batch(self, logits: Sequence[np.ndarray],
                     lengths: Sequence[int | None] | None = None) -> list[Hypothesis]:
        """Best hypothesis of each utterance, on a fork pool of `options.num_processes` workers if > 1.

        Args:
            logits: [T_i, V] log-probs per utterance (a list, or a padded [B, T, V] array).
            lengths: Valid frames per utterance; None uses every frame.
        """
        batch = [_log_probs(x, n, self.vocab_size) for x, n in zip(logits, _lengths(len(logits), lengths))]
        workers = min(self.options.num_processes, len(batch))
        if workers <= 1:
            return [self.decode(x) for x in batch]
        nonempty = [i for i, x in enumerate(batch) if x.shape[0]]
        idle = {i: self._searched(batch[i]) for i in nonempty}
        searched = [idle[i].log_probs for i in nonempty]
        # Workers inherit the LM from this process (pyctcdecode keeps it in a class attribute), which
        # only fork provides; spawn would make pyctcdecode fall back to one process with a warning.
        with multiprocessing.get_context("fork").Pool(workers) as pool:
            results = self._decoder.decode_beams_batch(pool, searched, prune_history=self.options.prune_history,
                                                       **self._search_kwargs())
        out = [Hypothesis("", (), 0.0)] * len(batch)
        for i, beams in zip(nonempty, results):
            out[i] = self._to_hypotheses(beams[:1], idle[i])[0]
        return out


# -------------------------------------------------------------------------------------- flashlight
class HotwordLM(FlashlightLM):
    """A flashlight LM (KenLM) whose score of each boosted word gets a bonus: flashlight's LM interface in Python.

    The lexicon decoder adds `lm_weight * score` when a word is completed, so a bonus of
    `hotword_weight / lm_weight` here adds `hotword_weight` to the hypothesis, as pyctcdecode's hotwords
    do. States are the wrapped LM's, so hypotheses merge exactly as without the wrapper. Every word
    completion now calls into Python: ~1.5x the decode time, paid only when hotwords are given.

    Args:
        lm: The flashlight LM to wrap (flashlight.lib.text.decoder.kenlm.KenLM).
        bonus: Word index (in the LM's word dictionary) -> score added, in the LM's units (log10).
    """

    def __init__(self, lm: FlashlightLM, bonus: Mapping[int, float]) -> None:
        FlashlightLM.__init__(self)
        self._wrapped, self._bonus = lm, dict(bonus)

    def start(self, start_with_nothing: bool):
        return self._wrapped.start(start_with_nothing)

    def score(self, state, word: int):
        next_state, score = self._wrapped.score(state, word)
        return next_state, score + self._bonus.get(word, 0.0)

    def finish(self, state):
        return self._wrapped.finish(state)


class FlashlightBeam:
    """flashlight-text's beam search (what torchaudio's `ctc_decoder` wraps) with a KenLM word LM.

    With a lexicon (the default), words are restricted to the LM's unigrams that the vocabulary can
    spell, each spelled `w o r d |`; the LM scores whole words. Lexicon-free (`options.lexicon_free`)
    spells any token sequence and scores every token with the LM, so it needs a token-level LM
    (`lm.build_lm` with `unit="token"`: n-grams of "t h e | c a t"); with a word LM most tokens are
    `<unk>` to it and the result is worse than greedy.

    Hotwords (`options.hotwords`, lexicon only) join the lexicon, spelled with the model's tokens, even
    when the LM does not know them (it scores them as `<unk>`), and each completed one scores
    `options.hotword_weight` more (see HotwordLM); phrases are boosted word by word.

    Args:
        vocab: Token -> id (the model's vocab.json); token i is logit column i.
        kenlm_path: `.arpa` or KenLM binary file.
        unigrams: The LM's words (the lexicon); None reads them from an ARPA file.
        options: Search knobs.
    """

    def __init__(self, vocab: Mapping[str, int], kenlm_path: str | os.PathLike,
                 unigrams: Iterable[str] | None = None, options: FlashlightOptions | None = None) -> None:
        from flashlight.lib.text.decoder import (
            CriterionType,
            LexiconDecoder,
            LexiconDecoderOptions,
            LexiconFreeDecoder,
            LexiconFreeDecoderOptions,
            SmearingMode,
            Trie,
        )
        from flashlight.lib.text.decoder.kenlm import KenLM
        from flashlight.lib.text.dictionary import Dictionary

        self.options = o = options or FlashlightOptions()
        self.tokens = tokens_in_id_order(vocab)
        self._blank, self._delimiter, self._unk = vocab[PAD], vocab[WORD_DELIMITER], vocab.get(UNK)
        kenlm_path = Path(kenlm_path)
        if not kenlm_path.is_file():
            raise FileNotFoundError(f"KenLM file {str(kenlm_path)!r} does not exist; build one with "
                                    "scripts/build_lm.py.")
        token_dict = Dictionary(self.tokens)
        beam_size_token = o.beam_size_token or len(self.tokens)
        hotwords = hotword_words(o.hotwords, vocab)
        if hotwords and (o.lexicon_free or o.lm_weight <= 0):
            logger.warning("hotwords %s are ignored: flashlight boosts them through the lexicon's LM scores, which %s; "
                           "use the lexicon with lm_weight > 0, or the beam decoder (pyctcdecode).", hotwords,
                           "a lexicon-free search has not" if o.lexicon_free else f"lm_weight={o.lm_weight:g} zeroes")
            hotwords = []
        if o.lexicon_free:
            if unigrams is not None and WORD_DELIMITER not in set(unigrams):
                logger.warning("Lexicon-free decoding with a word-level LM: the LM scores each token as a word, "
                               "mostly <unk>, which hurts more than it helps; build a token LM "
                               "(scripts/build_lm.py --unit token) or use the lexicon.")
            self._lm = KenLM(str(kenlm_path), token_dict)
            decoder_options = LexiconFreeDecoderOptions(
                beam_size=o.beam_size, beam_size_token=beam_size_token, beam_threshold=o.beam_threshold,
                lm_weight=o.lm_weight, sil_score=o.sil_score, log_add=o.log_add, criterion_type=CriterionType.CTC)
            self._decoder = LexiconFreeDecoder(decoder_options, self._lm, self._delimiter, self._blank, [])
            self.lexicon_size = 0
            return

        if unigrams is None:
            if kenlm_path.suffix != ".arpa":
                raise ValueError(f"{kenlm_path.name} is a binary LM, from which the lexicon cannot be read; pass "
                                 f"unigrams= (the LM directory's unigrams.txt, see asr.decoders).")
            unigrams = read_arpa_unigrams(kenlm_path)
        unigrams = set(unigrams)
        if WORD_DELIMITER in unigrams:
            raise ValueError(f"{kenlm_path.name} is a token-level LM (its words include {WORD_DELIMITER!r}), so it "
                             "makes no lexicon; pass FlashlightOptions(lexicon_free=True) or build a word LM.")
        spellable = spellable_words(unigrams, vocab, str(kenlm_path))
        known = set(spellable)
        spellable += [word for word in hotwords if word not in known]  # KenLM scores these as <unk>
        word_dict = Dictionary(spellable + [FLASHLIGHT_UNK_WORD])
        self._lm = KenLM(str(kenlm_path), word_dict)
        if hotwords:  # only then: without hotwords the search runs on KenLM alone, in C++
            bonus = o.hotword_weight / o.lm_weight  # the decoder multiplies LM scores by lm_weight
            self._lm = HotwordLM(self._lm, {word_dict.get_index(word): bonus for word in hotwords})
        trie = Trie(len(self.tokens), self._delimiter)
        start = self._lm.start(False)
        for index, word in enumerate(spellable):
            # Each spelling ends in the word delimiter, so a word is complete only where "|" was emitted.
            spelling = [vocab[char] for char in word] + [self._delimiter]
            _, unigram_score = self._lm.score(start, index)
            trie.insert(spelling, index, unigram_score)
        # Partial words carry the best unigram score below them (a hotword's with its bonus), so pruning sees the
        # LM before the word ends.
        trie.smear(SmearingMode.MAX)
        decoder_options = LexiconDecoderOptions(
            beam_size=o.beam_size, beam_size_token=beam_size_token, beam_threshold=o.beam_threshold,
            lm_weight=o.lm_weight, word_score=o.word_score, unk_score=o.unk_score, sil_score=o.sil_score,
            log_add=o.log_add, criterion_type=CriterionType.CTC)
        self._decoder = LexiconDecoder(decoder_options, trie, self._lm, self._delimiter, self._blank,
                                       word_dict.get_index(FLASHLIGHT_UNK_WORD), [], False)
        self.lexicon_size = len(spellable)
        self._trie = trie  # the decoder holds a shared pointer, but keep the Python side alive too


    def _search(self, logits: np.ndarray, length: int | None) -> tuple[list, IdleFrames]:
        """flashlight's final hypotheses (best first) and the frames searched."""
        log_probs = _log_probs(logits, length, len(self.tokens))
        if self.options.idle_token_logp is None:
            idle = IdleFrames.none(log_probs)
        else:
            idle = IdleFrames.drop(log_probs, self._blank, self.options.idle_token_logp)
        if idle.log_probs.shape[0] == 0:
            return [], idle
        emissions = idle.log_probs
        if not self.options.lexicon_free:
            # Lexicon spellings end in "|", which CTC labels (and so models) lack after the last word:
            # one extra frame that is certainly "|" lets the last word end without taking a real frame.
            closing = np.full((1, len(self.tokens)), -1e4, dtype=np.float32)
            closing[0, self._delimiter] = 0.0
            emissions = np.ascontiguousarray(np.concatenate([emissions, closing]))
        num_frames, num_tokens = emissions.shape
        results = self._decoder.decode(emissions.ctypes.data, num_frames, num_tokens)
        return sorted(results, key=lambda r: -r.score), idle

    def _to_hypothesis(self, result, idle: IdleFrames) -> Hypothesis:
        """DecodeResult -> Hypothesis on the original frames; `result.tokens` has one entry per searched frame plus
        one at each end."""
        frame_tokens = list(result.tokens)[1 : idle.log_probs.shape[0] + 1]
        words = _words_from_frames(frame_tokens, self.tokens, self._blank, self._delimiter, self._unk)
        words = [WordSpan(w.word, idle.original_start(w.start), idle.original_end(w.end)) for w in words]
        return _hypothesis(words, result.score + idle.dropped_blank_logp)

    def decode(self, logits: np.ndarray, length: int | None = None) -> Hypothesis:
        """Best hypothesis of one utterance.

        Args:
            logits: [T, V] log-probs (raw logits are log-softmaxed).
            length: Valid frames; None uses all T.
        """
        results, idle = self._search(logits, length)
        return self._to_hypothesis(results[0], idle) if results else Hypothesis("", (), 0.0)

    def decode_batch(self, logits: Sequence[np.ndarray],
                     lengths: Sequence[int | None] | None = None) -> list[Hypothesis]:
        """`decode` for each utterance of a list (or a padded [B, T, V] array), on a fork pool of
        `options.num_processes` workers if > 1 (the same hypotheses as in one process)."""
        batch = list(zip(logits, _lengths(len(logits), lengths)))
        workers = min(self.options.num_processes, len(batch))
        if workers <= 1:
            return [self.decode(x, n) for x, n in batch]
        # Several interleaved chunks per worker balance long and short utterances. Workers inherit this decoder
        # (its LM and trie are C++ objects that cannot be pickled) and the log-probs by fork; hypotheses come back.
        chunks = interleaved_chunks(len(batch), workers * 4)
        return in_item_order(chunks, fork_map(_decode_chunk, chunks, workers, {"decoder": self, "batch": batch}),
                             len(batch))

    def decode_nbest(self, logits: np.ndarray, length: int | None = None, n: int = 10) -> list[Hypothesis]:
        """Up to `n` hypotheses with distinct text, best first; `logits` [T, V], `length` valid frames."""
        results, idle = self._search(logits, length)
        if not results:
            return [Hypothesis("", (), 0.0)]
        return _unique_texts((self._to_hypothesis(r, idle) for r in results), n)


def _decode_chunk(state: Mapping[str, Any], indices: list[int]) -> list[Hypothesis]:
    """Pool worker: the inherited decoder's hypotheses for these utterances of the inherited batch."""
    decoder, batch = state["decoder"], state["batch"]
    return [decoder.decode(*batch[i]) for i in indices]


# ------------------------------------------------------------------------------------------ oracle
def oracle_texts(references: Sequence[str], nbest: Sequence[Sequence[Hypothesis]]) -> list[str]:
    """Per utterance, the n-best hypothesis closest to the reference (for oracle WER).

    Args:
        references: Normalised reference transcripts.
        nbest: Each utterance's hypotheses (from `decode_nbest`).

    Returns:
        One text per utterance; `error_rates(references, oracle_texts(...))` is the oracle WER, the
        floor a perfect rescorer of these n-best lists could reach.
    """
    if len(references) != len(nbest):
        raise ValueError(f"{len(references)} references but {len(nbest)} n-best lists; they must pair up.")
    return [min((h.text for h in hyps), key=lambda text: word_edits(ref, text), default="")
            for ref, hyps in zip(references, nbest)]
