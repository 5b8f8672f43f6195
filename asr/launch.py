"""One way to set up Accelerate for every script, and to leave it cleanly.

`accelerate launch` on a machine without CUDA ignores a config file's `use_cpu` for multi-process
runs (every process then believes it is alone) and DeepSpeed needs the gloo backend named
explicitly, so both are set here; but Accelerate skips DeepSpeed altogether when told to use the
CPU, so under a DeepSpeed launch `use_cpu` is cleared instead.

Leaving: every process destroys its process group (`finish`), and a process that was part of a group ends
through `exit_process`, which skips the interpreter's teardown. The teardown is where CI's rare aborts came
from ("terminate called without an active exception", one rank, at the end of eval.py and of a ZeRO-3
train.py): DDP's reducer and DeepSpeed's parameters keep the gloo group, and so its worker threads, alive
past `destroy_process_group`, and a C++ thread that takes the GIL while Python finalises is killed by
`pthread_exit` inside a destructor that may not throw, which calls `std::terminate`. tests/test_launch.py
shows the mechanism with a thread busy in torch when a script ends, and that `exit_process` avoids it.
"""

from __future__ import annotations

import contextlib
import datetime
import faulthandler
import gc
import logging
import os
import sys
from collections.abc import Callable, Iterator
from typing import Any, NoReturn

import torch
from accelerate import Accelerator
from accelerate.utils import DistributedType, InitProcessGroupKwargs, broadcast_object_list

from asr.hardware import accelerate_uses_cuda, resolve_mixed_precision

# Whether this process joined a multi-process group (set by make_accelerator): it then ends through os._exit.
_joined_group = False


def make_accelerator(world_size: int, *, timeout: datetime.timedelta | None = None, handlers: list[Any] = (),
                     **kwargs: Any) -> Accelerator:
    """An Accelerator for the launch environment: gloo on CPU when `world_size` > 1.

    Args:
        world_size: the launcher's WORLD_SIZE (1 when run as a plain script).
        timeout: collective timeout; None keeps torch's default (30 min).
        handlers: extra kwargs handlers (e.g. DistributedDataParallelKwargs).
        **kwargs: passed to `Accelerator` (mixed_precision, gradient_accumulation_steps, ...); mixed_precision
            "auto" is resolved for this hardware first (`asr.hardware.resolve_mixed_precision`).

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
    if kwargs.get("mixed_precision") == "auto":
        kwargs["mixed_precision"] = resolve_mixed_precision("auto", cuda=accelerate_uses_cuda())
    all_handlers = [*handlers, *([InitProcessGroupKwargs(**group)] if group else [])]
    accelerator = Accelerator(kwargs_handlers=all_handlers, **kwargs)
    if world_size > 1 and accelerator.distributed_type == DistributedType.NO:
        raise RuntimeError(f"launched as {world_size} processes but Accelerate set up none of them as distributed; "
                           "launch with `accelerate launch --multi_gpu` (add ACCELERATE_USE_CPU=true on CPU)")
    if accelerator.num_processes > 1:
        global _joined_group
        _joined_group = True
        # a rank killed by a signal (SIGABRT, SIGSEGV) prints every thread's Python stack: which rank, and where
        faulthandler.enable()
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
    """Stop the trackers, drop Accelerate's references to what it prepared, and destroy the process groups.

    Call it at the same point on every process, after a barrier, so that no process leaves while another
    still works under the group. The collections let the group (and its gloo threads) go now, while the
    interpreter is whole, whenever nothing else holds it; DDP's reducer and DeepSpeed's parameters may,
    which is why scripts end through `exit_process`.
    """
    accelerator.free_memory()  # DeepSpeed's engine destroyed too; collects the garbage itself
    accelerator.end_training()
    gc.collect()  # a group held only by a reference cycle (eval.py's) goes now, its threads joined


def exit_process(code: int) -> NoReturn:
    """End the process with `code`: through os._exit after flushing if it joined a multi-process group.

    Skipping the interpreter's teardown is the point: a C++ thread still alive there (gloo's workers, held
    by DDP or DeepSpeed past `finish`) that takes the GIL is killed inside a destructor and aborts the
    process. Every file is closed by then; the logs and the standard streams are flushed here.
    """
    if not _joined_group:
        sys.exit(code)
    logging.shutdown()
    for stream in (sys.stdout, sys.stderr):
        with contextlib.suppress(Exception):
            stream.flush()
    os._exit(code)


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
