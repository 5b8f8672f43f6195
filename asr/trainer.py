"""A training run's machinery: data and loaders, the loop, evaluation on schedule, checkpoints, `model/` export.

scripts/train.py parses the command line, loads the config and sets up logging and Accelerate; everything it
then does is here, in the order it calls it:

    >>> data = prepare_data(cfg, accelerator, out)                      # processor + cached train/dev tables
    >>> train_loader, sampler = make_loader(data.splits["train"], cfg, accelerator, collator, data.do_normalize,
    ...                                     train=True)
    >>> run_training(TrainingRun(cfg, accelerator, model, optimizer, scheduler, train_loader, sampler, ...))

Like the rest of the library it reads no argv and no environment: the script passes what it reads.
"""

from __future__ import annotations

import json
import logging
import math
import shutil
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import torch
from tqdm.auto import tqdm

from asr.allocator import release_free_memory, resident_mb
from asr.augment import Augmenter
from asr.checkpoint import TrainerState, begin_save, finish_save, save_training_state
from asr.config import ConfigError, save_config
from asr.data import PreparedSplit, prepare_split
from asr.datasets import SpeechDataset, StreamingBatches, StreamingSpeechDataset
from asr.feature_cache import FeatureCollator, prepare_feature_cache, use_cached_features
from asr.files import replace_dir
from asr.hub import HubError, push_model
from asr.model import feature_extractor_settings, frames_fn_for, load_model_config, takes_filterbank
from asr.model_card import write_model_card
from asr.sampler import DurationBatchSampler, EpochTaggedBatches
from asr.sources import load_source, read_source_texts
from asr.text import TextNormalizer, build_vocab, load_processor, make_processor, save_processor, vocab_from_tokenizer
from asr.train import (
    EvalShards,
    MetricsLog,
    TrainConfig,
    evaluate,
    finite_on_all_ranks,
    forward_loss,
    log_transcripts,
    plot_curves,
    process_tree_cpu_seconds,
    seconds_in_batch,
)

logger = logging.getLogger(__name__)
# Steps between handing the allocator's free pages back (asr.allocator.release_free_memory): the next step
# page-faults them in again, ~0.1-0.3 s per GB, under 1% of 50 steps; without it a long run's memory grows.
RELEASE_MEMORY_EVERY = 50


@dataclass
class RunData:
    """What data preparation gives the run."""

    processor: Any  # Wav2Vec2Processor (or its filterbank twin), saved in RUN/processor
    normalizer: TextNormalizer
    vocab: dict[str, int]
    splits: dict[str, PreparedSplit]  # "train" (absent when it streams) and "dev"
    return_mask: bool  # the model takes an attention mask
    do_normalize: bool  # the feature extractor normalises each waveform
    frames_fn: Callable  # audio samples -> output frames of the model (for the CTC feasibility filter)


def prepare_data(cfg: TrainConfig, accelerator, out: Path, progress: bool = True) -> RunData:
    """Vocabulary/processor (once, main process) and the cached train/dev tables (once per machine); `progress`
    shows the audio check's bar on each machine's main process."""
    if cfg.data.dev.streaming:
        raise ConfigError("data.dev.streaming is not supported: evaluation needs the whole dev set; "
                          "set data.dev.streaming=false (only the train split can stream)")
    model_config = load_model_config(cfg.model)
    frames_fn = frames_fn_for(model_config)
    return_mask, do_normalize = feature_extractor_settings(cfg.model, model_config)
    processor_dir = out / "processor"
    train_utts = None
    with accelerator.main_process_first():
        if accelerator.is_main_process and not (processor_dir / "vocab.json").exists():
            normalizer = cfg.data.normalizer
            if cfg.data.train.streaming:  # the text column only: no audio is fetched for the vocabulary
                texts = [normalizer(t) for t in read_source_texts(cfg.data.train)]
            else:
                train_utts = load_source(cfg.data.train)
                texts = [normalizer(u.text) for u in train_utts]
            if cfg.data.vocab:
                from transformers import Wav2Vec2CTCTokenizer

                vocab, coverage = vocab_from_tokenizer(Wav2Vec2CTCTokenizer.from_pretrained(cfg.data.vocab), texts)
                (out / "data").mkdir(parents=True, exist_ok=True)
                (out / "data" / "vocab_coverage.json").write_text(json.dumps(coverage.to_dict(), indent=2))
            else:
                vocab = build_vocab(texts)
            processor = make_processor(vocab, return_attention_mask=return_mask, do_normalize=do_normalize,
                                       filterbank=takes_filterbank(model_config))
            save_processor(processor, normalizer, processor_dir)
        processor, normalizer = load_processor(processor_dir)
    vocab = processor.tokenizer.get_vocab()
    splits = {}
    with accelerator.local_main_process_first():
        for name, source in (("train", cfg.data.train), ("dev", cfg.data.dev)):
            if source.streaming:
                continue
            splits[name] = prepare_split(
                source, normalizer, vocab, cfg.data.filters, frames_fn, cfg.data.cache_dir,
                progress=progress and accelerator.is_local_main_process,
                utterances=train_utts if name == "train" else None,
            )
    if accelerator.is_main_process:
        (out / "data").mkdir(parents=True, exist_ok=True)
        for name, split in splits.items():
            shutil.copy(split.report_path, out / "data" / f"{name}.dropped.jsonl")
    return RunData(processor, normalizer, vocab, splits, return_mask, do_normalize, frames_fn)


