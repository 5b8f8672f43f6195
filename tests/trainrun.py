"""Running scripts/train.py for real in tests: one process, `accelerate launch` with N processes, two nodes;
killing a run at a complete checkpoint or at seeded-random moments (inside saves too); planting a crafted
pickle in a checkpoint it wrote (and resealing its manifest)."""

from __future__ import annotations

import json
import os
import random
import re
import signal
import socket
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
ACCELERATE = str(Path(sys.executable).with_name("accelerate"))

# A model small enough that a step takes well under a second on one core.
TINY = [
    "model.architecture.hidden_size=32",
    "model.architecture.num_hidden_layers=2",
    "model.architecture.num_attention_heads=2",
    "model.architecture.intermediate_size=64",
    "model.architecture.conv_dim=[32,32,32,32,32,32,32]",
    "model.architecture.num_conv_pos_embeddings=16",
    "model.architecture.num_conv_pos_embedding_groups=4",
    "data.max_batch_seconds=20",
    "data.num_workers=0",
    "optim.warmup_steps=2",
]


def env() -> dict[str, str]:
    """The environment of a launched script: offline, one thread, and this checkout's `asr`/`lm` first.

    A script's own folder (scripts/) heads its sys.path, not the checkout: without PYTHONPATH it would import
    whatever checkout the environment's editable install points to (another worktree's library).
    """
    path = os.pathsep.join(p for p in (str(ROOT), os.environ.get("PYTHONPATH")) if p)
    return {**os.environ, "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1", "TOKENIZERS_PARALLELISM": "false",
            "PYTHONUNBUFFERED": "1", "PYTHONPATH": path}


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def launcher(kind: str) -> list[str]:
    """Command prefix: 'single' (plain python), 'ddp2', 'zero2', 'zero3' (2 processes via accelerate)."""
    if kind == "single":
        return [sys.executable]
    port = str(free_port())
    if kind == "ddp2":
        return [ACCELERATE, "launch", "--config_file", str(ROOT / "configs/accelerate/cpu_2proc.yaml"),
                "--main_process_port", port]
    return [ACCELERATE, "launch", "--config_file", str(ROOT / f"configs/accelerate/cpu_2proc_{kind}.yaml"),
            "--main_process_port", port]


def train_args(corpus: Path, out: Path, *overrides: str, resume: str | None = None) -> list[str]:
    args = [
        str(ROOT / "scripts" / "train.py"), "--config", str(ROOT / "configs/train/tiny_cpu.yaml"),
        f"data.train.path={corpus / 'train.jsonl'}", f"data.dev.path={corpus / 'dev.jsonl'}",
        f"data.cache_dir={out / 'cache'}", f"train.output_dir={out / 'run'}", *TINY, *overrides,
    ]
    return args + (["--resume", resume] if resume else [])


def run_train(corpus: Path, out: Path, *overrides: str, resume: str | None = None, kind: str = "single",
              check: bool = True, timeout: float = 1800) -> subprocess.CompletedProcess:
    """Runs a training job to completion and returns the finished process (`timeout` only catches a hang)."""
    cmd = [*launcher(kind), *train_args(corpus, out, *overrides, resume=resume)]
    with subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env(), cwd=ROOT,
                          start_new_session=True) as popen:
        try:
            stdout, stderr = popen.communicate(timeout=timeout)
        except subprocess.TimeoutExpired:
            kill_tree(popen)  # not the launcher alone: its workers would live on
            raise
    proc = subprocess.CompletedProcess(cmd, popen.returncode, stdout, stderr)
    if check and proc.returncode != 0:
        raise AssertionError(f"train.py exited {proc.returncode}\n{proc.stdout[-3000:]}\n{proc.stderr[-6000:]}")
    return proc


