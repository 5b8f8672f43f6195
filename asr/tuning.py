"""Tuning the beam decoders on cached log-probs: alpha/beta (and beam width) grid search, n-best oracle WER.

    acoustic = compute_acoustic(...)                                   # asr.evaluation, on a dev set
    result = tune(acoustic.log_probs, acoustic.references, vocab, "lm/", grid=TuneGrid(), processes=4)
    save_tuned("lm/", result)                                          # every later decode uses the winners

Each grid point decodes the whole set in one worker of a fork pool (`asr.forkpool.fork_map`: workers inherit the
log-probs instead of receiving them pickled). `save_tuned` writes `language_model/attrs.json` and
`decoder.json` in the LM directory, which `asr.decoders.load_decoder_settings` reads back (the
file layout is described in `asr.evaluation`).
"""

from __future__ import annotations

import dataclasses
import json
import logging
import os
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from asr.beam import LN10, oracle_texts
from asr.decoders import ATTRS_FILE, BEAM_DECODERS, LM_SUBDIR, DecoderSettings, build_decoder, save_decoder_settings
from asr.defaults import DEFAULT_NBEST, TUNE_ALPHAS, TUNE_BEAM_WIDTHS, TUNE_BETAS
from asr.files import write_text_atomic
from asr.forkpool import fork_map, in_item_order, interleaved_chunks
from asr.metrics import error_rates

logger = logging.getLogger(__name__)



# -------------------------------------------------------------------------------------------- tuning
@dataclass(frozen=True)
class TuneGrid:
    """The grid searched, in pyctcdecode's units; flashlight uses lm_weight = alpha * ln 10, word_score = beta."""

    alphas: tuple[float, ...] = TUNE_ALPHAS  # LM weight
    betas: tuple[float, ...] = TUNE_BETAS  # per-word bonus
    beam_widths: tuple[int, ...] = TUNE_BEAM_WIDTHS  # () keeps the decoder's current width

    def __post_init__(self) -> None:
        for name in ("alphas", "betas", "beam_widths"):
            object.__setattr__(self, name, tuple(getattr(self, name)))
        if not self.alphas or not self.betas:
            raise ValueError(f"TuneGrid needs at least one alpha and one beta, got {self.alphas} and {self.betas}.")
        if any(w < 1 for w in self.beam_widths):
            raise ValueError(f"TuneGrid.beam_widths {self.beam_widths} must all be 1 or more.")


@dataclass(frozen=True)
class TunePoint:
    """One grid point's result on the tuning set."""

    decoder: str
    alpha: float
    beta: float
    beam_width: int
    wer: float
    cer: float
    seconds: float  # decode wall-clock of this point in its worker


@dataclass(frozen=True)
class OracleResult:
    """How much better a perfect rescorer of the n-best lists could do than the 1-best."""

    decoder: str
    nbest: int
    wer_1best: float
    wer_oracle: float


