"""CPU cost of each training-audio augmentation effect, and of the default mix per utterance.

    # the natural-voice dev set (Piper reading ~3 s sentences; README's corpus commands make it)
    $ .venv/bin/python bench/augment.py --manifest data/natural/dev.jsonl --output runs/bench/
    # a quick look on any manifest
    $ .venv/bin/python bench/augment.py --manifest data/synth/dev.jsonl --utterances 8 --epochs 2

Augmentation runs in the DataLoader workers, which share the machine's cores with training, so what
counts is CPU time, not wall time: every number is `time.process_time()` of this process (all its
threads; nothing here starts a subprocess) around one call, in milliseconds. Per effect: the effect
alone (`asr.augment.AugmentPlan` with only it), its parameters drawn from the default ranges, over
--utterances utterances x --epochs draws; the row's expected cost is the effect's default probability
times its mean (a codec's share of `codec_p` for each codec). Then the default `data.augment` as a
whole on the same utterances at --epochs epochs, babble decoding its talkers from disk as in training:
mean, median, 95th percentile and max per utterance. The room bank is simulated first (its cost per
room is reported apart: once per machine, cached in a temporary folder here, in data.cache_dir/rirs
in training). On a machine busy with other jobs the numbers rise; the load average is in the JSON.
"""

from __future__ import annotations

import sys

if __package__ in (None, ""):  # run by path (python bench/augment.py): the repository root, not bench/, goes first
    sys.path[0] = str(__import__("pathlib").Path(__file__).resolve().parents[1])

import argparse
import dataclasses
import logging
import tempfile
import time
from pathlib import Path

import numpy as np

from asr.audio import load_audio
from asr.augment import CODECS, EFFECTS, AugmentConfig, Augmenter
from bench.common import machine_info, markdown_table, write_report
from asr.constants import SAMPLE_RATE
from asr.sources import SourceConfig, load_source

logger = logging.getLogger("bench_augment")

LIBRARIES = {  # what does the work, for the table
    "speed": "soxr", "vtlp": "soxr + pedalboard (Rubber Band R2)", "pitch": "pedalboard (Rubber Band R3)",
    "reverb": "pyroomacoustics bank + numpy FFT", "babble": "soundfile decode + numpy", "noise": "numpy FFT",
    "gain": "numpy", "telephone": "soxr + pedalboard", "gsm": "soxr + pedalboard", "mp3": "pedalboard (LAME)",
    "opus": "soundfile (libopus)",
}


class DiskPool:
    """Babble's talkers decoded from disk at every use, as `SpeechDataset.utterance_audio` does."""

    def __init__(self, utterances):
        self.utterances = utterances

    def __len__(self) -> int:
        return len(self.utterances)

    def utterance_audio(self, index: int):
        utt = self.utterances[index]
        return utt.id, load_audio(utt.audio_path)


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--manifest", default="data/natural/dev.jsonl", help="utterances to augment (JSONL manifest)")
    parser.add_argument("--utterances", type=int, default=30, help="how many of them")
    parser.add_argument("--epochs", type=int, default=4, help="draws per utterance (different parameters each)")
    parser.add_argument("--output", default=None, help="folder for augment.md and augment.json")
    return parser.parse_args(argv)


def cpu_ms(fn) -> float:
    start = time.process_time()
    fn()
    return 1000 * (time.process_time() - start)


def main(argv=None) -> int:
    args = parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    if not Path(args.manifest).is_file():
        print(f"{args.manifest} does not exist; make it (README, 'Make the synthetic corpus') or pass --manifest",
              file=sys.stderr)
        return 2
    utterances = load_source(SourceConfig(path=args.manifest))[: args.utterances]
    audio = [load_audio(u.audio_path) for u in utterances]
    pool = DiskPool(utterances)
    seconds = float(np.mean([len(a) for a in audio])) / SAMPLE_RATE
    defaults = AugmentConfig(enabled=True)
    off = {f"{name}_p": 0.0 for name in EFFECTS}

    with tempfile.TemporaryDirectory() as rirs:
        bank = Augmenter(defaults, seed=0, rir_dir=rirs)
        rooms = list(range(min(defaults.reverb_rooms, 2 * args.utterances)))
        room_ms = [cpu_ms(lambda r=r: bank.room_impulse_response(r)) for r in rooms]
        logger.info("simulated %d rooms: %.0f ms each on average", len(rooms), np.mean(room_ms))

        rows, data = [], {"machine": machine_info(), "manifest": args.manifest, "utterances": len(audio),
                          "mean_seconds": seconds, "room_simulation_ms": room_ms, "effects": {}}
        single = [(name, {f"{name}_p": 1.0}) for name in EFFECTS if name != "codec"]
        single += [(codec, {"codec_p": 1.0, "codecs": {codec: 1.0}}) for codec in CODECS]
        codec_weights = sum(defaults.codecs.values())
        for name, overrides in single:
            cfg = dataclasses.replace(defaults, **{**off, **overrides}, reverb_rooms=len(rooms))
            augmenter = Augmenter(cfg, seed=0, rir_dir=rirs)
            costs = []
            for epoch in range(args.epochs):
                for utt, samples in zip(utterances, audio):
                    plan = augmenter.plan(utt.id, epoch, len(pool))
                    costs.append(cpu_ms(lambda: augmenter.apply(samples, plan, pool, own_id=utt.id)))
            p = (defaults.codec_p * defaults.codecs.get(name, 0.0) / codec_weights if name in CODECS
                 else getattr(defaults, f"{name}_p"))
            mean = float(np.mean(costs))
            rows.append([name, LIBRARIES[name], round(mean, 2), round(p, 4), round(p * mean, 2)])
            data["effects"][name] = {"ms": costs, "p": p}
            logger.info("%s: %.2f ms", name, mean)

        # the default mix over the rooms simulated above (a room's spec does not depend on the bank's size)
        augmenter = Augmenter(dataclasses.replace(defaults, reverb_rooms=len(rooms)), seed=0, rir_dir=rirs)
        whole = [cpu_ms(lambda: augmenter(samples, utt.id, epoch, pool))
                 for epoch in range(args.epochs) for utt, samples in zip(utterances, audio)]
    data["default_mix_ms"] = whole
    expected = sum(row[-1] for row in rows)
    table = markdown_table(["effect", "library", "CPU ms per call", "default p", "expected ms per utterance"],
                           rows + [["all (sum)", "", None, None, round(expected, 2)]])
    stats = [np.mean(whole), np.median(whole), np.percentile(whole, 95), np.max(whole), np.mean(room_ms)]
    summary = markdown_table(
        ["default data.augment", "mean ms", "median ms", "p95 ms", "max ms", "room simulation ms (once)"],
        [["measured per utterance", *(round(float(v), 1) for v in stats)]])
    header = (f"{len(audio)} utterances of {seconds:.2f} s on average from {args.manifest}, {args.epochs} draws each; "
              f"CPU ms of this process, load average {data['machine']['load_average_1min']}\n\n")
    markdown = header + table + "\n" + summary
    print(markdown)
    if args.output:
        md, js = write_report(args.output, "augment", markdown, data)
        logger.info("wrote %s and %s", md, js)
    return 0

if __name__ == "__main__":
    sys.exit(main())
