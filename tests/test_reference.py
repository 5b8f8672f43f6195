"""asr.reference: pocketsphinx (the real package, bundled model) on real synthesised speech, and its report row.

The eval script's --reference path is tested in tests/test_eval.py (it reuses that module's tiny model).
"""

from __future__ import annotations

import json
import logging
import shutil
import sys
from pathlib import Path

import jiwer
import numpy as np
import pytest

from asr.audio import load_audio
from asr.corpus import Voice, synthesise
from asr.evaluation import AcousticOutput
from asr.metrics import error_rates
from asr.reference import check_reference, transcribe_reference
from asr.report import build_report, utterance_rows, write_results
from asr.text import TextNormalizer

logger = logging.getLogger(__name__)

# Fortune-cookie sentences in plain English, each read by both flite voices (the synthetic voices
# pocketsphinx reads best): 12 utterances, 32 s of audio, ~7 s of pocketsphinx on one core.
SENTENCES = (
    "you will be surprised by a loud noise",
    "your talents will be recognized and suitably rewarded",
    "a visit to a strange place will bring fresh work",
    "today is a good day to finish what you started",
    "someone is thinking of you right now",
    "keep your eyes open for a letter from an old friend",
)
VOICES = (Voice("flite", "slt"), Voice("flite", "kal16"))
# Measured with pocketsphinx 5.1.1 on these 12 utterances: WER 0.102, CER 0.042 (slt 0.074, kal16 0.130:
# "kiki our eyes open for letter", "the visitors strange place"); issue 14 measured 0.14 on a neural voice
# and 0.22 on human recordings. A broken feed (wrong sample rate, scale or byte order) or a normaliser that
# mangles its words gives a WER near 1; 0.3 catches that with room for other pocketsphinx or flite versions.
MAX_WER = 0.3
MAX_CER = 0.15


@pytest.fixture(scope="module")
def flite_speech(tmp_path_factory) -> tuple[list[str], list[Path]]:
    """(texts, wav paths) of every sentence read by every voice."""
    if shutil.which("flite") is None:
        pytest.skip("flite is needed; run `bash scripts/setup.sh`")
    out = tmp_path_factory.mktemp("flite_speech")
    texts, paths = [], []
    for voice in VOICES:
        for i, text in enumerate(SENTENCES):
            path = out / f"{voice.name}_{i}.wav"
            synthesise(voice, text, path)
            texts.append(text)
            paths.append(path)
    return texts, paths


@pytest.fixture(scope="module")
def pocketsphinx_run(flite_speech):
    """pocketsphinx's run on the float audio, as eval loads it, on a 2-process fork pool."""
    _, paths = flite_speech
    return transcribe_reference("pocketsphinx", [load_audio(p) for p in paths], processes=2)


def test_pocketsphinx_reads_flite_speech(flite_speech, pocketsphinx_run):
    texts, _ = flite_speech
    rates = error_rates(texts, pocketsphinx_run.texts)
    logger.info("pocketsphinx on %d flite utterances: WER %.3f CER %.3f, %.2f s (+%.2f s loading)", len(texts),
                rates.wer, rates.cer, pocketsphinx_run.seconds, pocketsphinx_run.load_seconds)
    for ref, hyp in zip(texts, pocketsphinx_run.texts):
        logger.info("  %s -> %s", ref, hyp)
    assert rates.wer < MAX_WER and rates.cer < MAX_CER
    assert pocketsphinx_run.decoder == "pocketsphinx" and pocketsphinx_run.processes == 2
    assert "pocketsphinx 5.1.1" in pocketsphinx_run.settings
    # our normalisation: lowercase words, inner apostrophes, single spaces (no <s>, <sil>, [NOISE])
    normalise = TextNormalizer()
    assert all(t == normalise(t) and t for t in pocketsphinx_run.texts)


def test_paths_in_one_process_give_the_pool_s_transcripts(flite_speech, pocketsphinx_run):
    _, paths = flite_speech
    serial = transcribe_reference("pocketsphinx", [str(p) for p in paths[:2]], processes=1)
    assert serial.texts == pocketsphinx_run.texts[:2] and serial.processes == 1


def test_a_transcript_does_not_depend_on_what_the_decoder_heard_before(flite_speech, pocketsphinx_run):
    """pocketsphinx's noise removal learns from every utterance it hears; the pool hands utterances to workers
    as they come free, so without a reset each transcript depended on timing (the demo's pocketsphinx WER moved
    by 0.4 points between two runs of the same audio)."""
    _, paths = flite_speech
    audio = [load_audio(p) for p in paths]
    backwards = transcribe_reference("pocketsphinx", audio[::-1], processes=1)
    assert backwards.texts[::-1] == pocketsphinx_run.texts and any(pocketsphinx_run.texts)


def test_report_row_is_a_reference_with_its_own_time(flite_speech, pocketsphinx_run, tmp_path):
    texts, paths = flite_speech
    durations = [len(load_audio(p)) / 16000 for p in paths]
    acoustic = AcousticOutput(ids=[p.stem for p in paths], references=texts, durations=durations,
                              log_probs=[np.zeros((1, 3), np.float32)] * len(paths), drops=[], seconds=5.0,
                              num_processes=1, max_batch_seconds=60.0)
    report = build_report(acoustic, [], model="m", data="flite", references=[pocketsphinx_run])
    [row] = report.results
    assert row.reference and row.label == "pocketsphinx (reference)"
    assert row.wer == jiwer.wer(texts, pocketsphinx_run.texts) and row.cer == jiwer.cer(texts, pocketsphinx_run.texts)
    # the shared acoustic pass (5 s here) is our model's, not the reference's
    audio = sum(durations)
    assert row.rtf_total == row.rtf_decode == pytest.approx(pocketsphinx_run.seconds / audio)
    assert row.utterances == len(texts) and not report.agreements

    paths_out = write_results(report, utterance_rows(acoustic, [pocketsphinx_run]), [], tmp_path)
    assert f"| pocketsphinx (reference) | {row.wer:.4f} | {row.cer:.4f} |" in paths_out["results.md"].read_text()
    saved = json.loads(paths_out["results.json"].read_text())["results"][0]
    assert saved["decoder"] == "pocketsphinx" and saved["reference"] is True
    lines = [json.loads(line) for line in paths_out["utterances.jsonl"].read_text().splitlines()]
    assert [u["pocketsphinx"] for u in lines] == pocketsphinx_run.texts


def test_missing_package_is_a_one_line_error_naming_the_fix(monkeypatch):
    monkeypatch.setitem(sys.modules, "pocketsphinx", None)  # what `import` sees when it is not installed
    with pytest.raises(RuntimeError) as e:
        check_reference("pocketsphinx")
    assert "pip install pocketsphinx==5.1.1" in str(e.value) and "\n" not in str(e.value)
    with pytest.raises(ValueError, match="use one of pocketsphinx"):
        check_reference("kaldi")
