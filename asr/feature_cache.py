"""The frozen conv feature encoder's output, computed once per utterance and read from disk in training.

With `model.freeze_feature_encoder` the wav2vec2-style conv feature encoder is a fixed function of
the audio, yet every training step runs it again. `data.feature_cache.enabled: true` computes it once
per training utterance before the loop, and the steps train only what follows it (feature
projection, SpecAugment, transformer, CTC head). What scripts/train.py does:

    check_feature_cache(cfg.data.feature_cache, freeze_feature_encoder=..., streaming=..., zero_stage=...)
    dataset = prepare_feature_cache(model, split, cfg.data.feature_cache, do_normalize, return_mask, rank=..., ...)
    use_cached_features(model)       # the encoder now passes a 3-D input (cached features) through
    loader = DataLoader(dataset, batch_sampler=..., collate_fn=FeatureCollator(return_attention_mask))

Layout: `<dir>/<encoder fingerprint>/<2 hex>/<utterance key>.safetensors`, each file one array
[frames, conv_dim[-1]] (float32, or float16 when asked) with the utterance's id and sample count as
metadata, plus `encoder.json` describing the fingerprint. The encoder fingerprint hashes the conv
encoder's weights, its architecture, the feature extractor's normalisation and the storage dtype, so
another checkpoint gets another folder and never reads stale features (after `--resume` the loaded
weights are checked against it). The utterance key hashes the id, the audio path and the file's size
and mtime (or the embedded audio bytes): corpora sharing ids do not collide, an edited file is
recomputed. Files are written under a temporary name and renamed, so an interrupted fill resumes.

Processes: every rank fills its share of what is missing before `accelerator.prepare` (DDP, ZeRO-2),
then all read everything; evaluation keeps reading audio. ZeRO-3 is refused (the encoder's weights
are sharded), as are a trained encoder (its output changes every step) and a streamed train split.

Exactness. A cached batch is the uncached one with the encoder's output swapped in: the features are
padded to the frames of the batch's longest utterance (`_get_feat_extract_output_lengths`, what the
encoder makes of the padded audio), and the batch carries the same sample-level attention mask when
the model takes one. SpecAugment therefore draws its spans with the same numpy calls on the same
shapes, and dropout the same torch calls: the losses equal the uncached run's (measured <= 1e-6 in
tests/test_feature_cache.py), with SpecAugment and dropout on too. One limit, from the model, not the
cache: a group-norm encoder (wav2vec2-base style) normalises each channel over the whole padded
input, so what it outputs for an utterance depends on the padding its batch adds, and a model without
an attention mask lets its transformer see the padding frames. The cache stores each utterance's own
features (what inference on it alone sees) and pads with zeros, which equals the uncached run on
unpadded batches only; the duration sampler pads ~2%, and a warning says so at start.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import shutil
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import numpy as np
import torch

from asr.collate import pad_labels
from asr.config import ConfigError
from asr.constants import SAMPLE_RATE
from asr.datasets import SpeechDataset
from asr.files import atomic_path, write_text_atomic
from asr.model import frames_fn_for

logger = logging.getLogger(__name__)

CACHE_VERSION = 1  # bump when what a cached file holds, or how it is computed, changes
_DTYPES = {"float32": np.float32, "float16": np.float16}
_KEY_HEX = 24  # utterance key length: 96 bits, no collision in any corpus
GB = 1e9  # the limit is in decimal gigabytes, as disks are sold


@dataclass
class FeatureCacheConfig:
    """The frozen conv encoder's per-utterance output on disk (training only; dev is read as audio)."""

    enabled: bool = False  # skip the frozen conv encoder in training steps; needs model.freeze_feature_encoder
    dir: str = "data/feature_cache"  # one folder per conv encoder (weights + feature-extractor settings)
    max_gb: float = 50.0  # refuse to start when the train split's features would take more (estimate logged)
    dtype: Literal["float32", "float16"] = "float32"  # float16 halves the disk; losses then differ from uncached

    def __post_init__(self) -> None:
        if self.max_gb <= 0:
            raise ValueError(f"data.feature_cache.max_gb must be > 0, got {self.max_gb}")


