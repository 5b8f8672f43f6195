"""Checkpoint averaging: one model whose weights are the mean of several checkpoints of a run.

Checkpoints taken while the learning rate is still high sit at different points of a noisy walk around
the same minimum, and their mean lands nearer its middle (icefall decodes with `--avg`, fairseq and NeMo
ship averaging scripts). At the end of a cosine schedule the checkpoints barely differ and the mean reads
like the last step (the base's stage 9: natural dev CER 10.99 for the mean of four, 10.95 for the last);
what it still buys there is that no step is picked on a small, noisy dev set. It needs the checkpoints
kept: set `train.save_total_limit` to the number averaged, or null.

Each checkpoint is checked against its manifest first (a damaged one stops the averaging with its
reason) and read without running code: `model.safetensors` as tensors, DeepSpeed's ZeRO-2/3 shards
through DeepSpeed's consolidation with every `torch.load` made weights-only. The result is written
beside the run's exported model (processor, normaliser, card, training config copied from it), so
eval.py, transcribe.py, publish_model.py and `AutoModelForCTC.from_pretrained` take it as they are.
"""

from __future__ import annotations

import contextlib
import io
import json
import logging
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file

from asr.checkpoint import (DEEPSPEED_TAG, MODEL_FILE, CheckpointError, checkpoint_step, deepspeed_pickled_records,
                            list_checkpoints, load_weights_only, verify_checkpoint)
from asr.model_card import AVERAGED_KEY

logger = logging.getLogger(__name__)


def select_checkpoints(run_dir: str | Path, last: int | None = None, steps: Sequence[int] | None = None) -> list[Path]:
    """The checkpoint folders of `run_dir` to average: its `last` newest complete ones, or those of `steps`.

    Raises:
        ValueError: neither or both of `last` and `steps`, fewer checkpoints than asked for, a step
            without a checkpoint (the message lists the steps there are).
    """
    root = Path(run_dir) / "checkpoints"
    found = list_checkpoints(root)
    if (last is None) == (steps is None):
        raise ValueError("give either the number of newest checkpoints to average or their steps, not both")
    have = {checkpoint_step(p): p for p in found}
    if not have:
        raise ValueError(f"{root} holds no complete checkpoint; pass the output_dir of a training run")
    if last is not None:
        if last < 1 or last > len(found):
            raise ValueError(f"cannot average the last {last} checkpoints: {root} holds {len(found)} "
                             f"(steps {sorted(have)}); keep more with train.save_total_limit")
        return found[-last:]
    missing = sorted(set(steps) - have.keys())
    if missing:
        raise ValueError(f"no checkpoint of step(s) {missing} under {root}; it holds steps {sorted(have)}")
    return [have[s] for s in sorted(set(steps))]


def checkpoint_weights(folder: str | Path) -> dict[str, torch.Tensor]:
    """The model weights a training checkpoint holds, as float32 CPU tensors keyed like `model.state_dict()`.

    Raises:
        CheckpointError: the folder fails its manifest check, or holds neither `model.safetensors` nor a
            DeepSpeed folder, or a file its reader refuses.
    """
    folder = Path(folder)
    problem = verify_checkpoint(folder)
    if problem:
        raise CheckpointError(f"checkpoint {folder} is damaged ({problem}); average other checkpoints")
    if (folder / MODEL_FILE).is_file():
        try:
            weights = load_file(str(folder / MODEL_FILE), device="cpu")
        except Exception as e:  # SafetensorError: not a safetensors file
            raise CheckpointError(f"checkpoint file {folder / MODEL_FILE} is not safetensors weights ({e})") from e
    elif (folder / DEEPSPEED_TAG).is_dir():
        weights = _deepspeed_weights(folder)
    else:
        raise CheckpointError(f"checkpoint {folder} holds neither {MODEL_FILE} nor a DeepSpeed {DEEPSPEED_TAG}/ "
                              "folder; pass a checkpoint scripts/train.py wrote")
    return {k: v.float() if v.is_floating_point() else v for k, v in weights.items()}


def average_weights(folders: Sequence[Path], model: torch.nn.Module) -> dict[str, torch.Tensor]:
    """The mean of the checkpoints' weights (float64 sums), for every entry of `model.state_dict()`.

    Integer entries (step counters) are taken from the newest checkpoint.

    Raises:
        CheckpointError: a checkpoint lacks one of the model's weights, or holds one of another shape.
    """
    expected = model.state_dict()
    sums: dict[str, torch.Tensor] = {}
    for folder in folders:
        weights = checkpoint_weights(folder)
        for name, ref in expected.items():
            value = weights.get(name)
            if value is None or value.shape != ref.shape:
                got = "missing" if value is None else f"of shape {tuple(value.shape)}"
                raise CheckpointError(f"checkpoint {folder}: weight {name} is {got}, the model's is "
                                      f"{tuple(ref.shape)}; average checkpoints of the run that exported the model")
            if ref.is_floating_point():
                sums[name] = sums[name] + value.double() if name in sums else value.double()
            else:
                sums[name] = value
    return {name: (v / len(folders)).to(expected[name].dtype) if expected[name].is_floating_point() else v
            for name, v in sums.items()}


def averaged_metrics(model_dir: Path, folders: Sequence[Path]) -> dict[str, Any]:
    """The exported model's metrics.json with its one-step dev metrics replaced by what was averaged."""
    path = model_dir / "metrics.json"
    metrics = json.loads(path.read_text(encoding="utf-8")) if path.is_file() else {}
    kept = {"data": metrics["data"]} if "data" in metrics else {}  # the data summary still describes the run
    steps = [checkpoint_step(f) for f in folders]
    return {**kept, AVERAGED_KEY: {"steps": steps, "checkpoints": [str(f) for f in folders]}}


class _WeightsOnlyTorch:
    """torch, whose `load` reads with weights_only=True (plus DeepSpeed's record classes): DeepSpeed's
    consolidation script calls `torch.load(..., weights_only=False)` through its module's `torch` name."""

    def __init__(self) -> None:
        self._allowed = deepspeed_pickled_records()

    def load(self, f, map_location=None, **_ignored) -> Any:  # mmap, weights_only: always weights-only here
        return load_weights_only(Path(f), map_location or "cpu", self._allowed)

    def __getattr__(self, name: str) -> Any:
        return getattr(torch, name)


@contextlib.contextmanager
def _weights_only_zero_to_fp32() -> Iterator[Any]:
    """DeepSpeed's zero_to_fp32 module, its `torch.load` weights-only for the duration; its prints silenced."""
    from deepspeed.utils import zero_to_fp32  # only DeepSpeed checkpoints get here; importing it takes seconds

    zero_to_fp32.torch = _WeightsOnlyTorch()
    try:
        with contextlib.redirect_stdout(io.StringIO()):
            yield zero_to_fp32
    finally:
        zero_to_fp32.torch = torch


def _deepspeed_weights(folder: Path) -> dict[str, torch.Tensor]:
    """The full fp32 weights of a DeepSpeed (ZeRO-1/2/3) checkpoint, consolidated from its shards."""
    with _weights_only_zero_to_fp32() as zero_to_fp32:
        try:
            return zero_to_fp32.get_fp32_state_dict_from_zero_checkpoint(str(folder), tag=DEEPSPEED_TAG)
        except CheckpointError:
            raise
        except (ValueError, KeyError, FileNotFoundError, RuntimeError) as e:
            raise CheckpointError(f"checkpoint {folder}: DeepSpeed could not consolidate its shards ({e})") from e
