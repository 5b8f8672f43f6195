"""Running scripts/train.py for real in tests: one process, `accelerate launch` with N processes, two nodes;
planting a crafted pickle in a checkpoint it wrote (and resealing its manifest)."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import time
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
    return {**os.environ, "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1", "TOKENIZERS_PARALLELISM": "false",
            "PYTHONUNBUFFERED": "1"}


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
              check: bool = True, timeout: float = 600) -> subprocess.CompletedProcess:
    """Runs a training job to completion and returns the finished process."""
    proc = subprocess.run([*launcher(kind), *train_args(corpus, out, *overrides, resume=resume)],
                          capture_output=True, text=True, env=env(), cwd=ROOT, timeout=timeout)
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
    # torchrun puts its workers in sessions of their own: kill the whole tree, as a lost node would
    import psutil

    tree = psutil.Process(proc.pid)
    victims = [tree, *tree.children(recursive=True)]
    for p in victims:
        try:
            p.kill()
        except psutil.NoSuchProcess:
            pass
    psutil.wait_procs(victims, timeout=30)
    proc.wait()
    states = [json.loads(p.read_text())["step"] for p in (out / "run" / "checkpoints").glob("step_*/trainer_state.json")]
    return max(states)


def metrics(run: Path, kind: str) -> list[dict]:
    return [r for r in map(json.loads, (run / "metrics.jsonl").read_text().splitlines()) if r["kind"] == kind]


def weights(model_dir: Path) -> dict[str, np.ndarray]:
    from safetensors.numpy import load_file

    return load_file(str(model_dir / "model.safetensors"))


def max_weight_diff(a: Path, b: Path) -> float:
    wa, wb = weights(a), weights(b)
    assert wa.keys() == wb.keys()
    return max(float(np.abs(wa[k].astype(np.float64) - wb[k]).max()) for k in wa)


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
