"""The evaluation report: one row per decoder, decoder agreement, padding check, and the files written.

    compare_decoders(acoustic, utterances, decoders, vocab, lm, settings, ...) -> (EvalReport, rows)  (all below)
    score_run(run, references, audio_seconds, acoustic_seconds) -> DecoderResult   (a table row)
    build_report(acoustic, runs, ..., references=reference_runs, groups=...) -> EvalReport      (the table)
    write_results(report, utterance_rows(acoustic, [*runs, *reference_runs]), drops, out_dir)

writes results.md/.json/.csv, utterances.jsonl/.csv, comparison.png, breakdown.png and dropped.jsonl,
each atomically. Every row's WER and CER, and every pair's differences, get paired-bootstrap 95%
intervals (`asr.significance`); WER is also broken down by speaker, duration bucket and category-like
manifest columns (`asr.breakdown`), each group with its own interval.
The runs come from `asr.evaluation.decode_all` on the log-probs of `asr.evaluation.compute_acoustic`;
reference runs (`asr.reference`, e.g. pocketsphinx) hear the same kept utterances themselves, so
their rows are marked `reference` and their RTF is their own recognition time alone.
"""

from __future__ import annotations

import csv
import dataclasses
import io
import json
import logging
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from asr.breakdown import Breakdown, breakdowns, plot_breakdowns, utterance_groups
from asr.confidence import (
    ECE_BINS,
    REVIEW_FRACTION,
    Calibration,
    DecoderConfidence,
    decoder_confidence,
    plot_reliability,
)
from asr.decoders import BEAM_DECODERS, DESCRIPTIONS, DecoderSettings, load_lm_info
from asr.evaluation import AcousticOutput, DecodeRun, PaddingCheck, check_padding, decode_all
from asr.files import atomic_path, write_text_atomic
from asr.filters import Drop
from asr.metrics import ErrorRates, error_rates, utterance_errors, word_edits
from asr.reference import transcribe_reference
from asr.defaults import BOOTSTRAP_RESAMPLES, BOOTSTRAP_SEED
from asr.significance import BootstrapResult, paired_bootstrap
from asr.sources import Utterance
from asr.text import TextNormalizer

logger = logging.getLogger(__name__)

@dataclass(frozen=True)
class DecoderResult:
    """One row of the comparison table."""

    decoder: str
    wer: float
    cer: float
    substitutions: int
    deletions: int
    insertions: int
    ref_words: int
    utterances: int
    decode_seconds: float
    utterances_per_second: float  # decoding only; the acoustic model's time is shared by every row
    rtf_decode: float  # decode seconds per second of audio
    rtf_total: float  # (acoustic + decode) seconds per second of audio
    processes: int
    settings: str
    reference: bool = False  # a reference recogniser (asr.reference), not a decoder of our model's log-probs

    @property
    def label(self) -> str:
        """The row's name in the table: reference recognisers say so."""
        return f"{self.decoder} (reference)" if self.reference else self.decoder


def score_run(run: DecodeRun, references: Sequence[str], audio_seconds: float,
              acoustic_seconds: float, reference: bool = False) -> DecoderResult:
    """A table row: error rates of `run` against `references`, speed and real-time factors.

    `reference` marks a reference recogniser's run; pass acoustic_seconds=0 for it, since it
    does not share our model's acoustic pass.
    """
    rates: ErrorRates = error_rates(references, run.texts)
    audio = max(audio_seconds, 1e-9)
    return DecoderResult(
        decoder=run.decoder, wer=rates.wer, cer=rates.cer, substitutions=rates.substitutions,
        deletions=rates.deletions, insertions=rates.insertions, ref_words=rates.ref_words,
        utterances=len(run.texts), decode_seconds=run.seconds,
        utterances_per_second=len(run.texts) / max(run.seconds, 1e-9), rtf_decode=run.seconds / audio,
        rtf_total=(acoustic_seconds + run.seconds) / audio, processes=run.processes, settings=run.settings,
        reference=reference)


@dataclass(frozen=True)
class Agreement:
    """How close two decoders' transcripts are."""

    a: str
    b: str
    identical: float  # share of utterances with the same text
    word_difference: float  # word edits between them per word of `a`'s transcripts


def agreement(a: DecodeRun, b: DecodeRun) -> Agreement:
    """Share of identical transcripts and the word difference rate between two runs on the same set."""
    edits = sum(word_edits(x, y) for x, y in zip(a.texts, b.texts))
    words = sum(len(x.split()) for x in a.texts)
    same = sum(x == y for x, y in zip(a.texts, b.texts))
    return Agreement(a.decoder, b.decoder, same / max(len(a.texts), 1), edits / max(words, 1))


