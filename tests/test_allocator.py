"""asr.allocator: scripts re-execute themselves under jemalloc, once, keeping the user's choices."""

import os
import subprocess
import sys

import pytest

from asr.allocator import JEMALLOC_CONF, ONEDNN_CACHE_CAPACITY, resident_mb

pytestmark = pytest.mark.skipif(not sys.platform.startswith("linux"), reason="LD_PRELOAD is Linux's")

PROBE = ("import os; from asr.allocator import relaunch_under_jemalloc, active_allocator; "
         "note = relaunch_under_jemalloc(); "
         "print(active_allocator(), repr(note), os.environ.get('MALLOC_CONF'), os.getpid(), "
         "os.environ.get('ONEDNN_PRIMITIVE_CACHE_CAPACITY'), sep='|')")


def _probe(**env: str) -> list[str]:
    clean = {k: v for k, v in os.environ.items() if k not in ("LD_PRELOAD", "MALLOC_CONF", "ASR_ALLOCATOR",
                                                              "ASR_ALLOCATOR_RELAUNCHED",
                                                              "ONEDNN_PRIMITIVE_CACHE_CAPACITY")}
    proc = subprocess.Popen([sys.executable, "-c", PROBE], env={**clean, **env}, stdout=subprocess.PIPE, text=True)
    out, _ = proc.communicate(timeout=60)
    assert proc.returncode == 0
    fields = out.strip().split("|")
    assert fields[3] == str(proc.pid), "the re-executed program must keep the pid launchers watch"
    return [*fields[:3], fields[4]]


def test_relaunches_under_jemalloc_with_page_retention():
    # scripts/setup.sh installs libjemalloc2, so a missing library is a failed set-up, not a skip
    assert _probe() == ["jemalloc", "None", JEMALLOC_CONF, ONEDNN_CACHE_CAPACITY]


def test_user_choices_are_kept():
    # the kernel cache is bounded with the system allocator too, and a capacity the user set is kept
    assert _probe(ASR_ALLOCATOR="system") == ["system", "''", "None", ONEDNN_CACHE_CAPACITY]
    assert _probe(MALLOC_CONF="narenas:2", ONEDNN_PRIMITIVE_CACHE_CAPACITY="8") == ["jemalloc", "None", "narenas:2", "8"]
    allocator, note, _, _ = _probe(ASR_ALLOCATOR="tcmalloc")
    assert allocator == "system" and "use jemalloc or system" in note


def test_resident_memory_counts_pages_the_process_touches():
    before = resident_mb()
    block = b"\x01" * (300 * 1024 * 1024)  # written byte by byte: every page resident
    after = resident_mb()
    assert before is not None and 250 < after - before < 400
    del block


def test_free_pages_go_back_to_the_system_under_jemalloc():
    # jemalloc keeps every freed page (JEMALLOC_CONF); release_free_memory() hands them back
    code = ("from asr.allocator import active_allocator, release_free_memory, resident_mb\n"
            "block = [b'x' * (1 << 20) for _ in range(400)]\n"
            "del block\n"
            "kept = resident_mb()\n"
            "released = release_free_memory()\n"
            "print(active_allocator(), round(kept - resident_mb()), round(released))\n")
    env = {**os.environ, "LD_PRELOAD": "libjemalloc.so.2", "MALLOC_CONF": JEMALLOC_CONF}
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, check=True).stdout
    allocator, dropped, released = out.split()
    assert allocator == "jemalloc" and 300 < int(dropped) < 500 and abs(int(released) - int(dropped)) <= 2
