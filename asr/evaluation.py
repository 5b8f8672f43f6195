"""Evaluating a CTC model: the acoustic model runs once (log-probs cached), then decoders side by side.

    $ .venv/bin/python scripts/eval.py --model runs/x/model --data data/synth/test.jsonl --decoder all --output eval/x

Stages, each usable on its own:

1. `compute_acoustic`: read a source (`asr.sources`), drop unreadable/empty/too short or long items
   with a report (`asr.filters`, audio verified, no CTC check), run the model batched by length
   (`asr.inference`), sharded across processes when given an Accelerator, and cache the float32
   log-probs under a key of model files + data + settings. A second run (another decoder, tuning)
   reads the cache and never loads the model.
2. `decode_all` per decoder (`greedy`, `beam` = pyctcdecode + KenLM, `flashlight` = flashlight-text +
   KenLM, lexicon or lexicon-free), timed.
3. `asr.report`: `score_run` rows, `EvalReport` (the side-by-side table, decoder agreement, padding
   check) and `write_results`: results.md/.json/.csv, utterances.jsonl/.csv, comparison.png, dropped.jsonl.
4. `asr.tuning.tune`: alpha/beta (and beam width) grid search on cached log-probs over a fork pool,
   n-best oracle WER at the best point; `asr.tuning.save_tuned` writes the winners into the LM directory.

Tuned values live in the LM directory, where every later decode finds them (`load_decoder_settings`):

    language_model/attrs.json   alpha, beta  (pyctcdecode's own file: Wav2Vec2ProcessorWithLM reads it too)
    decoder.json                {"pyctcdecode": {alpha, beta, beam_width}, "flashlight": {lm_weight,
                                word_score, beam_size}, "tuned": {data, utterances, grid, wer, ...}}

decoder.json sits beside `language_model/` because pyctcdecode refuses unknown files inside it, and
`lm_info.json` stays the build report. Without decoder.json, flashlight follows attrs.json through
`lm_weight = alpha * ln(10)`, `word_score = beta` (same objective, see asr.beam).

Padding: models whose feature extractor takes no attention mask (group-norm encoders such as
wav2vec2-base and this project's from-scratch configs) see the zero padding of a batch: the first
conv layer's group norm normalises over it and attention attends to it, so batched log-probs differ
from one-by-one ones. For them an utterance is batched only with ones at most `max_padding` (2%)
longer, and `check_padding` measures what is left on a sample (log-prob and probability deviation,
frames whose argmax changed, greedy transcripts that changed, greedy WER both ways). Models with an
attention mask are batched freely by length and differ only by float rounding.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import logging
import os
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from asr.audio import AudioError, load_audio
from asr.beam import GreedyCTC
from asr.confidence import (
    CONFIDENCE_FILE,
    WordLM,
    fit_calibration,
    labelled_words,
    save_calibrations,
    word_features,
)
from asr.decoders import BEAM_DECODERS, DECODER_FILE, DecoderSettings, build_decoder, describe_settings
from asr.constants import SAMPLE_RATE
from asr.defaults import (
    DEFAULT_CACHE_DIR,
    DEFAULT_MAX_BATCH_SECONDS,
    DEFAULT_MAX_PADDING,
    DEFAULT_PADDING_SAMPLE,
    EVAL_MAX_DURATION,
    EVAL_MIN_DURATION,
)
from asr.files import atomic_path
from asr.filters import Drop, FilterConfig, PreparedItem, apply_filters
from asr.metrics import error_rates
from asr.sources import SourceConfig, Utterance, load_source
from asr.text import TextNormalizer, load_model_text_config

logger = logging.getLogger(__name__)

CACHE_VERSION = 1  # bump when the cache file layout or what goes into the key changes
FAILED_AUDIO = ("missing_audio", "unreadable_audio")  # drop reasons that mean a file failed, not a filter
# Files of a model directory that change its log-probs or references; the LM and eval outputs do not.
_MODEL_FILE_SUFFIXES = (".safetensors", ".bin", ".pt", ".json")
_HASH_CHUNK = 1 << 20  # bytes read at a time when hashing weights


def eval_filters(min_duration: float = EVAL_MIN_DURATION, max_duration: float = EVAL_MAX_DURATION) -> FilterConfig:
    """The filters for evaluation: every file decoded once to verify it; no CTC-feasibility check."""
    return FilterConfig(min_duration=min_duration, max_duration=max_duration, verify_audio=True,
                        drop_unknown_chars=False)


# ------------------------------------------------------------------------------------------ acoustic
@dataclass
class AcousticOutput:
    """Log-probs of every kept utterance, in source order, and what it took to compute them.

    `log_probs[i]` is float32 [T_i, V]: log-softmax over the vocabulary, cut to the utterance's
    valid frames (20 ms each for wav2vec2).
    """

    ids: list[str]
    references: list[str]  # normalised like the model's labels
    durations: list[float]  # seconds
    log_probs: list[np.ndarray]
    drops: list[Drop]  # every item left out, with its reason
    seconds: float  # wall-clock of audio decoding + forward passes (+ gathering), model loading excluded
    num_processes: int
    max_batch_seconds: float
    max_padding: float | None = None  # the padding bound applied (None: the model masks padding, no bound)
    key: str = ""
    from_cache: bool = False

    @property
    def audio_seconds(self) -> float:
        """Total audio of the kept utterances."""
        return float(sum(self.durations))

    @property
    def rtf(self) -> float:
        """Real-time factor of the acoustic pass: seconds of compute per second of audio."""
        return self.seconds / max(self.audio_seconds, 1e-9)


def model_fingerprint(model_dir: str | os.PathLike) -> str:
    """Hash of the model directory's weights, configs, vocabulary and normaliser (file contents)."""
    digest = hashlib.blake2b(digest_size=16)
    for path in sorted(Path(model_dir).iterdir()):
        if not path.is_file() or path.suffix not in _MODEL_FILE_SUFFIXES or path.name == DECODER_FILE:
            continue
        if path.name in ("lm_info.json", "alphabet.json", "metrics.json", CONFIDENCE_FILE):
            continue  # written beside the model by build_lm/training reports/--calibrate; they do not change log-probs
        digest.update(path.name.encode())
        with open(path, "rb") as f:
            while chunk := f.read(_HASH_CHUNK):
                digest.update(chunk)
    return digest.hexdigest()


