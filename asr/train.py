"""Pieces of the training recipe (`scripts/train.py` runs them): config, optimiser, schedule, eval, outputs."""

from __future__ import annotations

import json
import logging
import math
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import numpy as np
import torch
from accelerate.utils import gather_object

from asr.beam import GreedyCTC
from asr.config import ConfigError, require
from asr.data import DataConfig
from asr.metrics import error_rates
from asr.model import ModelConfig, output_frames
from asr.model_card import CardConfig
from asr.text import ids_to_text

logger = logging.getLogger(__name__)

MODEL_INPUTS = ("input_values", "input_features", "attention_mask")  # batch keys the model takes (waveform or filterbank)
# Accelerate's experiment trackers (accelerate.tracking), each usable once its package is installed.
TRACKERS = ("tensorboard", "wandb", "mlflow", "trackio", "comet_ml", "aim", "clearml", "dvclive", "swanlab")
# How each runs without a server or account (README "Trackers").
TRACKER_OFFLINE = {"wandb": "WANDB_MODE=offline", "mlflow": "MLFLOW_TRACKING_URI=file:./mlruns",
                   "trackio": "local by default", "comet_ml": "COMET_MODE=offline", "tensorboard": "always local"}


@dataclass
class OptimConfig:
    """AdamW and its learning-rate schedule."""

    lr: float = 1e-4  # peak learning rate after warmup
    weight_decay: float = 0.005  # not applied to biases and norm weights
    betas: tuple[float, float] = (0.9, 0.98)  # Adam's moment decays; 0.98 (not 0.999) adapts faster, as in wav2vec2
    eps: float = 1e-8  # added to Adam's denominator, for steps on parameters with tiny gradients
    warmup_steps: int = 500  # linear warmup from 0; CTC collapses to blanks with too high an early LR
    schedule: Literal["linear", "cosine", "constant"] = "linear"  # decay after warmup to 0 at max_steps
    max_grad_norm: float | None = 1.0  # clip the global grad norm; None disables
    grad_accum_steps: int = 1  # micro-batches per optimizer step
    # Layer-wise LR decay: the CTC head and the top encoder layer train at `lr`, each layer below at this factor
    # times the one above, the front end (feature encoder/projection, positional embedding) at the lowest rate,
    # so fine-tuning moves the lower layers' acoustics less. None (or 1.0): one rate for all.
    layer_decay: float | None = None

    def __post_init__(self) -> None:
        require(math.isfinite(self.lr) and self.lr > 0, "optim.lr", self.lr, "a positive learning rate such as 1e-4")
        require(math.isfinite(self.weight_decay) and self.weight_decay >= 0, "optim.weight_decay", self.weight_decay,
               "a number >= 0")
        require(len(self.betas) == 2 and all(math.isfinite(b) and 0 <= b < 1 for b in self.betas), "optim.betas",
               list(self.betas), "two numbers in [0, 1) such as [0.9, 0.98]")
        require(math.isfinite(self.eps) and self.eps > 0, "optim.eps", self.eps, "a small positive number such as 1e-8")
        require(self.warmup_steps >= 0, "optim.warmup_steps", self.warmup_steps, "0 or more steps")
        require(self.max_grad_norm is None or (math.isfinite(self.max_grad_norm) and self.max_grad_norm > 0),
               "optim.max_grad_norm", self.max_grad_norm, "a positive norm such as 1.0, or null to not clip")
        require(self.grad_accum_steps >= 1, "optim.grad_accum_steps", self.grad_accum_steps,
               "1 or more micro-batches per optimizer step")
        require(self.layer_decay is None or (math.isfinite(self.layer_decay) and 0 < self.layer_decay <= 1),
               "optim.layer_decay", self.layer_decay, "a factor in (0, 1] such as 0.8, or null for one rate")


