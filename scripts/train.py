"""Fine-tune a CTC speech recogniser with Accelerate: one process, many GPUs, many nodes, DeepSpeed ZeRO.

    $ accelerate launch scripts/train.py --config configs/train/tiny_cpu.yaml
    $ accelerate launch --config_file configs/accelerate/multi_gpu.yaml scripts/train.py \
          --config configs/train/wav2vec2_base_librispeech.yaml optim.lr=5e-5 train.max_steps=20000
    $ accelerate launch ... scripts/train.py --config ... --resume latest    # continue exactly
    $ .venv/bin/python scripts/train.py --print-config --config configs/train/tiny_cpu.yaml optim.lr=3e-4
          # every config key: its value, its default where it differs, and why (no --config: the defaults)

Everything the run writes goes to `train.output_dir`: `checkpoints/step_<n>/` (full state, atomic),
`model/` (the best model by dev WER as a standard Hugging Face directory with processor, config,
metrics and a model card), `metrics.jsonl`, `curves.png`, `trackers/` (TensorBoard's `trackers/<run name>/`, and
any other `train.report_to` tracker's local files), `train_config.yaml`,
and the data reports (`data/*.dropped.jsonl`). With `train.push_to_hub=owner/name`, model/ is uploaded to the
Hugging Face Hub at the end (checked at start: offline, HF_HUB_OFFLINE=1, refuses before training).

Exit code: 0 done; 1 a crash, or the push at the end failed (the model is on disk); 2 a bad config or data
(one line, before any training).
"""

from __future__ import annotations

if __name__ == "__main__":  # first, before torch: re-run this command under jemalloc (see asr/allocator.py)
    from asr.allocator import relaunch_under_jemalloc

    ALLOCATOR_NOTE = relaunch_under_jemalloc()

import argparse
import logging
import os
import sys
from pathlib import Path

from asr.cli import ArgumentParser, add_common_flags, exit_with, setup_logging
from asr.config import ConfigError, annotated_yaml, load_config
from asr.constants import EXIT_CRASH, EXIT_OK, EXIT_USAGE

logger = logging.getLogger("train")


def parse_args(argv=None) -> argparse.Namespace:
    parser = ArgumentParser(description=__doc__)
    parser.add_argument("--config", default=None, help="YAML run config (configs/train/*.yaml); required to train")
    parser.add_argument("--resume", default=None, help="'latest' or a checkpoint folder; continues exactly")
    parser.add_argument("--print-config", action="store_true", help="print every config key with its value (of "
                        "--config and the overrides), its default and its reason as YAML, and exit")
    parser.add_argument("overrides", nargs="*", help="dotted overrides, e.g. optim.lr=3e-4 train.max_steps=100")
    add_common_flags(parser)
    args = parser.parse_intermixed_args(argv)  # overrides on both sides of an option: `a=1 --resume latest b=2`
    if args.config is None and not args.print_config:
        parser.error("--config is required (e.g. --config configs/train/tiny_cpu.yaml); --print-config lists the keys")
    return args


def make_accelerator(cfg):
    """Accelerator for the launch environment (gloo on CPU; DeepSpeed otherwise sees world=1)."""
    from accelerate.utils import DistributedDataParallelKwargs

    from asr import launch

    return launch.make_accelerator(
        int(os.environ.get("WORLD_SIZE", "1")),
        handlers=[DistributedDataParallelKwargs(find_unused_parameters=cfg.model.layerdrop > 0)],
        gradient_accumulation_steps=cfg.optim.grad_accum_steps,
        mixed_precision=cfg.train.mixed_precision,
        log_with=cfg.train.report_to or None,
        project_dir=str(Path(cfg.train.output_dir) / "trackers"),  # trackers' local files (TensorBoard: <run name>/)
        step_scheduler_with_optimizer=False,  # we step the LR schedule once per optimizer step ourselves
    )


def main(argv=None) -> int:
    args = parse_args(argv)
    from asr.hub import HubSetupError, check_can_push
    from asr.train import TrainConfig, check_trackers  # torch: imported after parsing, so that --help is instant

    try:
        cfg = load_config(TrainConfig, args.config, args.overrides)
        if args.print_config:
            print(annotated_yaml(cfg, defaults=TrainConfig()), end="")
            return EXIT_OK
        check_trackers(cfg.train.report_to)
        if cfg.train.push_to_hub:  # before hours of training, not after
            check_can_push(cfg.train.push_to_hub)
    except (ConfigError, HubSetupError) as e:
        print(f"config error: {e}", file=sys.stderr)
        return EXIT_USAGE
    return train(args, cfg)


