"""Speaker and channel augmentation of training audio, drawn per (seed, epoch, utterance).

`data.augment.enabled: true` changes every training utterance in the DataLoader workers, before the
per-utterance normalisation, differently at every epoch (dev and test audio never change). In order:

- speaker: speed (resampling, as Kaldi's speed perturbation: tempo, pitch and formants together),
  vocal-tract length (formants and F0 scaled by alpha, duration kept: resample, then Rubber Band
  time-stretches back) and pitch (F0 shifted, formants kept: Rubber Band's R3 engine);
- room and noise: reverberation by a synthetic room impulse response (pyroomacoustics' image source
  method, a bank of rooms simulated once per machine), babble (other training utterances) and
  white/pink/brown noise, each mixed at a drawn SNR;
- channel: gain, then at most one of an 8 kHz telephone band (soxr), the GSM full-rate codec in that band,
  MP3 (LAME; both codecs through pedalboard) or Opus (libopus through libsndfile), all in-process.

What happens to an utterance is a pure function of (run seed, epoch, utterance id): each effect draws
from its own `numpy` generator seeded with those and the effect's position in `EFFECTS`, never from
the worker, rank or batch order, so a resumed run sees the same audio as an uninterrupted one. The
epoch reaches the workers inside each sampled index (`asr.sampler.EpochTaggedBatches`), which holds
with persistent workers too. What scripts/train.py does:

    check_augment(cfg.data.augment, feature_cache=..., streaming=...)
    augmenter = Augmenter(cfg.data.augment, seed=cfg.train.seed, rir_dir=Path(cfg.data.cache_dir) / "rirs")
    dataset = SpeechDataset(split.table, do_normalize, augment=augmenter)   # keys: (epoch, index)
    loader = DataLoader(dataset, batch_sampler=EpochTaggedBatches(sampler), ...)

Speed changes duration, so the train sampler packs batches with `max_batch_seconds / longest_stretch`
of manifest seconds: a slowed-down batch still fits `max_batch_seconds`. The cached conv features of
`data.feature_cache` are a function of the unchanged audio, so the two are refused together.
"""

from __future__ import annotations

import hashlib
import importlib.metadata
import io
import json
import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal, Protocol

import numpy as np
import pedalboard
import soundfile as sf
import soxr

from asr.config import ConfigError
from asr.constants import SAMPLE_RATE
from asr.files import atomic_path

logger = logging.getLogger(__name__)

# Each effect's random stream is seeded with its position here: append new effects, never reorder.
EFFECTS = ("speed", "vtlp", "pitch", "reverb", "babble", "noise", "gain", "codec")
CODECS = ("telephone", "gsm", "mp3", "opus")
NoiseColor = Literal["white", "pink", "brown"]
NOISE_SLOPES = {"white": 0.0, "pink": 1.0, "brown": 2.0}  # power ~ 1/f**slope: 0, -3 and -6 dB per octave

TELEPHONE_RATE = 8_000  # Hz; the narrowband telephone channel, speech above 4 kHz is gone
TELEPHONE_LOW_CUT_HZ = 300.0  # the telephone band's lower edge (300-3400 Hz)
# libsndfile maps Opus compression_level 0..1 linearly onto bitrate 256..6 kbps (measured: 1.0 -> 8.6 kbps
# on disk, 0.9 -> 32.8, 0.5 -> 135, Ogg pages included)
OPUS_MAX_KBPS, OPUS_MIN_KBPS = 256.0, 6.0
ROOM_BANK_SEED = 14  # rooms do not depend on the run seed, so every run on a machine shares the cached bank
ROOM_MARGIN_M = 0.5  # talker and microphone stay this far from walls
MIN_TALKER_DISTANCE_M = 1.0  # closer, the direct sound swamps the room and the effect is barely audible


