"""asr.augment on real synthesised speech: each effect does what it says, the draws depend on (seed, epoch,
utterance) only, the DataLoader workers see the epoch, and a resumed augmented run equals an uninterrupted one."""

from __future__ import annotations

import dataclasses
import json
import pickle
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from transformers import Wav2Vec2Config

from asr.audio import load_audio, normalize_audio
from asr.augment import (
    CODECS,
    EFFECTS,
    AugmentConfig,
    Augmenter,
    AugmentPlan,
    Babble,
    Codec,
    Noise,
    check_augment,
)
from asr.config import ConfigError, load_config
from asr.constants import SAMPLE_RATE
from asr.data import prepare_split
from asr.datasets import SpeechDataset
from asr.filters import FilterConfig
from asr.model import frames_fn_for
from asr.sampler import DurationBatchSampler, EpochTaggedBatches
from asr.sources import SourceConfig
from asr.text import TextNormalizer, build_vocab
from asr.train import TrainConfig

from trainrun import max_weight_diff, metrics, run_train, run_until_checkpoint_then_kill

ALL_ON = AugmentConfig(enabled=True, **{f"{name}_p": 1.0 for name in EFFECTS}, reverb_rooms=2, reverb_rt60=(0.2, 0.3))


@pytest.fixture(scope="module")
def speech(synth_corpus: Path) -> list[tuple[str, np.ndarray]]:
    """(id, samples) of the corpus's 12 train utterances (espeak-ng and flite voices, ~2-4 s each)."""
    rows = [json.loads(line) for line in (synth_corpus / "train.jsonl").read_text().splitlines()]
    return [(r["id"], load_audio(synth_corpus / r["audio_filepath"])) for r in rows]


class ListPool:
    """Babble's pool over in-memory utterances."""

    def __init__(self, utterances: list[tuple[str, np.ndarray]]):
        self.utterances = utterances

    def __len__(self) -> int:
        return len(self.utterances)

    def utterance_audio(self, index: int) -> tuple[str, np.ndarray | None]:
        return self.utterances[index]


# ------------------------------------------------------------------------------ measuring helpers
def f0_hz(x: np.ndarray) -> float:
    """Median F0 over voiced frames (YIN's cumulative mean normalised difference, threshold 0.15)."""
    window, max_lag, min_lag = 640, SAMPLE_RATE // 60, SAMPLE_RATE // 400
    values = []
    for start in range(0, len(x) - window - max_lag, 160):
        frame = x[start : start + window + max_lag].astype(np.float64)
        if np.sqrt(np.mean(frame[:window] ** 2)) < 0.02:
            continue
        d = np.array([np.sum((frame[:window] - frame[lag : lag + window]) ** 2) for lag in range(max_lag)])
        cmnd = np.concatenate([[1.0], d[1:] * np.arange(1, max_lag) / np.maximum(np.cumsum(d[1:]), 1e-12)])
        below = np.flatnonzero(cmnd[min_lag:] < 0.15)
        if below.size:
            lag = min_lag + below[0]
            while lag + 1 < max_lag and cmnd[lag + 1] < cmnd[lag]:
                lag += 1
            values.append(SAMPLE_RATE / lag)
    return float(np.median(values))


def spectral_warp(x: np.ndarray, y: np.ndarray) -> float:
    """The factor alpha for which y's long-term log spectrum best matches x's with every frequency times alpha."""

    def ltas(s):
        frames = np.lib.stride_tricks.sliding_window_view(s, 512)[::128] * np.hanning(512)
        return np.log((np.abs(np.fft.rfft(frames, axis=1)) ** 2).sum(0) + 1e-9)

    freqs = np.fft.rfftfreq(512, 1 / SAMPLE_RATE)
    band = (freqs > 300) & (freqs < 5000)
    a, b = ltas(x), ltas(y)
    alphas = np.linspace(0.8, 1.25, 181)
    scores = [np.corrcoef(np.interp(freqs[band] / alpha, freqs, a), b[band])[0, 1] for alpha in alphas]
    return float(alphas[int(np.argmax(scores))])


def band_power_db(x: np.ndarray, low: float, high: float) -> float:
    """Power between low and high Hz relative to the whole signal's, in dB."""
    spectrum = np.abs(np.fft.rfft(x.astype(np.float64))) ** 2
    freqs = np.fft.rfftfreq(len(x), 1 / SAMPLE_RATE)
    return float(10 * np.log10(spectrum[(freqs >= low) & (freqs < high)].sum() / spectrum.sum()))


