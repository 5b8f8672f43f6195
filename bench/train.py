"""Training throughput: scripts/train.py vs a Hugging Face `Trainer` built like `run_speech_recognition_ctc.py`.

    # the real measurement: configs/train/tiny_cpu.yaml's model on data/synth, 80 s of padded audio per step
    # (make the corpus first: python scripts/make_corpus.py --out data/synth --train 2000 --dev 200 --test 200)
    $ .venv/bin/python bench/train.py --output runs/bench/
    # 2 processes (DDP over gloo, `accelerate launch`), still 80 s per global batch (40 s per process)
    $ .venv/bin/python bench/train.py --processes 2 --output runs/bench/
    # another corpus, model or batch; dotted overrides apply to both sides
    $ .venv/bin/python bench/train.py --manifest data/base/train.jsonl --batch-seconds 160 --steps 60 \\
          model.architecture.num_hidden_layers=6
    # smoke test of the machinery (well under a minute): 2 x 32 model, 48 utterances, 1 + 3 steps
    $ .venv/bin/python bench/train.py --smoke

The data is prepared once (train.py's vocabulary, filters and cached table, in the work directory;
not timed). Then both sides train the same model (`asr.model.build_model` from the run config:
architecture, dropout, SpecAugment; fp32 on CPU, CUDA hidden) on the same filtered utterances with
the same optimiser (torch AdamW: lr, betas, eps, weight decay, warmup and schedule, grad clipping),
the baseline first, then ours, each in fresh processes with the same OMP_NUM_THREADS, DataLoader
workers and memory allocator (`--work-dir DIR` keeps their logs and outputs):

- ours: `scripts/train.py` itself (a subprocess, or `accelerate launch` for `--processes 2`):
  `DurationBatchSampler` packing `--batch-seconds / processes` of padded audio per process,
  `SpeechDataset` decoding the wav files in DataLoader workers, `CTCCollator`, `forward_loss`
  (our CTC over each utterance's real frames), the Accelerate loop.
- baseline, the way the example does it: the audio decoded once and stored normalised in a
  `datasets` table (`input_values`, `input_length`, `labels`; not timed, as the example's
  preprocessing), `Trainer.train()` with `train_sampling_strategy="group_by_length"` (transformers
  5's name for the example's `--group_by_length`) and `length_column_name="input_length"`, a fixed
  `per_device_train_batch_size`, and a collator that pads each batch with `processor.pad` (labels
  padded with -100); the model computes its own CTC loss (over the padded length: the same work as
  ours, which counts each utterance's real frames). The batch size is ours' mean utterances
  per batch over an epoch, so both hold the same audio per step on average. transformers 5 drops the
  `input_length` column with the other non-model columns before it builds the sampler, which then
  reads the lengths from `input_values` (same numbers, slower start-up, not timed).
  `optim="adamw_torch"` (the same torch AdamW as ours; Trainer's default is the fused one) and
  `ddp_find_unused_parameters` as ours; no logging, saving or evaluation during the run.

Timing: the first `--untimed-steps` optimizer steps are warm-up; the next `--steps` are timed.
Ours: train.py runs with `train.log_every=1`, so metrics.jsonl holds each step's `audio_s_per_s`
over its own window (fetching the batch, forward, backward, clipping, optimizer and LR step; the
logging itself falls between windows). Each step's audio comes from replaying the same
`DurationBatchSampler` on the same durations, so a step's wall time is audio / rate; the replay is
checked against the audio total train.py saves in its last checkpoint. Baseline: a `TrainerCallback`
takes the time at every `on_step_end`; the collator hands each batch's real lengths to the step
(a key the Trainer subclass removes before the model sees it). Throughput = audio seconds of the
timed steps (unpadded, all processes) / their wall seconds (process 0).

Padded %: padding samples / all samples of the model's input (raw 16 kHz audio, each per-process
batch padded to its longest item), over the timed batches. The "epoch" column is the same share over
one whole epoch of each sampler computed without training (exact, whole corpus): our sampler's
epoch 0, and transformers' `LengthGroupedSampler` (megabatches of 50 batches sorted by length) cut
into batches of the baseline's size.

Other jobs on the machine slow both sides: run it on an idle one. With the defaults on 2 idle cores it
takes about 6-10 minutes: preparing 2,000 utterances (~1 min), 45 steps of ~2-3 s per side, start-up
(the baseline's sampler reads every row's length first).
"""

from __future__ import annotations

import sys

if __package__ in (None, ""):  # run by path (python bench/train.py): the repository root, not bench/, goes first
    sys.path[0] = str(__import__("pathlib").Path(__file__).resolve().parents[1])

if __name__ == "__main__" and "--hf-child" in sys.argv:  # a baseline process: before torch, as scripts/train.py
    from asr.allocator import relaunch_under_jemalloc

    relaunch_under_jemalloc()

