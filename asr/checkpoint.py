"""Checkpoints that are complete or invisible, and that run no code when they are read.

Complete or invisible: a checkpoint is written into `step_<n>.tmp`, the small `trainer_state.json`
goes in last, then `manifest.json` (the size and SHA-256 of every file); every file and folder is
fsynced and the folder is renamed to `step_<n>` only then (`asr.files.replace_dir`: an older folder
of that name is moved aside, never deleted first). A run killed mid-save leaves a `.tmp` folder
(ignored and cleaned up) or, on file systems without atomic rename, a folder without
`trainer_state.json`, which `list_checkpoints` skips with a warning.

Verified: `--resume latest` checks each checkpoint against its manifest, newest first, and resumes
from the newest intact one, saying in one line which one it skipped and why (a file truncated or
changed on disk after the save, a disk that lost data). An explicit `--resume DIR` that fails the check
is refused. Checkpoints written before manifests existed are resumed unverified, with a warning.

No code: nothing in a checkpoint goes through Python's full unpickler, so resuming from a folder
someone else wrote cannot run their code. What each file holds, and how it is read:

    trainer_state.json, sampler.json  loop and sampler position             json
    scheduler.json, grad_scaler.json  LR schedule, fp16 loss scale          json, shaped like a fresh state
    rng_state_<rank>.json             Python, NumPy, torch CPU/device RNGs  json (torch's states in base64)
    model.safetensors                 weights (without DeepSpeed)           safetensors
    optimizer.pt                      AdamW state (without DeepSpeed)       torch.load(weights_only=True)
    pytorch_model/*.pt                DeepSpeed's model/optimizer shards    the same, plus 4 DeepSpeed classes

A file its reader refuses (a crafted pickle, a truncated file, JSON of another shape) stops the resume
with a `CheckpointError` naming it. Accelerate's `save_state`/`load_state` are not used: `load_state`
unpickles registered objects (`custom_checkpoint_<i>.pkl`) with `weights_only=False`, and DeepSpeed's
engine reads its own files with `weights_only=False` unless handed the loader here. Files this module
does not write (Accelerate's `custom_checkpoint_*.pkl`, `random_states_*.pkl`) are never opened;
resuming names them in a warning.
"""

from __future__ import annotations

import base64
import contextlib
import hashlib
import json
import logging
import random
import re
import shutil
from collections.abc import Iterator
from dataclasses import asdict, dataclass, fields
from pathlib import Path
from typing import Any

import numpy as np
import torch
from accelerate.utils import DistributedType
from safetensors.torch import load_model, save_model

from asr.constants import BEST_METRICS
from asr.files import fsync_path, fsync_tree, replace_dir

logger = logging.getLogger(__name__)

STATE_FILE = "trainer_state.json"
SAMPLER_FILE = "sampler.json"
SCHEDULER_FILE = "scheduler.json"
SCALER_FILE = "grad_scaler.json"
MODEL_FILE = "model.safetensors"
OPTIMIZER_FILE = "optimizer.pt"
MANIFEST_FILE = "manifest.json"  # {relative path: {"size": bytes, "sha256": hex}} of every other file
DEEPSPEED_TAG = "pytorch_model"  # DeepSpeed's sub-folder; Accelerate's name for it, kept for familiar layouts
_RNG_FILE = "rng_state_{rank}.json"
_RNG_FILES = re.compile(r"^rng_state_\d+\.json$")
_STEP_DIR = re.compile(r"^step_(\d+)$")
# What a checkpoint holds besides the RNG files: ours, the run config (for people), and what DeepSpeed
# writes beside its shards (`latest`, its conversion scripts), none of which a resume reads.
_KNOWN_FILES = {MANIFEST_FILE, STATE_FILE, SAMPLER_FILE, SCHEDULER_FILE, SCALER_FILE, MODEL_FILE, OPTIMIZER_FILE, DEEPSPEED_TAG,
                "train_config.yaml", "latest", "zero_to_fp32.py", "zero_to_torch.py"}


class CheckpointError(ValueError):
    """A checkpoint file is missing, or its reader refused it (a pickle that would run code, a broken file)."""