@dataclass
class LoopConfig:
    """How long to train, and when to evaluate, save and log."""

    output_dir: str = "runs/default"  # everything the run writes: checkpoints/, model/, logs
    seed: int = 0  # weights of new layers, shuffling, augmentation: the same seed gives the same run
    max_steps: int = 1000  # optimizer steps; the LR schedule runs to here
    stop_at: int | None = None  # stop (evaluate, save) after this step; `--resume latest` later continues to max_steps
    # bf16 on Ampere+; fp16 uses a loss scaler; auto: bf16 where the GPU or CPU computes it natively (AMX,
    # AVX512-BF16), fp16 on older GPUs, else no
    mixed_precision: Literal["no", "fp16", "bf16", "auto"] = "no"
    eval_every: int = 200  # steps; also evaluated at the end
    best_metric: Literal["wer", "cer", "loss", "last"] = "wer"  # model/ = lowest dev wer, cer, loss, or the last step
    save_every: int = 200  # steps; also saved at the end
    save_total_limit: int | None = 2  # checkpoints kept (oldest removed first)
    log_every: int = 10  # steps between metric log lines
    eval_samples_logged: int = 4  # example predictions printed/logged at each eval
    eval_max_batch_seconds: float | None = None  # eval batch size in padded seconds (None: data.max_batch_seconds x 2)
    report_to: list[str] = field(default_factory=lambda: ["tensorboard"])  # trackers (TRACKERS); [] for none
    run_name: str | None = None  # the trackers' project/run name (None: the output_dir's folder name)
    push_to_hub: str | None = None  # hub repo (owner/name) model/ is uploaded to at the end; offline: refused at start

    @property
    def last_step(self) -> int:
        """The step this invocation ends at: `stop_at` (a stage of a longer schedule), else `max_steps`."""
        return self.max_steps if self.stop_at is None else self.stop_at

    def __post_init__(self) -> None:
        require(bool(self.output_dir.strip()), "train.output_dir", self.output_dir, "a directory path")
        existing = next(p for p in (Path(self.output_dir), *Path(self.output_dir).absolute().parents) if p.exists())
        require(existing.is_dir(), "train.output_dir", self.output_dir,
               f"a directory path ({existing} is a file, not a directory)")
        require(0 <= self.seed < 2**32, "train.seed", self.seed, "an integer in [0, 2**32) (NumPy's seed range)")
        for name in ("max_steps", "eval_every", "save_every", "log_every"):
            require(getattr(self, name) >= 1, f"train.{name}", getattr(self, name), "1 or more steps")
        require(self.stop_at is None or 1 <= self.stop_at <= self.max_steps, "train.stop_at", self.stop_at,
                f"a step in [1, train.max_steps={self.max_steps}], or null to run to max_steps")
        require(self.save_total_limit is None or self.save_total_limit >= 1, "train.save_total_limit",
               self.save_total_limit, "1 or more checkpoints, or null to keep them all")
        unknown = [name for name in self.report_to if name not in TRACKERS]
        require(not unknown, "train.report_to", self.report_to, f"a list of trackers from {', '.join(TRACKERS)}, "
                "or [] for none")
        require(self.eval_samples_logged >= 0, "train.eval_samples_logged", self.eval_samples_logged, "0 or more")
        require(self.eval_max_batch_seconds is None or (math.isfinite(self.eval_max_batch_seconds)
                                                       and self.eval_max_batch_seconds > 0),
               "train.eval_max_batch_seconds", self.eval_max_batch_seconds, "positive seconds, or null")


def check_trackers(names: list[str]) -> None:
    """Refuses (ConfigError, one line naming the install and the offline mode) a tracker that is not installed."""
    from accelerate.utils import imports

    for name in names:
        if not getattr(imports, f"is_{name}_available")():
            offline = f" (offline: {TRACKER_OFFLINE[name]})" if name in TRACKER_OFFLINE else ""
            raise ConfigError(f"train.report_to names {name}, which is not installed: `pip install {name}`{offline}, "
                              f"or remove it from train.report_to")