import argparse
import json
import logging
import os
import subprocess
import tempfile
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from transformers import Trainer, TrainerCallback

from bench.common import (
    ARCHITECTURES,
    machine_info,
    markdown_table,
    ratio,
    write_report,
)
from asr.constants import PAD, SAMPLE_RATE
from asr.packing import padding_fraction
from asr.sampler import DurationBatchSampler
from asr.train import TrainConfig

logger = logging.getLogger("bench_train")

ROOT = Path(__file__).resolve().parents[1]
DEFAULT_CONFIG = ROOT / "configs" / "train" / "tiny_cpu.yaml"
DEFAULT_MANIFEST = ROOT / "data" / "synth" / "train.jsonl"
ACCELERATE_CONFIG = ROOT / "configs" / "accelerate" / "cpu_2proc.yaml"
LENGTHS_KEY = "bench_input_lengths"  # real samples per item, handed from the collator to the step, never to the model
DEV_UTTERANCES = 8  # train.py needs a dev set: the first utterances of the corpus, evaluated once at the end
NEVER = 10**9  # train.eval_every / save_every: nothing inside the run (train.py still saves and evaluates at the end)
# Trainer's names for our OptimConfig.schedule (warmup, then decay to 0 at max_steps).
SCHEDULES = {"linear": "linear", "cosine": "cosine", "constant": "constant_with_warmup"}
# Options left unset: the real measurement (tiny_cpu.yaml's 80 s batches, all of data/synth, the config's
# DataLoader workers), or --smoke's seconds-long check of the machinery (no workers: no fork per run).
DEFAULTS = {"limit": 0, "batch_seconds": 80.0, "steps": 40, "untimed_steps": 5, "num_workers": None}
SMOKE = {"limit": 48, "batch_seconds": 20.0, "steps": 3, "untimed_steps": 1, "num_workers": 0}


@dataclass(frozen=True)
class SideResult:
    """One side's timed steps: audio, wall time and padding."""

    name: str
    setup: str
    steps: int  # optimizer steps timed
    audio_seconds: float  # unpadded audio of the timed steps, all processes
    wall_seconds: float
    padded_timed: float  # padding share of the model input over the timed batches
    padded_epoch: float  # the same over a whole epoch of the sampler, without training
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def audio_per_step(self) -> float:
        return self.audio_seconds / self.steps

    @property
    def throughput(self) -> float:
        """Audio seconds per wall second."""
        return self.audio_seconds / self.wall_seconds

# ------------------------------------------------------------------------------------------ baseline
class PaddingCollator:
    """The example's CTC collator, in our words: `processor.pad` pads the audio of each batch to its
    longest item and the label ids to the longest transcript, label padding becomes -100."""

    def __init__(self, processor: Any) -> None:
        self.processor = processor

    def __call__(self, features: Sequence[dict[str, Any]]) -> Any:
        batch = self.processor.pad([{"input_values": f["input_values"]} for f in features], padding=True,
                                   return_tensors="pt")
        labels = self.processor.pad(labels=[{"input_ids": f["labels"]} for f in features], padding=True,
                                    return_tensors="pt")
        batch["labels"] = labels["input_ids"].masked_fill(labels["attention_mask"].ne(1), -100)
        if "attention_mask" in batch:
            batch["attention_mask"] = batch["attention_mask"].long()
        return batch


class _MeasuredCollator(PaddingCollator):
    """PaddingCollator that also passes each item's real length on (DataLoader workers cannot append to a list)."""

    def __call__(self, features: Sequence[dict[str, Any]]) -> Any:
        batch = super().__call__(features)
        batch[LENGTHS_KEY] = torch.tensor([len(f["input_values"]) for f in features])
        return batch