@dataclass
class TrainerState:
    """What the loop needs besides the weights/optimizer to continue exactly."""

    step: int = 0  # optimizer steps taken
    epoch: int = 0
    batches_in_epoch: int = 0  # batches of `epoch` already trained on (this rank's sampler position)
    micro_batches: int = 0  # all batches seen, counting those inside gradient accumulation
    skipped_nonfinite: int = 0  # batches whose loss was NaN/Inf on some rank and were skipped everywhere
    best_score: float | None = None  # the dev score (train.best_metric) of best_step; None with "last"
    best_step: int | None = None  # the step model/ holds
    best_metric: str | None = None  # the train.best_metric that chose it (None: "wer", states before the option)
    audio_seconds: float = 0.0  # training audio seen, summed over ranks
    cpu_seconds: float = 0.0  # CPU time of every rank and its DataLoader workers, summed, up to the last eval

    def save(self, folder: Path) -> None:
        (folder / STATE_FILE).write_text(json.dumps(asdict(self), indent=2))

    @classmethod
    def load(cls, folder: Path) -> TrainerState:
        """The state in `folder`; anything but numbers under this class's field names is a CheckpointError."""
        path = folder / STATE_FILE
        data = read_json(path)
        names = {f.name for f in fields(cls)}
        if isinstance(data, dict) and "best_wer" in data and "best_score" not in data:
            data["best_score"] = data.pop("best_wer")  # written before train.best_metric: a WER
        if not (isinstance(data, dict) and set(data) <= names
                and all(v is None or type(v) in (int, float) for k, v in data.items() if k != "best_metric")
                and data.get("best_metric") in (None, *BEST_METRICS)):
            raise CheckpointError(f"checkpoint file {path}: expected numbers under {sorted(names)} (best_metric: "
                                  f"one of {', '.join(BEST_METRICS)}), got {str(data)[:200]}")
        return cls(**data)


def checkpoint_dir(root: Path, step: int) -> Path:
    """Folder of the checkpoint at `step`."""
    return root / f"step_{step}"


def is_complete(folder: Path) -> bool:
    """A checkpoint counts only once its state file exists (written last)."""
    return folder.is_dir() and (folder / STATE_FILE).is_file()


def checkpoint_step(folder: Path) -> int:
    """The step of a checkpoint folder `step_<n>` (as `list_checkpoints` returns them)."""
    return int(_STEP_DIR.match(Path(folder).name).group(1))


def list_checkpoints(root: Path) -> list[Path]:
    """Complete checkpoints under `root`, oldest first; incomplete ones are reported and skipped."""
    found = []
    for child in root.glob("step_*") if root.is_dir() else []:
        m = _STEP_DIR.match(child.name)
        if not m:
            continue
        if is_complete(child):
            found.append((int(m.group(1)), child))
        else:
            logger.warning("ignoring incomplete checkpoint %s (no %s: the save was interrupted)", child, STATE_FILE)
    return [path for _, path in sorted(found)]


def resolve_resume(resume: str | None, root: Path) -> Path | None:
    """`latest` -> newest intact checkpoint under root (None if there is none); a path -> that checkpoint, verified.

    A damaged checkpoint (see `verify_checkpoint`) is skipped under `latest` with a warning naming it,
    the reason and the checkpoint resumed instead.

    Raises:
        CheckpointError: a given path is not a complete, intact checkpoint, or under `latest` every
            checkpoint is damaged.
    """
    if resume is None:
        return None
    if resume == "latest":
        damaged = []
        for path in reversed(list_checkpoints(root)):
            problem = verify_checkpoint(path)
            if problem is None:
                if damaged:
                    logger.warning("%s damaged: resuming from %s instead", _describe(damaged), path.name)
                return path
            damaged.append(f"{path.name} ({problem})")
        if damaged:
            raise CheckpointError(f"every checkpoint under {root} is damaged: {_describe(damaged)}; "
                                  "start without --resume or restore a checkpoint")
        return None
    path = Path(resume)
    if not is_complete(path):
        raise CheckpointError(f"--resume {resume}: not a complete checkpoint (no {STATE_FILE}); use --resume latest")
    problem = verify_checkpoint(path)
    if problem is not None:
        raise CheckpointError(f"--resume {resume}: the checkpoint is damaged ({problem}); "
                              "use --resume latest to take the newest intact one")
    return path