@dataclass
class TuneResult:
    """Every grid point, the best per decoder, and the n-best oracle at the best point."""

    data: str
    utterances: int
    grid: TuneGrid
    points: list[TunePoint]
    best: dict[str, TunePoint]
    oracle: dict[str, OracleResult]
    seconds: float

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready dict."""
        return dataclasses.asdict(self)

    def pareto(self) -> list[TunePoint]:
        """The grid points no other point beats on both WER and speed (utt/s), fastest first.

        A point is dropped when another is at least as accurate and at least as fast, and strictly better
        in one; what is left is the trade-off a user picks from.
        """
        def dominated(p: TunePoint) -> bool:
            return any(q.wer <= p.wer and q.seconds <= p.seconds and (q.wer < p.wer or q.seconds < p.seconds)
                       for q in self.points)

        return sorted((p for p in self.points if not dominated(p)), key=lambda p: (p.seconds, p.wer))

    def utt_per_second(self, point: TunePoint) -> float:
        """Decoding speed of one grid point: utterances per second in one process."""
        return self.utterances / max(point.seconds, 1e-9)

    def to_markdown(self) -> str:
        """Best settings per decoder, the oracle WER, the WER-vs-speed front and the full grid."""
        lines = [f"## Tuning on {self.data} ({self.utterances} utterances, {len(self.points)} decodes in "
                 f"{self.seconds:.0f} s)", "",
                 "| decoder | alpha | beta | beam | WER | CER | n-best oracle WER |",
                 "|---|---:|---:|---:|---:|---:|---:|"]
        for name, p in self.best.items():
            oracle = self.oracle.get(name)
            oracle_text = f"{oracle.wer_oracle:.4f} (n={oracle.nbest})" if oracle else ""
            lines.append(f"| {name} | {p.alpha:g} | {p.beta:g} | {p.beam_width} | {p.wer:.4f} | {p.cer:.4f} | "
                         f"{oracle_text} |")
        lines += ["", "WER against speed: the settings no other beats on both (tuning_pareto.png plots every point):",
                  "", "| decoder | alpha | beta | beam | WER | utt/s (1 process) |", "|---|---:|---:|---:|---:|---:|"]
        for p in self.pareto():
            lines.append(f"| {p.decoder} | {p.alpha:g} | {p.beta:g} | {p.beam_width} | {p.wer:.4f} | "
                         f"{self.utt_per_second(p):.1f} |")
        lines += ["", "Every grid point (flashlight: lm_weight = alpha * ln 10, word_score = beta):", "",
                  "| decoder | alpha | beta | beam | WER | CER | decode s |", "|---|---:|---:|---:|---:|---:|---:|"]
        for p in sorted(self.points, key=lambda p: (p.decoder, p.beam_width, p.alpha, p.beta)):
            lines.append(f"| {p.decoder} | {p.alpha:g} | {p.beta:g} | {p.beam_width} | {p.wer:.4f} | {p.cer:.4f} | "
                         f"{p.seconds:.1f} |")
        return "\n".join(lines) + "\n"


def plot_pareto(result: TuneResult, path: str | os.PathLike) -> Path:
    """Every grid point as WER against utt/s (log scale), one colour per decoder, the front joined by a line."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from asr.files import atomic_path

    fig, ax = plt.subplots(figsize=(6.4, 4.2))
    for name in sorted({p.decoder for p in result.points}):
        points = [p for p in result.points if p.decoder == name]
        ax.scatter([result.utt_per_second(p) for p in points], [100 * p.wer for p in points], s=18, alpha=0.7,
                   label=name)
    front = result.pareto()
    ax.plot([result.utt_per_second(p) for p in front], [100 * p.wer for p in front], color="black", lw=1,
            label="best trade-offs")
    for p in front:
        ax.annotate(f"{p.decoder} a={p.alpha:g} b={p.beta:g} w={p.beam_width}",
                    (result.utt_per_second(p), 100 * p.wer), fontsize=6, xytext=(3, 3), textcoords="offset points")
    ax.set_xscale("log")
    ax.set_xlabel("utterances per second (one process)")
    ax.set_ylabel("WER %")
    ax.set_title(f"tuning on {result.data} ({result.utterances} utterances)", fontsize=9)
    ax.legend(fontsize=8)
    fig.tight_layout()
    path = Path(path)
    with atomic_path(path) as tmp:
        fig.savefig(tmp, dpi=120)
    plt.close(fig)
    return path