class _MeasuredTrainer(Trainer):
    """Trainer that notes the real lengths of every batch, and removes them, before its usual step."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.batch_lengths: list[list[int]] = []

    def training_step(self, model, inputs, *args, **kwargs):
        self.batch_lengths.append(inputs.pop(LENGTHS_KEY).tolist())
        return super().training_step(model, inputs, *args, **kwargs)


class _StepClock(TrainerCallback):
    """perf_counter() at the end of every optimizer step."""

    def __init__(self) -> None:
        self.step_ends: list[float] = []

    def on_step_end(self, args, state, control, **kwargs):
        self.step_ends.append(time.perf_counter())


def hf_child(spec_path: str) -> int:
    """A baseline training process (one per rank): Trainer.train() on the vectorised table, results to JSON."""
    import datasets
    from transformers import TrainingArguments, set_seed

    from asr.allocator import active_allocator
    from asr.config import load_config
    from asr.model import build_model
    from asr.text import load_processor

    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s", datefmt="%H:%M:%S")
    spec = json.loads(Path(spec_path).read_text())
    cfg = load_config(TrainConfig, spec["config"], spec["overrides"])
    torch.set_num_threads(spec["threads"])
    processor, _ = load_processor(spec["processor_dir"])
    vocab = processor.tokenizer.get_vocab()
    train = datasets.Dataset.from_file(spec["table"])
    set_seed(cfg.train.seed)
    model = build_model(cfg.model, vocab, pad_token_id=vocab[PAD])
    world = int(os.environ.get("WORLD_SIZE", "1"))
    args = TrainingArguments(
        output_dir=spec["output_dir"],
        per_device_train_batch_size=spec["batch_size"],
        gradient_accumulation_steps=1,
        max_steps=spec["max_steps"],
        learning_rate=cfg.optim.lr,
        weight_decay=cfg.optim.weight_decay,
        adam_beta1=cfg.optim.betas[0],
        adam_beta2=cfg.optim.betas[1],
        adam_epsilon=cfg.optim.eps,
        max_grad_norm=cfg.optim.max_grad_norm or 0.0,
        lr_scheduler_type=SCHEDULES[cfg.optim.schedule],
        warmup_steps=cfg.optim.warmup_steps,
        optim="adamw_torch",
        train_sampling_strategy="group_by_length",
        length_column_name="input_length",
        dataloader_num_workers=cfg.data.num_workers,
        seed=cfg.train.seed,
        use_cpu=True,
        ddp_backend="gloo" if world > 1 else None,
        ddp_find_unused_parameters=cfg.model.layerdrop > 0,
        logging_strategy="no",
        save_strategy="no",
        eval_strategy="no",
        report_to="none",
    )
    clock = _StepClock()
    trainer = _MeasuredTrainer(model=model, args=args, data_collator=_MeasuredCollator(processor),
                               train_dataset=train, processing_class=processor, callbacks=[clock])
    output = trainer.train()
    result = {
        "rank": args.process_index, "world_size": args.world_size, "step_ends": clock.step_ends,
        "batch_lengths": trainer.batch_lengths, "training_loss": output.training_loss,
        "torch_threads": torch.get_num_threads(), "allocator": active_allocator(),
        "params": sum(p.numel() for p in model.parameters()),
    }
    Path(spec["output_dir"], f"result.rank{args.process_index}.json").write_text(json.dumps(result))
    return 0


def vectorize(table: Any, processor: Any, path: Path) -> Path:
    """The example's preprocessing: every utterance decoded once and normalised by the feature extractor,
    stored as `input_values` with `input_length` (samples) and the label ids; an arrow file at `path`."""
    import datasets

    from asr.audio import load_audio

    extractor = processor.feature_extractor

    def features(row: dict[str, Any]) -> dict[str, Any]:
        samples = load_audio(row["audio_bytes"] if row["audio_bytes"] is not None else row["audio_path"])
        return {"input_values": extractor(samples, sampling_rate=SAMPLE_RATE).input_values[0],
                "input_length": len(samples), "labels": row["labels"]}

    schema = datasets.Features({"input_values": datasets.List(datasets.Value("float32")),
                                "input_length": datasets.Value("int64"),
                                "labels": datasets.List(datasets.Value("int32"))})
    # Few rows per write: a row holds up to max_duration x 16,000 floats.
    table.map(features, remove_columns=table.column_names, features=schema, cache_file_name=str(path),
              writer_batch_size=32, desc="baseline: vectorising audio")
    return path

# ------------------------------------------------------------------------------------------ samplers
def ours_epoch(durations: Sequence[float], cfg: TrainConfig, processes: int, epoch: int) -> list[list[list[int]]]:
    """The batches scripts/train.py trains on in `epoch`, step by step: [step][rank] -> dataset indices."""
    samplers = [DurationBatchSampler(durations, cfg.data.max_batch_seconds, num_replicas=processes, rank=rank,
                                     shuffle=cfg.data.shuffle, seed=cfg.train.seed,
                                     max_batch_size=cfg.data.max_batch_size) for rank in range(processes)]
    for sampler in samplers:
        sampler.set_epoch(epoch)
    return [list(batches) for batches in zip(*(list(s) for s in samplers))]


def ours_steps(durations: Sequence[float], cfg: TrainConfig, processes: int, num_steps: int) -> list[list[list[int]]]:
    """The first `num_steps` steps of scripts/train.py's batches, across epochs as its loop runs them."""
    steps: list[list[list[int]]] = []
    epoch = 0
    while len(steps) < num_steps:
        steps += ours_epoch(durations, cfg, processes, epoch)
        epoch += 1
    return steps[:num_steps]


def baseline_batch_size(durations: Sequence[float], cfg: TrainConfig, processes: int) -> int:
    """Utterances per batch holding, on average, the audio of one of our batches: ours' mean batch size."""
    batches = sum(len(step) for step in ours_epoch(durations, cfg, processes, 0))
    return max(1, round(len(durations) / batches))