def tracker_hparams(cfg: Any) -> dict[str, Any]:
    """The whole resolved config, flattened to `section.key` scalars (lists and None as text) for trackers."""
    from asr.config import to_dict

    flat: dict[str, Any] = {}

    def walk(prefix: str, value: Any) -> None:
        if isinstance(value, dict):
            for key, item in value.items():
                walk(f"{prefix}.{key}" if prefix else key, item)
        else:
            flat[prefix] = value if isinstance(value, (bool, int, float, str)) else json.dumps(value)

    walk("", to_dict(cfg))
    return flat


def log_transcripts(accelerator: Any, samples: list[tuple[str, str, str]], step: int) -> None:
    """A few dev transcripts (id, reference, hypothesis) as text in each tracker that takes text."""
    rows = [[uid, ref, hyp] for uid, ref, hyp in samples]
    markdown = "| id | reference | hypothesis |\n|---|---|---|\n" + "\n".join(
        "| " + " | ".join(cell.replace("|", "/") for cell in row) + " |" for row in rows)
    for tracker in accelerator.trackers:
        if tracker.name == "tensorboard":
            tracker.writer.add_text("dev/transcripts", markdown, global_step=step)
        elif tracker.name in ("wandb", "clearml"):  # the trackers with a log_table in Accelerate
            tracker.log_table("dev/transcripts", columns=["id", "reference", "hypothesis"], data=rows, step=step)
        elif tracker.name == "mlflow":
            import mlflow

            mlflow.log_text(markdown, f"dev_transcripts/step_{step}.md")


@dataclass
class FaultConfig:
    """Fault injection, for testing the loop's guards; leave empty in real runs."""

    nan_at: list[int] = field(default_factory=list)  # micro-batches (1-based) whose loss becomes NaN on `rank`
    raise_at: int | None = None  # micro-batch at which `rank` raises RuntimeError
    rank: int = 0  # the process the faults happen on