def _describe(damaged: list[str]) -> str:
    return f"checkpoint {damaged[0]} is" if len(damaged) == 1 else f"checkpoints {', '.join(damaged)} are"


def verify_checkpoint(folder: Path) -> str | None:
    """What is wrong with `folder` by its manifest (a file missing, of another size or hash), or None if intact.

    A checkpoint without a manifest (written before this version) cannot be checked: it passes, with a warning.
    """
    folder = Path(folder)
    try:
        manifest = json.loads((folder / MANIFEST_FILE).read_text(encoding="utf-8"))
    except FileNotFoundError:
        logger.warning("checkpoint %s has no %s (written by an older version): not verified", folder, MANIFEST_FILE)
        return None
    except (OSError, ValueError) as e:
        return f"{MANIFEST_FILE} unreadable: {_first_line(e)}"
    if not (isinstance(manifest, dict) and all(isinstance(v, dict) and {"size", "sha256"} <= v.keys()
                                               for v in manifest.values())):
        return f"{MANIFEST_FILE} is not a manifest"
    for name, expected in sorted(manifest.items()):
        path = folder / name
        if not path.is_file():
            return f"{name} is missing"
        size = path.stat().st_size
        if size != expected["size"]:
            return f"{name} has {size} bytes, the save wrote {expected['size']}"
        if _sha256(path) != expected["sha256"]:
            return f"{name} differs from what the save wrote (SHA-256 mismatch)"
    return None


def begin_save(root: Path, step: int) -> Path:
    """Fresh temporary folder for the checkpoint at `step` (main process only)."""
    tmp = root / f"step_{step}.tmp"
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    return tmp


def finish_save(tmp: Path, state: TrainerState, keep: int | None) -> Path:
    """Writes the state file and the manifest last, flushes all to disk, moves the folder into place, rotates.

    Call it on the main process once every process has written its files into `tmp`.
    """
    state.save(tmp)
    _write_manifest(tmp)
    fsync_tree(tmp)
    final = tmp.with_name(tmp.name.removesuffix(".tmp"))
    replace_dir(tmp, final)
    fsync_path(final.parent)
    if keep is not None and keep > 0:
        for old in list_checkpoints(final.parent)[:-keep]:
            shutil.rmtree(old, ignore_errors=True)
    for stale in final.parent.glob("step_*.tmp"):
        shutil.rmtree(stale, ignore_errors=True)
    return final


def _write_manifest(folder: Path) -> None:
    """manifest.json: size and SHA-256 of every file under `folder` (as read back from disk, so as saved)."""
    manifest = {path.relative_to(folder).as_posix(): {"size": path.stat().st_size, "sha256": _sha256(path)}
                for path in sorted(folder.rglob("*")) if path.is_file() and path.name != MANIFEST_FILE}
    (folder / MANIFEST_FILE).write_text(json.dumps(manifest, indent=1))


def _sha256(path: Path) -> str:
    with open(path, "rb") as f:
        return hashlib.file_digest(f, "sha256").hexdigest()


# ---------------------------------------------------------------------- training state, read without pickle


def save_training_state(accelerator, folder: Path, model, optimizer, scheduler, sampler_state: dict) -> None:
    """Every process writes its part of what a resume needs into `folder` (call it on all processes).

    Under DeepSpeed its engine writes the model and optimizer shards (`pytorch_model/`); otherwise the
    main process writes `model.safetensors` and `optimizer.pt`. The main process writes the scheduler,
    grad-scaler and sampler states as JSON; each process writes its own RNG states.

    Args:
        accelerator: the run's Accelerator.
        folder: an existing, empty folder (the checkpoint's temporary folder).
        model, optimizer: as returned by `accelerator.prepare`.
        scheduler: the LR scheduler (stepped by the loop, not prepared).
        sampler_state: the train sampler's `state_dict(...)` (plain values).
    """
    if accelerator.distributed_type == DistributedType.DEEPSPEED:
        model.save_checkpoint(str(folder), DEEPSPEED_TAG)  # collective
    elif accelerator.is_main_process:
        save_model(accelerator.unwrap_model(model), str(folder / MODEL_FILE))
        torch.save(optimizer.state_dict(), folder / OPTIMIZER_FILE)
    if accelerator.is_main_process:
        (folder / SCHEDULER_FILE).write_text(json.dumps(scheduler.state_dict()))
        if accelerator.scaler is not None:
            (folder / SCALER_FILE).write_text(json.dumps(accelerator.scaler.state_dict()))
        (folder / SAMPLER_FILE).write_text(json.dumps(sampler_state))
    rng_file = folder / _RNG_FILE.format(rank=accelerator.process_index)
    rng_file.write_text(json.dumps(_rng_state(accelerator.device)))