def snr_db(clean: np.ndarray, noisy: np.ndarray) -> float:
    clean = clean.astype(np.float64)
    return float(10 * np.log10(np.mean(clean**2) / np.mean((noisy - clean) ** 2)))


# ------------------------------------------------------------------------------------------ config
def test_off_by_default_and_configured_from_dotted_overrides():
    assert TrainConfig().data.augment.enabled is False
    cfg = load_config(TrainConfig, None, ["data.augment.enabled=true", "data.augment.speed=[0.95,1.05]",
                                          "data.augment.codecs={mp3: 1, opus: 0}", "data.augment.noise_colors=[pink]"])
    assert cfg.data.augment.speed == (0.95, 1.05) and cfg.data.augment.noise_colors == ("pink",)
    assert cfg.data.augment.longest_stretch == pytest.approx(1 / 0.95)
    assert AugmentConfig(enabled=True, speed_p=0.0).longest_stretch == 1.0


@pytest.mark.parametrize("override, message", [
    ("data.augment.noise_p=1.5", "noise_p must be a probability"),
    ("data.augment.speed=[1.1,0.9]", "low <= high"),
    ("data.augment.codecs={amr: 1}", "codecs must map some of telephone, gsm, mp3, opus"),
    ("data.augment.noise_colors=[blue]", "must be one of 'white', 'pink', 'brown'"),
])
def test_bad_values_are_refused_with_the_key(override, message):
    with pytest.raises(ConfigError, match=message):
        load_config(TrainConfig, None, [override])


def test_feature_cache_and_streaming_are_refused_in_one_sentence():
    with pytest.raises(ConfigError, match="set data.feature_cache.enabled=false or data.augment.enabled=false"):
        check_augment(AugmentConfig(enabled=True), feature_cache=True, streaming=False)
    with pytest.raises(ConfigError, match="set data.train.streaming=false"):
        check_augment(AugmentConfig(enabled=True), feature_cache=False, streaming=True)
    check_augment(AugmentConfig(enabled=False), feature_cache=True, streaming=True)


# ------------------------------------------------------------------------------------- determinism
def test_same_seed_epoch_and_utterance_give_the_same_audio_in_any_process_and_order(speech):
    (uid, x), (other_id, other) = speech[0], speech[1]
    pool = ListPool(speech)
    first = Augmenter(ALL_ON, seed=3)(x, uid, epoch=2, pool=pool)
    worker = pickle.loads(pickle.dumps(Augmenter(ALL_ON, seed=3)))  # what a DataLoader worker holds
    worker(other, other_id, epoch=5, pool=pool)  # other work first: no state carries over
    np.testing.assert_array_equal(worker(x, uid, epoch=2, pool=pool), first)
    assert not np.array_equal(Augmenter(ALL_ON, seed=3)(x, uid, epoch=3, pool=pool), first)
    assert not np.array_equal(Augmenter(ALL_ON, seed=4)(x, uid, epoch=2, pool=pool), first)
    assert Augmenter(ALL_ON, seed=3).plan(other_id, 2, len(pool)) != Augmenter(ALL_ON, seed=3).plan(uid, 2, len(pool))


def test_effects_fire_at_their_probabilities_and_draw_independently():
    cfg = AugmentConfig(enabled=True)
    augmenter = Augmenter(cfg, seed=0)
    plans = [augmenter.plan(f"utt-{i}", epoch=0, pool_size=100) for i in range(2000)]
    for name in EFFECTS:
        rate = np.mean([name in plan.effects for plan in plans])
        assert rate == pytest.approx(getattr(cfg, f"{name}_p"), abs=0.04), name
    # each effect has its own stream: turning noise off leaves every other draw as it was
    quiet = Augmenter(AugmentConfig(enabled=True, noise_p=0.0), seed=0)
    for i, plan in enumerate(plans[:200]):
        assert quiet.plan(f"utt-{i}", 0, 100) == dataclasses.replace(plan, noise=None)
    codecs = [plan.codec.name for plan in plans if plan.codec]
    assert set(codecs) == set(CODECS)


# ------------------------------------------------------------------------------------ each effect
def test_speed_shortens_by_the_rate_and_raises_pitch(speech):
    _, x = speech[0]
    y = Augmenter(ALL_ON, seed=0).apply(x, AugmentPlan(speed=1.1))
    assert abs(len(y) - len(x) / 1.1) <= 1
    assert f0_hz(y) / f0_hz(x) == pytest.approx(1.1, rel=0.03)


