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