@dataclass
class AugmentConfig:
    """Random speaker and channel changes to training audio (`data.augment`), off by default.

    Every effect fires with its own probability `<effect>_p` and draws its parameters uniformly from its
    range. The costs are CPU milliseconds per call on a 3 s utterance, paid in the DataLoader workers
    (`bench/augment.py`, on 2 busy cores); with these defaults the mean is ~20 ms per utterance.
    """

    enabled: bool = False  # on: training audio changes every epoch (dev/test never); refuses data.feature_cache
    # speaker
    speed_p: float = 0.5  # resampling (Kaldi's speed perturbation): tempo, F0 and formants together; ~1 ms
    speed: tuple[float, float] = (0.9, 1.1)  # playback rate; the slowest shrinks the train batch budget to match
    vtlp_p: float = 0.5  # vocal-tract length: formants and F0 times alpha, duration kept; ~11 ms
    vtlp: tuple[float, float] = (0.9, 1.15)  # alpha; above 1 a shorter vocal tract (towards women's, children's voices)
    pitch_p: float = 0.15  # F0 shift with formants kept (Rubber Band R3); ~70 ms, the costliest effect
    pitch_semitones: tuple[float, float] = (-3.0, 5.0)  # the natural corpus voice is low (F0 ~92 Hz): more room up
    # room and noise
    reverb_p: float = 0.3  # a synthetic room's impulse response; ~2 ms once the room is simulated
    reverb_rt60: tuple[float, float] = (0.2, 0.7)  # seconds to decay by 60 dB: small office to living room
    reverb_rooms: int = 100  # rooms in the bank, each simulated once per machine (0.01-1.6 s) into data.cache_dir/rirs
    babble_p: float = 0.2  # other training utterances talking at once; ~2 ms (decoding them)
    babble_talkers: tuple[int, int] = (3, 7)  # how many (inclusive), each looped from a random point
    babble_snr_db: tuple[float, float] = (12.0, 25.0)  # speech over babble; lower starts to mask whole words
    noise_p: float = 0.3  # additive stationary noise of a drawn colour; ~5 ms
    noise_snr_db: tuple[float, float] = (10.0, 30.0)  # over the whole utterance, pauses included
    noise_colors: tuple[NoiseColor, ...] = ("white", "pink", "brown")  # drawn uniformly
    # channel
    gain_p: float = 0.2  # level change before the codec (only the codecs see it: inputs are normalised after)
    gain_db: tuple[float, float] = (-10.0, 6.0)  # level change in dB; codecs clip and quantise loud and quiet input
    codec_p: float = 0.2  # one channel per utterance: telephone ~0.5 ms, gsm ~7, mp3 ~6, opus ~95
    # relative weights; Opus at half: its encoder costs as much as all the other effects together
    codecs: dict[str, float] = field(default_factory=lambda: {"telephone": 1.0, "gsm": 1.0, "mp3": 1.0, "opus": 0.5})
    mp3_vbr_quality: tuple[float, float] = (2.0, 9.0)  # LAME's VBR quality scale: 0 best, 9 worst in use
    opus_kbps: tuple[float, float] = (8.0, 32.0)  # 8 kbps: a narrowband VoIP call; 32: wideband, near transparent

    def __post_init__(self) -> None:
        for name in EFFECTS:
            p = getattr(self, f"{name}_p")
            if not 0.0 <= p <= 1.0:
                raise ValueError(f"data.augment.{name}_p must be a probability in [0, 1], got {p}")
        ranges = {"speed": self.speed, "vtlp": self.vtlp, "pitch_semitones": self.pitch_semitones,
                  "reverb_rt60": self.reverb_rt60, "babble_talkers": self.babble_talkers,
                  "babble_snr_db": self.babble_snr_db, "noise_snr_db": self.noise_snr_db, "gain_db": self.gain_db,
                  "mp3_vbr_quality": self.mp3_vbr_quality, "opus_kbps": self.opus_kbps}
        for name, pair in ranges.items():
            if len(pair) != 2 or pair[0] > pair[1]:
                raise ValueError(f"data.augment.{name} must be [low, high] with low <= high, got {list(pair)}")
        positive = {"speed": self.speed, "vtlp": self.vtlp, "reverb_rt60": self.reverb_rt60,
                    "babble_talkers": self.babble_talkers, "opus_kbps": self.opus_kbps}
        for name, (low, _) in positive.items():
            if low <= 0:
                raise ValueError(f"data.augment.{name} must be positive, got {low} as its low end")
        if not (0 <= self.mp3_vbr_quality[0] and self.mp3_vbr_quality[1] <= 10):
            raise ValueError(f"data.augment.mp3_vbr_quality must lie in [0, 10] (LAME's scale), "
                             f"got {list(self.mp3_vbr_quality)}")
        if self.reverb_rooms < 1:
            raise ValueError(f"data.augment.reverb_rooms must be >= 1, got {self.reverb_rooms}")
        if not self.noise_colors:
            raise ValueError("data.augment.noise_colors is empty; list some of white, pink, brown or set noise_p=0")
        unknown = sorted(set(self.codecs) - set(CODECS))
        if unknown or any(w < 0 for w in self.codecs.values()) or not sum(self.codecs.values()) > 0:
            raise ValueError(f"data.augment.codecs must map some of {', '.join(CODECS)} to weights >= 0 with a "
                             f"positive sum, got {self.codecs}")

    @property
    def longest_stretch(self) -> float:
        """How many times longer than its manifest duration an augmented utterance can come out."""
        return 1.0 / self.speed[0] if self.enabled and self.speed_p > 0 and self.speed[0] < 1 else 1.0