def data_fingerprint(utterances: Sequence[Utterance]) -> str:
    """Hash of the utterances: ids, transcripts, and each audio file's path, size and mtime (or its bytes)."""
    digest = hashlib.blake2b(digest_size=16)
    for u in utterances:
        digest.update(json.dumps([u.id, u.text, u.audio_path]).encode())
        if u.audio_bytes is not None:
            digest.update(hashlib.blake2b(u.audio_bytes, digest_size=16).digest())
        elif u.audio_path is not None:
            try:
                st = os.stat(u.audio_path)
                digest.update(f"{st.st_size}:{st.st_mtime_ns}".encode())
            except OSError:
                digest.update(b"missing")  # becomes a drop; a file appearing later changes the key
    return digest.hexdigest()


def acoustic_cache_key(model_dir: str | os.PathLike, utterances: Sequence[Utterance], filters: FilterConfig,
                       max_batch_seconds: float, max_padding: float | None = DEFAULT_MAX_PADDING) -> str:
    """The cache key: model files, data, filters and batching (padding changes mask-less models' output)."""
    parts = [str(CACHE_VERSION), model_fingerprint(model_dir), data_fingerprint(utterances),
             json.dumps(dataclasses.asdict(filters), sort_keys=True), repr(float(max_batch_seconds)),
             repr(max_padding)]
    return hashlib.blake2b("|".join(parts).encode(), digest_size=12).hexdigest()