def samples_of(durations: Sequence[float]) -> list[int]:
    """Model input samples per utterance (prepared durations are samples / 16 kHz)."""
    return [round(d * SAMPLE_RATE) for d in durations]


def epoch_padding(durations: Sequence[float], cfg: TrainConfig, processes: int, batch_size: int,
                  ) -> tuple[float, float]:
    """(ours, baseline) padding share of the model input over one whole epoch of each sampler, no training."""
    from transformers.trainer_pt_utils import LengthGroupedSampler

    lengths = samples_of(durations)
    ours = [[lengths[i] for i in batch] for step in ours_epoch(durations, cfg, processes, 0) for batch in step]
    # As Trainer builds it (megabatches from the per-device batch size); the DataLoader cuts its order into
    # batches of batch_size, which Accelerate deals out to the processes.
    order = list(LengthGroupedSampler(batch_size, lengths=lengths,
                                      generator=torch.Generator().manual_seed(cfg.train.seed)))
    theirs = [[lengths[i] for i in order[k : k + batch_size]] for k in range(0, len(order), batch_size)]
    return padding_fraction(ours), padding_fraction(theirs)

# ---------------------------------------------------------------------------------------------- data
def subset_manifest(src: Path, dst: Path, limit: int) -> Path:
    """The first `limit` rows of a JSONL manifest with absolute audio paths (so the copy can live elsewhere)."""
    from asr.sources import AUDIO_KEYS

    if src.suffix != ".jsonl":
        raise ValueError(f"{src} is not a .jsonl manifest; give one in the layout scripts/make_corpus.py writes.")
    rows = []
    for line in src.read_text(encoding="utf-8").splitlines():
        if len(rows) == limit:
            break
        if line.strip():
            row = json.loads(line)
            for key in AUDIO_KEYS:
                if isinstance(row.get(key), str) and not Path(row[key]).is_absolute():
                    row[key] = str((src.parent / row[key]).resolve())
            rows.append(row)
    dst.parent.mkdir(parents=True, exist_ok=True)
    dst.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows), encoding="utf-8")
    return dst


def corpus_manifest(manifest: Path | None, smoke: bool, work: Path) -> Path:
    """The corpus to read: `manifest`, data/synth's, or (smoke only, without data/synth) 24 utterances made here."""
    if manifest is None:
        if DEFAULT_MANIFEST.is_file():
            manifest = DEFAULT_MANIFEST
        elif smoke:
            from asr.corpus import CorpusOptions, make_corpus

            make_corpus(CorpusOptions(train=24, dev=0, test=0, seed=0), work / "corpus", workers=2, progress=False)
            manifest = work / "corpus" / "train.jsonl"
        else:
            raise ValueError(f"no corpus at {DEFAULT_MANIFEST}; make it with `python scripts/make_corpus.py --out "
                             "data/synth --train 2000 --dev 200 --test 200` or pass --manifest.")
    if not manifest.is_file():
        raise ValueError(f"--manifest {manifest} does not exist; pass a JSONL manifest (scripts/make_corpus.py).")
    return manifest.resolve()

# What the benchmark sets itself: each has its own option (or is fixed for the measurement).
_RESERVED = {"data.train.path": "--manifest", "data.dev.path": None, "data.cache_dir": "--work-dir",
             "data.max_batch_seconds": "--batch-seconds", "data.num_workers": "--num-workers",
             "optim.grad_accum_steps": None, "train.max_steps": "--steps", "train.output_dir": "--work-dir",
             "train.log_every": None, "train.eval_every": None, "train.save_every": None,
             "train.save_total_limit": None, "train.mixed_precision": None}


def run_overrides(user: Sequence[str], smoke: bool, manifest: Path, dev: Path, work: Path, batch_seconds: float,
                  processes: int, num_workers: int | None, max_steps: int) -> list[str]:
    """Dotted overrides of the run config, the same list for train.py and the baseline."""
    for item in user:
        key = item.split("=", 1)[0].strip()
        if key in _RESERVED:
            how = f"use {_RESERVED[key]}" if _RESERVED[key] else "the benchmark fixes it"
            raise ValueError(f"override {item!r}: {key} is set by the benchmark ({how}).")
    arch = [f"model.architecture.{k}={json.dumps(v)}" for k, v in ARCHITECTURES["tiny"].items()] if smoke else []
    fixed = [
        f"data.train.path={manifest}",
        f"data.dev.path={dev}",
        f"data.cache_dir={work / 'cache'}",
        f"data.max_batch_seconds={batch_seconds / processes}",  # our budget is per process
        "optim.grad_accum_steps=1",  # one batch per process per optimizer step on both sides
        f"train.max_steps={max_steps}",
        f"train.output_dir={work / 'ours'}",
        "train.log_every=1",  # a throughput record per step
        f"train.eval_every={NEVER}",
        f"train.save_every={NEVER}",
        "train.save_total_limit=1",
        "train.mixed_precision='no'",  # fp32 on CPU (quoted: YAML reads a bare no as False)
    ]
    if num_workers is not None:
        fixed.append(f"data.num_workers={num_workers}")
    return [*arch, *user, *fixed]