def check_augment(cfg: AugmentConfig, *, feature_cache: bool, streaming: bool) -> None:
    """Refuses (ConfigError, one sentence naming the fix) augmentation this run cannot do."""
    if not cfg.enabled:
        return
    if feature_cache:
        raise ConfigError("data.augment changes the training audio every epoch, so conv features cached once "
                          "(data.feature_cache) would be stale; set data.feature_cache.enabled=false or "
                          "data.augment.enabled=false")
    if streaming:
        raise ConfigError("data.augment needs a prepared train split (the epoch travels with each sampled index "
                          "and babble reads other utterances by index); set data.train.streaming=false or "
                          "data.augment.enabled=false")


# ------------------------------------------------------------------------------------------- plan
@dataclass(frozen=True)
class Babble:
    """Other utterances of the pool mixed under this one."""

    talkers: tuple[int, ...]  # pool indices (the utterance itself, if drawn, is left out)
    starts: tuple[float, ...]  # where each talker starts, as a fraction of its length (it loops)
    snr_db: float


@dataclass(frozen=True)
class Noise:
    """Stationary noise of one colour, generated from its own seed."""

    color: NoiseColor
    snr_db: float
    seed: int


@dataclass(frozen=True)
class Codec:
    """One channel: 'telephone' and 'gsm' take no setting; 'mp3' a LAME VBR quality, 'opus' kbps."""

    name: str
    setting: float | None = None


@dataclass(frozen=True)
class AugmentPlan:
    """What happens to one utterance at one epoch; None leaves an effect out."""

    speed: float | None = None  # playback rate; > 1 is faster and shorter
    vtlp: float | None = None  # formants and F0 times this, duration kept
    pitch_semitones: float | None = None  # F0 shift, formants kept
    room: int | None = None  # index into the room bank
    babble: Babble | None = None
    noise: Noise | None = None
    gain_db: float | None = None
    codec: Codec | None = None

    @property
    def effects(self) -> tuple[str, ...]:
        """Names of the effects that fire, in the order they are applied."""
        fired = {"speed": self.speed, "vtlp": self.vtlp, "pitch": self.pitch_semitones, "reverb": self.room,
                 "babble": self.babble, "noise": self.noise, "gain": self.gain_db, "codec": self.codec}
        return tuple(name for name in EFFECTS if fired[name] is not None)


