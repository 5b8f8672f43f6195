"""One transcription run over many files, on one or many processes (what scripts/transcribe.py runs).

    >>> out = OutputDir(output, rank)              # locked and prepared by the main process first
    >>> summary = run_transcription(accelerator, transcriber, find_audio(inputs), out, options)

Resumes from what the output directory holds (transcripts of another model, decoder or LM are refused),
reads the pending files' headers once (each rank a stripe), plans work units every rank agrees on,
shards them by cost, transcribes with a progress bar weighted by audio seconds, and merges the ranks'
records into transcripts.jsonl, errors.jsonl, summary.json (and the NeMo manifest) on the main process.
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Sequence
from typing import Any

from accelerate.utils import gather_object
from tqdm.auto import tqdm

from asr.files import write_text_atomic
from asr.defaults import NEMO_MANIFEST_FILE
from asr.outputs import SUMMARY_FILE, OutputDir, ResultSink, write_nemo_manifest
from asr.transcribe import (
    AudioItem,
    Failure,
    TranscribeOptions,
    Transcriber,
    assign_by_cost,
    plan_work,
    probe_durations,
    side_file_bases,
)

logger = logging.getLogger(__name__)

PROGRESS_FORMAT = "{desc}: {percentage:3.0f}%|{bar}| {n:.0f}/{total:.0f} s audio [{elapsed}<{remaining}{postfix}]"


class StaleOutput(ValueError):
    """The output directory holds transcripts made with another model, decoder, LM or hotwords."""


def run_transcription(accelerator, transcriber: Transcriber, items: Sequence[AudioItem], out: OutputDir,
                      options: TranscribeOptions, progress: bool = True) -> dict[str, Any] | None:
    """Transcribe the files of `items` that `out` does not hold yet, sharded over the accelerator's processes.

    Every process calls this with the same items; each writes its own records, the main one merges them.

    Args:
        accelerator: The run's `accelerate.Accelerator` (one process or many).
        transcriber: The model and decoder to run.
        items: Every file of the run (`asr.transcribe.find_audio`), finished ones included.
        out: The output directory, locked and prepared by the main process.
        options: What to write besides transcripts.jsonl (formats, in place).
        progress: Show the main process's bar (audio seconds done).

    Returns:
        On the main process, the run's summary (also written to summary.json); None on the others.

    Raises:
        StaleOutput: `out` holds transcripts made with another model, decoder, LM or hotwords (nothing written).
    """
    rank, world, is_main = accelerator.process_index, accelerator.num_processes, accelerator.is_main_process
    done = out.done()
    current = (transcriber.model_name, options.decoder, transcriber.lm, transcriber.hotwords)
    stale = next((t for t in done.values() if (t.model, t.decoder, t.lm, t.hotwords) != current), None)
    if stale is not None:
        raise StaleOutput(f"{out.root} already holds transcripts made with model {stale.model}, decoder "
                          f"{stale.decoder}, LM {stale.lm}, hotwords {stale.hotwords}; use another --output or delete "
                          "it to start over.")
    pending = [item for item in items if item.key not in done]
    if is_main:
        logger.info("%d audio files, %d already transcribed, %d to do on %d process(es)", len(items),
                    len(items) - len(pending), len(pending), world)

    # Headers are read once, each rank a stripe; everyone then makes the same plan.
    probed = probe_durations(pending[rank::world])
    results = gather_object(list(zip([item.index for item in pending[rank::world]], probed)))
    durations = {index: value for index, value in results if not isinstance(value, Failure)}
    readable = [item for item in pending if item.index in durations]
    units = plan_work([durations[item.index] for item in readable], options)
    mine = [unit for unit, owner in zip(units, assign_by_cost([u.seconds for u in units], world)) if owner == rank]
    bases = dict(zip((item.index for item in items), side_file_bases(items, out.root, options.in_place)))
    sink = ResultSink(out, bases, options.formats, options.mark_below)
    if is_main:
        restored = sum(sink.write_missing(item, done[item.key]) for item in items if item.key in done)
        if restored:
            logger.info("%d side file(s) of files transcribed before written from their transcripts", restored)

    by_index = {item.index: item for item in pending}
    files = audio_seconds = failed = 0
    for index, value in zip([item.index for item in pending[rank::world]], probed):
        if isinstance(value, Failure):
            sink.write(by_index[index], value)
            failed += 1
            logger.warning("%s: %s", value.path, value.error)
    start = time.perf_counter()
    # Weighted by audio seconds (from the headers), moved after every forward pass: right ETA for one long file.
    planned = [sum(durations[readable[i].index] for i in unit.items) for unit in mine]
    bar = tqdm(total=sum(planned), disable=not (progress and is_main), dynamic_ncols=True, bar_format=PROGRESS_FORMAT,
               desc="transcribe" if world == 1 else f"transcribe (rank 0 of {world})")
    unit_left = [0.0]  # planned seconds of the current unit not shown yet

    def advance(seconds: float) -> None:
        step = min(seconds, unit_left[0])  # a header may understate the length (VBR mp3)
        if step > 0:
            unit_left[0] -= step
            bar.update(step)

    for unit, unit_seconds in zip(mine, planned):
        unit_left[0] = unit_seconds
        for item, result in transcriber.transcribe([readable[i] for i in unit.items], unit.chunked, advance):
            sink.write(item, result)
            if isinstance(result, Failure):
                failed += 1
                logger.warning("%s: %s", item.path, result.error)
            else:
                files += 1
                audio_seconds += result.duration
            rtf = (time.perf_counter() - start) / audio_seconds if audio_seconds else 0.0
            bar.set_postfix(files=files, rtf=f"{rtf:.3f}", failed=failed)
        advance(unit_left[0])  # the unit is done, whatever failed or was shorter than its header said
    bar.close()
    sink.close()
    stats = gather_object([{"files": files, "failed": failed, "audio_seconds": audio_seconds,
                            "seconds": time.perf_counter() - start}])
    accelerator.wait_for_everyone()
    if not is_main:
        return None
    transcripts, failures = out.merge(items)
    run_audio = sum(s["audio_seconds"] for s in stats)
    wall = max(s["seconds"] for s in stats)
    summary = {"files": len(items), "transcribed": len(transcripts), "failed": len(failures),
               "this_run": {"files": sum(s["files"] for s in stats), "audio_hours": run_audio / 3600,
                            "seconds": wall, "rtf": wall / run_audio if run_audio else None, "processes": world}}
    write_text_atomic(out.root / SUMMARY_FILE, json.dumps(summary, indent=2) + "\n")
    if "nemo" in options.formats:
        write_nemo_manifest(out.root / NEMO_MANIFEST_FILE, transcripts, items)
    return summary