def save_acoustic_cache(output: AcousticOutput, path: str | os.PathLike) -> Path:
    """Write log-probs and metadata to one .npz (atomically); returns the path."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    frames = np.array([0] + [len(x) for x in output.log_probs], dtype=np.int64)
    vocab_size = output.log_probs[0].shape[1] if output.log_probs else 0
    stacked = (np.concatenate(output.log_probs).astype(np.float32, copy=False) if output.log_probs
               else np.zeros((0, vocab_size), np.float32))
    meta = {"version": CACHE_VERSION, "ids": output.ids, "references": output.references,
            "durations": output.durations, "drops": [d.to_dict() for d in output.drops],
            "seconds": output.seconds, "num_processes": output.num_processes,
            "max_batch_seconds": output.max_batch_seconds, "max_padding": output.max_padding, "key": output.key}
    with atomic_path(path) as tmp, open(tmp, "wb") as f:
        np.savez(f, log_probs=stacked, offsets=np.cumsum(frames), meta=np.array(json.dumps(meta)))
    return path


def load_acoustic_cache(path: str | os.PathLike) -> AcousticOutput | None:
    """The cached output at `path`, or None when absent or unreadable (then it is recomputed)."""
    path = Path(path)
    if not path.is_file():
        return None
    try:
        with np.load(path, allow_pickle=False) as data:
            meta = json.loads(str(data["meta"]))
            stacked, offsets = data["log_probs"], data["offsets"]
    except (OSError, ValueError, KeyError) as e:
        logger.warning("ignoring unreadable log-prob cache %s (%s); recomputing", path, e)
        return None
    if meta.get("version") != CACHE_VERSION:
        return None
    log_probs = [stacked[a:b] for a, b in zip(offsets[:-1], offsets[1:])]
    return AcousticOutput(ids=meta["ids"], references=meta["references"], durations=meta["durations"],
                          log_probs=log_probs, drops=[Drop(**d) for d in meta["drops"]], seconds=meta["seconds"],
                          num_processes=meta["num_processes"], max_batch_seconds=meta["max_batch_seconds"],
                          max_padding=meta["max_padding"], key=meta["key"], from_cache=True)


def prepare_eval_set(utterances: Sequence[Utterance], normalizer: TextNormalizer, vocab: dict[str, int],
                     filters: FilterConfig | None = None, num_workers: int | None = None,
                     ) -> tuple[list[PreparedItem], list[Drop]]:
    """Normalised references and verified audio; unreadable, empty or out-of-range items become Drops."""
    return apply_filters(utterances, normalizer, vocab, filters or eval_filters(), frames_fn=None,
                         num_workers=num_workers)


def shard_indices(durations: Sequence[float], rank: int, world_size: int) -> list[int]:
    """This rank's items: every `world_size`-th of the length-sorted order, so ranks get equal audio."""
    order = sorted(range(len(durations)), key=lambda i: durations[i])
    return order[rank::world_size]


def padding_bounded_batches(lengths: Sequence[int], max_samples: int, max_padding: float | None) -> list[list[int]]:
    """`asr.inference.plan_batches`, each batch split further so no item is padded by more than `max_padding`.

    An item of length l in a batch whose longest item has length L is padded by (L - l) / L; None
    (or >= 1) leaves the batches as planned.
    """
    from asr.inference import plan_batches

    batches = plan_batches(lengths, max_samples)
    if max_padding is None or max_padding >= 1:
        return batches
    out = []
    for batch in batches:  # ascending length: the first item is the shortest, the newest the longest
        current: list[int] = []
        for i in batch:
            if current and lengths[current[0]] < (1 - max_padding) * lengths[i]:
                out.append(current)
                current = []
            current.append(i)
        out.append(current)
    return out