@dataclass
class EvalReport:
    """Everything the comparison table shows."""

    model: str
    data: str
    lm: str | None
    utterances: int
    dropped: int
    audio_seconds: float
    acoustic_seconds: float
    acoustic_processes: int
    acoustic_cached: bool
    max_batch_seconds: float
    max_padding: float | None
    results: list[DecoderResult]
    agreements: list[Agreement] = field(default_factory=list)
    padding: PaddingCheck | None = None
    bootstrap: BootstrapResult | None = None  # None: --bootstrap 0
    breakdowns: list[Breakdown] = field(default_factory=list)
    confidence: list[DecoderConfidence] = field(default_factory=list)  # per decoder: ECE, errors caught

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready dict."""
        data = dataclasses.asdict(self)
        data["acoustic_rtf"] = self.acoustic_seconds / max(self.audio_seconds, 1e-9)
        if self.padding is not None:
            data["padding"]["explanation"] = self.padding.explanation()
        return data

    def to_markdown(self) -> str:
        """The table with a header saying what was measured, and the notes under it."""
        rtf = self.acoustic_seconds / max(self.audio_seconds, 1e-9)
        lines = [
            f"## {self.data}: {self.utterances} utterances, {self.audio_seconds / 60:.1f} min of audio"
            + (f" ({self.dropped} dropped, see dropped.jsonl)" if self.dropped else ""),
            "",
            f"- model: `{self.model}`" + (f"; LM: `{self.lm}`" if self.lm else ""),
            f"- acoustic model (shared by every row): {self.acoustic_seconds:.1f} s, RTF {rtf:.3f}, "
            f"{self.acoustic_processes} process(es), batches of <= {self.max_batch_seconds:g} s padded audio"
            + (f", each utterance padded by <= {100 * self.max_padding:g}% (the model takes no attention mask)"
               if self.max_padding is not None and self.max_padding < 1 else "")
            + (" (log-probs read from the cache; time of the run that computed them)" if self.acoustic_cached else ""),
            "",
            "| decoder | WER | CER | sub | del | ins | utt/s | RTF decode | RTF total | processes | settings |",
            "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---|",
        ]
        for r in self.results:
            lines.append(f"| {r.label} | {r.wer:.4f} | {r.cer:.4f} | {r.substitutions} | {r.deletions} | "
                         f"{r.insertions} | {r.utterances_per_second:.1f} | {r.rtf_decode:.4f} | {r.rtf_total:.4f} | "
                         f"{r.processes} | {r.settings} |")
        lines.append("")
        lines.append("RTF = seconds of compute per second of audio (wall-clock); utt/s counts decoding only.")
        if any(r.reference for r in self.results):
            lines.append("(reference) rows: a classic offline recogniser on the same audio and references, as a "
                         "yardstick, not a decoder of this model; its utt/s and RTFs cover its whole recognition.")
        for g in self.agreements:
            lines.append(f"- {g.a} vs {g.b}: {100 * g.identical:.1f}% identical transcripts, "
                         f"{100 * g.word_difference:.2f}% word difference")
        if self.padding is not None:
            lines.append(f"- padding: {self.padding.explanation()}")
        if self.bootstrap is not None:
            lines += ["", *self._significance_markdown(self.bootstrap)]
        labels = [r.decoder for r in self.results]
        for table in self.breakdowns:
            lines += ["", *table.to_markdown(labels)]
        if self.confidence:
            lines += ["", *self._confidence_markdown()]
        return "\n".join(lines) + "\n"

    def _confidence_markdown(self) -> list[str]:
        """Word confidence: how well each decoder's scores predict its word errors (raw and calibrated)."""
        lines = ["### Word confidence (each hypothesis word right or wrong by alignment with its reference)", "",
                 f"| decoder | words | right | mean confidence | ECE | errors in the lowest {100 * REVIEW_FRACTION:g}% |",
                 "|---|---:|---:|---:|---:|---:|"]
        for c in self.confidence:
            for kind, q in (("raw", c.raw), ("calibrated", c.calibrated)):
                if q is not None:
                    lines.append(f"| {c.decoder} ({kind}) | {q.words} | {100 * q.accuracy:.1f}% | "
                                 f"{q.mean_confidence:.3f} | {q.ece:.3f} | {100 * q.errors_caught_at_10pct:.1f}% |")
        lines += ["", "raw = geometric mean of the frames' top posterior in the word's span; calibrated = logistic "
                  "regression on the word's mean and lowest frame posterior and its length, fitted on a dev set (`eval.py --calibrate`, confidence.json beside the model). ECE: "
                  f"expected calibration error over {ECE_BINS} bins; reliability.png draws them."]
        return lines

    def _significance_markdown(self, b: BootstrapResult) -> list[str]:
        """The intervals of every row and every difference, and what they mean."""
        label = {r.decoder: r.label for r in self.results}
        ci = f"{100 * b.confidence:g}% CI"
        lines = [f"### {100 * b.confidence:g}% confidence intervals (paired bootstrap: {b.resamples} resamples of "
                 f"the {b.utterances} utterances, seed {b.seed})", "",
                 f"| decoder | WER % [{ci}] | CER % [{ci}] |", "|---|---:|---:|"]
        lines += [f"| {label[name]} | {b.wer[name].to_text()} | {b.cer[name].to_text()} |" for name in b.wer]
        diffs = {(d.a, d.b, d.metric): d for d in b.differences}
        pairs = list(dict.fromkeys((d.a, d.b) for d in b.differences))
        if pairs:
            lines += ["", f"| difference | WER points [{ci}] | significant | CER points [{ci}] | significant |",
                      "|---|---:|---|---:|---|"]
            for a, c in pairs:
                wer, cer = diffs[a, c, "wer"], diffs[a, c, "cer"]
                lines.append(f"| {label[a]} - {label[c]} | {wer.to_text()} | {'yes' if wer.significant else 'no'} | "
                             f"{cer.to_text()} | {'yes' if cer.significant else 'no'} |")
            lines += ["", "Each resample draws the utterances with replacement and scores every row on the same "
                          "draw; a difference is significant when its interval excludes 0 (negative: the first "
                          "row errs less)."]
        return lines