def load_training_state(accelerator, folder: Path, model, optimizer, scheduler, sampler) -> TrainerState:
    """Restores what `save_training_state` wrote (and the trainer state), running no code from the files.

    The RNG states are restored last, as Accelerate's `load_state` did. Accelerate's own step counter
    is left at 0: checkpoints are taken right after an optimizer step, where it is a multiple of the
    accumulation steps, so counting from 0 syncs gradients at the same batches.

    Raises:
        CheckpointError: a file is missing or its reader refused it; the message names the file.
    """
    folder = Path(folder)
    if accelerator.is_main_process:
        unread = sorted(p.name for p in folder.iterdir()
                        if p.name not in _KNOWN_FILES and not _RNG_FILES.match(p.name))
        if unread:
            logger.warning("checkpoint %s: not reading %s (this version's checkpoints do not hold them)",
                           folder, ", ".join(unread))
    if accelerator.distributed_type == DistributedType.DEEPSPEED:
        _load_deepspeed(model, folder)
        _keep_scheduler_on_live_groups(scheduler, model)
    else:
        _load_model(accelerator.unwrap_model(model), folder / MODEL_FILE)
        _load_state_dict(optimizer, load_weights_only(folder / OPTIMIZER_FILE), folder / OPTIMIZER_FILE)
    _load_state_dict(scheduler, read_json(folder / SCHEDULER_FILE), folder / SCHEDULER_FILE, layout=True)
    if accelerator.scaler is not None:
        _load_state_dict(accelerator.scaler, read_json(folder / SCALER_FILE), folder / SCALER_FILE, layout=True)
    state = TrainerState.load(folder)
    _load_state_dict(sampler, read_json(folder / SAMPLER_FILE), folder / SAMPLER_FILE)
    rng_file = folder / _RNG_FILE.format(rank=accelerator.process_index)
    _restore_rng(read_json(rng_file), accelerator.device, rng_file)
    return state


def read_json(path: Path) -> Any:
    """JSON from a checkpoint file; a missing or unparsable file is a CheckpointError naming it."""
    try:
        return json.loads(Path(path).read_text(encoding="utf-8"))
    except FileNotFoundError as e:
        raise CheckpointError(f"checkpoint file {path} is missing; resume from a checkpoint this version wrote") from e
    except (OSError, ValueError) as e:  # ValueError: bad UTF-8 or JSON
        raise CheckpointError(f"checkpoint file {path} is not JSON ({_first_line(e)}); it was not loaded") from e


def load_weights_only(path: Path, map_location: Any = "cpu", allowed: tuple[type, ...] = ()) -> Any:
    """torch.load with weights_only=True (plus the `allowed` classes): a pickle calling anything else is refused."""
    if not path.is_file():
        raise CheckpointError(f"checkpoint file {path} is missing; resume from a checkpoint this version wrote")
    try:
        with torch.serialization.safe_globals(list(allowed)):
            return torch.load(path, map_location=map_location, weights_only=True)
    except Exception as e:  # UnpicklingError for a refused global; RuntimeError etc. for a broken file
        found = re.search(r"Unsupported global: GLOBAL (\S+)", str(e))
        reason = (f"its pickle calls {found.group(1)}, which loading with weights_only=True does not allow"
                  if found else _first_line(e))
        raise CheckpointError(f"checkpoint file {path} refused: {reason}; nothing in it was run") from e


def _load_model(model: torch.nn.Module, path: Path) -> None:
    """Weights from a safetensors file (a format that holds tensors only) into `model`, every key required."""
    if not path.is_file():
        raise CheckpointError(f"checkpoint file {path} is missing; resume from a checkpoint this version wrote")
    try:
        load_model(model, str(path), strict=True, device="cpu")
    except Exception as e:  # SafetensorError for a file of another format, RuntimeError for other weights
        raise CheckpointError(f"checkpoint file {path} is not this model's safetensors weights "
                              f"({_first_line(e)})") from e


