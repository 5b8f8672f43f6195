"""Fine-tune a CTC speech recogniser with Accelerate: one process, many GPUs, many nodes, DeepSpeed ZeRO.

    $ accelerate launch scripts/train.py --config configs/train/tiny_cpu.yaml
    $ accelerate launch --config_file configs/accelerate/multi_gpu.yaml scripts/train.py \
          --config configs/train/wav2vec2_base_librispeech.yaml optim.lr=5e-5 train.max_steps=20000
    $ accelerate launch ... scripts/train.py --config ... --resume latest    # continue exactly

Everything the run writes goes to `train.output_dir`: `checkpoints/step_<n>/` (full state, atomic),
`model/` (the best model by dev WER as a standard Hugging Face directory with processor, config,
metrics and a model card), `metrics.jsonl`, `curves.png`, `trackers/` (TensorBoard's `trackers/<run name>/`, and
any other `train.report_to` tracker's local files), `train_config.yaml`,
and the data reports (`data/*.dropped.jsonl`). With `train.push_to_hub=owner/name`, model/ is uploaded to the
Hugging Face Hub at the end (checked at start: offline, HF_HUB_OFFLINE=1, refuses before training).

Exit code: 0 done; 1 a crash, or the push at the end failed (the model is on disk); 2 a bad config or data.
"""

from __future__ import annotations

if __name__ == "__main__":  # first, before torch: re-run this command under jemalloc (see asr/allocator.py)
    from asr.allocator import relaunch_under_jemalloc

    ALLOCATOR_NOTE = relaunch_under_jemalloc()

import argparse
import json
import logging
import math
import os
import shutil
import sys
import time
from pathlib import Path

import torch
from accelerate import Accelerator
from accelerate.utils import DistributedDataParallelKwargs, set_seed
from tqdm.auto import tqdm

from asr import launch
from asr.allocator import active_allocator
from asr.augment import Augmenter, check_augment
from asr.checkpoint import (
    CheckpointError,
    TrainerState,
    begin_save,
    finish_save,
    load_training_state,
    resolve_resume,
    save_training_state,
)
from asr.collate import make_collator
from asr.config import ConfigError, load_config, save_config
from asr.constants import PAD
from asr.data import prepare_split
from asr.datasets import SpeechDataset, StreamingBatches, StreamingSpeechDataset
from asr.feature_cache import (
    FeatureCollator,
    check_feature_cache,
    check_model_matches,
    prepare_feature_cache,
    use_cached_features,
)
from asr.files import replace_dir
from asr.hub import HubError, HubSetupError, check_can_push, push_model
from asr.model import (
    build_model,
    feature_extractor_settings,
    frames_fn_for,
    load_model_config,
    takes_filterbank,
)
from asr.model_card import write_model_card
from asr.sampler import DurationBatchSampler, EpochTaggedBatches
from asr.sources import load_source
from asr.text import (
    build_vocab,
    load_processor,
    make_processor,
    save_processor,
    vocab_from_tokenizer,
)
from asr.train import (
    EvalShards,
    MetricsLog,
    TrainConfig,
    check_trackers,
    log_transcripts,
    tracker_hparams,
    build_optimizer,
    build_scheduler,
    evaluate,
    finite_on_all_ranks,
    forward_loss,
    plot_curves,
    process_tree_cpu_seconds,
    seconds_in_batch,
)
from lm.build import read_source_texts