def prepare(cfg: TrainConfig, work: Path) -> tuple[Path, Any, Any]:
    """What scripts/train.py prepares before its loop, done once here: (processor dir, processor, train split).

    The same vocabulary, filters and cache key, so train.py finds the split in `data.cache_dir`.
    """
    from asr.data import prepare_split
    from asr.model import feature_extractor_settings, frames_fn_for, load_model_config
    from asr.sources import load_source
    from asr.text import (
        build_vocab,
        load_processor,
        make_processor,
        save_processor,
        vocab_from_tokenizer,
    )

    if cfg.data.train.streaming:
        raise ValueError("the benchmark needs a prepared train split; set data.train.streaming=false.")
    model_config = load_model_config(cfg.model)
    return_mask, do_normalize = feature_extractor_settings(cfg.model, model_config)
    utterances = load_source(cfg.data.train)
    texts = [cfg.data.normalizer(u.text) for u in utterances]
    if cfg.data.vocab:
        from transformers import Wav2Vec2CTCTokenizer

        vocab, _ = vocab_from_tokenizer(Wav2Vec2CTCTokenizer.from_pretrained(cfg.data.vocab), texts)
    else:
        vocab = build_vocab(texts)
    processor_dir = work / "processor"
    save_processor(make_processor(vocab, return_attention_mask=return_mask, do_normalize=do_normalize),
                   cfg.data.normalizer, processor_dir)
    processor, normalizer = load_processor(processor_dir)
    split = prepare_split(cfg.data.train, normalizer, processor.tokenizer.get_vocab(), cfg.data.filters,
                          frames_fn_for(model_config), cfg.data.cache_dir, progress=True, utterances=utterances)
    return processor_dir, processor, split

# -------------------------------------------------------------------------------------------- sides
def launcher(processes: int) -> list[str]:
    """Command prefix: this Python, or `accelerate launch` with `processes` CPU processes (DDP over gloo)."""
    if processes == 1:
        return [sys.executable]
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    return [str(Path(sys.executable).with_name("accelerate")), "launch", "--config_file", str(ACCELERATE_CONFIG),
            "--num_processes", str(processes), "--main_process_port", str(port)]


def child_env(threads: int, allocator: str, processes: int) -> dict[str, str]:
    """The environment of both sides' processes: same threads and allocator, CPU only, offline."""
    env = {**os.environ, "OMP_NUM_THREADS": str(threads), "MKL_NUM_THREADS": str(threads),
           "CUDA_VISIBLE_DEVICES": "", "ASR_ALLOCATOR": allocator, "TOKENIZERS_PARALLELISM": "false",
           "PYTHONUNBUFFERED": "1"}
    env.setdefault("HF_HUB_OFFLINE", "1")
    env.setdefault("HF_DATASETS_OFFLINE", "1")
    if processes > 1:
        env["ACCELERATE_USE_CPU"] = "true"  # else `accelerate launch` on a machine without CUDA starts world=1 ranks
    return env


def run_logged(cmd: list[str], env: dict[str, str], log: Path, what: str) -> float:
    """Run `cmd` to completion with its output in `log`; its wall seconds.

    Raises:
        RuntimeError: it failed (the message ends with the log's last lines).
    """
    logger.info("%s: %s (log: %s)", what, " ".join(cmd), log)
    started = time.perf_counter()
    with open(log, "w", encoding="utf-8") as out:
        proc = subprocess.run(cmd, check=False, stdout=out, stderr=subprocess.STDOUT, env=env, cwd=ROOT)
    if proc.returncode != 0:
        tail = "\n".join(log.read_text(encoding="utf-8", errors="replace").splitlines()[-25:])
        raise RuntimeError(f"{what} failed (exit code {proc.returncode}); its output ends:\n{tail}")
    return time.perf_counter() - started


