"""Run the heavy scripts under jemalloc (glibc malloc fragments on variable-shape CPU tensors), with oneDNN's
kernel cache bounded.

Measured on the base recipe (2 CPU processes, 40 s batches of varying length; /tmp commands in
NOTES.md): with glibc each rank held 4.4 GB of anonymous memory after two minutes and kept growing
(the OOM killer took a long run once DataLoader workers were forked from such a process); jemalloc
with page purging off held 1.1-1.2 GB at the same speed. Pinning glibc's mmap threshold also bounds
memory (0.9 GB) but every large tensor then page-faults afresh: 50% slower steps.

`relaunch_under_jemalloc()` is called at the top of a script, before torch is imported: it re-executes
the same command line with jemalloc preloaded (same pid, so launchers and DataLoader workers are
unaffected). This module must stay free of heavy imports.

It also bounds oneDNN's primitive cache (ONEDNN_PRIMITIVE_CACHE_CAPACITY, unless the user set it): oneDNN
compiles a kernel, with its scratch memory, for every distinct input shape and keeps up to 1,024 of them, so
variable-length batches grow a process by GBs (pytorch#98688), most in bf16 autocast, which runs its matmuls
through oneDNN. bench/onednn_cache.py measures it.
"""

from __future__ import annotations

import ctypes.util
import os
import sys

ALLOCATOR_ENV = "ASR_ALLOCATOR"  # "jemalloc" (default) or "system" to keep the C library's malloc
_RELAUNCHED_ENV = "ASR_ALLOCATOR_RELAUNCHED"  # set on the re-executed process: never loop
# Freed pages stay with the process: a training step reuses them instead of page-faulting them in
# again. Variable-shape batches still fragment what is kept (a 2-process bf16 base stage grew rank 0 from
# 1.75 GB at step 150 to 3.3 GB at step 300; an earlier run reached 13.5 GB and was OOM-killed), so the
# trainer hands the free pages back every so often: `release_free_memory()`.
JEMALLOC_CONF = "dirty_decay_ms:-1,muzzy_decay_ms:-1"
PRELOADED = ("jemalloc", "tcmalloc", "mimalloc")
ONEDNN_CACHE_ENV = "ONEDNN_PRIMITIVE_CACHE_CAPACITY"
# Kernels kept per process (oneDNN's default: 1,024). Batches of new shapes rarely repeat one, so a small
# cache costs no speed (bench/onednn_cache.py) and bounds the memory.
ONEDNN_CACHE_CAPACITY = "64"


def relaunch_under_jemalloc() -> str | None:
    """Re-execute this process with jemalloc preloaded, or say why not; bound oneDNN's kernel cache either way.

    Returns:
        None when already running under a preloaded allocator (this function never returns when it
        re-executes), otherwise a one-line note for the script to log as a warning (jemalloc missing)
        or an empty string when the user opted out with ASR_ALLOCATOR=system or on non-Linux systems.
    """
    os.environ.setdefault(ONEDNN_CACHE_ENV, ONEDNN_CACHE_CAPACITY)  # oneDNN reads it on first use, after this
    choice = os.environ.get(ALLOCATOR_ENV, "jemalloc").lower()
    if choice not in ("jemalloc", "system"):
        return f"ignoring {ALLOCATOR_ENV}={choice!r}: use jemalloc or system"
    if choice == "system" or not sys.platform.startswith("linux"):
        return ""
    if any(name in os.environ.get("LD_PRELOAD", "") for name in PRELOADED):
        return None
    if os.environ.get(_RELAUNCHED_ENV):
        return "jemalloc was preloaded but is not active; memory may grow with glibc malloc"
    library = ctypes.util.find_library("jemalloc")
    if library is None:
        return ("jemalloc not found, so glibc malloc may hold several GB more per process on long runs; "
                "install it (apt-get install libjemalloc2) or set ASR_ALLOCATOR=system to silence this")
    env = dict(os.environ, LD_PRELOAD=" ".join(filter(None, [library, os.environ.get("LD_PRELOAD")])),
               **{_RELAUNCHED_ENV: "1"})
    env.setdefault("MALLOC_CONF", JEMALLOC_CONF)
    sys.stdout.flush()
    sys.stderr.flush()
    os.execve(sys.executable, [sys.executable, *sys.orig_argv[1:]], env)
    return None  # not reached


def active_allocator() -> str:
    """The preloaded allocator this process runs under ('jemalloc', ...) or 'system'."""
    try:
        with open(f"/proc/{os.getpid()}/maps", encoding="utf-8") as maps:
            text = maps.read()
    except OSError:
        return "system"
    return next((name for name in PRELOADED if f"lib{name}" in text), "system")


def resident_mb() -> float | None:
    """This process's resident memory (VmRSS) in MB; None where /proc/self/status is missing (not Linux)."""
    try:
        with open("/proc/self/status", encoding="utf-8") as status:
            line = next((line for line in status if line.startswith("VmRSS:")), None)
    except OSError:
        return None
    return int(line.split()[1]) / 1024 if line else None


def release_free_memory() -> float:
    """Returns the pages the allocator keeps but no object uses to the system; the MB released (may be 0).

    Under jemalloc (pages kept for ever, JEMALLOC_CONF) this purges every arena; under glibc it trims the heap.
    The next allocations page-fault their memory in again: ~0.1-0.3 s per GB, so call it once per many steps.
    """
    before = resident_mb()
    library = ctypes.CDLL(None)
    if active_allocator() == "jemalloc" and hasattr(library, "mallctl"):
        library.mallctl(b"arena.4096.purge", None, None, None, ctypes.c_size_t(0))  # 4096: every arena
    elif hasattr(library, "malloc_trim"):
        library.malloc_trim(ctypes.c_size_t(0))
    after = resident_mb()
    return max(0.0, before - after) if before is not None and after is not None else 0.0