@dataclass(frozen=True)
class FillReport:
    """What `prepare_feature_cache` found and did on this process."""

    utterances: int  # in the split
    reused: int  # already cached before this run
    computed: int  # computed by this process
    estimated_bytes: int  # the whole split's features on disk
    seconds: float = 0.0  # wall time of the estimate and fill, barriers included (every process waits for all)


def check_feature_cache(cfg: FeatureCacheConfig, *, freeze_feature_encoder: bool, streaming: bool,
                        zero_stage: int | None) -> None:
    """Refuses (ConfigError, one sentence naming the fix) a cache that cannot work with this run.

    An error rather than a warning and the cache off: a run asked to skip the encoder that silently
    runs it would be a third slower than planned, with a saved config claiming otherwise.
    """
    if not cfg.enabled:
        return
    if not freeze_feature_encoder:
        raise ConfigError("data.feature_cache.enabled=true needs model.freeze_feature_encoder=true: a trained conv "
                          "encoder changes its output every step, so cached features would be stale; freeze the "
                          "encoder or set data.feature_cache.enabled=false")
    if streaming:
        raise ConfigError("data.feature_cache needs a prepared train split, but data.train.streaming=true; set "
                          "data.train.streaming=false or data.feature_cache.enabled=false")
    if zero_stage == 3:
        raise ConfigError("data.feature_cache does not work with DeepSpeed ZeRO-3: the conv encoder's weights are "
                          "sharded across ranks, so no rank can compute or fingerprint its features alone; use DDP "
                          "or ZeRO-2 (a frozen encoder has no optimizer state to shard), or set "
                          "data.feature_cache.enabled=false")


# ------------------------------------------------------------------------------------------- model
class CachedFeatureEncoder(torch.nn.Module):
    """The model's conv feature encoder, passing already computed features [B, C, T] through unchanged.

    Audio [B, S] still goes through the convolutions (evaluation reads audio). The conv layers stay
    registered under the same name, so state dicts, checkpoints and exported models are unchanged.
    """

    def __init__(self, encoder: torch.nn.Module):
        super().__init__()
        self.conv_layers = encoder.conv_layers  # the same modules, so state_dict keys do not change
        self.__dict__["encoder"] = encoder  # not registered as a submodule, or every weight would be listed twice
        if set(self.state_dict()) != set(encoder.state_dict()):
            extra = sorted(set(encoder.state_dict()) - set(self.state_dict()))
            raise ValueError(f"the conv feature encoder has weights outside conv_layers ({extra[:3]}); "
                             "set data.feature_cache.enabled=false for this model type")

    def train(self, mode: bool = True) -> CachedFeatureEncoder:
        super().train(mode)
        self.encoder.training = mode
        return self

    def forward(self, input_values: torch.Tensor) -> torch.Tensor:
        if input_values.dim() == 3:  # [B, C, T]: the encoder's output, from the cache
            return input_values
        return self.encoder(input_values)


def _feature_encoder(model: torch.nn.Module) -> torch.nn.Module:
    """The conv feature encoder of a wav2vec2-style CTC model (`base_model.feature_extractor`)."""
    base = getattr(model, "base_model", model)
    encoder = getattr(base, "feature_extractor", None)
    if encoder is None or not hasattr(encoder, "conv_layers"):
        raise ValueError(f"{type(model).__name__} has no wav2vec2-style conv feature encoder "
                         "(feature_extractor.conv_layers); set data.feature_cache.enabled=false")
    return encoder


def use_cached_features(model: torch.nn.Module) -> None:
    """Lets `model(input_values=features)` take cached encoder output [B, C, T] (audio [B, S] still works)."""
    base = getattr(model, "base_model", model)
    encoder = _feature_encoder(model)
    if not isinstance(encoder, CachedFeatureEncoder):
        base.feature_extractor = CachedFeatureEncoder(encoder)