def build_report(acoustic: AcousticOutput, runs: Sequence[DecodeRun], *, model: str, data: str,
                 lm: str | None = None, padding: PaddingCheck | None = None,
                 references: Sequence[DecodeRun] = (), groups: Mapping[str, Sequence[str]] | None = None,
                 resamples: int = BOOTSTRAP_RESAMPLES, seed: int = BOOTSTRAP_SEED,
                 calibrations: Mapping[str, Calibration] | None = None) -> EvalReport:
    """The comparison table of several decoders run on the same log-probs, then reference recognisers' rows.

    Args:
        acoustic: The kept utterances' log-probs, references and durations.
        runs: Decoders' runs on `acoustic`, in table order.
        model: The model directory, as the header names it.
        data: The evaluated source, as the header names it.
        lm: The LM directory, when a beam decoder used one.
        padding: The padding check, if run.
        references: `asr.reference.transcribe_reference` runs on the same kept utterances, in order.
        groups: Grouping -> label per kept utterance (`asr.breakdown.utterance_groups`) for the WER
            breakdowns; None breaks down by duration only.
        resamples: Bootstrap resamples for the intervals; 0 skips them (the breakdowns keep point WERs).
        seed: Seed of the bootstrap draws.
        calibrations: Decoder -> its stored confidence calibration (`asr.confidence.load_calibrations`);
            decoders without one get raw confidence scores only.
    """
    results = [score_run(r, acoustic.references, acoustic.audio_seconds, acoustic.seconds) for r in runs]
    results += [score_run(r, acoustic.references, acoustic.audio_seconds, 0.0, reference=True) for r in references]
    # greedy is the baseline, not a rival search: only beam decoders are compared with each other
    pairs = [(a, b) for i, a in enumerate(runs) for b in runs[i + 1:] if "greedy" not in (a.decoder, b.decoder)]
    agreements = [agreement(a, b) for a, b in pairs]
    for g in agreements:
        logger.info("%s vs %s: %.1f%% identical transcripts, %.2f%% word difference", g.a, g.b, 100 * g.identical,
                    100 * g.word_difference)
    errors = {r.decoder: utterance_errors(acoustic.references, r.texts) for r in [*runs, *references]}
    bootstrap = paired_bootstrap(errors, resamples, seed) if resamples > 0 else None
    if groups is None:
        groups = utterance_groups([None] * len(acoustic.ids), acoustic.durations)
    tables = breakdowns(groups, errors, resamples, seed)
    calibrations = calibrations or {}
    confidence = [c for r in runs if r.word_features is not None
                  for c in [decoder_confidence(r.decoder, acoustic.references, r.texts, r.word_features,
                                               calibrations.get(r.decoder))] if c is not None]
    return EvalReport(model=model, data=data, lm=lm, utterances=len(acoustic.ids), dropped=len(acoustic.drops),
                      audio_seconds=acoustic.audio_seconds, acoustic_seconds=acoustic.seconds,
                      acoustic_processes=acoustic.num_processes, acoustic_cached=acoustic.from_cache,
                      max_batch_seconds=acoustic.max_batch_seconds, max_padding=acoustic.max_padding,
                      results=results, agreements=agreements,
                      padding=padding, bootstrap=bootstrap, breakdowns=tables, confidence=confidence)


