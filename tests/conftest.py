"""Shared fixtures: a tiny corpus of real synthesised speech, made once per test session."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import pytest

# Tests never reach a hub; set before `datasets`/`transformers` read their config.
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")

from asr.corpus import CorpusOptions, Voice, make_corpus  # noqa: E402

SYNTH_VOICES = (
    Voice("espeak-ng", "en-us+f3"),
    Voice("espeak-ng", "en-gb+m3", speed=1.15),
    Voice("flite", "slt"),
    Voice("flite", "kal16"),
)
SYNTH_OPTIONS = CorpusOptions(train=12, dev=4, test=4, seed=1)


@pytest.fixture(scope="session")
def synth_corpus(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A 12/4/4-utterance corpus (espeak-ng + flite voices) in `asr.corpus`'s layout; ~3 s to make."""
    if shutil.which("espeak-ng") is None or shutil.which("flite") is None:
        pytest.skip("espeak-ng and flite are needed; run `bash scripts/setup.sh`")
    out = tmp_path_factory.mktemp("synth_corpus")
    make_corpus(SYNTH_OPTIONS, out, voices=SYNTH_VOICES, workers=2, progress=False)
    return out


ROOT = Path(__file__).resolve().parents[1]
TRAINED_CONFIG = ROOT / "configs/train/tiny_cpu.yaml"
# The fixture's run, beside the config: overrides of tiny_cpu.yaml (the data and output paths come first).
TRAINED_OVERRIDES = ("data.max_batch_seconds=40", "data.num_workers=0", "optim.lr=5e-4", "optim.warmup_steps=1",
                     "optim.schedule=constant", "model.mask_time_prob=0", "train.max_steps=180", "train.eval_every=60",
                     "train.save_every=1000", "train.save_total_limit=1")
TRAINED_CORPUS = CorpusOptions(train=32, dev=0, test=0, seed=7)


def trained_model_key() -> str:
    """Hash of everything the trained model depends on: the library, LM and training code, the config, the run.

    A change to any of them trains a new model on the next slow run (no hand-bumped version to forget).
    """
    import hashlib

    digest = hashlib.sha256()
    files = sorted([*(ROOT / "asr").glob("*.py"), *(ROOT / "lm").glob("*.py"), ROOT / "scripts/train.py",
                    TRAINED_CONFIG])
    for path in files:
        digest.update(str(path.relative_to(ROOT)).encode() + b"\0" + path.read_bytes() + b"\0")
    digest.update(repr((TRAINED_OVERRIDES, TRAINED_CORPUS)).encode())
    return digest.hexdigest()[:16]


TEST_CACHE = ROOT / "data" / "test-cache"
TRAINED_CACHE = TEST_CACHE / f"trained_model_{trained_model_key()}"


@pytest.fixture(scope="session")
def trained_model() -> Path:
    """A small wav2vec2 CTC model that has learned a 32-utterance single-voice corpus (train = eval set).

    It recognises those utterances with some errors left (180 steps: 1.4% CER, 8.7% WER), which is what the
    evaluation and transcription tests need: real speech in, imperfect CTC posteriors out. Built once
    (about 2 minutes on 2 cores) and cached in data/test-cache/trained_model_<trained_model_key()> (git-ignored),
    so a change to the code or config it depends on trains it again; the corpus is at
    `trained_model.parent.parent / "corpus"` and its `lm.txt` holds the train sentences.
    Not a measure of generalisation: the demo measures that on held-out sentences and voices.
    """
    model_dir = TRAINED_CACHE / "run" / "model"
    if (TRAINED_CACHE / "done").exists():
        return model_dir
    import subprocess
    import sys

    for stale in TEST_CACHE.glob("trained_model_*"):  # models of older code: never read again
        shutil.rmtree(stale)
    corpus = TRAINED_CACHE / "corpus"
    make_corpus(TRAINED_CORPUS, corpus, voices=(Voice("flite", "kal16"),), workers=2, progress=False)
    cmd = [sys.executable, str(ROOT / "scripts/train.py"), "--config", str(TRAINED_CONFIG),
           f"data.train.path={corpus / 'train.jsonl'}", f"data.dev.path={corpus / 'train.jsonl'}",
           f"data.cache_dir={TRAINED_CACHE / 'cache'}", f"train.output_dir={TRAINED_CACHE / 'run'}",
           *TRAINED_OVERRIDES]
    proc = subprocess.run(cmd, capture_output=True, text=True, env={**os.environ, "HF_HUB_OFFLINE": "1"})
    if proc.returncode != 0:
        raise RuntimeError(f"training the test model failed:\n{proc.stderr[-4000:]}")
    (TRAINED_CACHE / "done").write_text("ok\n")
    return model_dir


BASE_MODEL = ROOT / "assets" / "base_model"
# Voices the shipped base checkpoint was trained on (its corpus excludes only the demo's voices).
BASE_SEEN_VOICES = (
    Voice("espeak-ng", "en-us+m3"),
    Voice("espeak-ng", "en-gb+f2"),
    Voice("flite", "slt"),
    Voice("flite", "awb"),
) + ((Voice("festival", "kal_diphone"),) if shutil.which("text2wave") else ())


@pytest.fixture(scope="session")
def base_heldout_corpus(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """60 test utterances whose sentences the base checkpoint never trained on, read by voices it knows.

    Seed 0 with no dev split makes the test sentences the base corpus's dev sentences (scripts/
    build_base_model.sh: seed 0, dev first), so they are held out from its training text; lm.txt
    holds every other sentence. ~5 s to make.
    """
    if shutil.which("espeak-ng") is None or shutil.which("flite") is None:
        pytest.skip("espeak-ng and flite are needed; run `bash scripts/setup.sh`")
    out = tmp_path_factory.mktemp("base_heldout")
    make_corpus(CorpusOptions(train=0, dev=0, test=60, seed=0), out, voices=BASE_SEEN_VOICES, workers=2,
                progress=False)
    return out


# Latin letters to Greek ones: fortunes sentences become text an English model cannot spell.
TO_GREEK = str.maketrans("abcdefghijklmnopqrstuvwxyz", "αβψδεφγηιξκλμνοπθρστυωςχυζ")


@pytest.fixture(scope="session")
def greek_lm(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A real KenLM 3-gram directory for another alphabet: 1,800 Greek-lettered sentences and 200 English ones
    (so some words, ~10%, are spellable by an English model, as in a real Greek text quoting English)."""
    from asr.corpus import load_sentences
    from lm.build import LMBuildOptions, build_lm

    sentences = load_sentences()[:2000]
    out = tmp_path_factory.mktemp("greek_lm")
    build_lm([s.translate(TO_GREEK) if i % 10 else s for i, s in enumerate(sentences)], out,
             options=LMBuildOptions(order=3))
    return out