@dataclass
class TrainConfig:
    """A whole run: data, model, optimiser, loop."""

    data: DataConfig = field(default_factory=DataConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    train: LoopConfig = field(default_factory=LoopConfig)
    faults: FaultConfig = field(default_factory=FaultConfig)
    card: CardConfig = field(default_factory=CardConfig)  # the model card's licence, language, datasets


_NO_DECAY = ("bias", "layer_norm", "layernorm", "norm.weight", "masked_spec_embed", "pos_conv")
_LAYER = re.compile(r"(?:^|\.)encoder\.layers\.(\d+)\.")  # wav2vec2, HuBERT, WavLM, w2v-bert, conformer, data2vec
_FRONT_END = ("feature_extractor", "feature_projection", "masked_spec_embed", "pos_conv_embed")  # below the layers


def layer_depths(model: torch.nn.Module) -> dict[str, int]:
    """Each trainable parameter's depth: 0 for the front end, n + 1 for encoder layer n, the top for the rest.

    The rest is what sits above the layers: the CTC head, an adapter, and the encoder's final norm in
    pre-LN (stable layer norm) models; a post-LN model's encoder norm comes before the layers (depth 0).
    Raises ConfigError for a model without `encoder.layers.N` (layer-wise decay cannot place its layers).
    """
    names = [name for name, param in model.named_parameters() if param.requires_grad]
    layers = {name: int(m.group(1)) for name in names if (m := _LAYER.search(name))}
    if not layers:
        raise ConfigError(f"optim.layer_decay needs encoder layers named encoder.layers.N, and "
                          f"{type(model).__name__} has none; set optim.layer_decay=null")
    top = max(layers.values()) + 2
    pre_ln = bool(getattr(model.config, "do_stable_layer_norm", False))

    def depth(name: str) -> int:
        if name in layers:
            return layers[name] + 1
        if any(f".{part}" in f".{name}" for part in _FRONT_END):
            return 0
        if ".encoder.layer_norm." in f".{name}":
            return top if pre_ln else 0
        return top

    return {name: depth(name) for name in names}


def build_optimizer(model: torch.nn.Module, cfg: OptimConfig) -> torch.optim.AdamW:
    """AdamW with weight decay on weight matrices only (biases, norms and embeddings excluded).

    With `cfg.layer_decay`, one pair of groups per depth (`layer_depths`), each with its own peak rate
    lr x decay^(top - depth); the schedule scales every group's rate by the same factor.
    """
    factor = cfg.layer_decay or 1.0
    depths = layer_depths(model) if factor < 1 else {}  # without decay every parameter is at the top
    top = max(depths.values(), default=0)
    groups: dict[tuple[int, bool], list[torch.nn.Parameter]] = {}
    for name, param in model.named_parameters():
        if not param.requires_grad:
            continue
        decayed = not (param.ndim < 2 or any(k in name.lower() for k in _NO_DECAY))
        groups.setdefault((depths.get(name, top), decayed), []).append(param)
    param_groups = [{"params": params, "weight_decay": cfg.weight_decay if decayed else 0.0,
                     "lr": cfg.lr * factor ** (top - depth)}
                    for (depth, decayed), params in sorted(groups.items(), key=lambda kv: (kv[0][0], not kv[0][1]))]
    return torch.optim.AdamW(param_groups, lr=cfg.lr, betas=cfg.betas, eps=cfg.eps)


def build_scheduler(optimizer: torch.optim.Optimizer, cfg: OptimConfig, max_steps: int):
    """Linear warmup, then linear/cosine decay to 0 at `max_steps` (or constant)."""

    def factor(step: int) -> float:
        if step < cfg.warmup_steps:
            return (step + 1) / max(1, cfg.warmup_steps)
        if cfg.schedule == "constant":
            return 1.0
        progress = min(1.0, (step - cfg.warmup_steps) / max(1, max_steps - cfg.warmup_steps))
        return 1.0 - progress if cfg.schedule == "linear" else 0.5 * (1.0 + math.cos(math.pi * progress))

    return torch.optim.lr_scheduler.LambdaLR(optimizer, factor)


def ctc_loss(logits: torch.Tensor, labels: torch.Tensor, frames: torch.Tensor, blank_id: int,
             zero_infinity: bool = True) -> torch.Tensor:
    """Mean CTC loss over the batch, each utterance's loss divided by its label count, in float32.

    transformers computes the loss over the whole padded length when the model takes no attention
    mask (base-style models): the model then learns to put the last words into the padding, and
    greedy decoding cut at the true length loses them. Here every utterance uses its real frames.

    Args:
        logits: [B, T, V] (any float dtype; the softmax runs in float32).
        labels: [B, L] label ids, -100 on padding.
        frames: [B] valid output frames per utterance.
    """
    log_probs = torch.log_softmax(logits.float(), dim=-1).transpose(0, 1)  # [T, B, V]
    mask = labels >= 0
    targets = labels.masked_select(mask)
    target_lengths = mask.sum(-1)
    with torch.backends.cudnn.flags(enabled=False):  # cuDNN's CTC needs int32 inputs of its own layout
        loss = torch.nn.functional.ctc_loss(log_probs, targets, frames, target_lengths, blank=blank_id,
                                            reduction="none", zero_infinity=zero_infinity)
    return (loss / target_lengths.clamp(min=1)).mean()


def forward_loss(model: torch.nn.Module, unwrapped: torch.nn.Module, batch: dict[str, torch.Tensor],
                 device: torch.device) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Runs the model on a collated batch; returns (loss, logits [B, T, V], valid frames [B])."""
    inputs = {k: v.to(device) for k, v in batch.items() if k in MODEL_INPUTS}
    logits = model(**inputs).logits
    frames = output_frames(unwrapped, batch["input_lengths"]).long().to(device)
    loss = ctc_loss(logits, batch["labels"].to(device), frames, unwrapped.config.pad_token_id,
                    unwrapped.config.ctc_zero_infinity)
    return loss, logits, frames


class EvalShards:
    """The dev set's batches for one process, the same batches whatever the number of processes.

    A model without an attention mask reads the zero padding, so its dev logits depend on which utterances
    share a batch: the batches are packed as for one process, then dealt round-robin. Every process gets
    the same number of batches (DeepSpeed ZeRO-3 needs every rank in every forward pass): the short ones
    repeat batches from the start of the list, and `evaluate` counts each batch once, by its ids.

    Args:
        batches: All batches (lists of dataset indices), e.g. a one-process DurationBatchSampler's.
        num_replicas: The number of processes.
        rank: This process's index.
    """

    def __init__(self, batches: list[list[int]], num_replicas: int, rank: int) -> None:
        if not batches:
            raise ValueError("the dev set has no batch to evaluate")
        per_rank = -(-len(batches) // num_replicas)
        self._batches = [batches[(rank + k * num_replicas) % len(batches)] for k in range(per_rank)]

    def __iter__(self):
        return iter(self._batches)

    def __len__(self) -> int:
        return len(self._batches)


@torch.no_grad()
def evaluate(accelerator, model, dataloader, vocab: dict[str, int]) -> dict[str, Any] | None:
    """Greedy WER/CER over the whole (rank-sharded) dev set, gathered on every rank.

    Returns:
        {"wer", "cer", "loss", "n", "samples": [(id, reference, hypothesis), ...] sorted by id}, or None
        on every rank when no dev utterance could be read (each was skipped with its reason logged).
    """
    model.eval()
    unwrapped = accelerator.unwrap_model(model)
    id_to_token = {i: t for t, i in vocab.items()}
    greedy = GreedyCTC(vocab)
    rows: list[tuple[str, str, str]] = []
    losses: list[tuple[tuple[str, ...], float, int]] = []  # (batch ids, loss x utterances, utterances)
    for batch in dataloader:
        if batch is None:
            continue
        ids = batch.pop("ids")
        loss, logits, frames = forward_loss(model, unwrapped, batch, accelerator.device)
        if torch.isfinite(loss):
            losses.append((tuple(ids), loss.item() * len(ids), len(ids)))
        hyps = [h.text for h in greedy.decode_batch(logits.float().cpu().numpy(), frames.cpu().tolist())]
        refs = [ids_to_text(row[row >= 0].tolist(), id_to_token) for row in batch["labels"].numpy()]
        rows.extend(zip(ids, refs, hyps))
    # gather_object concatenates every rank's list; keyed by id (a batch EvalShards repeats counts once)
    all_rows = sorted({r[0]: r for r in gather_object(rows)}.values())
    by_batch = {key: (total, n) for key, total, n in gather_object(losses)}
    model.train()
    if not all_rows:
        return None
    rates = error_rates([r[1] for r in all_rows], [r[2] for r in all_rows])
    ordered = [by_batch[key] for key in sorted(by_batch)]  # summed in one order on any number of processes
    return {
        "wer": rates.wer,
        "cer": rates.cer,
        "loss": sum(total for total, _ in ordered) / max(1, sum(n for _, n in ordered)),
        "n": len(all_rows),
        "samples": all_rows,
    }


def process_tree_cpu_seconds() -> float:
    """User + system CPU seconds of this process and its live children (DataLoader workers).

    Workers that already exited are not counted, so call it while the loaders' workers are alive,
    or accept the small undercount of the ones that ended (one per epoch per loader).
    """
    import psutil

    total = 0.0
    me = psutil.Process()
    for proc in (me, *me.children(recursive=True)):
        try:
            times = proc.cpu_times()
        except psutil.Error:  # a worker that ended between the listing and the read
            continue
        total += times.user + times.system
    return total


class MetricsLog:
    """Appends one JSON object per line (main process); flushed so a crash loses nothing."""

    def __init__(self, path: Path):
        self.path = path
        path.parent.mkdir(parents=True, exist_ok=True)

    def write(self, record: dict[str, Any]) -> None:
        with open(self.path, "a", encoding="utf-8") as f:
            f.write(json.dumps(record) + "\n")

    def read(self) -> list[dict[str, Any]]:
        if not self.path.exists():
            return []
        return [json.loads(line) for line in self.path.read_text().splitlines() if line.strip()]


def chosen_eval(evals: list[dict[str, Any]], best_metric: str = "wer") -> dict[str, Any] | None:
    """The eval record whose step model/ holds under `best_metric` (the first of equal scores), None if none."""
    if not evals:
        return None
    if best_metric == "last":
        return max(evals, key=lambda r: r["step"])
    return min(evals, key=lambda r: (r[best_metric], r["step"]))


def plot_curves(records: list[dict[str, Any]], path: Path, run_name: str = "", best_metric: str = "wer"
                ) -> dict[str, Any]:
    """PNG (written atomically) with the training loss, the learning rate on a second axis, and the dev WER/CER
    against steps with the exported step marked (the lowest dev `best_metric`: wer, cer or loss, or the last
    evaluation with "last"); the run name on top.

    Returns:
        What was drawn: {"title", "best_step" and its legend text "marker" (None without evals), "lr_points",
        "evals"}.
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from asr.files import atomic_path

    train = [r for r in records if r.get("kind") == "train"]
    dev = [r for r in records if r.get("kind") == "eval"]
    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(10, 3.9))
    if train:
        ax1.plot([r["step"] for r in train], [r["loss"] for r in train], label="train loss")
    if dev:
        ax1.plot([r["step"] for r in dev], [r["loss"] for r in dev], "o-", label="dev loss")
        ax2.plot([r["step"] for r in dev], [100 * r["wer"] for r in dev], "o-", label="dev WER")
        ax2.plot([r["step"] for r in dev], [100 * r["cer"] for r in dev], "s-", label="dev CER")
    lr = [(r["step"], r["lr"]) for r in train if r.get("lr") is not None]
    if lr:
        ax_lr = ax1.twinx()
        ax_lr.plot(*zip(*lr), "--", color="gray", lw=1, label="learning rate")
        ax_lr.set_ylabel("learning rate", color="gray")
        ax_lr.ticklabel_format(axis="y", style="sci", scilimits=(-2, 2))
        ax_lr.legend(loc="upper center", fontsize=8)
    best, marker = chosen_eval(dev, best_metric), None
    if best is not None:
        score = "" if best_metric == "last" else (f", loss {best['loss']:.3f}" if best_metric == "loss" else
                                                  f", {best_metric.upper()} {100 * best[best_metric]:.1f}%")
        marker = f"{'last' if best_metric == 'last' else 'best'}: step {best['step']}{score}"
        ax2.axvline(best["step"], color="green", lw=1, ls=":")
        ax2.plot([best["step"]], [100 * best["wer"]], "*", color="green", ms=12, label=marker)
    ax1.set(xlabel="step", ylabel="CTC loss", title="loss")
    ax2.set(xlabel="step", ylabel="%", title="dev error rates (greedy)")
    for ax in (ax1, ax2):
        ax.grid(alpha=0.3)
        if ax.get_legend_handles_labels()[0]:  # nothing to name before the first log line or evaluation
            ax.legend(loc="upper right", fontsize=8)
    title = f"run {run_name}" if run_name else ""
    if title:
        fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    with atomic_path(path) as tmp:
        fig.savefig(tmp, dpi=100)
    plt.close(fig)
    return {"title": title, "best_step": best["step"] if best else None, "marker": marker, "lr_points": len(lr),
            "evals": len(dev)}


def finite_on_all_ranks(accelerator, loss: torch.Tensor) -> bool:
    """True when the loss is finite on every rank (one all-reduce), so all skip a bad batch together."""
    flag = torch.tensor([1.0 if torch.isfinite(loss).item() else 0.0], device=accelerator.device)
    return bool(accelerator.reduce(flag, reduction="sum").item() == accelerator.num_processes)


def seconds_in_batch(batch: dict[str, torch.Tensor]) -> float:
    """Unpadded audio seconds in a batch."""
    from asr.constants import SAMPLE_RATE

    return float(np.asarray(batch["input_lengths"]).sum()) / SAMPLE_RATE