logger = logging.getLogger("train")


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config", required=True, help="YAML run config (configs/train/*.yaml)")
    parser.add_argument("--resume", default=None, help="'latest' or a checkpoint folder; continues exactly")
    parser.add_argument("overrides", nargs="*", help="dotted overrides, e.g. optim.lr=3e-4 train.max_steps=100")
    return parser.parse_args(argv)


def make_accelerator(cfg: TrainConfig) -> Accelerator:
    """Accelerator for the launch environment (gloo on CPU; DeepSpeed otherwise sees world=1)."""
    return launch.make_accelerator(
        int(os.environ.get("WORLD_SIZE", "1")),
        handlers=[DistributedDataParallelKwargs(find_unused_parameters=cfg.model.layerdrop > 0)],
        gradient_accumulation_steps=cfg.optim.grad_accum_steps,
        mixed_precision=cfg.train.mixed_precision,
        log_with=cfg.train.report_to or None,
        project_dir=str(Path(cfg.train.output_dir) / "trackers"),  # trackers' local files (TensorBoard: <run name>/)
        step_scheduler_with_optimizer=False,  # we step the LR schedule once per optimizer step ourselves
    )


def prepare_data(cfg: TrainConfig, accelerator: Accelerator, out: Path):
    """Vocabulary/processor (once, main process) and the cached train/dev tables (once per machine)."""
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
                progress=accelerator.is_local_main_process,
                utterances=train_utts if name == "train" else None,
            )
    if accelerator.is_main_process:
        (out / "data").mkdir(parents=True, exist_ok=True)
        for name, split in splits.items():
            shutil.copy(split.report_path, out / "data" / f"{name}.dropped.jsonl")
    return processor, normalizer, vocab, splits, return_mask, do_normalize, frames_fn


def make_streaming_loader(cfg: TrainConfig, accelerator, collator, vocab, normalizer, frames_fn, do_normalize,
                          out: Path) -> StreamingBatches:
    """Batches from a rank-sharded stream of the train source, filtered on the fly (drops in data/)."""
    dataset = StreamingSpeechDataset(
        cfg.data.train, normalizer, vocab, cfg.data.filters, frames_fn, rank=accelerator.process_index,
        world_size=accelerator.num_processes, report_path=out / "data" / f"train.dropped.rank{accelerator.process_index}.jsonl",
        do_normalize=do_normalize,
    )
    return StreamingBatches(dataset, _collate_with_ids(collator), cfg.data.max_batch_seconds,
                            cfg.data.max_batch_size, seed=cfg.train.seed, num_workers=cfg.data.num_workers)


def _collate_with_ids(collator):
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
        collate_fn=_collate_with_ids(collator),
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


def open_feature_cache(cfg: TrainConfig, accelerator, model, split, do_normalize, return_mask):
    """The cached conv features of the train split (filled by all processes) and their collator."""
    dataset = prepare_feature_cache(
        model, split, cfg.data.feature_cache, do_normalize, return_mask, rank=accelerator.process_index,
        world_size=accelerator.num_processes, local_rank=accelerator.local_process_index,
        local_world_size=int(os.environ.get("LOCAL_WORLD_SIZE", accelerator.num_processes)),
        barrier=accelerator.wait_for_everyone, num_workers=cfg.data.num_workers,
        progress=accelerator.is_local_main_process,
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


def main(argv=None) -> int:
    args = parse_args(argv)
    try:
        cfg = load_config(TrainConfig, args.config, args.overrides)
        check_trackers(cfg.train.report_to)
        if cfg.train.push_to_hub:  # before hours of training, not after
            check_can_push(cfg.train.push_to_hub)
    except (ConfigError, HubSetupError) as e:
        print(f"config error: {e}", file=sys.stderr)
        return 2
    accelerator = make_accelerator(cfg)
    logging.basicConfig(
        level=logging.INFO if accelerator.is_main_process else logging.WARNING,
        format=f"%(asctime)s [rank {accelerator.process_index}] %(name)s: %(message)s",
        datefmt="%H:%M:%S",
    )
    logging.getLogger("accelerate").setLevel(logging.WARNING)  # one line per saved file otherwise
    if globals().get("ALLOCATOR_NOTE"):  # set when run as a script
        logger.warning(ALLOCATOR_NOTE)
    logger.info("memory allocator: %s", active_allocator())
    if cfg.train.mixed_precision == "fp16" and accelerator.device.type == "cpu":
        logger.warning("train.mixed_precision=fp16 on a CPU: Accelerate has no fp16 autocast or loss scaler there "
                       "and trains in float32; use bf16 on CPUs")
    set_seed(cfg.train.seed)
    out = Path(cfg.train.output_dir)
    ckpt_root = out / "checkpoints"
    if accelerator.is_main_process:
        out.mkdir(parents=True, exist_ok=True)
        save_config(cfg, out / "train_config.yaml")
    try:
        ds_plugin = accelerator.state.deepspeed_plugin
        if cfg.data.feature_cache.enabled and takes_filterbank(load_model_config(cfg.model)):
            raise ConfigError("data.feature_cache caches a conv encoder's output, and filterbank models "
                              "(wav2vec2-bert) have none; set data.feature_cache.enabled=false")
        check_augment(cfg.data.augment, feature_cache=cfg.data.feature_cache.enabled,
                      streaming=cfg.data.train.streaming)
        check_feature_cache(cfg.data.feature_cache, freeze_feature_encoder=cfg.model.freeze_feature_encoder,
                            streaming=cfg.data.train.streaming, zero_stage=ds_plugin.zero_stage if ds_plugin else None)
        # the main process checks the checkpoints' hashes (once, not per rank) and names the one all resume from
        resume_dir = launch.on_main_process(accelerator, lambda: resolve_resume(args.resume, ckpt_root))
        processor, normalizer, vocab, splits, return_mask, do_normalize, frames_fn = prepare_data(cfg, accelerator, out)
        with launch.full_model_construction(accelerator):
            model = build_model(cfg.model, vocab, pad_token_id=vocab[PAD])
        collator = make_collator(processor, return_mask)
        cached, train_collator = None, collator
        if cfg.data.feature_cache.enabled:
            cached, train_collator = open_feature_cache(cfg, accelerator, model, splits["train"], do_normalize,
                                                        return_mask)
        if cfg.data.train.streaming:
            # the stream is its own sampler: same interface (set_epoch, state_dict, load_state_dict)
            train_loader = train_sampler = make_streaming_loader(
                cfg, accelerator, collator, vocab, normalizer, frames_fn, do_normalize, out)
        else:
            train_loader, train_sampler = make_loader(splits["train"], cfg, accelerator, train_collator, do_normalize,
                                                      train=True, dataset=cached)
        dev_loader, _ = make_loader(splits["dev"], cfg, accelerator, collator, do_normalize, train=False)
    except ValueError as e:  # ConfigError included: bad input, reported in one line before any training
        logger.error("%s", e)
        return 2

    optimizer = build_optimizer(model, cfg.optim)
    scheduler = build_scheduler(optimizer, cfg.optim, cfg.train.max_steps)
    if accelerator.state.deepspeed_plugin is not None:
        ds = accelerator.state.deepspeed_plugin.deepspeed_config
        ds["train_micro_batch_size_per_gpu"] = 1  # our batches vary in size; DeepSpeed only needs a number
        ds["gradient_accumulation_steps"] = cfg.optim.grad_accum_steps
        ds["gradient_clipping"] = cfg.optim.max_grad_norm or 0.0  # DeepSpeed clips inside its step
    model, optimizer = accelerator.prepare(model, optimizer)
    stepping = optimizer  # the optimizer that really steps: under ZeRO-Offload, Accelerate swaps in DeepSpeedCPUAdam
    while hasattr(stepping, "optimizer"):
        stepping = stepping.optimizer

    state = TrainerState()
    if resume_dir is not None:
        try:  # no pickle is loaded unsafely: see asr/checkpoint.py
            state = load_training_state(accelerator, resume_dir, model, optimizer, scheduler, train_sampler)
        except CheckpointError as e:
            logger.error("%s", e)
            return 2
        if cached is not None:  # the frozen encoder must be the one the cache was filled with
            check_model_matches(cached, accelerator.unwrap_model(model), do_normalize)
        logger.info("resumed from %s at step %d (epoch %d, batch %d)", resume_dir, state.step, state.epoch,
                    state.batches_in_epoch)
        if state.step >= cfg.train.last_step:  # a finished run (or stage) re-run: nothing to redo
            logger.info("the checkpoint is at step %d, this run ends at step %d: nothing to train", state.step,
                        cfg.train.last_step)
            launch.finish(accelerator)
            return 0
    elif args.resume == "latest":
        logger.info("no checkpoint under %s: starting from scratch", ckpt_root)

    data_summary = {
        name: {"source": getattr(cfg.data, name).path, "utterances": len(s), "hours": s.hours,
               "dropped": sum(s.drop_counts.values())}
        for name, s in splits.items()
    }
    metrics_log = MetricsLog(out / "metrics.jsonl")
    if accelerator.is_main_process:
        accelerator.init_trackers(cfg.train.run_name or out.resolve().name, config=tracker_hparams(cfg))
        train_desc = ("streamed" if cfg.data.train.streaming else
                      f"{len(splits['train'])} utt, {splits['train'].hours:.2f} h, {len(train_sampler)} batches/epoch/process")
        logger.info("train: %s; dev: %d utt, %.2f h; %d processes (%s)", train_desc, len(splits["dev"]),
                    splits["dev"].hours, accelerator.num_processes, accelerator.distributed_type.value)
        if cached is not None and cached.report is not None:  # the one-off cost the cached steps repay
            report = cached.report
            metrics_log.write({"kind": "feature_cache", "step": state.step, "seconds": report.seconds,
                               "utterances": report.utterances, "reused": report.reused,
                               "audio_seconds": splits["train"].hours * 3600})
        logger.info("model: %.2f M parameters (%.2f M trainable); optimizer %s",
                    sum(p.numel() for p in model.parameters()) / 1e6,
                    sum(p.numel() for p in model.parameters() if p.requires_grad) / 1e6,
                    type(stepping).__name__)

    cpu = {"base": state.cpu_seconds, "start": None}  # CPU time across resumes, for equal-compute comparisons

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
        if state.best_wer is None or result["wer"] < state.best_wer:
            state.best_wer, state.best_step = result["wer"], state.step
            metrics = {"step": state.step, "wer": result["wer"], "cer": result["cer"], "dev_loss": result["loss"]}
            export_model(accelerator, model, processor, normalizer, cfg, out, metrics, data_summary)
        return record

    unwrapped = accelerator.unwrap_model(model)
    cpu["start"] = process_tree_cpu_seconds()
    model.train()
    progress = tqdm(total=cfg.train.max_steps, initial=state.step, disable=not accelerator.is_main_process,
                    desc="train", dynamic_ncols=True)
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
                # every rank clips with the same all-reduced norm: rank 0's mean is the run's
                state.audio_seconds += audio
                record = {"kind": "train", "step": state.step, "epoch": state.epoch,
                          "loss": loss_sum / max(1, loss_n), "lr": scheduler.get_last_lr()[0],
                          "audio_s_per_s": audio / max(elapsed, 1e-9), "skipped": state.skipped_nonfinite,
                          "grad_norm": window["grad_norm"] / window["norms"] if window["norms"] else None}
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
        logger.info("best dev WER %.2f%% at step %s; model: %s", 100 * state.best_wer, state.best_step,
                    out / "model")
    if accelerator.is_main_process:
        plot_curves(metrics_log.read(), out / "curves.png", cfg.train.run_name or out.resolve().name)
    pushed = push_at_end(accelerator, cfg, out / "model")
    launch.finish(accelerator)
    return 0 if pushed else 1


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


if __name__ == "__main__":
    sys.exit(main())