def run_acoustic_model(loaded: Any, items: Sequence[PreparedItem], indices: Sequence[int],
                       max_batch_seconds: float = DEFAULT_MAX_BATCH_SECONDS,
                       max_padding: float | None = DEFAULT_MAX_PADDING, progress: bool = False,
                       ) -> tuple[dict[int, np.ndarray], list[Drop]]:
    """Log-probs of `items[i]` for each i in `indices`, in length-sorted batches.

    Args:
        loaded: `asr.inference.LoadedModel`.
        items: The evaluation set.
        indices: Which items to run (this process's shard).
        max_batch_seconds: Padded audio per forward pass; 0 runs one utterance per pass.
        max_padding: Largest share of padding for an utterance, for models without an attention
            mask (see `padding_bounded_batches`); ignored for models that mask padding.
        progress: Show a tqdm bar.

    Returns:
        (index -> float32 [T, V] log-probs, drops): an item whose audio fails to load now (it was
        verified earlier, so the file changed since) is dropped, not fatal.
    """
    from asr.inference import log_probs_batch

    lengths = [round(items[i].duration * SAMPLE_RATE) for i in indices]
    bound = None if loaded.return_attention_mask else max_padding
    batches = padding_bounded_batches(lengths, int(max_batch_seconds * SAMPLE_RATE), bound)
    bar = None
    if progress:
        from tqdm.auto import tqdm

        bar = tqdm(total=len(indices), desc="acoustic model", unit="utt", dynamic_ncols=True)
    out: dict[int, np.ndarray] = {}
    drops: list[Drop] = []
    for batch in batches:
        chosen, audios = [], []
        for b in batch:
            item = items[indices[b]]
            try:
                audios.append(load_audio(item.audio_bytes if item.audio_bytes is not None else item.audio_path))
                chosen.append(indices[b])
            except AudioError as e:
                drops.append(Drop(item.id, item.audio_path, "unreadable_audio", str(e)))
        if audios:
            for i, lp in zip(chosen, log_probs_batch(loaded, audios)):
                out[i] = lp
        if bar is not None:
            bar.update(len(batch))
    if bar is not None:
        bar.close()
    return out, drops


