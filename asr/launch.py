"""One way to set up Accelerate for every script, and to leave it cleanly.

`accelerate launch` on a machine without CUDA ignores a config file's `use_cpu` for multi-process
runs (every process then believes it is alone) and DeepSpeed needs the gloo backend named
explicitly, so both are set here; but Accelerate skips DeepSpeed altogether when told to use the
CPU, so under a DeepSpeed launch `use_cpu` is cleared instead. Every process must also destroy its process group before the
interpreter exits: otherwise gloo's threads are torn down under a live communicator and the process
can abort with "terminate called without an active exception" (seen on CI with eval.py).
"""

from __future__ import annotations

import contextlib
import datetime
import os
from collections.abc import Callable, Iterator
from typing import Any

import torch
from accelerate import Accelerator
from accelerate.utils import DistributedType, InitProcessGroupKwargs, broadcast_object_list


def make_accelerator(world_size: int, *, timeout: datetime.timedelta | None = None, handlers: list[Any] = (),
                     **kwargs: Any) -> Accelerator:
    """An Accelerator for the launch environment: gloo on CPU when `world_size` > 1.

    Args:
        world_size: the launcher's WORLD_SIZE (1 when run as a plain script).
        timeout: collective timeout; None keeps torch's default (30 min).
        handlers: extra kwargs handlers (e.g. DistributedDataParallelKwargs).
        **kwargs: passed to `Accelerator` (mixed_precision, gradient_accumulation_steps, ...).

    Raises:
        RuntimeError: launched as several processes but Accelerate set none of them up as distributed.
    """
    group: dict[str, Any] = {} if timeout is None else {"timeout": timeout}
    if not torch.cuda.is_available() and world_size > 1:
        group["backend"] = "gloo"
        if os.environ.get("ACCELERATE_USE_DEEPSPEED", "false").lower() == "true":
            # Accelerate starts DeepSpeed only when `cpu` is off: with ACCELERATE_USE_CPU it would quietly
            # run plain multi-CPU DDP instead of ZeRO. DeepSpeed itself runs on CPU over gloo.
            os.environ.pop("ACCELERATE_USE_CPU", None)
        else:
            os.environ["ACCELERATE_USE_CPU"] = "true"
    all_handlers = [*handlers, *([InitProcessGroupKwargs(**group)] if group else [])]
    accelerator = Accelerator(kwargs_handlers=all_handlers, **kwargs)
    if world_size > 1 and accelerator.distributed_type == DistributedType.NO:
        raise RuntimeError(f"launched as {world_size} processes but Accelerate set up none of them as distributed; "
                           "launch with `accelerate launch --multi_gpu` (add ACCELERATE_USE_CPU=true on CPU)")
    return accelerator


def on_main_process(accelerator: Accelerator, fn: Callable[[], Any]) -> Any:
    """`fn()` run by the main process only; every process gets its result, or the ValueError/RuntimeError it raised.

    For work every rank must agree on and that need not be repeated (verifying a checkpoint's hashes,
    taking an output directory), without leaving the other ranks waiting at a barrier when it fails.
    """
    outcome: list[Any] = [None, None]
    if accelerator.is_main_process:
        try:
            outcome = [fn(), None]
        except (ValueError, RuntimeError) as e:
            outcome = [None, e]
    if accelerator.num_processes > 1:
        broadcast_object_list(outcome)
    if outcome[1] is not None:
        raise outcome[1]
    return outcome[0]


def finish(accelerator: Accelerator) -> None:
    """Stop the trackers and destroy this process's process group (call on every process before it exits).

    Call it at the same point on every process, after a barrier: a process that left while another still
    worked under the group could abort in gloo's teardown ("terminate called without an active
    exception", seen on CI when eval.py's other processes left while the main one decoded).
    """
    accelerator.end_training()


@contextlib.contextmanager
def full_model_construction(accelerator: Accelerator) -> Iterator[None]:
    """Build the model whole on every process even under ZeRO-3; DeepSpeed partitions it at `prepare()`.

    Accelerate registers its DeepSpeed config with transformers, which then builds ZeRO-3 models inside
    `deepspeed.zero.Init` and initialises weights on gathered partitions: with wav2vec2's weight-normed
    positional convolution that fails ("Dimension out of range" in `_weight_norm`, transformers 5.23).
    A full copy per process costs the model's size in host memory once (1.2 GB for XLS-R 300M).
    """
    plugin = accelerator.state.deepspeed_plugin
    if plugin is None or plugin.zero_stage != 3:
        yield
        return
    from transformers.integrations import unset_hf_deepspeed_config

    unset_hf_deepspeed_config()
    try:
        yield
    finally:
        plugin.set_deepspeed_weakref()  # ZeRO-3 saving and gathering need it registered again