def make_streaming_loader(cfg: TrainConfig, accelerator, collator, data: RunData, out: Path) -> StreamingBatches:
    """Batches from a rank-sharded stream of the train source, filtered on the fly (drops in data/)."""
    dataset = StreamingSpeechDataset(
        cfg.data.train, data.normalizer, data.vocab, cfg.data.filters, data.frames_fn, rank=accelerator.process_index,
        world_size=accelerator.num_processes, report_path=out / "data" / f"train.dropped.rank{accelerator.process_index}.jsonl",
        do_normalize=data.do_normalize,
    )
    return StreamingBatches(dataset, collate_with_ids(collator), cfg.data.max_batch_seconds,
                            cfg.data.max_batch_size, seed=cfg.train.seed, num_workers=cfg.data.num_workers)


def collate_with_ids(collator):
    """Collator that drops undecodable items (None) and keeps the utterance ids beside the tensors."""

    def collate(items):
        good = [item for item in items if item is not None]
        if len(good) < len(items):
            logger.warning("skipped %d unreadable item(s) in a batch", len(items) - len(good))
        if not good:
            return None
        batch = collator(good)
        batch["ids"] = [item["id"] for item in good]
        return batch

    return collate


def make_loader(split, cfg: TrainConfig, accelerator, collator, do_normalize, *, train: bool, dataset=None):
    """DataLoader over our duration sampler (not prepared by Accelerate: the sampler already shards).

    `dataset` replaces the audio of `split` (the cached conv features); its items are in the table's order.
    With data.augment on, the train set's audio is augmented in the workers, keyed by (epoch, index).
    """
    seconds = cfg.data.max_batch_seconds if train else (cfg.train.eval_max_batch_seconds or 2 * cfg.data.max_batch_seconds)
    augment = None
    if train and cfg.data.augment.enabled:
        augment = Augmenter(cfg.data.augment, seed=cfg.train.seed, rir_dir=Path(cfg.data.cache_dir) / "rirs")
        seconds /= cfg.data.augment.longest_stretch  # packed by manifest seconds: a slowed batch must still fit
        logger.info("data.augment on: train audio changes every epoch; batches hold <= %.1f manifest seconds so "
                    "that slowed-down audio fits max_batch_seconds=%s", seconds, cfg.data.max_batch_seconds)
    try:
        if train:
            sampler = DurationBatchSampler(
                split.durations, seconds, num_replicas=accelerator.num_processes, rank=accelerator.process_index,
                shuffle=cfg.data.shuffle, seed=cfg.train.seed, max_batch_size=cfg.data.max_batch_size,
            )
        else:  # the same batches on any number of processes (see EvalShards)
            one_process = DurationBatchSampler(split.durations, seconds, shuffle=False, seed=cfg.train.seed,
                                               max_batch_size=cfg.data.max_batch_size)
            sampler = EvalShards(list(one_process), accelerator.num_processes, accelerator.process_index)
    except ValueError as e:
        slowed = "" if augment is None else f" (data.augment's slowest speed leaves {seconds:.1f} s for the manifest)"
        raise ConfigError(f"cannot batch the {'train' if train else 'dev'} set: {e}{slowed}") from e

    loader = torch.utils.data.DataLoader(
        dataset if dataset is not None else SpeechDataset(split.table, do_normalize, augment=augment),
        batch_sampler=EpochTaggedBatches(sampler) if augment is not None else sampler,
        collate_fn=collate_with_ids(collator),
        num_workers=cfg.data.num_workers, persistent_workers=False,
        # Its own generator: worker seeding must not draw from the global RNG, or a resumed run
        # (which starts its DataLoader iterator mid-epoch) would see different dropout/SpecAugment.
        generator=torch.Generator().manual_seed(cfg.train.seed),
    )
    return loader, sampler