def run_until_checkpoint_then_kill(corpus: Path, out: Path, *overrides: str, kind: str, step: int) -> int:
    """Starts a run, SIGKILLs its whole process group once checkpoint `step` is complete; returns the last step saved."""
    proc = subprocess.Popen([*launcher(kind), *train_args(corpus, out, *overrides)], env=env(), cwd=ROOT,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    marker = out / "run" / "checkpoints" / f"step_{step}" / "trainer_state.json"
    deadline = time.time() + 300
    while not marker.exists():
        if proc.poll() is not None or time.time() > deadline:
            raise AssertionError(f"run ended (rc={proc.returncode}) before checkpoint {step}")
        time.sleep(0.02)
    kill_tree(proc)
    return newest_checkpoint(out / "run" / "checkpoints")


def kill_tree(proc: subprocess.Popen) -> None:
    """SIGKILLs a run started with start_new_session=True: its process group and every descendant, as a lost node.

    torchrun puts its workers in sessions of their own, so the group alone would miss them.
    """
    import psutil

    try:
        tree = psutil.Process(proc.pid)
        victims = [tree, *tree.children(recursive=True)]
    except psutil.NoSuchProcess:
        victims = []
    try:
        os.killpg(proc.pid, signal.SIGKILL)
    except ProcessLookupError:
        pass
    for p in victims:
        try:
            p.kill()
        except psutil.NoSuchProcess:
            pass
    psutil.wait_procs(victims, timeout=30)
    proc.wait()


def newest_checkpoint(root: Path) -> int:
    """Step of the newest complete checkpoint under `root` (0 if there is none).

    Complete means renamed to `step_<n>` with its state file: a `step_<n>.tmp` folder holds the state file
    too between its last write and the rename (the fsyncs), and a resume rightly ignores it.
    """
    return max((json.loads((p / "trainer_state.json").read_text())["step"] for p in root.glob("step_*")
                if re.fullmatch(r"step_\d+", p.name) and (p / "trainer_state.json").is_file()), default=0)


# What `kill_at_random_moments` needs from a run: a metrics line per step and a checkpoint per step.
KILLABLE = ["train.log_every=1", "train.save_every=1"]


@dataclass
class Kill:
    """One SIGKILL of a run: where the run had started from, what the kill waited for, what it left behind."""

    started_from: int  # newest complete checkpoint when the run was launched (0: none)
    moment: str  # what the kill waited for, in words
    in_save: bool  # a checkpoint's temporary folder (step_<n>.tmp) was there when the run died
    resumes_from: int  # newest complete checkpoint after the kill


def kill_at_random_moments(corpus: Path, out: Path, *overrides: str, kind: str, kills: int, max_steps: int,
                           seed: int = 0, timeout: float = 1800) -> list[Kill]:
    """Launches a run and SIGKILLs it `kills` times at seeded-random moments, relaunching with `--resume latest`.

    Half the kills wait for a checkpoint's temporary folder to hold a random number of files (0-5) and
    strike then, inside the save (or, if it was quicker, just after); the others strike a random fraction
    of a step's wall time after a step was logged (in the next forward/backward, a save, an evaluation).
    Each kill waits for a step past the checkpoint the run started from, so the runs move forward
    (1-3 steps a kill): `max_steps` of 3 * kills + 2 keeps the last kill before the end. The run is
    left killed; the caller finishes it with `--resume latest`. `overrides` must contain KILLABLE and
    `train.max_steps={max_steps}`.
    """
    needed = [*KILLABLE, f"train.max_steps={max_steps}"]
    assert set(needed) <= set(overrides), f"kill_at_random_moments needs {needed} in the overrides"
    rng = random.Random(seed)
    root = out / "run" / "checkpoints"
    log = out / "run" / "metrics.jsonl"
    step_seconds = None  # wall time of a step as last seen, saves and all
    done: list[Kill] = []
    for attempt in range(kills):
        start = newest_checkpoint(root)
        logged = log.stat().st_size if log.exists() else 0
        cmd = [*launcher(kind), *train_args(corpus, out, *overrides, resume="latest" if attempt else None)]
        launched = time.time()
        proc = subprocess.Popen(cmd, env=env(), cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                                start_new_session=True)
        deadline = time.time() + timeout
        seen: dict[int, float] = {}  # step -> when its metrics line appeared (this launch)

        def wait_for(ready, what: str) -> None:
            nonlocal logged
            while not ready():
                if proc.poll() is not None:
                    raise AssertionError(f"the run ended (rc={proc.returncode}) before the kill {what}")
                if time.time() > deadline:
                    kill_tree(proc)
                    raise AssertionError(f"no kill {what} within {timeout} s")
                if log.exists() and log.stat().st_size > logged:
                    with open(log, "rb") as f:
                        f.seek(logged)
                        lines = f.read().split(b"\n")
                    logged += sum(len(line) + 1 for line in lines[:-1])  # complete lines only
                    for record in map(json.loads, lines[:-1]):
                        if record["kind"] == "train":
                            seen.setdefault(record["step"], time.time())
                time.sleep(0.002)

        if rng.random() < 0.5:
            target, files = min(start + rng.choice((1, 2)), max_steps - 1), rng.randrange(6)
            tmp = root / f"step_{target}.tmp"
            moment = f"inside the save of step {target}, once {files} files were in it"
            wait_for(lambda: _files_in(tmp) >= files or (root / f"step_{target}" / "trainer_state.json").exists(),
                     moment)
        else:
            target = min(start + 2, max_steps - 1)
            wait_for(lambda: target in seen, f"after step {target}")
            if target - 1 in seen:
                step_seconds = seen[target] - seen[target - 1]
            fraction = rng.random()
            moment = f"{fraction:.2f} of a step ({step_seconds or 0:.2f} s) after step {target} was logged"
            time.sleep(fraction * (step_seconds or 0.0))
        if proc.poll() is not None:
            raise AssertionError(f"the run ended (rc={proc.returncode}) before the kill {moment}")
        kill_tree(proc)
        # a .tmp folder this launch made or wrote into (one left by an earlier kill is older than the launch)
        in_save = any(tmp.stat().st_ctime >= launched for tmp in root.glob("step_*.tmp"))
        done.append(Kill(start, moment, in_save, newest_checkpoint(root)))
    return done


def _files_in(folder: Path) -> int:
    """Files under `folder` (-1 if it is not there, or went away while counted)."""
    try:
        return sum(1 for p in folder.rglob("*") if p.is_file())
    except OSError:
        return -1


def metrics(run: Path, kind: str) -> list[dict]:
    return [r for r in map(json.loads, (run / "metrics.jsonl").read_text().splitlines()) if r["kind"] == kind]


def weights(model_dir: Path) -> dict[str, np.ndarray]:
    from safetensors.numpy import load_file

    return load_file(str(model_dir / "model.safetensors"))


def max_weight_diff(a: Path, b: Path) -> float:
    wa, wb = weights(a), weights(b)
    assert wa.keys() == wb.keys()
    return max(float(np.abs(wa[k].astype(np.float64) - wb[k]).max()) for k in wa)


def assert_same_weights(a: Path, b: Path) -> None:
    """Every tensor of two safetensors files (or model folders) bit-identical: same keys, dtypes, shapes, values."""
    import torch
    from safetensors.torch import load_file

    wa, wb = (load_file(str(p / "model.safetensors" if p.is_dir() else p)) for p in (a, b))
    assert wa.keys() == wb.keys(), sorted(wa.keys() ^ wb.keys())
    differ = [k for k in wa if wa[k].dtype != wb[k].dtype or not torch.equal(wa[k], wb[k])]
    assert not differ, f"{len(differ)} of {len(wa)} tensors differ between {a} and {b}, e.g. {differ[:3]}"


def launch_two_nodes(corpus: Path, out: Path, *overrides: str, timeout: float = 600) -> list[subprocess.CompletedProcess]:
    """Two 'machines' of one process each on loopback, as a multi-node job is started by hand."""
    port = str(free_port())
    procs = []
    for rank in (0, 1):
        cmd = [ACCELERATE, "launch", "--config_file", str(ROOT / "configs/accelerate/cpu_2nodes.yaml"),
               "--machine_rank", str(rank), "--main_process_port", port, *train_args(corpus, out, *overrides)]
        procs.append(subprocess.Popen(cmd, env=env(), cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                      text=True))
    results = []
    for p in procs:
        stdout, stderr = p.communicate(timeout=timeout)
        results.append(subprocess.CompletedProcess(p.args, p.returncode, stdout, stderr))
    return results


class RunsCode:
    """Unpickling this calls open(marker, "w"): it creates a file, as a planted payload could run anything."""

    def __init__(self, marker: Path):
        self.marker = str(marker)

    def __reduce__(self):
        return open, (self.marker, "w")


def plant(path: Path, marker: Path) -> None:
    """Replaces `path` with a torch-saved pickle (the format of torch.save'd files) that creates `marker`."""
    import torch

    path.unlink(missing_ok=True)
    torch.save(RunsCode(marker), path)


def reseal(checkpoint: Path) -> None:
    """Rewrites a checkpoint's manifest to match its files as they are now, as a forger would."""
    import hashlib

    manifest = json.loads((checkpoint / "manifest.json").read_text())
    for name in manifest:
        data = (checkpoint / name).read_bytes()
        manifest[name] = {"size": len(data), "sha256": hashlib.sha256(data).hexdigest()}
    (checkpoint / "manifest.json").write_text(json.dumps(manifest))
