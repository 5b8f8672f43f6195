"""A fork pool whose workers inherit the caller's state: decoders holding C++ objects (KenLM, flashlight's trie,
pocketsphinx) and arrays of log-probs reach the workers by copy-on-write instead of being pickled.

`fork_map` runs one task per call; `interleaved_chunks` and `in_item_order` split many small items into a few
tasks (each item k-th of every `parts`, so long and short utterances spread over the workers) and put the
results back in item order. Used by asr.beam (flashlight's decode_batch), asr.tuning and asr.reference.
"""

from __future__ import annotations

import multiprocessing
from collections.abc import Callable, Mapping, Sequence
from typing import Any

from tqdm.auto import tqdm

_POOL_STATE: dict[str, Any] = {}  # what fork-pool workers inherit instead of receiving it pickled


def fork_map(fn: Callable[[Mapping[str, Any], Any], Any], tasks: Sequence[Any], processes: int,
             state: Mapping[str, Any], progress: str | None = None) -> list[Any]:
    """`[fn(state, t) for t in tasks]` on a fork pool; workers inherit `state` (log-probs are never pickled).

    `fn` must be a module-level function; results come back in task order. `processes` <= 1, or
    one task, runs in this process. `progress` names a tqdm bar counting finished tasks (None: no bar).
    """
    global _POOL_STATE
    bar = tqdm(total=len(tasks), desc=progress, unit="decode", dynamic_ncols=True, disable=progress is None)
    try:
        if processes <= 1 or len(tasks) <= 1:
            return [_counted(fn(state, t), bar) for t in tasks]
        _POOL_STATE = dict(state)
        # fork: workers get the log-probs and loaded modules by copy-on-write; pyctcdecode also needs it.
        with multiprocessing.get_context("fork").Pool(min(processes, len(tasks))) as pool:
            return [_counted(r, bar) for r in pool.imap(_call_with_task, [(fn, t) for t in tasks], chunksize=1)]
    finally:
        _POOL_STATE = {}
        bar.close()


def interleaved_chunks(items: int, parts: int) -> list[list[int]]:
    """Indices 0..items-1 in at most `parts` non-empty chunks, chunk k holding k, k + parts, k + 2 parts, ..."""
    parts = max(parts, 1)
    return [list(range(k, items, parts)) for k in range(min(parts, items))]


def in_item_order(chunks: Sequence[Sequence[int]], results: Sequence[Sequence[Any]], items: int,
                  empty: Any = None) -> list[Any]:
    """Per-chunk result lists (as `chunks` lists indices) back as one list in item order; gaps hold `empty`."""
    out = [empty] * items
    for chunk, chunk_results in zip(chunks, results):
        for i, result in zip(chunk, chunk_results):
            out[i] = result
    return out


def _counted(result: Any, bar: tqdm) -> Any:
    """`result`, after moving `bar` by one task."""
    bar.update(1)
    return result


def _call_with_task(fn_task: tuple[Callable[[Mapping[str, Any], Any], Any], Any]) -> Any:
    """Pool entry point for imap: `fn(state, task)` with the inherited state."""
    fn, task = fn_task
    return fn(_POOL_STATE, task)
