"""WER broken down by speaker, duration bucket and manifest metadata columns, with bootstrap intervals.

    groups = utterance_groups(speakers, durations, metadata)     # {"speaker": [...], "duration": [...], ...}
    tables = breakdowns(groups, {run.decoder: utterance_errors(refs, run.texts) for run in runs})
    plot_breakdowns(tables, "breakdown.png")                   # or breakdown_figure(tables) to adjust first

A grouping labels every utterance (`speaker` from `Utterance.speaker`, `duration` by `DURATION_EDGES`,
and each metadata column that looks like a category: `Utterance.metadata` values with 2 to
`MAX_CATEGORY_VALUES` distinct values). Within a group, WER is the corpus WER of its utterances and
its interval a bootstrap over them alone (`asr.significance`): a speaker with 3 utterances gets a wide
one, which is the point of showing it.
"""

from __future__ import annotations

import os
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from asr.files import atomic_path
from asr.metrics import UtteranceErrors
from asr.defaults import BOOTSTRAP_RESAMPLES, BOOTSTRAP_SEED
from asr.significance import CONFIDENCE, Interval, paired_bootstrap

DURATION_EDGES = (2.0, 5.0, 10.0, 20.0)  # s; commands and phrases / sentences / long sentences / paragraphs / more
MAX_CATEGORY_VALUES = 12  # a metadata column with more distinct values is an id, a number or free text, not a category
MAX_SHOWN_GROUPS = 30  # groups per breakdown in results.md and the plot, most reference words first; JSON has all
MISSING = "(missing)"  # the group of utterances without a value in a grouping
SPEAKER, DURATION = "speaker", "duration"  # the built-in groupings; metadata columns use their own names


@dataclass(frozen=True)
class GroupRates:
    """One group of a breakdown: its size and each row's WER with its interval."""

    value: str
    utterances: int
    ref_words: int
    wer: dict[str, Interval]  # row (decoder) -> corpus WER of the group's utterances; {} if they have no words


@dataclass(frozen=True)
class Breakdown:
    """WER per group of one grouping (speaker, duration, or a metadata column)."""

    by: str
    groups: list[GroupRates]  # in the grouping's natural order (durations ascending, names sorted)
    resamples: int  # of each group's bootstrap; 0: none, each interval is its estimate alone

    def shown(self) -> list[GroupRates]:
        """The groups results.md and the plot show: all, or the MAX_SHOWN_GROUPS with most reference words."""
        if len(self.groups) <= MAX_SHOWN_GROUPS:
            return self.groups
        keep = {id(g) for g in sorted(self.groups, key=lambda g: -g.ref_words)[:MAX_SHOWN_GROUPS]}
        return [g for g in self.groups if id(g) in keep]

    def to_markdown(self, rows: Sequence[str]) -> list[str]:
        """A table: group, utterances, reference words, then `WER % [95% CI]` (or `WER %`) per row."""
        lines = [f"### WER by {self.by}", "",
                 "| " + " | ".join([self.by, "utterances", "words", *rows]) + " |",
                 "|---|---:|---:|" + "---:|" * len(rows)]
        for g in self.shown():
            cells = [g.value, str(g.utterances), str(g.ref_words),
                     *("-" if r not in g.wer else g.wer[r].to_text() if self.resamples
                       else f"{100 * g.wer[r].estimate:.1f}" for r in rows)]
            lines.append("| " + " | ".join(cells) + " |")
        hidden = len(self.groups) - len(self.shown())
        if hidden:
            lines.append(f"\n{hidden} smaller group(s) are in results.json.")
        return lines


def duration_bucket(seconds: float) -> str:
    """`< 2 s`, `2-5 s`, ..., `>= 20 s` by DURATION_EDGES."""
    edges = DURATION_EDGES
    if seconds < edges[0]:
        return f"< {edges[0]:g} s"
    for low, high in zip(edges, edges[1:]):
        if seconds < high:
            return f"{low:g}-{high:g} s"
    return f">= {edges[-1]:g} s"


def utterance_groups(speakers: Sequence[str | None], durations: Sequence[float],
                     metadata: Sequence[Mapping[str, str]] = ()) -> dict[str, list[str]]:
    """Each grouping's label for every utterance; groupings with fewer than 2 groups are left out.

    Args:
        speakers: `Utterance.speaker` per utterance (None: unknown).
        durations: Seconds per utterance.
        metadata: `Utterance.metadata` per utterance, or nothing. A column becomes a grouping when its
            values take 2 to MAX_CATEGORY_VALUES distinct values, fewer than there are utterances.
    """
    n = len(durations)
    if len(speakers) != n or (metadata and len(metadata) != n):
        raise ValueError(f"{len(speakers)} speakers, {n} durations and {len(metadata)} metadata rows; give one of "
                         "each per utterance")
    out: dict[str, list[str]] = {}
    if any(s is not None for s in speakers):
        out[SPEAKER] = [MISSING if s is None else s for s in speakers]
    out[DURATION] = [duration_bucket(d) for d in durations]
    columns = list(dict.fromkeys(k for row in metadata for k in row))
    for column in columns:
        if column in (SPEAKER, DURATION):
            continue
        labels = [row.get(column, MISSING) for row in metadata]
        distinct = len(set(labels))
        if 2 <= distinct <= MAX_CATEGORY_VALUES and distinct < n:
            out[column] = labels
    return {by: labels for by, labels in out.items() if len(set(labels)) >= 2}


