"""Reference recognisers: classic offline systems scored beside our decoders, on the same audio.

    run = transcribe_reference("pocketsphinx", audio, normalizer=normalizer)   # an asr.evaluation.DecodeRun
    report = build_report(acoustic, runs, references=[run], ...)               # its own row of the table

A reference is not one of our decoders (`asr.evaluation.DECODERS`, which search our model's
log-probs): it hears the audio itself, so its row's RTF covers its whole recognition (acoustic model
and search), and its transcripts pass through our `TextNormalizer` so that WER/CER compare like with
like. It is a yardstick: how far a model trained here is from a recogniser built on real speech.

pocketsphinx: CMU PocketSphinx 5 (pip `pocketsphinx`) with the US English model bundled in its
wheel (continuous HMM acoustic model, CMU pronouncing dictionary, general-English 3-gram LM), so
nothing is downloaded. It takes 0.2-0.25 s of one core per second of audio (~0.6 s per utterance of
the synthetic corpus), so utterances are spread over a fork pool: the decoder is loaded once (0.5 s)
and every worker inherits it.
"""

from __future__ import annotations

import importlib.metadata
import logging
import time
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from asr.audio import AudioSource, load_audio
from asr.defaults import REFERENCES, available_cores
from asr.evaluation import DecodeRun
from asr.text import TextNormalizer
from asr.forkpool import fork_map

logger = logging.getLogger(__name__)

POCKETSPHINX_VERSION = "5.1.1"  # the pin in requirements/lock.txt
INT16_FULL_SCALE = 32767  # pocketsphinx reads 16-bit PCM; float audio in [-1, 1] is scaled to it
_INSTALL_HINT = f"run `bash scripts/setup.sh` or `.venv/bin/pip install pocketsphinx=={POCKETSPHINX_VERSION}`"


def check_reference(name: str) -> None:
    """Raise if the reference recogniser `name` is unknown or not installed.

    Raises:
        ValueError: `name` is not in REFERENCES.
        RuntimeError: its package is not installed (the message says how to install it).
    """
    if name not in REFERENCES:
        raise ValueError(f"Reference recogniser {name!r} is unknown; use one of {', '.join(REFERENCES)}.")
    _import_pocketsphinx()


def transcribe_reference(name: str, audio: Sequence[np.ndarray | AudioSource], *,
                         normalizer: TextNormalizer | None = None, processes: int | None = None) -> DecodeRun:
    """Transcribe every utterance with a reference recogniser, timed like our decoders.

    Args:
        name: One of REFERENCES.
        audio: Per utterance, float32 [num_samples] at 16 kHz mono, or a path / encoded bytes that
            `asr.audio.load_audio` decodes (in the workers, inside the timed span, as the acoustic
            pass of our model does).
        normalizer: Applied to each transcript; pass the model's, so references and hypotheses are
            normalised alike. None uses `TextNormalizer()`.
        processes: Fork-pool workers; None uses every available core, 1 runs in this process.

    Returns:
        A DecodeRun named `name`: normalised texts in input order, `seconds` = wall-clock from the
        audio to the texts, `load_seconds` = loading the model (once, before the workers fork).
    """
    check_reference(name)
    normalizer = normalizer or TextNormalizer()
    processes = available_cores() if processes is None else processes
    if processes < 1:
        raise ValueError(f"processes is {processes}; use 1 or more (None: every available core).")
    started = time.perf_counter()
    decoder = _pocketsphinx_decoder()
    loaded = time.perf_counter()
    raw = fork_map(_recognise, list(range(len(audio))), processes, {"decoder": decoder, "audio": audio})
    texts = [normalizer(t) for t in raw]
    done = time.perf_counter()
    workers = max(1, min(processes, len(audio)))
    logger.info("%s (reference): %d utterances in %.2f s on %d process(es) (+%.2f s loading)", name, len(texts),
                done - loaded, workers, loaded - started)
    return DecodeRun(name, texts, done - loaded, loaded - started, workers,
                     f"pocketsphinx {importlib.metadata.version('pocketsphinx')}, bundled en-us model and 3-gram LM")


def _import_pocketsphinx() -> Any:
    """The pocketsphinx module, or a RuntimeError that says how to install it."""
    try:
        import pocketsphinx
    except ImportError as e:
        raise RuntimeError(f"The pocketsphinx reference needs the pocketsphinx package ({e}); {_INSTALL_HINT}.") from e
    return pocketsphinx


def _pocketsphinx_decoder() -> Any:
    """A pocketsphinx Decoder with the bundled US English model, dictionary and LM, logging only fatal errors."""
    return _import_pocketsphinx().Decoder(loglevel="FATAL")


def _recognise(state: Mapping[str, Any], index: int) -> str:
    """Pool entry point: the raw transcript of `state["audio"][index]` by the inherited decoder."""
    samples = state["audio"][index]
    if not isinstance(samples, np.ndarray):
        samples = load_audio(samples)
    pcm = (np.clip(samples, -1.0, 1.0) * INT16_FULL_SCALE).astype(np.int16)
    decoder = state["decoder"]
    # Its noise removal carries an estimate from one utterance to the next; reset it, so that a transcript does
    # not depend on which utterances this worker happened to hear before (the pool hands them out by timing).
    decoder.reinit_feat()
    decoder.start_utt()
    decoder.process_raw(pcm.tobytes(), full_utt=True)  # full_utt: the whole utterance at once, no live endpointing
    decoder.end_utt()
    hypothesis = decoder.hyp()  # None when nothing was recognised; its text holds no fillers (<sil>, [NOISE])
    return hypothesis.hypstr if hypothesis is not None else ""
