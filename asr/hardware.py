"""What the hardware computes natively, for the precision choices of training (`train.mixed_precision: auto`)
and inference (`--precision auto`).

bfloat16 pays only where it is computed in hardware: Ampere and later GPUs, and CPUs with AVX512-BF16 or AMX
(oneDNN otherwise emulates it through conversions, slower than float32). fp16 autocast exists on GPUs only.
"""

from __future__ import annotations

import os
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import torch


def cpu_computes_bf16() -> bool:
    """Whether this CPU has bfloat16 arithmetic in hardware (AVX512-BF16 or AMX), as torch's own probes see it."""
    import torch

    checks = ("_is_avx512_bf16_supported", "_is_amx_tile_supported")  # torch.cpu (torch >= 2.3)
    return any(getattr(torch.cpu, name, lambda: False)() for name in checks)


def resolve_mixed_precision(setting: str, *, cuda: bool) -> str:
    """The precision `setting` means on this hardware: "auto" becomes bf16 where the device computes bfloat16
    natively (Ampere+ GPUs, CPUs with AVX512-BF16 or AMX), fp16 on older GPUs, else "no" (float32); any
    other setting is returned as it is."""
    if setting != "auto":
        return setting
    if cuda:
        import torch

        return "bf16" if torch.cuda.is_bf16_supported() else "fp16"
    return "bf16" if cpu_computes_bf16() else "no"


def accelerate_uses_cuda() -> bool:
    """Whether Accelerate will put this process on a GPU (CUDA present and not told to use the CPU)."""
    import torch

    use_cpu = os.environ.get("ACCELERATE_USE_CPU", "false").lower() in ("1", "true", "yes")
    return torch.cuda.is_available() and not use_cpu


def inference_dtype(precision: str, device_type: str) -> torch.dtype | None:
    """The autocast dtype of an inference `precision` (asr.defaults.INFERENCE_PRECISIONS) on a "cpu" or "cuda"
    device: None for float32, torch.bfloat16 or torch.float16; "auto" as `resolve_mixed_precision`.

    Raises:
        ValueError: fp16 on a CPU (autocast has no float16 there), or an unknown precision.
    """
    import torch

    if precision == "auto":
        resolved = resolve_mixed_precision("auto", cuda=device_type == "cuda")
        precision = "float32" if resolved == "no" else resolved
    if precision == "fp16" and device_type != "cuda":
        raise ValueError("--precision fp16 needs a GPU (a CPU has no float16 autocast); use bf16, or auto, which "
                         "picks bf16 on CPUs that compute it natively (AMX, AVX512-BF16)")
    dtypes = {"float32": None, "bf16": torch.bfloat16, "fp16": torch.float16}
    if precision not in dtypes:
        raise ValueError(f"precision {precision!r} is unknown; use one of float32, bf16, fp16, auto")
    return dtypes[precision]