def run_ours(config: Path, overrides: list[str], cfg: TrainConfig, durations: Sequence[float], processes: int,
             untimed: int, steps: int, env: dict[str, str], work: Path, epoch_padded: float) -> SideResult:
    """scripts/train.py as users run it; per-step throughput from its metrics.jsonl, audio from its sampler replayed."""
    from asr.checkpoint import STATE_FILE, checkpoint_dir

    total = untimed + steps
    cmd = [*launcher(processes), str(ROOT / "scripts" / "train.py"), "--config", str(config), *overrides]
    child_seconds = run_logged(cmd, env, work / "ours.log", "ours")
    out = Path(cfg.train.output_dir)
    records = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines() if line.strip()]
    rates = {r["step"]: r["audio_s_per_s"] for r in records if r.get("kind") == "train"}
    missing = [s for s in range(untimed + 1, total + 1) if s not in rates]
    if missing:
        raise RuntimeError(f"train.py logged no throughput for steps {missing[:5]}...; it must honour train.log_every=1.")
    lengths = samples_of(durations)
    plan = ours_steps(durations, cfg, processes, total)
    step_audio = [sum(lengths[i] for batch in step for i in batch) / SAMPLE_RATE for step in plan]
    state_file = checkpoint_dir(out / "checkpoints", total) / STATE_FILE
    if state_file.is_file():  # train.py sums the audio of every step it trained: the replay must agree
        seen = json.loads(state_file.read_text())["audio_seconds"]
        if abs(seen - sum(step_audio)) > 1e-4 * seen:
            raise RuntimeError(f"train.py trained on {seen:.3f} s of audio in {total} steps, the replay of its sampler "
                               f"gives {sum(step_audio):.3f} s: the benchmark no longer mirrors its batching.")
        logger.info("replayed batches of train.py: %.2f s of audio in %d steps, as it counted", seen, total)
    else:
        logger.warning("no %s: the replay of train.py's batches is not checked", state_file)
    theirs_vocab = out / "processor" / "vocab.json"
    if theirs_vocab.is_file() and json.loads(theirs_vocab.read_text()) != json.loads(
            (work / "processor" / "vocab.json").read_text()):
        logger.warning("train.py built another vocabulary than the benchmark's preparation (labels differ)")
    timed = range(untimed, total)
    fills = [r for r in records if r.get("kind") == "feature_cache"]  # data.feature_cache on: its one-off fill
    return SideResult(
        name="ours (scripts/train.py)",
        setup=(f"DurationBatchSampler <= {cfg.data.max_batch_seconds:g} s padded per process, wav decoded in "
               "DataLoader, CTCCollator, Accelerate loop"),
        steps=steps,
        audio_seconds=sum(step_audio[s] for s in timed),
        wall_seconds=sum(step_audio[s] / rates[s + 1] for s in timed),
        padded_timed=padding_fraction([[lengths[i] for i in batch] for s in timed for batch in plan[s]]),
        padded_epoch=epoch_padded,
        extra={"child_seconds": child_seconds, "losses": [r["loss"] for r in records if r.get("kind") == "train"],
               "one_off": ("feature cache fill", fills[0]["seconds"]) if fills else None},
    )


def run_baseline(config: Path, overrides: list[str], processor_dir: Path, table: Path, batch_size: int,
                 processes: int, untimed: int, steps: int, threads: int, env: dict[str, str], work: Path,
                 epoch_padded: float) -> SideResult:
    """The HF Trainer baseline in fresh process(es); its step-end times and batch lengths from every rank."""
    total = untimed + steps
    out = work / "baseline"
    out.mkdir(parents=True, exist_ok=True)
    spec = {"config": str(config), "overrides": overrides, "processor_dir": str(processor_dir), "table": str(table),
            "output_dir": str(out), "batch_size": batch_size, "max_steps": total, "threads": threads}
    (work / "baseline_spec.json").write_text(json.dumps(spec, indent=2))
    cmd = [*launcher(processes), str(Path(__file__).resolve()), "--hf-child", str(work / "baseline_spec.json")]
    child_seconds = run_logged(cmd, env, work / "baseline.log", "baseline")
    ranks = sorted((json.loads(p.read_text()) for p in out.glob("result.rank*.json")), key=lambda r: r["rank"])
    if len(ranks) != processes or any(len(r["step_ends"]) < total or len(r["batch_lengths"]) < total for r in ranks):
        raise RuntimeError(f"the baseline wrote {len(ranks)} of {processes} rank results or ran fewer than {total} "
                           f"steps; see {work / 'baseline.log'} (keep it with --work-dir).")
    ends = ranks[0]["step_ends"]
    timed = range(untimed, total)
    batches = [r["batch_lengths"][s] for s in timed for r in ranks]
    return SideResult(
        name="HF Trainer (baseline)",
        setup=(f"group_by_length, per_device_train_batch_size={batch_size}, processor.pad collator, "
               "audio pre-decoded in a datasets table"),
        steps=steps,
        audio_seconds=sum(sum(b) for b in batches) / SAMPLE_RATE,
        wall_seconds=ends[total - 1] - ends[untimed - 1],
        padded_timed=padding_fraction(batches),
        padded_epoch=epoch_padded,
        extra={"child_seconds": child_seconds, "training_loss": ranks[0]["training_loss"],
               "torch_threads": ranks[0]["torch_threads"], "allocator": ranks[0]["allocator"],
               "params": ranks[0]["params"]},
    )