class AudioPool(Protocol):
    """Where babble comes from: the training utterances (`asr.datasets.SpeechDataset` is one)."""

    def __len__(self) -> int: ...

    def utterance_audio(self, index: int) -> tuple[str, np.ndarray | None]:
        """(id, float32 samples at 16 kHz before normalisation, None when unreadable) of item `index`."""
        ...


# --------------------------------------------------------------------------------------- augmenter
class Augmenter:
    """Applies `AugmentConfig` to one utterance at a time (in DataLoader workers; picklable).

    Args:
        cfg: the effects, their probabilities and ranges.
        seed: the run's seed (`train.seed`).
        rir_dir: where simulated room impulse responses are kept (one .npy per room); None keeps them
            in memory only, so every worker process simulates the rooms it uses again.
    """

    def __init__(self, cfg: AugmentConfig, seed: int, rir_dir: str | Path | None = None):
        if seed < 0:
            raise ValueError(f"the augmentation seed must be >= 0, got {seed}; use a non-negative train.seed")
        self.cfg = cfg
        self.seed = seed
        self.rir_dir = Path(rir_dir) if rir_dir is not None else None
        self._rirs: dict[int, np.ndarray] = {}  # per process: workers fill their own

    def __call__(self, samples: np.ndarray, utt_id: str, epoch: int, pool: AudioPool | None = None) -> np.ndarray:
        """The augmented audio of utterance `utt_id` at `epoch`.

        Args:
            samples: float32 [T] at 16 kHz.
            utt_id: the utterance's id; with `epoch` and the seed it fixes everything drawn.
            epoch: training epoch (from the sampled index).
            pool: the training utterances, for babble; None leaves babble out.

        Returns:
            float32 [T'], T' = T unless speed fired (then about T / speed).
        """
        plan = self.plan(utt_id, epoch, pool_size=len(pool) if pool is not None else 0)
        return self.apply(samples, plan, pool, own_id=utt_id)

    def plan(self, utt_id: str, epoch: int, pool_size: int = 0) -> AugmentPlan:
        """Draws what happens to `utt_id` at `epoch`: a pure function of (seed, epoch, utt_id, pool_size)."""
        cfg = self.cfg
        key = _utterance_key(utt_id)

        def fires(effect: str) -> np.random.Generator | None:
            rng = np.random.default_rng([self.seed, epoch, key, EFFECTS.index(effect)])
            return rng if rng.random() < getattr(cfg, f"{effect}_p") else None

        draws: dict[str, object] = {}
        if (rng := fires("speed")) is not None:
            draws["speed"] = float(rng.uniform(*cfg.speed))
        if (rng := fires("vtlp")) is not None:
            draws["vtlp"] = float(rng.uniform(*cfg.vtlp))
        if (rng := fires("pitch")) is not None:
            draws["pitch_semitones"] = float(rng.uniform(*cfg.pitch_semitones))
        if (rng := fires("reverb")) is not None:
            draws["room"] = int(rng.integers(cfg.reverb_rooms))
        if pool_size > 0 and (rng := fires("babble")) is not None:
            count = int(rng.integers(cfg.babble_talkers[0], cfg.babble_talkers[1] + 1))
            draws["babble"] = Babble(tuple(int(i) for i in rng.integers(pool_size, size=count)),
                                     tuple(float(s) for s in rng.random(count)), float(rng.uniform(*cfg.babble_snr_db)))
        if (rng := fires("noise")) is not None:
            draws["noise"] = Noise(cfg.noise_colors[int(rng.integers(len(cfg.noise_colors)))],
                                   float(rng.uniform(*cfg.noise_snr_db)), int(rng.integers(2**63)))
        if (rng := fires("gain")) is not None:
            draws["gain_db"] = float(rng.uniform(*cfg.gain_db))
        if (rng := fires("codec")) is not None:
            names = sorted(cfg.codecs)
            weights = np.array([cfg.codecs[n] for n in names], dtype=np.float64)
            name = names[int(rng.choice(len(names), p=weights / weights.sum()))]
            setting = {"mp3": cfg.mp3_vbr_quality, "opus": cfg.opus_kbps}.get(name)
            draws["codec"] = Codec(name, float(rng.uniform(*setting)) if setting else None)
        return AugmentPlan(**draws)

    def apply(self, samples: np.ndarray, plan: AugmentPlan, pool: AudioPool | None = None,
              own_id: str | None = None) -> np.ndarray:
        """Runs `plan` on `samples` (float32 [T], 16 kHz); babble skips pool items whose id is `own_id`.

        Raises:
            RuntimeError: an effect produced NaN or infinite samples (a bug or a broken library build).
        """
        x = np.asarray(samples, dtype=np.float32)
        if plan.speed is not None:
            x = _speed(x, plan.speed)
        if plan.vtlp is not None or plan.pitch_semitones is not None:
            x = _voice(x, plan.vtlp, plan.pitch_semitones)
        if plan.room is not None:
            x = _reverberate(x, self.room_impulse_response(plan.room))
        if plan.babble is not None and pool is not None:
            x = _babble(x, plan.babble, pool, own_id)
        if plan.noise is not None:
            x = _mix_at_snr(x, colored_noise(len(x), plan.noise.color, plan.noise.seed), plan.noise.snr_db)
        if plan.gain_db is not None:
            x = x * np.float32(10.0 ** (plan.gain_db / 20.0))
        if plan.codec is not None:
            x = _codec(x, plan.codec)
        if not np.isfinite(x).all():
            raise RuntimeError(f"augmentation produced non-finite samples with {plan}; report it with this plan")
        return x.astype(np.float32, copy=False)

    def room_impulse_response(self, room: int) -> np.ndarray:
        """Impulse response of bank room `room` (float32 [taps], direct sound first), simulated once per machine."""
        if room in self._rirs:
            return self._rirs[room]
        spec = _room_spec(room, self.cfg.reverb_rt60)
        path = None
        if self.rir_dir is not None:  # keyed by the room and the simulator's version: another gives new files
            key = {**spec, "simulator": f"pyroomacoustics {importlib.metadata.version('pyroomacoustics')}"}
            digest = hashlib.sha1(json.dumps(key, sort_keys=True).encode()).hexdigest()[:16]
            path = self.rir_dir / f"room-{digest}.npy"
        if path is not None and path.is_file():
            rir = np.load(path)
        else:
            rir = _simulate_room(spec)
            if path is not None:
                try:
                    with atomic_path(path) as tmp, open(tmp, "wb") as f:
                        np.save(f, rir)
                except OSError as e:  # a read-only cache costs a simulation per process, not the run
                    logger.warning("cannot cache room impulse responses in %s (%s); simulating them per process",
                                   self.rir_dir, e)
                    self.rir_dir = None
        self._rirs[room] = rir
        return rir


