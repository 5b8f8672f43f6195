"""One way to set up Accelerate for every script, and to leave it cleanly.

`accelerate launch` on a machine without CUDA ignores a config file's `use_cpu` for multi-process
runs (every process then believes it is alone) and DeepSpeed needs the gloo backend named
explicitly, so both are set here. Every process must also destroy its process group before the
interpreter exits: otherwise gloo's threads are torn down under a live communicator and the process
can abort with "terminate called without an active exception" (seen on CI with eval.py).
"""

from __future__ import annotations

import datetime
import os
from typing import Any

import torch
from accelerate import Accelerator
from accelerate.utils import DistributedType, InitProcessGroupKwargs


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
        os.environ["ACCELERATE_USE_CPU"] = "true"
        group["backend"] = "gloo"
    all_handlers = [*handlers, *([InitProcessGroupKwargs(**group)] if group else [])]
    accelerator = Accelerator(kwargs_handlers=all_handlers, **kwargs)
    if world_size > 1 and accelerator.distributed_type == DistributedType.NO:
        raise RuntimeError(f"launched as {world_size} processes but Accelerate set up none of them as distributed; "
                           "launch with `accelerate launch --multi_gpu` (add ACCELERATE_USE_CPU=true on CPU)")
    return accelerator


def finish(accelerator: Accelerator) -> None:
    """Stop the trackers and destroy this process's process group (call on every process before it exits)."""
    accelerator.end_training()