# ---------------------------------------------------------------------------------------------- report
def render(sides: Sequence[SideResult], cfg: TrainConfig, corpus: str, utterances: int, hours: float,
           processes: int, untimed: int, threads: int, info: dict[str, Any]) -> str:
    """The table, what it measured and the targets."""
    base, ours = sides
    rows = [[s.name, s.setup, s.steps, s.audio_per_step, round(100 * s.padded_timed, 2),
             round(100 * s.padded_epoch, 2), s.throughput, f"{ratio(s.throughput, base.throughput):.2f}x"]
            for s in sides]
    o = cfg.optim
    params = base.extra.get("params")
    model = f"{params / 1e6:.2f} M parameters" if params else "the config's architecture"
    speedup = ratio(ours.throughput, base.throughput)
    one_offs = ""
    if any(s.extra.get("one_off") for s in sides):
        epoch = hours * 3600  # audio seconds of one pass over the corpus

        def wall(side: SideResult, epochs: int) -> float:
            return (side.extra["one_off"] or ("", 0.0))[1] + epochs * epoch / side.throughput

        spent = "; ".join(f"{s.name}: {s.extra['one_off'][0]} {s.extra['one_off'][1]:.1f} s"
                          for s in sides if s.extra.get("one_off"))
        one_offs = (f"One-off work before the first step, not in the rates ({spent}). With it, ours is "
                    + ", ".join(f"{ratio(wall(base, n), wall(ours, n)):.2f}x over {n} epoch{'s' if n > 1 else ''}"
                                for n in (1, 3, 10, 30))
                    + f" of this corpus ({epoch:.0f} audio s per epoch).\n")
    header = (
        f"## Training throughput: {utterances} utterances ({hours:.2f} h) kept of {corpus}, "
        f"{processes} process{'es' if processes > 1 else ''}\n\n"
        f"Same model ({model}, dropout and SpecAugment of the config), fp32 on CPU; per process: torch threads "
        f"{threads}, DataLoader workers {cfg.data.num_workers}; allocator {base.extra.get('allocator')}; AdamW "
        f"lr {o.lr:g}, betas {tuple(o.betas)}, weight decay {o.weight_decay:g}, clip {o.max_grad_norm}, "
        f"{o.warmup_steps} warmup steps, {o.schedule} schedule; {untimed} untimed step(s) before the timed ones. "
        f"{info['cpus']} CPUs, load average {info['load_average_1min']} at the start.\n\n"
    )
    footer = (
        f"\nTargets: ours {speedup:.2f}x the baseline's audio s / wall s (>= 1.5x: "
        f"{'met' if speedup >= 1.5 else 'missed'}); ours pads {100 * ours.padded_timed:.2f}% of the timed batches' "
        f"input samples (<= 3%: {'met' if ours.padded_timed <= 0.03 else 'missed'}).\n"
        "Padded % = padding samples / all samples of the model's input (raw audio, each process's batch padded "
        "to its longest item); timed = over the timed batches, epoch = over one whole epoch of each sampler, "
        "computed without training.\n" + one_offs
    )
    headers = ["side", "setup", "steps timed", "audio s / step", "padded % (timed)", "padded % (epoch)",
               "audio s / wall s", "vs baseline"]
    return header + markdown_table(headers, rows) + footer