def save_checkpoint(accelerator, state: TrainerState, model, optimizer, scheduler, sampler, root: Path,
                    cfg: TrainConfig) -> None:
    """Full state into step_<n>/ atomically (every rank writes its part, the main process finalises)."""
    tmp = root / f"step_{state.step}.tmp"
    if accelerator.is_main_process:
        begin_save(root, state.step)
    accelerator.wait_for_everyone()
    save_training_state(accelerator, tmp, model, optimizer, scheduler,
                        sampler.state_dict(batches_done=state.batches_in_epoch))
    accelerator.wait_for_everyone()
    if accelerator.is_main_process:
        save_config(cfg, tmp / "train_config.yaml")
        finish_save(tmp, state, cfg.train.save_total_limit)
    accelerator.wait_for_everyone()


def open_feature_cache(cfg: TrainConfig, accelerator, model, split, do_normalize, return_mask,
                       local_world_size: int, progress: bool = True):
    """The cached conv features of the train split (filled by all processes) and their collator; `progress` shows
    the fill's bar on each machine's main process."""
    dataset = prepare_feature_cache(
        model, split, cfg.data.feature_cache, do_normalize, return_mask, rank=accelerator.process_index,
        world_size=accelerator.num_processes, local_rank=accelerator.local_process_index,
        local_world_size=local_world_size,
        barrier=accelerator.wait_for_everyone, num_workers=cfg.data.num_workers,
        progress=progress and accelerator.is_local_main_process,
    )
    use_cached_features(model)  # steps now feed the cached features where the audio went
    return dataset, FeatureCollator(return_attention_mask=return_mask)


def export_model(accelerator, model, processor, normalizer, cfg, out: Path, metrics: dict, data_summary: dict) -> None:
    """The model as a standard HF directory (full weights gathered under ZeRO-3), written atomically."""
    state_dict = accelerator.get_state_dict(model)  # collective: every rank must call it
    if accelerator.is_main_process:
        tmp = out / "model.tmp"
        shutil.rmtree(tmp, ignore_errors=True)
        accelerator.unwrap_model(model).save_pretrained(tmp, state_dict=state_dict, safe_serialization=True)
        save_processor(processor, normalizer, tmp)
        save_config(cfg, tmp / "train_config.yaml")
        # the data summary too: build_lm.py and eval.py --tune rewrite the card from the directory's files
        (tmp / "metrics.json").write_text(json.dumps({**metrics, "data": data_summary}, indent=2))
        write_model_card(tmp)
        replace_dir(tmp, out / "model")
    accelerator.wait_for_everyone()


@dataclass
class TrainingRun:
    """What the training loop works on: set up by scripts/train.py, prepared by Accelerate, resumed or fresh."""

    cfg: TrainConfig
    accelerator: Any
    model: torch.nn.Module
    optimizer: Any
    scheduler: Any
    train_loader: Any  # a DataLoader over DurationBatchSampler, or StreamingBatches
    train_sampler: Any  # what has set_epoch/state_dict: the sampler, or the stream itself
    dev_loader: Any
    data: RunData
    out: Path
    state: TrainerState
    metrics_log: MetricsLog
    data_summary: dict[str, Any]
    progress: bool = True  # the main process's bar of steps (loss, LR); off for logs that are files