def compute_acoustic(
    model_dir: str | os.PathLike,
    utterances: Sequence[Utterance],
    *,
    filters: FilterConfig | None = None,
    max_batch_seconds: float = DEFAULT_MAX_BATCH_SECONDS,
    max_padding: float | None = DEFAULT_MAX_PADDING,
    cache_dir: str | os.PathLike | None = DEFAULT_CACHE_DIR,
    accelerator: Any = None,
    progress: bool = False,
) -> AcousticOutput | None:
    """Log-probs of a whole evaluation set, from the cache or by running the model once.

    With an `accelerate.Accelerator` of N processes, the main process filters the data, every
    process runs the model on every N-th utterance of the length-sorted order, and the log-probs
    are gathered to the main process (`gather_object`). Call it on every process.

    Args:
        model_dir: A model directory written by training (model + processor + normalizer.json).
        utterances: The source's records (`asr.sources.load_source`).
        filters: Eval filters; None uses `eval_filters()`.
        max_batch_seconds: Padded audio per forward pass; 0 runs one utterance per pass.
        max_padding: Mask-less models: largest share of padding for an utterance; None: no bound.
        cache_dir: Where log-probs are cached by key; None neither reads nor writes a cache.
        accelerator: Shards the work across its processes; None runs in this process.
        progress: Show a tqdm bar (main process).

    Returns:
        The output on the main process, None on the others.
    """
    from asr.inference import load_model

    filters = filters or eval_filters()
    world = accelerator.num_processes if accelerator is not None else 1
    rank = accelerator.process_index if accelerator is not None else 0
    key = acoustic_cache_key(model_dir, utterances, filters, max_batch_seconds, max_padding)
    path = Path(cache_dir) / f"{key}.npz" if cache_dir is not None else None
    cached = load_acoustic_cache(path) if path is not None and rank == 0 else None
    if _broadcast(accelerator, cached is not None):
        if cached is not None:
            logger.info("log-probs of %d utterances read from the cache %s (computed in %.1f s); the model is "
                        "not run", len(cached.ids), path, cached.seconds)
        return cached

    items, drops = [], []
    if rank == 0:
        normalizer, vocab = load_model_text_config(model_dir)
        items, drops = prepare_eval_set(utterances, normalizer, vocab, filters)
        logger.info("%d of %d utterances kept for evaluation (%.1f min of audio)", len(items), len(utterances),
                    sum(i.duration for i in items) / 60)
    items, drops = _broadcast(accelerator, (items, drops))
    if not items:
        raise ValueError(f"No utterance of the {len(utterances)} given is usable ({_drop_summary(drops)}); check the "
                         "audio files and transcripts.")
    device = accelerator.device if accelerator is not None else "cpu"
    loaded = load_model(model_dir, device=device)
    # Timed from here: audio decoding + forward passes + gathering, what every decoder row shares.
    started = time.perf_counter()
    shard = shard_indices([i.duration for i in items], rank, world)
    part, late_drops = run_acoustic_model(loaded, items, shard, max_batch_seconds, max_padding,
                                          progress and rank == 0)
    parts = _gather(accelerator, (part, late_drops))
    seconds = time.perf_counter() - started
    if rank != 0:
        return None
    log_probs: dict[int, np.ndarray] = {}
    for part, late in parts:
        log_probs.update(part)
        drops = drops + late
    kept = [i for i in range(len(items)) if i in log_probs]
    output = AcousticOutput(
        ids=[items[i].id for i in kept], references=[items[i].text for i in kept],
        durations=[items[i].duration for i in kept], log_probs=[log_probs[i] for i in kept], drops=drops,
        seconds=seconds, num_processes=world, max_batch_seconds=max_batch_seconds,
        max_padding=None if loaded.return_attention_mask else max_padding, key=key)
    logger.info("acoustic model: %.1f s for %.1f s of audio (RTF %.3f) on %d process(es)", seconds,
                output.audio_seconds, output.rtf, world)
    if path is not None:
        save_acoustic_cache(output, path)
        logger.info("log-probs cached in %s", path)
    return output


def compute_source_acoustic(model_dir: str | os.PathLike, source: SourceConfig,
                            **options: Any) -> tuple[AcousticOutput | None, dict[str, Utterance]]:
    """A source's log-probs (`compute_acoustic` with `options`; None on non-main processes) and its utterances by id.

    Raises:
        ValueError: The source cannot be read or holds no usable utterance.
    """
    utterances = load_source(source)
    return compute_acoustic(model_dir, utterances, **options), {u.id: u for u in utterances}


def _broadcast(accelerator: Any, value: Any) -> Any:
    """`value` of the main process, on every process."""
    if accelerator is None or accelerator.num_processes == 1:
        return value
    from accelerate.utils import broadcast_object_list

    box = [value]
    broadcast_object_list(box, from_process=0)
    return box[0]


def _gather(accelerator: Any, value: Any) -> list[Any]:
    """Every process's `value`, in rank order (on every process)."""
    if accelerator is None or accelerator.num_processes == 1:
        return [value]
    from accelerate.utils import gather_object

    return gather_object([value])


def _drop_summary(drops: Sequence[Drop]) -> str:
    """`3 unreadable_audio, 1 too_short`."""
    from asr.filters import summarize

    counts: dict[str, int] = {}
    for d in drops:
        counts[d.reason] = counts.get(d.reason, 0) + 1
    return summarize(counts) or "nothing dropped"