# ------------------------------------------------------------------------------------------------ main
def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    """Command-line arguments (`--smoke` fills the ones not given with its tiny settings)."""
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("overrides", nargs="*", help="dotted run-config overrides for both sides, e.g. optim.lr=5e-4")
    p.add_argument("--manifest", type=Path, default=None, help=f"train manifest (JSONL; default {DEFAULT_MANIFEST})")
    p.add_argument("--limit", type=int, default=None, help="use only the first N utterances (0: all; smoke: 48)")
    p.add_argument("--config", type=Path, default=DEFAULT_CONFIG, help="run config: model, optimiser, filters")
    p.add_argument("--batch-seconds", type=float, default=None,
                   help="padded audio seconds per global batch (ours' budget x processes; default 80, smoke 20)")
    p.add_argument("--baseline-batch-size", type=int, default=None,
                   help="the baseline's per_device_train_batch_size (default: ours' mean batch size)")
    p.add_argument("--steps", type=int, default=None, help="timed optimizer steps per side (default 40, smoke 3)")
    p.add_argument("--untimed-steps", type=int, default=None, help="warm-up steps before timing (default 5, smoke 1)")
    p.add_argument("--processes", type=int, default=1, help="training processes per side (>1: accelerate launch)")
    p.add_argument("--threads", type=int, default=None, help="torch threads per process (default: CPUs / processes)")
    p.add_argument("--num-workers", type=int, default=None,
                   help="DataLoader workers per process, both sides (default: the config's; smoke 0)")
    p.add_argument("--allocator", choices=("jemalloc", "system"), default="jemalloc",
                   help="malloc of both sides (train.py's default is jemalloc)")
    p.add_argument("--smoke", action="store_true", help="tiny model and corpus: checks the machinery in seconds")
    p.add_argument("--work-dir", type=Path, default=None, help="keep prepared data, runs and logs here (default: temp)")
    p.add_argument("--output", type=Path, default=None, help="also write train.md and train.json here")
    p.add_argument("--hf-child", default=None, help=argparse.SUPPRESS)  # internal: one baseline training process
    args = p.parse_args(argv)
    for key, value in (SMOKE if args.smoke else DEFAULTS).items():
        if getattr(args, key) is None:
            setattr(args, key, value)
    if args.hf_child is None:
        if args.steps < 1 or args.untimed_steps < 1:
            p.error("--steps and --untimed-steps must be >= 1 (the first step's start is not observable)")
        if args.processes < 1 or args.batch_seconds <= 0 or args.limit < 0:
            p.error("--processes must be >= 1, --batch-seconds > 0 and --limit >= 0")
        args.threads = args.threads or max(1, (os.cpu_count() or 1) // args.processes)
    return args


def benchmark(args: argparse.Namespace, work: Path) -> tuple[list[SideResult], dict[str, Any]]:
    """Prepare the data once, run the baseline, then ours; (sides, what the report needs besides)."""
    from asr.config import load_config

    corpus = corpus_manifest(args.manifest, args.smoke, work)
    manifest = subset_manifest(corpus, work / "train.jsonl", args.limit) if args.limit else corpus
    dev = subset_manifest(corpus, work / "dev.jsonl", DEV_UTTERANCES)  # train.py evaluates it once, at the end
    total = args.untimed_steps + args.steps
    overrides = run_overrides(args.overrides, args.smoke, manifest, dev, work, args.batch_seconds, args.processes,
                              args.num_workers, total)
    cfg = load_config(TrainConfig, args.config, overrides)
    processor_dir, processor, split = prepare(cfg, work)
    batch_size = args.baseline_batch_size or baseline_batch_size(split.durations, cfg, args.processes)
    ours_epoch_padded, base_epoch_padded = epoch_padding(split.durations, cfg, args.processes, batch_size)
    logger.info("%d utterances (%.2f h); baseline batch size %d; epoch padding: ours %.2f%%, baseline %.2f%%",
                len(split), split.hours, batch_size, 100 * ours_epoch_padded, 100 * base_epoch_padded)
    started = time.perf_counter()
    table = vectorize(split.table, processor, work / "baseline_table.arrow")
    vectorized = time.perf_counter() - started
    env = child_env(args.threads, args.allocator, args.processes)
    base = run_baseline(args.config, overrides, processor_dir, table, batch_size, args.processes, args.untimed_steps,
                        args.steps, args.threads, env, work, base_epoch_padded)
    ours = run_ours(args.config, overrides, cfg, split.durations, args.processes, args.untimed_steps, args.steps, env,
                    work, ours_epoch_padded)
    base.extra["one_off"] = ("audio decoded into the table", vectorized)  # the example's preprocessing
    shown = f"the first {args.limit} utterances of {corpus}" if args.limit else str(corpus)
    context = {"cfg": cfg, "corpus": shown,
               "utterances": len(split), "hours": split.hours, "batch_size": batch_size, "overrides": overrides}
    return [base, ours], context


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if args.hf_child is not None:
        return hf_child(args.hf_child)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s", datefmt="%H:%M:%S")
    info = machine_info()
    with tempfile.TemporaryDirectory(prefix="bench-train-") as tmp:
        work = (args.work_dir or Path(tmp)).resolve()
        work.mkdir(parents=True, exist_ok=True)
        try:
            sides, context = benchmark(args, work)
        except ValueError as e:  # ConfigError included
            logger.error("%s", e)
            return 2
        except RuntimeError as e:
            logger.error("%s", e)
            return 1
    cfg = context["cfg"]
    markdown = render(sides, cfg, context["corpus"], context["utterances"], context["hours"], args.processes,
                      args.untimed_steps, args.threads, info)
    print("\n" + markdown)
    if args.output is not None:
        data = {"machine": info, "command": " ".join(sys.argv), "corpus": context["corpus"],
                "utterances": context["utterances"], "hours": context["hours"], "processes": args.processes,
                "threads": args.threads, "allocator": args.allocator, "untimed_steps": args.untimed_steps,
                "batch_seconds": args.batch_seconds, "baseline_batch_size": context["batch_size"],
                "overrides": context["overrides"],
                "sides": [{"side": s.name, "setup": s.setup, "steps": s.steps, "audio_seconds": s.audio_seconds,
                           "wall_seconds": s.wall_seconds, "audio_per_step": s.audio_per_step,
                           "padded_timed": s.padded_timed, "padded_epoch": s.padded_epoch,
                           "audio_s_per_s": s.throughput, "vs_baseline": ratio(s.throughput, sides[0].throughput),
                           **s.extra} for s in sides]}
        write_report(args.output, "train", markdown, data)
    return 0

if __name__ == "__main__":
    sys.exit(main())