def test_vocal_tract_warp_scales_formants_and_f0_keeping_duration(speech):
    augmenter = Augmenter(ALL_ON, seed=0)
    for _, x in speech[:3]:
        for alpha in (0.9, 1.12):
            y = augmenter.apply(x, AugmentPlan(vtlp=alpha))
            assert len(y) == len(x)
            assert spectral_warp(x, y) == pytest.approx(alpha, abs=0.02)
            assert f0_hz(y) / f0_hz(x) == pytest.approx(alpha, rel=0.04)


def test_pitch_shift_moves_f0_and_keeps_formants(speech):
    augmenter = Augmenter(ALL_ON, seed=0)
    for _, x in speech[:3]:
        y = augmenter.apply(x, AugmentPlan(pitch_semitones=3.0))
        assert len(y) == len(x)
        assert f0_hz(y) / f0_hz(x) == pytest.approx(2 ** (3 / 12), rel=0.04)
        assert spectral_warp(x, y) == pytest.approx(1.0, abs=0.02)
    both = augmenter.apply(x, AugmentPlan(vtlp=1.1, pitch_semitones=-2.0))
    assert spectral_warp(x, both) == pytest.approx(1.1, abs=0.02)
    assert f0_hz(both) / f0_hz(x) == pytest.approx(1.1 * 2 ** (-2 / 12), rel=0.04)


def schroeder_rt60(rir: np.ndarray) -> float:
    """RT60 of an impulse response from its energy decay curve: 3 x the time from -5 to -25 dB (T20)."""
    energy = np.cumsum((rir.astype(np.float64) ** 2)[::-1])[::-1]
    decay_db = 10 * np.log10(energy / energy[0])
    return 3 * (int(np.argmax(decay_db <= -25)) - int(np.argmax(decay_db <= -5))) / SAMPLE_RATE