def _load_state_dict(obj: Any, state: Any, path: Path, layout: bool = False) -> None:
    """obj.load_state_dict(state); with `layout`, `state` must first have the keys and types of obj's own."""
    if layout and not _same_layout(obj.state_dict(), state):
        raise CheckpointError(f"checkpoint file {path} does not hold a {type(obj).__name__} state like this run's "
                              f"(got {str(state)[:200]})")
    try:
        obj.load_state_dict(state)
    except (ValueError, TypeError, KeyError, IndexError, AttributeError) as e:
        raise CheckpointError(f"checkpoint file {path}: {_first_line(e)}") from e


def _same_layout(expected: Any, got: Any) -> bool:
    """True if `got` (parsed JSON) has `expected`'s keys, lengths and value types (an int may stand for a float)."""
    if isinstance(expected, dict):
        return isinstance(got, dict) and got.keys() == expected.keys() and all(
            _same_layout(expected[k], got[k]) for k in expected)
    if isinstance(expected, (list, tuple)):
        return isinstance(got, list) and len(got) == len(expected) and all(map(_same_layout, expected, got))
    if type(expected) is float:
        return type(got) in (float, int)
    return type(got) is type(expected)


def _first_line(e: BaseException) -> str:
    lines = str(e).strip().splitlines()
    return f"{type(e).__name__}: {lines[0][:300]}" if lines else type(e).__name__


def _load_deepspeed(engine, folder: Path) -> None:
    """DeepSpeed's model and optimizer shards, read through `load_weights_only` instead of DeepSpeed's unsafe loader."""
    if engine.load_universal_checkpoint():
        raise CheckpointError("DeepSpeed's checkpoint.load_universal reads files with torch.load(weights_only=False), "
                              "which can run code from a checkpoint; remove it from the DeepSpeed config to resume")
    if not (folder / DEEPSPEED_TAG).is_dir():
        raise CheckpointError(f"checkpoint {folder} has no {DEEPSPEED_TAG}/ folder: it was not written by a "
                              "DeepSpeed run; resume with the launch configuration that wrote it")
    with _weights_only_deepspeed_loads(engine):
        load_path, _ = engine.load_checkpoint(str(folder), DEEPSPEED_TAG)
    if load_path is None:
        raise CheckpointError(f"DeepSpeed found no model states in {folder / DEEPSPEED_TAG}")
    _replay_cpu_adam_steps(engine.optimizer)


def _keep_scheduler_on_live_groups(scheduler, engine) -> None:
    """Points the LR scheduler at the param groups the DeepSpeed engine's optimizer reads after a load.

    With the optimizer offloaded, Accelerate swaps our AdamW for a DeepSpeedCPUAdam built on the same
    param-group dicts, while the scheduler keeps stepping the AdamW. Loading the checkpoint replaces the
    CPUAdam's dicts with new ones (torch's `load_state_dict`), so the scheduler went on writing learning
    rates nobody read: after a resume the LR stayed at its value at the checkpoint. Without offload, the
    engine's optimizer is our AdamW itself and this does nothing.
    """
    live = getattr(engine.optimizer, "optimizer", None)
    stepped = getattr(getattr(scheduler, "scheduler", scheduler), "optimizer", None)
    if live is not None and stepped is not None and stepped is not live and stepped.param_groups is not live.param_groups:
        stepped.param_groups = live.param_groups