def _utterance_key(utt_id: str) -> int:
    """A stable 64-bit integer for an id (Python's hash() changes between processes)."""
    return int.from_bytes(hashlib.blake2b(utt_id.encode("utf-8"), digest_size=8).digest(), "little")


# ------------------------------------------------------------------------------------------ effects
def _fit(x: np.ndarray, n: int) -> np.ndarray:
    """`x` cut or zero-padded to n samples (codecs and stretchers may be a few samples off)."""
    return x[:n] if len(x) >= n else np.pad(x, (0, n - len(x)))


def _speed(x: np.ndarray, rate: float) -> np.ndarray:
    """Played `rate` times faster: read as if recorded at rate x 16 kHz, resampled to 16 kHz."""
    return soxr.resample(x, SAMPLE_RATE * rate, SAMPLE_RATE).astype(np.float32, copy=False)


def _voice(x: np.ndarray, alpha: float | None, semitones: float | None) -> np.ndarray:
    """Formants and F0 times alpha (resample, then stretch back to length), F0 further shifted by `semitones`."""
    n = len(x)
    stretch = 1.0
    if alpha is not None:
        x = _speed(x, alpha)  # every frequency times alpha, duration / alpha
        stretch = 1.0 / alpha  # Rubber Band lengthens it back without moving any frequency
    # Rubber Band keeps formants in place while shifting pitch only in its high-quality (R3) engine;
    # the faster R2 engine moves them with the pitch, which a stretch alone does not need. R3's short
    # FFT window costs 30% less with the same measured F0 and formants.
    y = pedalboard.time_stretch(x[None, :], SAMPLE_RATE, stretch_factor=stretch,
                                pitch_shift_in_semitones=semitones or 0.0, high_quality=semitones is not None,
                                preserve_formants=True, use_long_fft_window=False)[0]
    return _fit(y, n)