def encoder_settings(model: torch.nn.Module, do_normalize: bool, dtype: str) -> dict[str, Any]:
    """Everything besides the weights that changes the cached features."""
    config = model.config
    keys = ("model_type", "conv_dim", "conv_kernel", "conv_stride", "conv_bias", "feat_extract_norm",
            "feat_extract_activation", "num_feat_extract_layers")
    settings = {key: getattr(config, key, None) for key in keys}
    return {"version": CACHE_VERSION, **settings, "do_normalize": do_normalize, "dtype": dtype}


def encoder_fingerprint(model: torch.nn.Module, do_normalize: bool, dtype: str) -> str:
    """Hash of the conv encoder's weights (bytes, names, shapes) and `encoder_settings`; 16 hex digits."""
    digest = hashlib.blake2b(digest_size=8)
    digest.update(json.dumps(encoder_settings(model, do_normalize, dtype), sort_keys=True, default=str).encode())
    for name, tensor in sorted(_feature_encoder(model).state_dict().items()):
        array = tensor.detach().cpu().contiguous()
        digest.update(f"{name}:{array.dtype}:{tuple(array.shape)}".encode())
        digest.update(array.view(torch.uint8).numpy().tobytes() if array.numel() else b"")
    return digest.hexdigest()


@torch.no_grad()
def encode_audio(model: torch.nn.Module, samples: np.ndarray) -> np.ndarray:
    """The conv encoder's output for one unpadded utterance: float32 [frames, conv_dim[-1]]."""
    encoder = _feature_encoder(model)
    device = next(encoder.parameters()).device
    features = encoder(torch.from_numpy(np.ascontiguousarray(samples, dtype=np.float32))[None].to(device))
    return features[0].transpose(0, 1).float().cpu().numpy()  # [C, T] -> [T, C]


# ------------------------------------------------------------------------------------------- store
class FeatureCache:
    """One conv encoder's per-utterance features under `<root>/<fingerprint>/`.

    Args:
        root: `data.feature_cache.dir`.
        fingerprint: `encoder_fingerprint` of the model.
        channels: conv_dim[-1], the feature size.
        frames_fn: samples -> frames of the model (a stored array must have that many rows).
        dtype: storage dtype, "float32" or "float16"; `load` always returns float32.
    """

    def __init__(self, root: str | os.PathLike, fingerprint: str, channels: int,
                 frames_fn: Callable[[int], int], dtype: str = "float32"):
        if dtype not in _DTYPES:
            raise ValueError(f"feature cache dtype must be one of {sorted(_DTYPES)}, got {dtype!r}")
        self.folder = Path(root) / fingerprint
        self.fingerprint, self.channels, self.frames_fn, self.dtype = fingerprint, channels, frames_fn, dtype

    def path(self, key: str) -> Path:
        """File of utterance `key` (256 subfolders keep directories small)."""
        return self.folder / key[:2] / f"{key}.safetensors"

    def save(self, key: str, features: np.ndarray, samples: int, uid: str) -> None:
        """Stores features [frames, channels] of an utterance of `samples` samples, atomically."""
        from safetensors.numpy import save_file

        if features.shape != (self.frames_fn(samples), self.channels):
            raise ValueError(f"features of {uid} have shape {features.shape}, expected "
                             f"({self.frames_fn(samples)}, {self.channels}) for {samples} samples")
        path = self.path(key)
        with atomic_path(path) as tmp:
            save_file({"features": np.ascontiguousarray(features, dtype=_DTYPES[self.dtype])}, str(tmp),
                      metadata={"id": uid, "samples": str(int(samples))})

    def load(self, key: str) -> tuple[np.ndarray, int] | None:
        """(float32 features [frames, channels], samples), or None when missing or damaged."""
        from safetensors import safe_open

        path = self.path(key)
        try:
            with safe_open(str(path), framework="np") as f:
                samples = int(f.metadata()["samples"])
                features = f.get_tensor("features")
        except FileNotFoundError:
            return None
        except (OSError, ValueError, KeyError, TypeError) as e:  # a damaged file costs one item, not the run
            logger.warning("ignoring the damaged cached features %s (%s)", path, e)
            return None
        if features.shape != (self.frames_fn(samples), self.channels):
            logger.warning("ignoring cached features %s: shape %s does not match %d samples", path, features.shape,
                           samples)
            return None
        return features.astype(np.float32, copy=False), samples

    def write_description(self, settings: dict[str, Any]) -> None:
        """`encoder.json`: what the fingerprint covers, for a human looking at the folder."""
        target = self.folder / "encoder.json"
        if not target.exists():
            write_text_atomic(target, json.dumps(settings, indent=2, default=str))


