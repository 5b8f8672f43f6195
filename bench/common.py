"""Small tools the benchmark scripts share: repeated timing, peak memory of a fresh process, tables.

    >>> timing = time_runs(lambda: decoder.decode_batch(log_probs), repeats=3, warmup=1)
    >>> timing.median, timing.runs                     # seconds
    >>> result = run_json_child([__file__, "--child", json.dumps(spec)])   # in the child: print_json(...)
    >>> print(markdown_table(["decoder", "utt/s"], [["greedy", 812.4]]))
    >>> write_report(Path("bench"), "decode", markdown, data)   # bench/decode.md + bench/decode.json

Memory on CPU: PyTorch's CPU allocator is plain malloc, so neither `torch.cuda.max_memory_allocated`
nor `tracemalloc` (Python objects only) sees tensors. What the operating system charges is the
resident set (RSS); its high-water mark (`VmHWM`, the same number as `getrusage().ru_maxrss`) is
the peak. Measured in a fresh child process, nothing of an earlier measurement (freed but still
cached pages, other models) is counted. Linux lets a process reset its own high-water mark
(`/proc/self/clear_refs`), so the peak of one step can be told apart from the set-up before it.
"""

from __future__ import annotations

import json
import math
import os
import platform
import re
import statistics
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from asr.allocator import resident_mb
from asr.constants import PAD, UNK, WORD_DELIMITER
from asr.text import encode

GIB = 1024**3
EXIT_OVER_LIMIT = 75  # a child's exit code when its RSS crossed the watchdog's limit
_STATUS = Path("/proc/self/status")
_WATCH_INTERVAL_S = 0.005  # RSS polling period of the watchdog; allocations of a step take far longer


# ------------------------------------------------------------------------------------ architectures
# wav2vec2-style CTC models the memory and scaling benchmarks build (config kwargs for asr.model.ModelConfig).
ARCHITECTURES: dict[str, dict[str, Any]] = {
    # transformers.Wav2Vec2Config() defaults: facebook/wav2vec2-base (12 x 768, group-norm conv encoder)
    "base": {"model_type": "wav2vec2"},
    # XLS-R 300M (facebook/wav2vec2-xls-r-300m): 24 x 1024, pre-LN, layer-norm conv encoder with biases
    "xlsr-300m": {"model_type": "wav2vec2", "hidden_size": 1024, "num_hidden_layers": 24, "intermediate_size": 4096,
                  "num_attention_heads": 16, "do_stable_layer_norm": True, "feat_extract_norm": "layer",
                  "conv_bias": True},
    # 2 x 32, for smoke tests of the benchmark code only
    "tiny": {"model_type": "wav2vec2", "hidden_size": 32, "num_hidden_layers": 2, "num_attention_heads": 2,
             "intermediate_size": 64, "conv_dim": [32] * 7, "num_conv_pos_embeddings": 16,
             "num_conv_pos_embedding_groups": 4},
}


def ctc_vocab(size: int = 32) -> dict[str, int]:
    """A character vocabulary of `size` tokens in the project's layout ([PAD]=0 blank, [UNK], |, letters, ...)."""
    tokens = [PAD, UNK, WORD_DELIMITER, *"abcdefghijklmnopqrstuvwxyz'"]
    tokens += [f"<extra_{i}>" for i in range(max(0, size - len(tokens)))]
    if size < 4:
        raise ValueError(f"A CTC vocabulary of {size} tokens cannot hold [PAD], [UNK], | and a character; use >= 4.")
    return {token: i for i, token in enumerate(tokens[:size])}


# ------------------------------------------------------------------------------------------- timing
@dataclass(frozen=True)
class Timing:
    """Wall-clock seconds of repeated runs of the same work (warm-up runs excluded)."""

    runs: tuple[float, ...]

    @property
    def median(self) -> float:
        return statistics.median(self.runs)

    @property
    def best(self) -> float:
        return min(self.runs)