def run_training(run: TrainingRun) -> None:
    """Train to `train.last_step`: log, evaluate (the best model by dev WER exported to `model/`) and checkpoint on
    schedule, then a last evaluation, `model/` even when no evaluation could read the dev set, and curves.png."""
    cfg, accelerator, model, optimizer, scheduler = run.cfg, run.accelerator, run.model, run.optimizer, run.scheduler
    train_loader, train_sampler, dev_loader, state, metrics_log = (run.train_loader, run.train_sampler, run.dev_loader,
                                                                   run.state, run.metrics_log)
    out, ckpt_root, vocab = run.out, run.out / "checkpoints", run.data.vocab
    processor, normalizer, data_summary = run.data.processor, run.data.normalizer, run.data_summary
    cpu = {"base": state.cpu_seconds, "start": None}  # CPU time across resumes, for equal-compute comparisons
    metric = cfg.train.best_metric
    if state.best_step is not None and (state.best_metric or "wer") != metric:
        logger.warning("train.best_metric is now %s, but model/ (step %d) was chosen by %s: the next evaluation "
                       "replaces it, and %s chooses from there on", metric, state.best_step,
                       state.best_metric or "wer", metric)
        state.best_score = state.best_step = None
    state.best_metric = metric

    def run_eval() -> dict | None:
        result = evaluate(accelerator, model, dev_loader, vocab)
        if result is None:  # dev audio gone or unreadable mid-run: hours of training are worth more than one eval
            logger.warning("step %d: no dev utterance could be read (reasons above); this evaluation is skipped "
                           "and training goes on; fix data.dev before the next one", state.step)
            return None
        used = torch.tensor([process_tree_cpu_seconds() - cpu["start"]], device=accelerator.device)
        state.cpu_seconds = cpu["base"] + accelerator.reduce(used, "sum").item()  # every rank's processes
        record = {"kind": "eval", "step": state.step, "wer": result["wer"], "cer": result["cer"],
                  "loss": result["loss"], "n": result["n"], "cpu_s": round(state.cpu_seconds, 1)}
        if accelerator.is_main_process:
            metrics_log.write(record)
            accelerator.log({"dev/wer": result["wer"], "dev/cer": result["cer"], "dev/loss": result["loss"]},
                            step=state.step)
            logger.info("step %d dev: WER %.2f%% CER %.2f%% loss %.3f (%d utt)", state.step, 100 * result["wer"],
                        100 * result["cer"], result["loss"], result["n"])
            samples = result["samples"][: cfg.train.eval_samples_logged]
            for uid, ref, hyp in samples:
                logger.info("  %s\n    ref: %s\n    hyp: %s", uid, ref, hyp)
            if samples:
                log_transcripts(accelerator, samples, state.step)
        score = None if metric == "last" else result[metric]
        if score is None or state.best_score is None or score < state.best_score:
            state.best_score, state.best_step = score, state.step
            metrics = {"step": state.step, "wer": result["wer"], "cer": result["cer"], "dev_loss": result["loss"]}
            export_model(accelerator, model, processor, normalizer, cfg, out, metrics, data_summary)
        return record

    unwrapped = accelerator.unwrap_model(model)
    cpu["start"] = process_tree_cpu_seconds()
    model.train()
    progress = tqdm(total=cfg.train.max_steps, initial=state.step, desc="train", dynamic_ncols=True,
                    disable=not (run.progress and accelerator.is_main_process))
    window = {"loss": 0.0, "n": 0, "seconds": 0.0, "grad_norm": 0.0, "norms": 0, "t0": time.perf_counter()}
    last_eval_step = -1
    while state.step < cfg.train.last_step:
        train_sampler.set_epoch(state.epoch)
        for batch in train_loader:
            state.batches_in_epoch += 1
            state.micro_batches += 1
            with accelerator.accumulate(model):
                if batch is None:  # every item failed to decode: skip it on all ranks like a NaN loss
                    ids, seconds = ["<unreadable batch>"], 0.0
                    loss = torch.tensor(float("nan"), device=accelerator.device)
                else:
                    ids = batch.pop("ids")
                    seconds = seconds_in_batch(batch)
                    loss, _, _ = forward_loss(model, unwrapped, batch, accelerator.device)
                if accelerator.process_index == cfg.faults.rank:
                    if state.micro_batches in cfg.faults.nan_at:
                        loss = loss * float("nan")
                    if state.micro_batches == cfg.faults.raise_at:
                        raise RuntimeError(f"injected fault at micro-batch {state.micro_batches}")
                if finite_on_all_ranks(accelerator, loss):
                    accelerator.backward(loss)
                    if accelerator.sync_gradients:  # the norm is logged; clipped only with optim.max_grad_norm
                        norm = accelerator.clip_grad_norm_(model.parameters(), cfg.optim.max_grad_norm or math.inf)
                        if norm is not None:  # DeepSpeed reports the norm of its previous step (None at first)
                            window["grad_norm"] += float(norm)
                            window["norms"] += 1
                    window["loss"] += loss.item()
                    window["n"] += 1
                else:
                    state.skipped_nonfinite += 1
                    logger.warning("non-finite loss at micro-batch %d (%s...): skipped on every rank",
                                   state.micro_batches, ids[0])
                optimizer.step()
                optimizer.zero_grad(set_to_none=True)
            window["seconds"] += seconds
            if not accelerator.sync_gradients:
                continue
            scheduler.step()
            state.step += 1
            progress.update(1)
            if state.step % cfg.train.log_every == 0 or state.step == cfg.train.last_step:
                elapsed = time.perf_counter() - window["t0"]
                sums = torch.tensor([window["seconds"], window["loss"], window["n"]], device=accelerator.device)
                audio, loss_sum, loss_n = accelerator.reduce(sums, "sum").tolist()  # over all ranks
                # the fullest rank's resident memory: a run that grows shows it here long before the OOM killer
                rss_mb = accelerator.reduce(torch.tensor([resident_mb() or 0.0], device=accelerator.device),
                                            "max").item()
                # every rank clips with the same all-reduced norm: rank 0's mean is the run's
                state.audio_seconds += audio
                record = {"kind": "train", "step": state.step, "epoch": state.epoch,
                          "loss": loss_sum / max(1, loss_n), "lr": max(scheduler.get_last_lr()),
                          "audio_s_per_s": audio / max(elapsed, 1e-9), "skipped": state.skipped_nonfinite,
                          "grad_norm": window["grad_norm"] / window["norms"] if window["norms"] else None,
                          "rss_mb": rss_mb or None}
                if accelerator.is_main_process:
                    metrics_log.write(record)
                    accelerator.log({f"train/{k}": v for k, v in record.items()
                                     if k not in ("kind", "step") and v is not None}, step=state.step)
                    progress.set_postfix(loss=f"{record['loss']:.3f}", lr=f"{record['lr']:.2e}",
                                         audio_s_per_s=f"{record['audio_s_per_s']:.1f}")
                window = {"loss": 0.0, "n": 0, "seconds": 0.0, "grad_norm": 0.0, "norms": 0, "t0": time.perf_counter()}
            if state.step % cfg.train.eval_every == 0:
                run_eval()
                last_eval_step = state.step
            if state.step % RELEASE_MEMORY_EVERY == 0 or state.step % cfg.train.eval_every == 0:
                release_free_memory()  # the allocator's kept-but-unused pages: fragmentation would grow them
            if state.step % cfg.train.save_every == 0 or state.step == cfg.train.last_step:
                save_checkpoint(accelerator, state, model, optimizer, scheduler, train_sampler, ckpt_root, cfg)
            if state.step >= cfg.train.last_step:
                break
        else:
            state.epoch += 1
            state.batches_in_epoch = 0
    progress.close()
    if last_eval_step != state.step:
        run_eval()
    if state.best_step is None:  # no evaluation could read the dev set: the last weights rather than none
        logger.warning("no dev evaluation succeeded, so no best model was chosen; %s holds step %d's weights",
                       out / "model", state.step)
        export_model(accelerator, model, processor, normalizer, cfg, out, {"step": state.step}, data_summary)
    elif accelerator.is_main_process:
        chosen = ("the last evaluated step" if metric == "last" else f"best dev loss {state.best_score:.3f}"
                  if metric == "loss" else f"best dev {metric.upper()} {100 * state.best_score:.2f}%")
        logger.info("model: %s holds step %d (%s)", out / "model", state.best_step, chosen)
    if accelerator.is_main_process:
        plot_curves(metrics_log.read(), out / "curves.png", cfg.train.run_name or out.resolve().name, metric)


def push_at_end(accelerator, cfg, model_dir: Path) -> bool:
    """Uploads model/ to train.push_to_hub from the main process; False (logged in one line) if that failed."""
    ok = True
    if cfg.train.push_to_hub and accelerator.is_main_process:
        try:
            logger.info("pushed %s: %s", model_dir, push_model(model_dir, cfg.train.push_to_hub))
        except HubError as e:
            logger.error("%s; the model is in %s: push it later with scripts/publish_model.py --model %s --push %s",
                         e, model_dir, model_dir, cfg.train.push_to_hub)
            ok = False
    return ok