def compare_decoders(acoustic: AcousticOutput, utterances: Mapping[str, Utterance], decoders: Sequence[str],
                     vocab: Mapping[str, int], lm: Path | None, settings: DecoderSettings, *, model: str, data: str,
                     references: Sequence[str] = (), normalizer: TextNormalizer | None = None,
                     padding_sample: int = 0, resamples: int = BOOTSTRAP_RESAMPLES,
                     seed: int = BOOTSTRAP_SEED, calibrations: Mapping[str, Calibration] | None = None,
                     ) -> tuple[EvalReport, list[dict[str, Any]]]:
    """Decode `acoustic` with each decoder, run each reference recogniser on the same audio, and build the table.

    Args:
        acoustic: The kept utterances' log-probs, references and durations.
        utterances: Every utterance of the source by id (audio for the references, speaker and metadata
            for the breakdowns).
        decoders: Names from asr.decoders.DECODERS, in table order.
        vocab, lm, settings: What `asr.decoders.build_decoder` needs (lm None: greedy only).
        model, data: As the header names them.
        references: Names from asr.reference.REFERENCES.
        normalizer: The model's text normaliser, applied to the references' transcripts.
        padding_sample: Utterances to rerun one by one against their batched log-probs (the padding
            check, `asr.evaluation.check_padding`); 0 skips it, -1 checks all. Needs `model` to be its directory.
        resamples, seed: The paired bootstrap's.
        calibrations: Stored word-confidence calibrations by decoder (`asr.confidence.load_calibrations`).

    Returns:
        (the report, its per-utterance rows for `write_results`).
    """
    runs = [decode_all(name, vocab, acoustic.log_probs, lm, settings) for name in decoders]
    padding = None
    if padding_sample:
        from asr.inference import load_model  # loads the model again: only for this check

        padding = check_padding(load_model(model), acoustic, {i: u.audio for i, u in utterances.items()},
                                None if padding_sample < 0 else padding_sample)
    reference_runs = [transcribe_reference(name, [utterances[i].audio for i in acoustic.ids], normalizer=normalizer)
                      for name in references]
    groups = utterance_groups([utterances[i].speaker for i in acoustic.ids], acoustic.durations,
                              [utterances[i].metadata for i in acoustic.ids])
    report = build_report(acoustic, runs, model=model, data=data,
                          lm=str(lm) if lm is not None and any(d in BEAM_DECODERS for d in decoders) else None,
                          padding=padding, references=reference_runs, groups=groups, resamples=resamples, seed=seed,
                          calibrations=calibrations)
    return report, utterance_rows(acoustic, [*runs, *reference_runs])


def utterance_rows(acoustic: AcousticOutput, runs: Sequence[DecodeRun]) -> list[dict[str, Any]]:
    """One row per utterance: id, duration, reference, and each decoder's hypothesis and word errors."""
    rows = []
    for i, (utt_id, ref, duration) in enumerate(zip(acoustic.ids, acoustic.references, acoustic.durations)):
        row: dict[str, Any] = {"id": utt_id, "duration": round(duration, 4), "reference": ref}
        for run in runs:
            row[run.decoder] = run.texts[i]
            row[f"{run.decoder}_word_errors"] = word_edits(ref, run.texts[i])
        rows.append(row)
    return rows