def time_runs(fn: Callable[[], Any], repeats: int = 3, warmup: int = 1) -> Timing:
    """Time `fn()` `repeats` times after `warmup` untimed calls (lazy initialisation, caches)."""
    if repeats < 1 or warmup < 0:
        raise ValueError(f"repeats={repeats}, warmup={warmup}; use repeats >= 1 and warmup >= 0.")
    for _ in range(warmup):
        fn()
    runs = []
    for _ in range(repeats):
        started = time.perf_counter()
        fn()
        runs.append(time.perf_counter() - started)
    return Timing(tuple(runs))


# ------------------------------------------------------------------------------------------- memory
def _status_bytes(field: str) -> int:
    """The value of a /proc/self/status memory line such as `VmHWM:  123 kB`, in bytes."""
    match = re.search(rf"^{field}:\s+(\d+) kB", _STATUS.read_text(), re.MULTILINE)
    if match is None:
        raise RuntimeError(f"/proc/self/status has no {field} line; memory is measured on Linux only.")
    return int(match.group(1)) * 1024


def rss_bytes() -> int:
    """This process's resident set size now (asr.allocator.resident_mb, which the trainer logs, in bytes)."""
    mb = resident_mb()
    if mb is None:
        raise RuntimeError("/proc/self/status has no VmRSS line; memory is measured on Linux only.")
    return round(mb * 2**20)


def peak_rss_bytes() -> int:
    """This process's resident set high-water mark (since start, or since `reset_peak_rss`)."""
    return _status_bytes("VmHWM")


def reset_peak_rss() -> bool:
    """Set the RSS high-water mark to the current RSS (Linux >= 4.0); False if the kernel refuses."""
    try:
        Path("/proc/self/clear_refs").write_text("5")
    except OSError:
        return False
    return True


class RssLimit:
    """Context manager: if this process's RSS exceeds `limit_bytes`, exit at once with EXIT_OVER_LIMIT.

    For measurements that could otherwise push the machine into swapping or the OOM killer (and
    take other jobs with them): the parent reads the exit code as "does not fit".
    """

    def __init__(self, limit_bytes: int) -> None:
        self.limit_bytes = limit_bytes
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._watch, daemon=True)

    def _watch(self) -> None:
        while not self._stop.wait(_WATCH_INTERVAL_S):
            if rss_bytes() > self.limit_bytes:
                os._exit(EXIT_OVER_LIMIT)

    def __enter__(self) -> RssLimit:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()


@dataclass(frozen=True)
class ChildResult:
    """What a child process printed as its last JSON line, or why it printed none."""

    returncode: int
    data: dict[str, Any] | None
    stderr_tail: str

    @property
    def over_limit(self) -> bool:
        return self.returncode == EXIT_OVER_LIMIT


def print_json(data: Mapping[str, Any]) -> None:
    """In a child: hand `data` to the parent (the last line of stdout)."""
    sys.stdout.write(json.dumps(data) + "\n")
    sys.stdout.flush()


def run_json_child(argv: Sequence[str], timeout: float | None = None, env: Mapping[str, str] | None = None,
                   ) -> ChildResult:
    """Run `python *argv` in a fresh interpreter and parse the last JSON line it printed.

    Raises:
        RuntimeError: The child failed (other than by crossing an RssLimit) or printed no JSON.
    """
    proc = subprocess.run([sys.executable, *argv], capture_output=True, text=True, timeout=timeout,
                          env=None if env is None else {**os.environ, **env})
    tail = "\n".join(proc.stderr.strip().splitlines()[-15:])
    if proc.returncode == EXIT_OVER_LIMIT:
        return ChildResult(proc.returncode, None, tail)
    lines = [line for line in proc.stdout.splitlines() if line.startswith("{")]
    if proc.returncode != 0 or not lines:
        raise RuntimeError(f"benchmark child {' '.join(argv[:2])} failed (exit code {proc.returncode}); "
                           f"its stderr ends:\n{tail}")
    return ChildResult(proc.returncode, json.loads(lines[-1]), tail)