# ------------------------------------------------------------------------------------------- padding
@dataclass(frozen=True)
class PaddingCheck:
    """Batched vs one-by-one log-probs on a sample of utterances (see the module docstring)."""

    utterances: int
    attention_mask: bool  # whether the model is given a mask over padding
    max_padding: float | None  # the bound the batches were made with (None: no bound)
    max_abs_diff: float  # largest |batched - single| log-prob over every frame and token checked
    mean_abs_diff: float  # dominated by improbable tokens, whose log-probs move most
    max_prob_diff: float  # largest |batched - single| probability: what moves the decoders
    frames: int
    frames_argmax_changed: int  # frames whose best token differs
    texts_changed: int  # utterances whose greedy transcript differs
    wer_batched: float  # greedy WER of the sample, batched log-probs
    wer_single: float  # the same, one utterance at a time

    def explanation(self) -> str:
        """One paragraph on what the numbers mean for this model."""
        if self.attention_mask:
            cause = ("The model takes an attention mask, so padded frames are masked out of attention; what is left "
                     "is float rounding from different batch shapes.")
        else:
            cause = ("The model takes no attention mask (group-norm feature encoder, as wav2vec2-base): in a batch "
                     "its first conv layer's group norm normalises over the zero padding and attention attends to the "
                     "padded frames, so batched log-probs differ from one-by-one ones. Batches are sorted by length"
                     + (f" and an utterance is padded by at most {100 * self.max_padding:g}% (max_padding)"
                        if self.max_padding is not None and self.max_padding < 1 else "")
                     + "; max_batch_seconds 0 runs one utterance per pass (exact, slower).")
        return (f"Batched vs one-by-one on {self.utterances} utterances: max |log-prob diff| {self.max_abs_diff:.2g} "
                f"(mean {self.mean_abs_diff:.2g}), max |probability diff| {self.max_prob_diff:.2g}; argmax changed on "
                f"{self.frames_argmax_changed} of {self.frames} "
                f"frames; {self.texts_changed} greedy transcript(s) changed; greedy WER {self.wer_batched:.4f} "
                f"batched vs {self.wer_single:.4f} one by one. {cause}")


def check_padding(loaded: Any, acoustic: AcousticOutput, audio: Mapping[str, str | bytes],
                  sample: int | None = DEFAULT_PADDING_SAMPLE) -> PaddingCheck:
    """Run a sample of utterances one at a time and compare with their batched log-probs.

    Args:
        loaded: `asr.inference.LoadedModel` the batched log-probs came from.
        acoustic: The batched output (fresh or cached).
        audio: Utterance id -> path or encoded bytes (`Utterance.audio`).
        sample: Utterances to check, spread evenly over the set; None checks all.
    """
    from asr.inference import log_probs_batch

    n = len(acoustic.ids)
    count = n if sample is None else max(0, min(sample, n))
    chosen = sorted({round(k * (n - 1) / max(count - 1, 1)) for k in range(count)}) if count else []
    greedy = GreedyCTC(loaded.vocab)
    max_diff, prob_diff, abs_sum, frames, changed_frames = 0.0, 0.0, 0.0, 0, 0
    refs, batched_texts, single_texts = [], [], []
    for i in chosen:
        single = log_probs_batch(loaded, [load_audio(audio[acoustic.ids[i]])])[0]
        batched = acoustic.log_probs[i]
        if single.shape != batched.shape:
            raise RuntimeError(f"Utterance {acoustic.ids[i]} gives {single.shape} log-probs alone but {batched.shape} "
                               "in the cache; clear the cache (--no-cache) if the audio or model changed in place.")
        diff = np.abs(single - batched)
        if diff.size:
            max_diff = max(max_diff, float(diff.max()))
            prob_diff = max(prob_diff, float(np.abs(np.exp(single) - np.exp(batched)).max()))
            abs_sum += float(diff.sum())
        frames += len(single)
        changed_frames += int((single.argmax(-1) != batched.argmax(-1)).sum())
        refs.append(acoustic.references[i])
        batched_texts.append(greedy.decode(batched).text)
        single_texts.append(greedy.decode(single).text)
    vocab_size = acoustic.log_probs[0].shape[1] if acoustic.log_probs else 1
    check = PaddingCheck(
        utterances=len(chosen), attention_mask=bool(loaded.return_attention_mask), max_padding=acoustic.max_padding,
        max_abs_diff=max_diff,
        mean_abs_diff=abs_sum / max(frames * vocab_size, 1), max_prob_diff=prob_diff, frames=frames,
        frames_argmax_changed=changed_frames,
        texts_changed=sum(a != b for a, b in zip(batched_texts, single_texts)),
        wer_batched=error_rates(refs, batched_texts).wer if refs else 0.0,
        wer_single=error_rates(refs, single_texts).wer if refs else 0.0)
    logger.info("padding check: %s", check.explanation())
    return check