def _room_spec(room: int, rt60_range: tuple[float, float]) -> dict[str, object]:
    """A shoebox room, talker and microphone, drawn from (ROOM_BANK_SEED, room) only."""
    rng = np.random.default_rng([ROOM_BANK_SEED, room])
    rt60 = float(rng.uniform(*rt60_range))
    while True:  # redraw until the room is feasible and the talker far enough from the microphone
        dims = [float(rng.uniform(3.0, 10.0)), float(rng.uniform(3.0, 8.0)), float(rng.uniform(2.4, 4.0))]
        volume, surface = np.prod(dims), 2 * (dims[0] * dims[1] + dims[0] * dims[2] + dims[1] * dims[2])
        if 0.161 * volume / (surface * rt60) >= 1.0:  # Sabine: walls would have to absorb more than everything
            continue
        floor = [float(rng.uniform(ROOM_MARGIN_M, d - ROOM_MARGIN_M)) for d in dims[:2] * 2]  # talker x, y; mic x, y
        talker = floor[:2] + [float(rng.uniform(1.2, 1.9))]  # standing or sitting mouth height
        mic = floor[2:] + [float(rng.uniform(0.7, 1.6))]  # on a table, a laptop, a hand
        if np.linalg.norm(np.subtract(talker, mic)) >= MIN_TALKER_DISTANCE_M:
            return {"rt60": rt60, "dims": dims, "talker": talker, "mic": mic, "fs": SAMPLE_RATE}