def write_results(report: EvalReport, rows: Sequence[Mapping[str, Any]], drops: Sequence[Drop],
                  out_dir: str | os.PathLike) -> dict[str, Path]:
    """Write results.{md,json,csv}, utterances.{jsonl,csv}, comparison.png, breakdown.png, reliability.png and
    dropped.jsonl.

    breakdown.png is written only when the report has breakdowns, reliability.png when it has word confidences.

    Returns:
        File name -> path of each file written.
    """
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    paths = {name: out / name for name in ("results.md", "results.json", "results.csv", "utterances.jsonl",
                                            "utterances.csv", "comparison.png", "dropped.jsonl")}
    write_text_atomic(paths["results.md"], report.to_markdown())
    write_text_atomic(paths["results.json"], json.dumps(report.to_dict(), indent=1, ensure_ascii=False) + "\n")
    write_text_atomic(paths["results.csv"], _csv([dataclasses.asdict(r) for r in report.results]))
    write_text_atomic(paths["utterances.jsonl"], "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows))
    write_text_atomic(paths["utterances.csv"], _csv(rows))
    write_text_atomic(paths["dropped.jsonl"], "".join(json.dumps(d.to_dict(), ensure_ascii=False) + "\n" for d in drops))
    title = f"{report.data} ({report.utterances} utterances)"
    plot_comparison(report.results, paths["comparison.png"], title=f"{run_name(report.model)}: {title}",
                    labels=comparison_labels(report))
    if report.breakdowns:
        paths["breakdown.png"] = plot_breakdowns(report.breakdowns, out / "breakdown.png", title=title)
    else:  # an earlier run's plot would describe other results
        (out / "breakdown.png").unlink(missing_ok=True)
    if report.confidence:
        curves = {f"{c.decoder} ({kind})": q for c in report.confidence
                  for kind, q in (("raw", c.raw), ("calibrated", c.calibrated)) if q is not None}
        paths["reliability.png"] = plot_reliability(curves, out / "reliability.png",
                                                    title=f"{run_name(report.model)}: word confidence, {title}")
    else:
        (out / "reliability.png").unlink(missing_ok=True)
    return paths


def run_name(model: str) -> str:
    """How plots name a model: its run folder for `RUN/model` (scripts/train.py's layout), else its own name."""
    path = Path(model)
    return path.parent.name if path.name == "model" and path.parent.name else path.name


def comparison_labels(report: EvalReport) -> list[str]:
    """One x-axis label per row: the decoder, what it is (with the LM's order when known), and its real-time factor."""
    order = None
    if report.lm:
        try:
            order = load_lm_info(report.lm).get("order")
        except (FileNotFoundError, ValueError):  # an LM directory made by other tools: no lm_info.json
            order = None
    labels = []
    for r in report.results:
        what = "reference recogniser" if r.reference else DESCRIPTIONS.get(r.decoder, "")
        if order and r.decoder in BEAM_DECODERS:
            what = what.replace("KenLM", f"KenLM {order}-gram")
        what = what.replace(" + ", "\n+ ").replace(" search", "\nsearch") if what else ""
        labels.append("\n".join(part for part in (r.label, what, f"RTF {r.rtf_total:.3f}") if part))
    return labels


def plot_comparison(results: Sequence[DecoderResult], path: str | os.PathLike, title: str = "",
                    labels: Sequence[str] | None = None) -> Path:
    """Grouped bar chart of WER and CER per decoder (matplotlib, Agg backend); `labels` name the bars (default:
    the decoders)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    names = list(labels) if labels is not None else [r.label.replace(" (", "\n(") for r in results]
    x = np.arange(len(names))
    fig, ax = plt.subplots(figsize=(max(4.0, 2.0 * len(names) + 1.5), 4.2))
    for offset, metric, label in ((-0.18, "wer", "WER"), (0.18, "cer", "CER")):
        values = [getattr(r, metric) for r in results]
        bars = ax.bar(x + offset, values, width=0.36, label=label)
        ax.bar_label(bars, labels=[f"{v:.3f}" for v in values], fontsize=8, padding=2)
    ax.set_xticks(x, names)
    ax.set_ylabel("error rate")
    ax.set_ylim(0, max([max(r.wer, r.cer) for r in results] + [0.01]) * 1.2)
    ax.set_title(title, fontsize=10)
    ax.legend()
    fig.tight_layout()
    path = Path(path)
    with atomic_path(path) as tmp:
        fig.savefig(tmp, dpi=120)
    plt.close(fig)
    return path


def _csv(rows: Sequence[Mapping[str, Any]]) -> str:
    """Rows as CSV text, columns in first-seen order."""
    columns: list[str] = []
    for row in rows:
        columns += [k for k in row if k not in columns]
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=columns, lineterminator="\n")
    writer.writeheader()
    writer.writerows(rows)
    return buffer.getvalue()