# ------------------------------------------------------------------------------------------ reports
def machine_info() -> dict[str, Any]:
    """What the numbers depend on: cores, threads, load (other jobs slow every row), versions."""
    import torch

    return {
        "cpus": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "omp_num_threads": os.environ.get("OMP_NUM_THREADS"),
        "load_average_1min": round(os.getloadavg()[0], 2),
        "python": platform.python_version(),
        "torch": torch.__version__,
        "platform": platform.platform(),
    }


def _cell(value: Any) -> str:
    """A table cell: floats to 4 significant digits without exponent, booleans as yes/no, None as "-"."""
    if value is None:
        return "-"
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, float):
        if math.isnan(value):
            return "n/a"
        if value == 0 or math.isinf(value):
            return f"{value:g}"
        return f"{value:.{max(0, 3 - math.floor(math.log10(abs(value))))}f}"
    return str(value)


def markdown_table(headers: Sequence[str], rows: Sequence[Sequence[Any]]) -> str:
    """A GitHub markdown table; columns of numbers (None allowed) are right-aligned."""
    for row in rows:
        if len(row) != len(headers):
            raise ValueError(f"A row has {len(row)} cells for {len(headers)} headers ({list(row)}); give one "
                             "value per column.")
    cells = [[_cell(v) for v in row] for row in rows]
    numeric = [bool(rows) and all(isinstance(row[i], (int, float)) and not isinstance(row[i], bool)
                                  or row[i] is None for row in rows) for i in range(len(headers))]
    lines = ["| " + " | ".join(headers) + " |",
             "|" + "|".join("---:" if n else "---" for n in numeric) + "|"]
    lines += ["| " + " | ".join(row) + " |" for row in cells]
    return "\n".join(lines) + "\n"


def ratio(value: float, reference: float) -> float:
    """value / reference (NaN when the reference is 0)."""
    return value / reference if reference else float("nan")


def write_report(out_dir: str | os.PathLike, name: str, markdown: str, data: Mapping[str, Any]) -> tuple[Path, Path]:
    """Write `<out_dir>/<name>.md` (the table as printed) and `<out_dir>/<name>.json` (every number)."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    md, js = out / f"{name}.md", out / f"{name}.json"
    md.write_text(markdown, encoding="utf-8")
    js.write_text(json.dumps(data, indent=2, default=str) + "\n", encoding="utf-8")
    return md, js


def noisy_log_probs(text: str, vocab: Mapping[str, int], rng: np.random.Generator, confusion: float = 0.25,
                    noise: float = 1.3) -> np.ndarray:
    """[T, V] log-probs of a noisy acoustic model reading `text`: 1-3 frames per character, blanks
    between some, Gaussian noise on every score (`noise`), and a `confusion` share of character runs
    where a rival letter also scores high. Shared by tests/test_beam.py and bench/decode.py."""
    letters = [i for t, i in vocab.items() if len(t) == 1 and t.isalpha()]
    blank = vocab["[PAD]"]
    ids = encode(text, vocab)
    frames: list[int] = []
    for i, token in enumerate(ids):
        if (i and ids[i - 1] == token) or rng.random() < 0.5:
            frames.append(blank)  # a blank must separate repeated characters
        frames += [token] * int(rng.integers(1, 4))
    frames.append(blank)
    scores = rng.normal(0.0, noise, (len(frames), len(vocab)))
    scores[np.arange(len(frames)), frames] += 6.0
    start = 0
    while start < len(frames):  # confuse whole runs of one character, as an acoustic model would
        end = start
        while end < len(frames) and frames[end] == frames[start]:
            end += 1
        if frames[start] not in (blank, vocab["|"]) and rng.random() < confusion:
            scores[start:end, rng.choice(letters)] += 6.0 + rng.normal(0.3, 1.0)
        start = end
    scores -= np.logaddexp.reduce(scores, axis=1, keepdims=True)
    return scores.astype(np.float32)