def _simulate_room(spec: dict) -> np.ndarray:
    """The room's impulse response by the image source method, from the direct sound on, float32 [taps]."""
    # Imported here: 1.4 s to import, and needed only to fill the room bank once per machine.
    import pyroomacoustics as pra

    absorption, max_order = pra.inverse_sabine(spec["rt60"], spec["dims"])
    room = pra.ShoeBox(spec["dims"], fs=spec["fs"], materials=pra.Material(absorption), max_order=max_order)
    room.add_source(spec["talker"])
    room.add_microphone(spec["mic"])
    room.compute_rir()
    rir = np.asarray(room.rir[0][0], dtype=np.float64)
    # Start at the direct sound (keeping the fractional-delay filter's lead-in): the speech does not shift.
    start = max(0, int(np.argmax(np.abs(rir))) - pra.constants.get("frac_delay_length") // 2)
    rir = rir[start:]
    return (rir / np.abs(rir).max()).astype(np.float32)


def rms(x: np.ndarray) -> float:
    """Root mean square of x [n] (float64 accumulation)."""
    return float(np.sqrt(np.mean(np.square(x, dtype=np.float64))))


def _reverberate(x: np.ndarray, rir: np.ndarray) -> np.ndarray:
    """`x` heard in the room, at its dry level; the tail past the end is cut (length kept)."""
    # numpy's FFT: scipy.signal.fftconvolve is the same product but a 1 s import in every worker
    size = 1 << int(np.ceil(np.log2(len(x) + len(rir) - 1)))
    wet = np.fft.irfft(np.fft.rfft(x, size) * np.fft.rfft(rir, size), size)[: len(x)]
    scale = rms(x) / max(rms(wet), 1e-12)
    return (wet * scale).astype(np.float32)


def colored_noise(n: int, color: str, seed: int) -> np.ndarray:
    """n samples of Gaussian noise whose power falls as 1/f**NOISE_SLOPES[color] (float64)."""
    white = np.random.default_rng(seed).standard_normal(n)
    slope = NOISE_SLOPES[color]
    if slope == 0.0:
        return white
    spectrum = np.fft.rfft(white)
    freqs = np.fft.rfftfreq(n, 1.0 / SAMPLE_RATE)
    freqs[0] = freqs[1] if len(freqs) > 1 else 1.0  # no infinite power at DC
    return np.fft.irfft(spectrum * freqs ** (-slope / 2), n)


def _mix_at_snr(x: np.ndarray, noise: np.ndarray, snr_db: float) -> np.ndarray:
    """x + noise scaled so that 10 log10(power(x) / power(noise)) = snr_db (powers over the whole signal)."""
    signal_power, noise_power = rms(x) ** 2, rms(noise) ** 2
    if signal_power == 0.0 or noise_power == 0.0:
        return x
    scale = np.sqrt(signal_power / (noise_power * 10.0 ** (snr_db / 10.0)))
    return (x.astype(np.float64) + scale * noise).astype(np.float32)


def _babble(x: np.ndarray, babble: Babble, pool: AudioPool, own_id: str | None) -> np.ndarray:
    """The talkers at equal level, each looped from its start to the utterance's length, mixed at the SNR."""
    mix = np.zeros(len(x), dtype=np.float64)
    for index, start in zip(babble.talkers, babble.starts):
        talker_id, audio = pool.utterance_audio(index)
        if audio is None or talker_id == own_id or len(audio) == 0:
            continue
        talk = np.resize(np.roll(audio.astype(np.float64), -int(start * len(audio))), len(x))
        level = rms(talk)
        if level > 0:
            mix += talk / level
    return _mix_at_snr(x, mix, babble.snr_db)


def _codec(x: np.ndarray, codec: Codec) -> np.ndarray:
    """`x` through one channel, same length and alignment."""
    n = len(x)
    if codec.name in ("telephone", "gsm"):
        narrow = soxr.resample(x, SAMPLE_RATE, TELEPHONE_RATE)
        if codec.name == "gsm":  # GSM 06.10 at its own 8 kHz: pedalboard's resampler would leave -35 dB aliases
            narrow = pedalboard.GSMFullRateCompressor()(narrow, TELEPHONE_RATE)
        wide = _fit(soxr.resample(narrow, TELEPHONE_RATE, SAMPLE_RATE), n)
        y = pedalboard.HighpassFilter(TELEPHONE_LOW_CUT_HZ)(wide, SAMPLE_RATE)
    elif codec.name == "mp3":
        y = pedalboard.MP3Compressor(vbr_quality=codec.setting)(x, SAMPLE_RATE)
    elif codec.name == "opus":
        level = (OPUS_MAX_KBPS - codec.setting) / (OPUS_MAX_KBPS - OPUS_MIN_KBPS)
        buffer = io.BytesIO()
        sf.write(buffer, x, SAMPLE_RATE, format="OGG", subtype="OPUS", compression_level=float(np.clip(level, 0, 1)))
        buffer.seek(0)
        y, _ = sf.read(buffer, dtype="float32")
    else:
        raise ValueError(f"unknown codec {codec.name!r}; use one of {', '.join(CODECS)}")
    return _fit(np.asarray(y, dtype=np.float32), n)