def test_reverb_rooms_decay_at_their_rt60_and_lengthen_the_speech_tail(speech, tmp_path):
    _, x = speech[0]
    padded = np.concatenate([x, np.zeros(SAMPLE_RATE // 2, np.float32)])  # 0.5 s more silence after the speech
    end = int(np.flatnonzero(np.abs(x) > 0.01 * np.abs(x).max())[-1])  # where the last word fades out

    def tail_db(y):  # energy 50-300 ms after the speech ended, relative to the speech's
        tail = y[end + SAMPLE_RATE // 20 : end + 3 * SAMPLE_RATE // 10].astype(np.float64)
        return 10 * np.log10(np.mean(tail**2) / np.mean(x.astype(np.float64) ** 2))

    tails = {}
    for rt60 in (0.25, 0.8):
        augmenter = Augmenter(AugmentConfig(enabled=True, reverb_rt60=(rt60, rt60)), seed=0, rir_dir=tmp_path)
        for room in range(3):
            assert schroeder_rt60(augmenter.room_impulse_response(room)) == pytest.approx(rt60, rel=0.3)
        y = augmenter.apply(padded, AugmentPlan(room=0))
        assert len(y) == len(padded)
        assert np.sqrt(np.mean(y**2)) == pytest.approx(np.sqrt(np.mean(padded**2)), rel=1e-3)  # the dry level
        tails[rt60] = tail_db(y)
    dry = tail_db(padded)
    assert dry < tails[0.25] < tails[0.8] and tails[0.8] > dry + 10, (dry, tails)
    # the room bank is kept on disk and read back identically by a fresh process's augmenter
    assert len(list(tmp_path.glob("room-*.npy"))) == 6
    again = Augmenter(AugmentConfig(enabled=True, reverb_rt60=(0.8, 0.8)), seed=0, rir_dir=tmp_path)
    np.testing.assert_array_equal(again.apply(padded, AugmentPlan(room=0)), y)


@pytest.mark.parametrize("color, slope_db", [("white", 0.0), ("pink", -12.0), ("brown", -24.0)])
def test_noise_has_the_drawn_snr_and_colour(speech, color, slope_db):
    _, x = speech[1]
    augmenter = Augmenter(ALL_ON, seed=0)
    for snr in (10.0, 22.5):
        y = augmenter.apply(x, AugmentPlan(noise=Noise(color, snr, seed=7)))
        assert snr_db(x, y) == pytest.approx(snr, abs=0.5)
    noise = (y - x).astype(np.float64)
    # power in 25 Hz at 4 kHz vs at 250 Hz: four octaves of 0, -3 or -6 dB each
    slope = band_power_db(noise, 3987.5, 4012.5) - band_power_db(noise, 237.5, 262.5)
    assert slope == pytest.approx(slope_db, abs=2.0)


def test_babble_mixes_other_utterances_at_the_drawn_snr_and_never_the_utterance_itself(speech):
    (uid, x), (other_id, other) = speech[0], speech[1]
    augmenter = Augmenter(ALL_ON, seed=0)
    plan = AugmentPlan(babble=Babble(talkers=(0, 1, 2, 3), starts=(0.1, 0.5, 0.2, 0.7), snr_db=15.0))
    y = augmenter.apply(x, plan, ListPool(speech), own_id=uid)
    assert snr_db(x, y) == pytest.approx(15.0, abs=0.5)
    alone = AugmentPlan(babble=Babble(talkers=(0,), starts=(0.0,), snr_db=10.0))
    np.testing.assert_array_equal(augmenter.apply(x, alone, ListPool(speech[:1]), own_id=uid), x)
    # one other talker: what was added is that utterance, looped from its start
    y = augmenter.apply(x, alone, ListPool([(other_id, other)]), own_id=uid)
    looped = np.resize(other, len(x)).astype(np.float64)
    assert np.corrcoef(y - x, looped)[0, 1] > 0.999


def test_gain_scales_the_level():
    x = np.sin(2 * np.pi * 440 * np.arange(SAMPLE_RATE) / SAMPLE_RATE).astype(np.float32) * 0.1
    y = Augmenter(ALL_ON, seed=0).apply(x, AugmentPlan(gain_db=6.0))
    assert np.sqrt(np.mean(y**2)) / np.sqrt(np.mean(x**2)) == pytest.approx(10 ** (6 / 20), rel=1e-5)


@pytest.mark.parametrize("codec", ["telephone", "gsm"])
def test_telephone_channels_remove_everything_above_4khz(speech, codec):
    _, x = speech[2]
    assert band_power_db(x, 4200, 8000) > -30  # the synthetic voice has energy up there to remove
    y = Augmenter(ALL_ON, seed=0).apply(x, AugmentPlan(codec=Codec(codec)))
    assert len(y) == len(x)
    assert band_power_db(y, 4200, 8000) < -45


@pytest.mark.parametrize("codec, worse, better", [("mp3", 9.0, 2.0), ("opus", 8.0, 32.0)])
def test_lossy_codecs_keep_length_and_alignment_and_lose_more_at_lower_quality(speech, codec, worse, better):
    _, x = speech[3]
    augmenter = Augmenter(ALL_ON, seed=0)
    low = augmenter.apply(x, AugmentPlan(codec=Codec(codec, worse)))
    high = augmenter.apply(x, AugmentPlan(codec=Codec(codec, better)))
    assert len(low) == len(high) == len(x)
    np.testing.assert_array_equal(augmenter.apply(x, AugmentPlan(codec=Codec(codec, worse))), low)  # deterministic
    assert 0 < snr_db(x, low) < snr_db(x, high)
    assert snr_db(x, high) > 5  # aligned: a shifted decode would leave no positive SNR at all


# ----------------------------------------------------------------------- dataset, sampler, workers
def test_loader_workers_see_the_epoch_through_the_sampled_indices(synth_corpus, tmp_path):
    """Persistent workers: set_epoch reaches them in the indices, and every item is the direct computation."""
    rows = [json.loads(line) for line in (synth_corpus / "train.jsonl").read_text().splitlines()]
    vocab = build_vocab(TextNormalizer()(r["text"]) for r in rows)
    split = prepare_split(SourceConfig(path=str(synth_corpus / "train.jsonl")), TextNormalizer(), vocab,
                          FilterConfig(), frames_fn_for(Wav2Vec2Config()), tmp_path / "cache", num_workers=1)
    cfg = AugmentConfig(enabled=True, speed_p=0.5, noise_p=1.0, babble_p=0.5, pitch_p=0.0, reverb_p=0.0, codec_p=0.3)
    augmenter = Augmenter(cfg, seed=5)
    dataset = SpeechDataset(split.table, augment=augmenter)
    sampler = DurationBatchSampler(split.durations, 10.0, seed=5)
    loader = torch.utils.data.DataLoader(dataset, batch_sampler=EpochTaggedBatches(sampler), num_workers=2,
                                         persistent_workers=True, collate_fn=lambda items: items)
    seen = {}
    for epoch in (0, 1):
        sampler.set_epoch(epoch)
        seen[epoch] = {item["id"]: item["input_values"] for batch in loader for item in batch}
        assert len(seen[epoch]) == len(split)
    for index in range(len(split)):
        uid, raw = dataset.utterance_audio(index)
        for epoch in (0, 1):
            expected = normalize_audio(augmenter(raw, uid, epoch, pool=dataset))
            np.testing.assert_array_equal(seen[epoch][uid], expected)
        assert not np.array_equal(seen[0][uid], seen[1][uid])
    with pytest.raises(TypeError, match="EpochTaggedBatches"):
        dataset[0]


# ------------------------------------------------------------------------------- training, resume
# Every effect likely, a DataLoader worker, dropout and SpecAugment: everything a resume must restore.
AUGMENTED = ["data.augment.enabled=true", "data.augment.speed_p=0.7", "data.augment.vtlp_p=0.5",
             "data.augment.pitch_p=0.3", "data.augment.reverb_p=0.5", "data.augment.reverb_rooms=3",
             "data.augment.babble_p=0.5", "data.augment.noise_p=0.5", "data.augment.codec_p=0.5",
             "data.num_workers=1", "data.max_batch_seconds=10", "model.mask_time_prob=0.2", "model.hidden_dropout=0.1",
             "train.eval_every=1000", "train.log_every=1"]


def test_augmented_run_resumed_from_a_checkpoint_equals_the_uninterrupted_run(synth_corpus, tmp_path):
    """1 process: 8 steps (over two epochs) vs the same run resumed at step 4."""
    full, resumed = tmp_path / "full", tmp_path / "resumed"
    proc = run_train(synth_corpus, full, *AUGMENTED, "train.max_steps=8", "train.save_every=4")
    assert "data.augment on" in proc.stderr
    assert list((full / "cache" / "rirs").glob("room-*.npy")), "no utterance was reverberated in the workers"
    assert max(r["epoch"] for r in metrics(full / "run", "train")) >= 1, "the run never reached a second epoch"
    shutil.copytree(full / "run" / "checkpoints" / "step_4", resumed / "run" / "checkpoints" / "step_4")
    proc = run_train(synth_corpus, resumed, *AUGMENTED, "train.max_steps=8", "train.save_every=4", resume="latest")
    assert "resumed from" in proc.stderr and "at step 4" in proc.stderr
    assert max_weight_diff(full / "run" / "checkpoints" / "step_8", resumed / "run" / "checkpoints" / "step_8") == 0.0
    full_losses = {r["step"]: r["loss"] for r in metrics(full / "run", "train")}
    resumed_losses = {r["step"]: r["loss"] for r in metrics(resumed / "run", "train")}
    assert [resumed_losses[s] for s in range(5, 9)] == [full_losses[s] for s in range(5, 9)]


def test_augment_with_the_feature_cache_fails_before_training_in_one_line(synth_corpus, tmp_path):
    proc = run_train(synth_corpus, tmp_path, "train.max_steps=1", "data.augment.enabled=true",
                     "data.feature_cache.enabled=true", "model.freeze_feature_encoder=true", check=False)
    assert proc.returncode == 2, proc.stderr[-2000:]
    assert [line for line in proc.stderr.splitlines() if "set data.feature_cache.enabled=false" in line]
    assert "Traceback" not in proc.stderr


@pytest.mark.slow
def test_killed_augmented_ddp_run_resumes_to_identical_weights(synth_corpus, tmp_path):
    """2 processes (DDP, a worker each): killed after checkpoint 4 of 10, resumed, equal to the uninterrupted run."""
    full, killed = tmp_path / "full", tmp_path / "killed"
    args = [*AUGMENTED, "train.max_steps=10", "train.save_every=2"]
    run_train(synth_corpus, full, *args, kind="ddp2")
    saved = run_until_checkpoint_then_kill(synth_corpus, killed, *args, kind="ddp2", step=4)
    assert saved < 10, "the run finished before it was killed; the test proves nothing"
    proc = run_train(synth_corpus, killed, *args, kind="ddp2", resume="latest")
    assert f"resumed from {killed / 'run' / 'checkpoints' / f'step_{saved}'}" in proc.stderr
    assert max_weight_diff(full / "run" / "model", killed / "run" / "model") == 0.0
    full_losses = {r["step"]: r["loss"] for r in metrics(full / "run", "train")}
    resumed_losses = {r["step"]: r["loss"] for r in metrics(killed / "run", "train")}
    for step in range(saved + 1, 11):
        assert resumed_losses[step] == pytest.approx(full_losses[step], rel=1e-6)