def breakdowns(groups: Mapping[str, Sequence[str]], errors: Mapping[str, UtteranceErrors],
               resamples: int = BOOTSTRAP_RESAMPLES, seed: int = BOOTSTRAP_SEED,
               confidence: float = CONFIDENCE) -> list[Breakdown]:
    """WER of every row within every group of every grouping, each with a bootstrap interval over the group.

    Args:
        groups: Grouping name -> label per utterance (`utterance_groups`).
        errors: Row name -> per-utterance errors, utterances in the same order as the labels.
        resamples: Bootstrap resamples per group; 0 gives point estimates with no interval (low = high).
        seed: Seed of the draws (the same for every group).
        confidence: Coverage of the intervals.
    """
    out = []
    for by, labels in groups.items():
        labels = np.asarray(labels, dtype=object)
        values = sorted(set(labels), key=_DURATION_ORDER.get if by == DURATION else _natural)
        rows = []
        for value in values:
            index = np.flatnonzero(labels == value)
            part = {name: _subset(e, index) for name, e in errors.items()}
            words = int(next(iter(part.values())).ref_words.sum())
            if words == 0:  # only empty references: WER is undefined, the group is still counted
                wer = {}
            elif resamples > 0:
                wer = paired_bootstrap(part, resamples, seed, confidence, pairs=[]).wer
            else:
                wer = {name: _point(e) for name, e in part.items()}
            rows.append(GroupRates(str(value), len(index), words, wer))
        out.append(Breakdown(by, rows, resamples))
    return out


def plot_breakdowns(tables: Sequence[Breakdown], path: str | os.PathLike, title: str = "") -> Path | None:
    """One panel per grouping: WER per group, a bar per row with its interval as an error bar (PNG).

    Returns:
        The path, or None when there is no breakdown to draw.
    """
    if not tables:
        return None
    import matplotlib.pyplot as plt

    fig = breakdown_figure(tables, title)
    path = Path(path)
    with atomic_path(path) as tmp:
        fig.savefig(tmp, dpi=110)
    plt.close(fig)
    return path


def breakdown_figure(tables: Sequence[Breakdown], title: str = ""):
    """`plot_breakdowns`'s matplotlib Figure (Agg backend), one axes per table, before it is saved."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    if not tables:
        raise ValueError("no breakdown to draw; pass at least one Breakdown")
    rows = list(dict.fromkeys(r for t in tables for g in t.groups for r in g.wer))
    nan = Interval(float("nan"), float("nan"), float("nan"))
    heights = [max(3.0, 0.35 * len(t.shown()) * len(rows) + 1.2) for t in tables]
    # constrained, not tight_layout: tight_layout ignores the suptitle and drew it inside the first panel
    fig, axes = plt.subplots(len(tables), 1, figsize=(8.0, sum(heights)), squeeze=False, layout="constrained",
                             gridspec_kw={"height_ratios": heights})
    width = 0.8 / max(len(rows), 1)
    for ax, table in zip(axes[:, 0], tables):
        shown = table.shown()
        y = np.arange(len(shown))
        for k, row in enumerate(rows):
            est = np.array([g.wer.get(row, nan).estimate for g in shown]) * 100
            low = np.array([g.wer.get(row, nan).low for g in shown]) * 100
            high = np.array([g.wer.get(row, nan).high for g in shown]) * 100
            err = np.nan_to_num(np.stack([est - low, high - est]))
            ax.barh(y + (k - (len(rows) - 1) / 2) * width, np.nan_to_num(est), height=width, xerr=err,
                    capsize=2, label=row)
        ax.set_yticks(y, [f"{g.value} ({g.utterances})" for g in shown])
        ax.set_ylim(len(shown) - 0.5, -0.5)  # first group on top, as in the table; no empty band around the bars
        ax.set_xlabel(f"WER % ({100 * CONFIDENCE:g}% bootstrap interval)")
        ax.set_title(f"by {table.by}" + (f": {len(table.groups) - len(shown)} smaller groups not shown"
                                         if len(shown) < len(table.groups) else ""), fontsize=10)
        ax.grid(axis="x", alpha=0.3)
    axes[0, 0].legend(fontsize=8, loc="best")
    if title:
        fig.suptitle(title, fontsize=10)
    return fig


def _subset(errors: UtteranceErrors, index: np.ndarray) -> UtteranceErrors:
    """The errors of the utterances at `index`."""
    return UtteranceErrors(errors.word_errors[index], errors.ref_words[index], errors.char_errors[index],
                           errors.ref_chars[index])


def _point(errors: UtteranceErrors) -> Interval:
    """The group's WER as an interval of zero width (no bootstrap)."""
    wer = float(errors.word_errors.sum() / errors.ref_words.sum())
    return Interval(wer, wer, wer)


def _natural(label: str) -> tuple:
    """Sort key: numbers by value (`spk2` before `spk10`), the missing group last."""
    return (label == MISSING, [int(p) if p.isdigit() else p.lower() for p in re.split(r"(\d+)", label)])


_DURATION_ORDER = {duration_bucket(s): i for i, s in enumerate([0.0, *DURATION_EDGES])}