def _replay_cpu_adam_steps(zero_optimizer) -> None:
    """Brings an offloaded optimizer's (DeepSpeedCPUAdam) C++ step counter to where the saved run left it.

    Its C++ side keeps beta1^t and beta2^t for the bias correction, multiplied by beta once a step; a new
    process starts at t = 0 and, handed the restored step t, computes beta^t with one `pow`, which differs
    from the product in the last float bit. Adam turns that bit into weight differences of 1e-4 within two
    steps (parameters whose gradients are ~0), so the resume was not exact. Replaying the steps on a
    throwaway tensor at learning rate 0 repeats the product the uninterrupted run made.
    """
    from deepspeed.ops.adam import DeepSpeedCPUAdam  # only DeepSpeed runs get here

    adam = getattr(zero_optimizer, "optimizer", None)
    if not isinstance(adam, DeepSpeedCPUAdam):
        return
    steps = {int(state["step"]) for state in adam.state.values() if "step" in state}
    if not steps:
        return
    group = adam.param_groups[0]
    beta1, beta2 = group["betas"]
    params, grads, exp_avg, exp_avg_sq = (torch.zeros(16) for _ in range(4))
    for step in range(1, max(steps) + 1):
        adam.ds_opt_adam.adam_update(adam.opt_id, step, 0.0, beta1, beta2, group["eps"], 0.0,
                                     group.get("bias_correction", True), params, grads, exp_avg, exp_avg_sq)


def deepspeed_pickled_records() -> tuple[type, ...]:
    """The plain record classes DeepSpeed pickles in its shards (ZeRO-1/2/3, offload, fp16/bf16): what
    `load_weights_only` allows besides tensors when it reads them."""
    # imported here, not at the top: only DeepSpeed checkpoints get this far, and importing it takes seconds
    from deepspeed.runtime.fp16.loss_scaler import DynamicLossScaler, LossScaler
    from deepspeed.runtime.zero.config import ZeroStageEnum
    from deepspeed.utils.tensor_fragment import fragment_address

    return LossScaler, DynamicLossScaler, ZeroStageEnum, fragment_address


@contextlib.contextmanager
def _weights_only_deepspeed_loads(engine) -> Iterator[None]:
    """Makes `engine` read its checkpoint files with `load_weights_only` (DeepSpeed's own loader passes weights_only=False).

    Every file `load_checkpoint` reads goes through the engine's `checkpoint_engine.load` (the universal
    checkpoint path, refused above, is the exception); they may hold `deepspeed_pickled_records` besides tensors.
    """
    allowed = deepspeed_pickled_records()
    loader = engine.checkpoint_engine
    loader.load = lambda path, map_location=None: load_weights_only(Path(path), map_location, allowed)  # this instance only
    try:
        yield
    finally:
        del loader.load


def _rng_state(device: torch.device) -> dict[str, Any]:
    """This process's RNG states as plain values: Python's, NumPy's legacy global, torch's CPU and device ones."""
    version, internal, gauss = random.getstate()
    numpy_state = np.random.get_state(legacy=False)
    numpy_state["state"]["key"] = numpy_state["state"]["key"].tolist()
    state = {"python": [version, list(internal), gauss], "numpy": numpy_state, "torch": _b64(torch.get_rng_state())}
    if device.type != "cpu":  # cuda, xpu, ...: every device of that type, as Accelerate saves them
        state["device"] = {"type": device.type,
                           "states": [_b64(s) for s in getattr(torch, device.type).get_rng_state_all()]}
    return state


def _restore_rng(state: Any, device: torch.device, path: Path) -> None:
    try:
        version, internal, gauss = state["python"]
        numpy_state = dict(state["numpy"])
        numpy_state["state"] = {**numpy_state["state"], "key": np.asarray(numpy_state["state"]["key"], dtype=np.uint32)}
        random.setstate((version, tuple(internal), gauss))
        np.random.set_state(numpy_state)
        torch.set_rng_state(_tensor(state["torch"]))
        saved = state.get("device") or {"type": "cpu"}
        if device.type != "cpu":
            if saved["type"] != device.type:
                raise ValueError(f"it holds no {device.type} RNG states (written on {saved['type']}); "
                                 "resume on the device type that wrote it")
            getattr(torch, device.type).set_rng_state_all([_tensor(s) for s in saved["states"]])
    except (KeyError, TypeError, ValueError, RuntimeError, AttributeError) as e:
        raise CheckpointError(f"checkpoint file {path} holds no usable RNG states ({_first_line(e)})") from e


def _b64(state: torch.Tensor) -> str:
    return base64.b64encode(state.numpy().tobytes()).decode("ascii")


def _tensor(text: str) -> torch.Tensor:
    return torch.frombuffer(bytearray(base64.b64decode(text, validate=True)), dtype=torch.uint8)