def plot_grid(result: TuneResult, path: str | os.PathLike) -> Path:
    """The alpha x beta grid as WER heatmaps, one panel per decoder and beam width, the best cell outlined."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from asr.files import atomic_path

    panels = sorted({(p.decoder, p.beam_width) for p in result.points})
    alphas, betas = sorted({p.alpha for p in result.points}), sorted({p.beta for p in result.points})
    fig, axes = plt.subplots(1, len(panels), figsize=(0.9 * len(betas) * len(panels) + 1.5 * len(panels), 3.6),
                             squeeze=False)
    for ax, (name, width) in zip(axes[0], panels):
        wer = np.full((len(alphas), len(betas)), np.nan)
        for p in result.points:
            if (p.decoder, p.beam_width) == (name, width):
                wer[alphas.index(p.alpha), betas.index(p.beta)] = 100 * p.wer
        image = ax.imshow(wer, cmap="viridis_r", aspect="auto", origin="lower")
        low, high = np.nanmin(wer), np.nanmax(wer)
        for (i, j), value in np.ndenumerate(wer):
            if np.isfinite(value):  # dark text on the light (low-WER) end of the colour map
                light = (value - low) <= 0.5 * (high - low)
                ax.text(j, i, f"{value:.1f}", ha="center", va="center", fontsize=7, color="black" if light else "white")
        if np.isfinite(wer).any():
            i, j = np.unravel_index(np.nanargmin(wer), wer.shape)
            ax.add_patch(plt.Rectangle((j - 0.5, i - 0.5), 1, 1, fill=False, edgecolor="red", lw=2))
        ax.set_xticks(range(len(betas)), [f"{b:g}" for b in betas])
        ax.set_yticks(range(len(alphas)), [f"{a:g}" for a in alphas])
        ax.set(xlabel="beta (word bonus)", ylabel="alpha (LM weight)", title=f"{name}, beam {width}: WER %")
        fig.colorbar(image, ax=ax, fraction=0.05)
    fig.suptitle(f"tuning on {result.data} ({result.utterances} utterances)", fontsize=9)
    fig.tight_layout()
    path = Path(path)
    with atomic_path(path) as tmp:
        fig.savefig(tmp, dpi=110)
    plt.close(fig)
    return path


def with_point(settings: DecoderSettings, alpha: float, beta: float, beam_width: int | None = None,
               ) -> DecoderSettings:
    """`settings` with both decoders set to one grid point (flashlight through alpha * ln 10 and beta)."""
    py = dataclasses.replace(settings.pyctcdecode, alpha=alpha, beta=beta,
                             beam_width=beam_width or settings.pyctcdecode.beam_width)
    fl = dataclasses.replace(settings.flashlight, lm_weight=alpha * LN10, word_score=beta,
                             beam_size=beam_width or settings.flashlight.beam_size)
    return DecoderSettings(py, fl)


def tune(
    log_probs: Sequence[np.ndarray],
    references: Sequence[str],
    vocab: Mapping[str, int],
    lm_dir: str | os.PathLike,
    *,
    decoders: Sequence[str] = BEAM_DECODERS,
    grid: TuneGrid | None = None,
    settings: DecoderSettings | None = None,
    processes: int = 1,
    nbest: int = DEFAULT_NBEST,
    data: str = "",
    progress: bool = False,
) -> TuneResult:
    """Grid search of alpha/beta (and beam width) for the beam decoders on cached log-probs.

    Each grid point decodes the whole set in one worker of a fork pool (workers inherit the
    log-probs; pyctcdecode cannot use spawn). Ties go to the lower CER, then the narrower beam.

    Args:
        log_probs: [T_i, V] per utterance of the tuning (dev) set.
        references: Normalised transcripts.
        vocab: Token -> id of the model.
        lm_dir: The LM directory.
        decoders: Which of "beam", "flashlight" to tune.
        grid: Values searched.
        settings: Everything not searched (prune thresholds, hotwords, lexicon-free ...).
        processes: Pool workers; 1 decodes in this process.
        nbest: Hypotheses per utterance for the oracle WER at the best point; 0 skips it.
        data: Name of the tuning set, for the report.
        progress: Show a tqdm bar over the grid points (and the n-best pass).
    """
    grid = grid or TuneGrid()
    settings = settings or DecoderSettings()
    decoders = [d for d in decoders if d in BEAM_DECODERS]
    if not decoders:
        raise ValueError("tune() needs at least one of the beam decoders 'beam' and 'flashlight' to tune.")
    if len(log_probs) != len(references):
        raise ValueError(f"{len(log_probs)} log-prob arrays but {len(references)} references; they must pair up.")
    build_decoder(decoders[0], vocab, lm_dir, settings)  # fail here, not in a worker, when the LM is missing
    started = time.perf_counter()
    widths = grid.beam_widths or (None,)
    # pyctcdecode points first: they are the slow ones, so the pool's tail is made of quick flashlight points.
    tasks = [(name, a, b, w) for name in sorted(decoders, key=lambda d: d != "beam")
             for w in widths for a in grid.alphas for b in grid.betas]
    state = {"log_probs": list(log_probs), "references": list(references), "vocab": dict(vocab),
             "lm_dir": str(lm_dir), "settings": _single_process(settings)}
    logger.info("tuning %s on %d utterances: %d decodes on %d process(es)", "/".join(decoders), len(log_probs),
                len(tasks), processes)
    points = fork_map(_tune_point, tasks, processes, state, progress="tune" if progress else None)
    best = {name: min((p for p in points if p.decoder == name), key=lambda p: (p.wer, p.cer, p.beam_width))
            for name in decoders}
    oracle = {}
    if nbest > 0:
        for name, p in best.items():
            oracle[name] = _oracle(name, p, state, nbest, processes, progress)
    seconds = time.perf_counter() - started
    for name, p in best.items():
        logger.info("best %s: alpha=%g beta=%g beam=%d WER %.4f%s", name, p.alpha, p.beta, p.beam_width, p.wer,
                    f" (n-best oracle {oracle[name].wer_oracle:.4f})" if name in oracle else "")
    return TuneResult(data=data, utterances=len(log_probs), grid=grid, points=points, best=best, oracle=oracle,
                      seconds=seconds)


def save_tuned(lm_dir: str | os.PathLike, result: TuneResult, extra: Mapping[str, Any] | None = None) -> Path:
    """Write the best values into the LM directory so later decodes use them by default.

    pyctcdecode's alpha/beta go into `language_model/attrs.json` (kept in pyctcdecode's format,
    other keys untouched); both decoders' values into `decoder.json` with where they came from.
    A decoder that was not tuned keeps its stored values.

    Returns:
        The path of decoder.json.
    """
    updates: dict[str, dict[str, Any]] = {}
    if "beam" in result.best:
        p = result.best["beam"]
        updates["pyctcdecode"] = {"alpha": p.alpha, "beta": p.beta, "beam_width": p.beam_width}
    if "flashlight" in result.best:
        p = result.best["flashlight"]
        updates["flashlight"] = {"lm_weight": p.alpha * LN10, "word_score": p.beta, "beam_size": p.beam_width,
                                 "alpha": p.alpha}
    tuned = {
        "data": result.data, "utterances": result.utterances, "grid": dataclasses.asdict(result.grid),
        "wer": {name: p.wer for name, p in result.best.items()},
        "cer": {name: p.cer for name, p in result.best.items()},
        "oracle_wer": {name: o.wer_oracle for name, o in result.oracle.items()},
        "date": time.strftime("%Y-%m-%d %H:%M:%S"), **(extra or {}),
    }
    path = save_decoder_settings(lm_dir, updates, tuned)
    logger.info("tuned settings written to %s and %s", path, Path(lm_dir) / LM_SUBDIR / ATTRS_FILE)
    return path


def write_tuning(result: TuneResult, out_dir: str | os.PathLike) -> None:
    """tuning.md, tuning.json, tuning_pareto.png (WER against speed) and tuning_grid.png (WER heatmaps) in `out_dir`."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    write_text_atomic(out_dir / "tuning.md", result.to_markdown())
    write_text_atomic(out_dir / "tuning.json", json.dumps(result.to_dict(), indent=1) + "\n")
    plot_pareto(result, out_dir / "tuning_pareto.png")
    plot_grid(result, out_dir / "tuning_grid.png")