def train(args: argparse.Namespace, cfg) -> int:
    """main's work once the config is checked: set up, prepare the data and model, run the loop, push."""
    # torch, accelerate and the library: imported after parsing, so that --help is instant
    from accelerate.utils import set_seed

    from asr import launch
    from asr.allocator import active_allocator
    from asr.augment import check_augment
    from asr.checkpoint import CheckpointError, TrainerState, load_training_state, resolve_resume
    from asr.collate import make_collator
    from asr.config import save_config
    from asr.constants import PAD
    from asr.feature_cache import check_feature_cache, check_model_matches
    from asr.model import build_model, load_model_config, takes_filterbank
    from asr.train import MetricsLog, build_optimizer, build_scheduler, tracker_hparams
    from asr.trainer import (TrainingRun, make_loader, make_streaming_loader, open_feature_cache, prepare_data,
                             push_at_end, run_training)

    accelerator = make_accelerator(cfg)
    setup_logging(args, main_process=accelerator.is_main_process, rank=accelerator.process_index)
    progress = not args.no_progress
    if globals().get("ALLOCATOR_NOTE"):  # set when run as a script
        logger.warning(ALLOCATOR_NOTE)
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
        data = prepare_data(cfg, accelerator, out, progress=progress)
        vocab, splits, do_normalize = data.vocab, data.splits, data.do_normalize
        with launch.full_model_construction(accelerator):
            model = build_model(cfg.model, vocab, pad_token_id=vocab[PAD])
        collator = make_collator(data.processor, data.return_mask)
        cached, train_collator = None, collator
        if cfg.data.feature_cache.enabled:
            cached, train_collator = open_feature_cache(
                cfg, accelerator, model, splits["train"], do_normalize, data.return_mask,
                local_world_size=int(os.environ.get("LOCAL_WORLD_SIZE", accelerator.num_processes)), progress=progress)
        if cfg.data.train.streaming:
            # the stream is its own sampler: same interface (set_epoch, state_dict, load_state_dict)
            train_loader = train_sampler = make_streaming_loader(cfg, accelerator, collator, data, out)
        else:
            train_loader, train_sampler = make_loader(splits["train"], cfg, accelerator, train_collator, do_normalize,
                                                      train=True, dataset=cached)
        dev_loader, _ = make_loader(splits["dev"], cfg, accelerator, collator, do_normalize, train=False)
    except ValueError as e:  # ConfigError included: bad input, reported in one line before any training
        logger.error("%s", e)
        return EXIT_USAGE
    logger.info("memory allocator: %s", active_allocator())

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
            return EXIT_USAGE
        if cached is not None:  # the frozen encoder must be the one the cache was filled with
            check_model_matches(cached, accelerator.unwrap_model(model), do_normalize)
        logger.info("resumed from %s at step %d (epoch %d, batch %d)", resume_dir, state.step, state.epoch,
                    state.batches_in_epoch)
        if state.step >= cfg.train.last_step:  # a finished run (or stage) re-run: nothing to redo
            logger.info("the checkpoint is at step %d, this run ends at step %d: nothing to train", state.step,
                        cfg.train.last_step)
            accelerator.wait_for_everyone()
            launch.finish(accelerator)
            return EXIT_OK
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
        logger.info("model: %.2f M parameters (%.2f M trainable); optimizer %s; mixed precision %s%s",
                    sum(p.numel() for p in model.parameters()) / 1e6,
                    sum(p.numel() for p in model.parameters() if p.requires_grad) / 1e6,
                    type(stepping).__name__, accelerator.mixed_precision,
                    " (auto)" if cfg.train.mixed_precision == "auto" else "")

    run_training(TrainingRun(cfg, accelerator, model, optimizer, scheduler, train_loader, train_sampler, dev_loader,
                             data, out, state, metrics_log, data_summary, progress=progress))
    accelerator.wait_for_everyone()  # the main process drew curves.png: all leave the group together, then it pushes
    launch.finish(accelerator)
    pushed = push_at_end(accelerator, cfg, out / "model")
    return EXIT_OK if pushed else EXIT_CRASH


if __name__ == "__main__":
    exit_with(main())