# ------------------------------------------------------------------------------------------ decoding
@dataclass(frozen=True)
class DecodeRun:
    """One decoder's transcripts of a whole set, and its wall-clock time (LM loading excluded)."""

    decoder: str
    texts: list[str]
    seconds: float
    load_seconds: float  # building the decoder (loading the LM, the lexicon trie)
    processes: int
    settings: str
    # per utterance, each hypothesis word's confidence features [words, 3 or 4] (asr.confidence.word_features); None
    # for reference recognisers, which give no frame posteriors
    word_features: list[np.ndarray] | None = None


def decode_all(name: str, vocab: Mapping[str, int], log_probs: Sequence[np.ndarray],
               lm_dir: str | os.PathLike | None = None, settings: DecoderSettings | None = None) -> DecodeRun:
    """Decode every utterance with one decoder, timing the search.

    Args:
        name: greedy, beam or flashlight.
        vocab: Token -> id of the model.
        log_probs: [T_i, V] per utterance.
        lm_dir: LM directory (beam decoders).
        settings: Search settings; a beam decoder's `num_processes` > 1 decodes on a fork pool.
    """
    settings = settings or DecoderSettings()
    started = time.perf_counter()
    decoder = build_decoder(name, vocab, lm_dir, settings)
    loaded = time.perf_counter()
    hypotheses = decoder.decode_batch(list(log_probs))
    done = time.perf_counter()
    texts = [h.text for h in hypotheses]
    # outside the timed search; a beam decoder's words also get its LM's share
    lm = WordLM.from_dir(lm_dir) if name in BEAM_DECODERS and lm_dir is not None else None
    features = [word_features(lp, h, lm) for lp, h in zip(log_probs, hypotheses)]
    options = {"beam": settings.pyctcdecode, "flashlight": settings.flashlight}.get(name)
    processes = max(1, options.num_processes) if options is not None else 1
    logger.info("%s: %d utterances in %.2f s (+%.2f s loading)", name, len(texts), done - loaded, loaded - started)
    return DecodeRun(name, texts, done - loaded, loaded - started, processes, describe_settings(name, settings),
                     features)


def calibrate_decoders(model_dir: str | os.PathLike, decoders: Sequence[str], vocab: Mapping[str, int],
                       acoustic: AcousticOutput, lm_dir: str | os.PathLike | None = None,
                       settings: DecoderSettings | None = None, data: str | None = None) -> Path:
    """Fits each decoder's word-confidence calibration on a dev set and stores them beside the model.

    Each decoder decodes the dev set's log-probs with the settings it will be used with (after tuning);
    its words, right or wrong by alignment with the references, fit a logistic regression on their features
    (`asr.confidence.fit_calibration`), written to the model's confidence.json with the data it came from.

    Returns:
        The path of confidence.json.
    """
    calibrations = {}
    for name in decoders:
        run = decode_all(name, vocab, acoustic.log_probs, lm_dir, settings)
        rows, labels = labelled_words(acoustic.references, run.texts, run.word_features)
        if len(labels):
            calibrations[name] = fit_calibration(rows, labels)
            logger.info("%s: word confidence calibrated on %d words", name, len(labels))
    return save_calibrations(model_dir, calibrations, extra={"data": data, "lm": str(lm_dir) if lm_dir else None})