def tune_and_save(log_probs: Sequence[np.ndarray], references: Sequence[str], vocab: Mapping[str, int],
                  lm_dir: str | os.PathLike, out_dir: str | os.PathLike, *, model: str = "",
                  **options: Any) -> TuneResult:
    """`tune` (with `options`), then its best values into the LM directory (`save_tuned`) and the report into
    `out_dir` (`write_tuning`)."""
    result = tune(log_probs, references, vocab, lm_dir, **options)
    save_tuned(lm_dir, result, extra={"model": model})
    write_tuning(result, out_dir)
    return result


def _single_process(settings: DecoderSettings) -> DecoderSettings:
    """Settings for use inside a pool worker (no nested pool)."""
    return DecoderSettings(dataclasses.replace(settings.pyctcdecode, num_processes=0),
                           dataclasses.replace(settings.flashlight, num_processes=0))


def _tune_point(state: Mapping[str, Any], task: tuple[str, float, float, int | None]) -> TunePoint:
    """Decode the tuning set at one grid point (runs in a pool worker)."""
    name, alpha, beta, width = task
    settings = with_point(state["settings"], alpha, beta, width)
    decoder = build_decoder(name, state["vocab"], state["lm_dir"], settings)
    started = time.perf_counter()
    texts = [h.text for h in decoder.decode_batch(state["log_probs"])]
    seconds = time.perf_counter() - started
    rates = error_rates(state["references"], texts)
    used_width = settings.pyctcdecode.beam_width if name == "beam" else settings.flashlight.beam_size
    return TunePoint(name, alpha, beta, used_width, rates.wer, rates.cer, seconds)


def _nbest_chunk(state: Mapping[str, Any], task: tuple[str, tuple[float, float, int], list[int], int]) -> list[list]:
    """N-best lists of some utterances at one setting (runs in a pool worker)."""
    name, (alpha, beta, width), indices, n = task
    decoder = build_decoder(name, state["vocab"], state["lm_dir"], with_point(state["settings"], alpha, beta, width))
    return [decoder.decode_nbest(state["log_probs"][i], n=n) for i in indices]


def _oracle(name: str, point: TunePoint, state: Mapping[str, Any], nbest: int, processes: int,
            progress: bool = False) -> OracleResult:
    """N-best oracle WER of one decoder at its best point."""
    n = len(state["log_probs"])
    chunks = interleaved_chunks(n, processes)
    setting = (point.alpha, point.beta, point.beam_width)
    lists = fork_map(_nbest_chunk, [(name, setting, c, nbest) for c in chunks], processes, state,
                     progress=f"{name} {nbest}-best" if progress else None)
    nbest_lists: list[list] = in_item_order(chunks, lists, n, empty=[])
    refs = state["references"]
    oracle = error_rates(refs, oracle_texts(refs, nbest_lists)).wer
    first = error_rates(refs, [h[0].text if h else "" for h in nbest_lists]).wer
    return OracleResult(name, nbest, first, oracle)