def utterance_keys(table: Any) -> list[str]:
    """Per row of a prepared table: hash of id, audio path, and the file's size and mtime (or its bytes)."""
    keys = []
    for rows in table.select_columns(["id", "audio_path", "audio_bytes"]).iter(batch_size=1000):
        for uid, path, data in zip(rows["id"], rows["audio_path"], rows["audio_bytes"]):
            digest = hashlib.blake2b(json.dumps([uid, path]).encode(), digest_size=_KEY_HEX // 2)
            if data is not None:
                digest.update(hashlib.blake2b(data, digest_size=16).digest())
            elif path is not None:
                try:
                    st = os.stat(path)
                    digest.update(f"{st.st_size}:{st.st_mtime_ns}".encode())
                except OSError:
                    digest.update(b"missing")  # unreadable at fill time too: the item is skipped
            keys.append(digest.hexdigest())
    return keys


def estimate_bytes(samples: Sequence[int], frames_fn: Callable[[int], int], channels: int, dtype: str) -> int:
    """Disk the features of utterances of `samples` samples take: frames x channels x bytes, summed."""
    frames = sum(frames_fn(int(n)) for n in samples)
    return frames * channels * np.dtype(_DTYPES[dtype]).itemsize


# ------------------------------------------------------------------------------------------- data
class CachedFeatureDataset(torch.utils.data.Dataset):
    """Item i of a prepared table with its cached encoder output instead of its audio.

    Item: {"features": float32 [frames, channels], "samples": int, "labels": [L], "id": str}, or None
    (with a warning) when the utterance has no cached features (its audio failed to decode at fill time).
    """

    def __init__(self, table: Any, cache: FeatureCache, keys: Sequence[str], report: FillReport | None = None):
        if len(keys) != len(table):
            raise ValueError(f"{len(keys)} keys for a table of {len(table)} rows; compute them with utterance_keys")
        self.table = table.select_columns(["id", "labels"])  # never read the audio column
        self.cache, self.keys, self.report = cache, list(keys), report

    def __len__(self) -> int:
        return len(self.table)

    def __getitem__(self, index: int) -> dict[str, Any] | None:
        row = self.table[int(index)]
        loaded = self.cache.load(self.keys[int(index)])
        if loaded is None:
            logger.warning("skipping %s: no cached features in %s", row["id"], self.cache.folder)
            return None
        features, samples = loaded
        return {"features": features, "samples": samples, "labels": list(row["labels"]), "id": row["id"]}


@dataclass(frozen=True)
class FeatureCollator:
    """Pads cached features into the batch `CTCCollator` + the conv encoder would have made from the audio.

    Returns:
        `input_values`: float32 [B, C, T], the features zero-padded to T = the longest item's frames
        (the encoder's output length for the padded audio); `attention_mask`: int64 [B, S], 1 on the
        S = max samples of audio (only if `return_attention_mask`, as for the audio batch);
        `labels`: int64 [B, L] padded with `label_pad_id`; `input_lengths`: int64 [B] samples per item.
    """

    return_attention_mask: bool
    label_pad_id: int = -100

    def __call__(self, items: Sequence[dict[str, Any]]) -> dict[str, torch.Tensor]:
        if not items:
            raise ValueError("items is empty; the batch sampler must not yield empty batches.")
        feats = [item["features"] for item in items]
        samples = np.fromiter((item["samples"] for item in items), dtype=np.int64, count=len(items))
        values = np.zeros((len(feats), feats[0].shape[1], max(f.shape[0] for f in feats)), dtype=np.float32)
        for row, f in zip(values, feats):
            row[:, : f.shape[0]] = f.T
        batch = {"input_values": torch.from_numpy(values)}
        if self.return_attention_mask:
            mask = np.arange(int(samples.max()), dtype=np.int64)[None, :] < samples[:, None]
            batch["attention_mask"] = torch.from_numpy(mask.astype(np.int64))
        batch["labels"] = torch.from_numpy(pad_labels([item["labels"] for item in items], self.label_pad_id))
        batch["input_lengths"] = torch.from_numpy(samples)
        return batch


class _AudioItems(torch.utils.data.Dataset):
    """(row index, decoded samples or None) for some rows of a prepared table."""

    def __init__(self, table: Any, indices: Sequence[int], do_normalize: bool):
        self.audio, self.indices = SpeechDataset(table, do_normalize), list(indices)

    def __len__(self) -> int:
        return len(self.indices)

    def __getitem__(self, i: int) -> tuple[int, np.ndarray | None]:
        item = self.audio[self.indices[i]]
        return self.indices[i], None if item is None else item["input_values"]


def _as_is(item: Any) -> Any:
    """Collate function that leaves an item as the dataset returned it (numpy stays numpy)."""
    return item


def _fill(cache: FeatureCache, model: torch.nn.Module, table: Any, keys: Sequence[str], indices: Sequence[int],
          do_normalize: bool, num_workers: int, progress: bool) -> int:
    """Computes and stores the features of rows `indices`; returns how many were stored."""
    from tqdm.auto import tqdm

    if not indices:
        return 0
    ids = table.select_columns(["id"])
    # Its own generator: the DataLoader must not draw from the global RNG, or a run that fills the
    # cache would see other dropout/SpecAugment draws than one that finds it full.
    loader = torch.utils.data.DataLoader(_AudioItems(table, indices, do_normalize), batch_size=None,
                                         collate_fn=_as_is, num_workers=num_workers,
                                         generator=torch.Generator().manual_seed(0))
    stored = 0
    for index, samples in tqdm(loader, total=len(indices), desc="feature cache", disable=not progress):
        if samples is None:  # unreadable now: SpeechDataset warned, and training skips the item too
            continue
        cache.save(keys[index], encode_audio(model, samples), len(samples), ids[int(index)]["id"])
        stored += 1
    return stored


def prepare_feature_cache(model: torch.nn.Module, split: Any, cfg: FeatureCacheConfig, do_normalize: bool,
                          return_attention_mask: bool, *, rank: int = 0, world_size: int = 1, local_rank: int = 0,
                          local_world_size: int = 1, barrier: Callable[[], Any] = lambda: None, num_workers: int = 0,
                          progress: bool = False) -> CachedFeatureDataset:
    """Estimates, checks the limit, fills what is missing (this process's share) and returns the dataset.

    Call on every process with the model the run trains (built, not yet wrapped by Accelerate):
    rank r computes the missing utterances i with i % world_size == r; after a barrier, what is still
    missing (a machine that does not share `cfg.dir` with the others) is split among the processes of
    each machine. Every process then finds every utterance.

    Args:
        model: the CTC model with its frozen conv encoder.
        split: the prepared train split (`asr.data.PreparedSplit`).
        cfg: `data.feature_cache`.
        do_normalize: the feature extractor's per-utterance normalisation (as the audio dataset applies it).
        return_attention_mask: whether batches carry an attention mask (only to warn where padding matters).
        rank, world_size, local_rank, local_world_size: this process's place among all and on its machine.
        barrier: waits for every process (`accelerator.wait_for_everyone`).
        num_workers: DataLoader workers decoding audio for the fill.
        progress: show a tqdm bar while filling.

    Raises:
        ConfigError: the estimate exceeds `cfg.max_gb`.
        ValueError: the model has no wav2vec2-style conv encoder.
    """
    started = time.perf_counter()
    frames_fn = frames_fn_for(model.config)
    channels = int(model.config.conv_dim[-1])
    cache = FeatureCache(cfg.dir, encoder_fingerprint(model, do_normalize, cfg.dtype), channels, frames_fn, cfg.dtype)
    samples = [round(d * SAMPLE_RATE) for d in split.durations]
    frames = sum(frames_fn(n) for n in samples)
    total = estimate_bytes(samples, frames_fn, channels, cfg.dtype)
    logger.info("feature cache: %d utterances, %d frames x %d channels x %d bytes (%s) = %.3g GB (limit %g GB) in %s",
                len(samples), frames, channels, np.dtype(_DTYPES[cfg.dtype]).itemsize, cfg.dtype, total / GB,
                cfg.max_gb, cache.folder)
    if total > cfg.max_gb * GB:
        raise ConfigError(f"the feature cache of the train split needs {total / GB:.3g} GB ({frames} frames x "
                          f"{channels} channels, {cfg.dtype}), over data.feature_cache.max_gb={cfg.max_gb:g}; raise "
                          "data.feature_cache.max_gb, set data.feature_cache.dtype=float16 (half the size), or set "
                          "data.feature_cache.enabled=false")
    _warn_if_inexact(model, return_attention_mask)
    keys = utterance_keys(split.table)
    missing = [i for i, key in enumerate(keys) if not cache.path(key).is_file()]
    barrier()  # every process has looked before any writes: they agree on what is missing
    if rank == 0:
        cache.write_description({**encoder_settings(model, do_normalize, cfg.dtype), "fingerprint": cache.fingerprint})
    new_bytes = estimate_bytes([samples[i] for i in missing], frames_fn, channels, cfg.dtype)
    free = shutil.disk_usage(_existing_parent(cache.folder)).free
    if new_bytes > free:  # a warning: free space differs between machines, and an error on one rank hangs the rest
        logger.warning("the feature cache needs %.2f GB more but %s has %.2f GB free; the fill may fail",
                       new_bytes / GB, cache.folder, free / GB)
    computed = _fill(cache, model, split.table, keys, [i for i in missing if i % world_size == rank], do_normalize,
                     num_workers, progress)
    barrier()
    if world_size > 1:
        still = [i for i in missing if not cache.path(keys[i]).is_file()]
        barrier()
        computed += _fill(cache, model, split.table, keys, still[local_rank::local_world_size], do_normalize,
                          num_workers, progress)
        barrier()
    report = FillReport(len(keys), len(keys) - len(missing), computed, total, time.perf_counter() - started)
    logger.info("feature cache: %d reused, %d computed by this process (%d processes) in %.1f s", report.reused,
                computed, world_size, report.seconds)
    return CachedFeatureDataset(split.table, cache, keys, report)


def check_model_matches(dataset: CachedFeatureDataset, model: torch.nn.Module, do_normalize: bool) -> None:
    """Raises RuntimeError when `model`'s conv encoder (e.g. after loading a checkpoint) is not the cache's."""
    found = encoder_fingerprint(model, do_normalize, dataset.cache.dtype)
    if found != dataset.cache.fingerprint:
        raise RuntimeError(f"the model's conv encoder (fingerprint {found}) is not the one the feature cache was "
                           f"filled with ({dataset.cache.fingerprint}): the checkpoint holds other encoder weights; "
                           "resume with the config that wrote it, or set data.feature_cache.enabled=false")


def _warn_if_inexact(model: torch.nn.Module, return_attention_mask: bool) -> None:
    """Warns when padded batches make cached training differ from uncached (see the module docstring)."""
    reasons = []
    if getattr(model.config, "feat_extract_norm", "group") == "group":
        reasons.append("its conv encoder group-normalises over each padded input")
    if not return_attention_mask:
        reasons.append("it takes no attention mask, so its transformer sees the padding frames")
    if reasons:
        logger.warning("feature cache: this model's uncached output for an utterance depends on its batch's padding "
                       "(%s); the cache holds each utterance's own features, padded with zeros, which equals "
                       "uncached training on unpadded batches only", "; ".join(reasons))


def _existing_parent(path: Path) -> Path:
    """`path` or its nearest existing ancestor (for disk_usage before the folder exists)."""
    while not path.exists() and path.parent != path:
        path = path.parent
    return path
