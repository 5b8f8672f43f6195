"""Building a CTC model: any CTC-capable checkpoint (hub id or local dir), or an architecture from scratch.

Two kinds of front end: raw-waveform models (wav2vec2, HuBERT, WavLM, XLS-R: a conv encoder reads
`input_values` [B, S]) and filterbank models (wav2vec2-bert: a conformer reads `input_features`
[B, T, 160], log-mel frames stacked in pairs by `SeamlessM4TFeatureExtractor`). Both emit one frame
per 20 ms (320 samples); `frames_fn_for` and `output_frames` give each model's exact count.

The CTC head is (re)sized to our vocabulary with `pad_token_id` as the blank; the loss is the
mean over the batch with `ctc_zero_infinity` so one impossible alignment cannot make it infinite.
"""

from __future__ import annotations

import copy
import functools
import json
import logging
import math
import shutil
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from asr.config import require

logger = logging.getLogger(__name__)

REPLACED: dict[str, Any] = {}  # transformers functions swapped for faster equivalents, by name (see below)
WEIGHT_SUFFIXES = (".safetensors", ".bin", ".pt", ".pth", ".ckpt", ".h5", ".msgpack")  # PyTorch/TF/Flax weights


@dataclass
class ModelConfig:
    """Which network, and the regularisation it trains with."""

    name_or_path: str | None = None  # hub id or local dir of a CTC/pretraining checkpoint (wav2vec2, HuBERT, WavLM, XLS-R)
    architecture: dict[str, Any] | None = None  # from scratch: config kwargs incl. model_type (used when name_or_path is None)
    freeze_feature_encoder: bool = True  # the conv encoder is already good after pretraining; saves ~1/3 of a step
    gradient_checkpointing: bool = False  # recompute activations in backward: less memory, ~30% more compute
    mask_time_prob: float = 0.05  # SpecAugment: fraction of frames starting a time mask
    mask_time_length: int = 10  # SpecAugment: frames per time mask
    mask_feature_prob: float = 0.0  # SpecAugment: fraction of channels starting a feature mask
    mask_feature_length: int = 10  # SpecAugment: channels per feature mask
    hidden_dropout: float = 0.1  # dropout on the transformer layers' outputs (Hugging Face's wav2vec2 default)
    activation_dropout: float = 0.0  # dropout inside the feed-forward blocks
    attention_dropout: float = 0.1  # dropout on the attention probabilities (Hugging Face's wav2vec2 default)
    feat_proj_dropout: float = 0.0  # dropout on the projected conv features (Hugging Face's wav2vec2 default)
    final_dropout: float = 0.0  # dropout before the CTC head
    layerdrop: float = 0.0  # >0 skips whole layers at random: with DDP it needs find_unused_parameters (see train)
    ctc_zero_infinity: bool = True  # an infeasible alignment gives loss 0 and no gradient instead of inf
    trust_remote_code: bool = False  # never run code from a checkpoint unless you opt in
    extra: dict[str, Any] = field(default_factory=dict)  # any other config attribute to set on the model

    def __post_init__(self) -> None:
        for name in ("mask_time_prob", "mask_feature_prob"):
            value = getattr(self, name)
            require(math.isfinite(value) and 0 <= value <= 1, f"model.{name}", value, "a probability in [0, 1]")
        for name in ("hidden_dropout", "activation_dropout", "attention_dropout", "feat_proj_dropout",
                     "final_dropout", "layerdrop"):
            value = getattr(self, name)
            require(math.isfinite(value) and 0 <= value < 1, f"model.{name}", value, "a probability in [0, 1)")
        for name in ("mask_time_length", "mask_feature_length"):
            require(getattr(self, name) >= 1, f"model.{name}", getattr(self, name), "1 or more")


# Model types whose input is a filterbank (SeamlessM4TFeatureExtractor), not the waveform.
FILTERBANK_MODEL_TYPES = frozenset({"wav2vec2-bert"})
FBANK_WINDOW, FBANK_HOP = 400, 160  # samples: 25 ms Kaldi-style frames every 10 ms at 16 kHz
FBANK_STRIDE = 2  # SeamlessM4TFeatureExtractor stacks 2 frames: one model frame per 20 ms


def takes_filterbank(config: Any) -> bool:
    """Whether a transformers config's model reads log-mel features instead of the waveform."""
    return getattr(config, "model_type", None) in FILTERBANK_MODEL_TYPES


def filterbank_output_frames(num_samples: int, adapter: tuple[int, int, int] = (0, 0, 0)) -> int:
    """Output frames of a filterbank model for `num_samples` of audio.

    SeamlessM4TFeatureExtractor makes 1 + (S - 400) // 160 frames and its attention mask keeps every
    second one after stacking; an adapter (`add_adapter`) then applies `layers` convolutions of
    (kernel, stride) padded by kernel // 2, as `Wav2Vec2BertModel._get_feat_extract_output_lengths`.

    Args:
        adapter: (layers, kernel, stride); layers 0 without an adapter.
    """
    if num_samples < FBANK_WINDOW:
        return 0
    frames = (1 + (num_samples - FBANK_WINDOW) // FBANK_HOP) // FBANK_STRIDE
    layers, kernel, stride = adapter
    for _ in range(layers):
        frames = (frames + 2 * (kernel // 2) - kernel) // stride + 1
    return max(frames, 0)


def conv_output_frames(num_samples: int, kernels: tuple[int, ...], strides: tuple[int, ...]) -> int:
    """Output frames of a stack of unpadded 1-D convolutions (the wav2vec2 feature encoder)."""
    length = num_samples
    for k, s in zip(kernels, strides):
        length = (length - k) // s + 1
        if length <= 0:
            return 0
    return length


def frames_fn_for(config: Any) -> functools.partial:
    """A picklable `samples -> frames` function with the model's real frame rate."""
    if takes_filterbank(config):
        adapter = ((config.num_adapter_layers, config.adapter_kernel_size, config.adapter_stride)
                   if getattr(config, "add_adapter", False) else (0, 0, 0))
        return functools.partial(filterbank_output_frames, adapter=adapter)
    return functools.partial(
        conv_output_frames, kernels=tuple(config.conv_kernel), strides=tuple(config.conv_stride)
    )


def seconds_per_frame(config: Any) -> float:
    """The model's output frame period: 20 ms for wav2vec2 (320-sample conv stride) and wav2vec2-bert
    (2 stacked 10 ms frames), times the adapter's strides when it has one."""
    from asr.constants import SAMPLE_RATE

    if takes_filterbank(config):
        samples = FBANK_HOP * FBANK_STRIDE
        if getattr(config, "add_adapter", False):
            samples *= config.adapter_stride ** config.num_adapter_layers
        return samples / SAMPLE_RATE
    return math.prod(config.conv_stride) / SAMPLE_RATE


def output_frames(model, num_samples):
    """Valid output frames [B] of `model` (unwrapped) for utterances of `num_samples` [B] samples."""
    if takes_filterbank(model.config):
        fbank = (1 + (num_samples - FBANK_WINDOW).clamp(min=-FBANK_HOP) // FBANK_HOP) // FBANK_STRIDE
        return model._get_feat_extract_output_lengths(fbank)
    return model._get_feat_extract_output_lengths(num_samples)


def load_model_config(cfg: ModelConfig):
    """The checkpoint's (or the from-scratch) transformers config, before our vocab/regularisation changes."""
    from transformers import AutoConfig

    if cfg.name_or_path:
        try:
            return AutoConfig.from_pretrained(cfg.name_or_path, trust_remote_code=cfg.trust_remote_code)
        except OSError as e:
            raise ValueError(
                f"model.name_or_path {cfg.name_or_path!r} is neither a local model directory nor a reachable hub id "
                f"({str(e).splitlines()[0]}); check the path, or set HF_HUB_OFFLINE=0 with network access"
            ) from e
    if cfg.architecture:
        arch = dict(cfg.architecture)
        return AutoConfig.for_model(arch.pop("model_type", "wav2vec2"), **arch)
    raise ValueError("set model.name_or_path (a checkpoint) or model.architecture (a config from scratch)")


def feature_extractor_settings(cfg: ModelConfig, config) -> tuple[bool, bool]:
    """(return_attention_mask, do_normalize) as the checkpoint's feature extractor says.

    Without a saved feature extractor, follow the architecture: models with a layer-norm feature
    encoder (large-lv60, XLS-R, WavLM-large) take an attention mask; group-norm ones (base) are
    trained on zero-padded audio without one. Filterbank models take a mask and the raw waveform
    (their feature extractor normalises each mel bin per utterance).
    """
    if takes_filterbank(config):
        return True, False
    if cfg.name_or_path:
        from transformers import AutoFeatureExtractor

        try:
            fe = AutoFeatureExtractor.from_pretrained(cfg.name_or_path)
            return bool(getattr(fe, "return_attention_mask", False)), bool(getattr(fe, "do_normalize", True))
        except (OSError, ValueError):
            logger.info("no feature extractor in %s: deriving its settings from the model config", cfg.name_or_path)
    return getattr(config, "feat_extract_norm", "group") == "layer", True


def use_fast_relative_key_attention() -> None:
    """Makes wav2vec2-bert's "relative_key" attention bias cheaper to compute, with the same numbers.

    transformers looks up an embedding for every (query, key) pair's distance, an [L, R, head_size] tensor per
    layer, and contracts it with the queries (`einsum("bhld,lrd->bhlr")`): O(L R d) time and memory. The
    distances are clipped to [-left_max, right_max], so there are only left_max + right_max + 1 embeddings:
    scoring each query against those ([B, H, L, P], one small matmul) and picking each pair's score by its
    distance (a gather) gives the same products. Measured on the shipped base (8-s utterances, 1 thread):
    logits identical (max |diff| 0.0), a training step 30% faster; in ONNX that Einsum was 39% of int8
    inference time. Called by every loader here (build_model, load_model, ONNX export); idempotent. A
    transformers version without the function is left as it is.
    """
    from transformers.models.wav2vec2_bert import modeling_wav2vec2_bert as w2v_bert

    original = getattr(w2v_bert, "_apply_relative_key_position_encoding", None)
    if original not in (None, _relative_key_bias):
        REPLACED["relative_key"] = original  # kept for the test that compares the two
        w2v_bert._apply_relative_key_position_encoding = _relative_key_bias


def _relative_key_bias(module, query, key):
    """query [B, H, L, d], key [B, H, R, d] -> (query, bias [B, H, L, R]); transformers' signature and result."""
    import torch

    batch, heads, length, _ = query.shape
    key_length = key.shape[2]
    left, right = module.left_max_position_embeddings, module.right_max_position_embeddings
    per_distance = torch.matmul(query, module.distance_embedding.weight.to(query.dtype).t())  # [B, H, L, P]
    distance = (torch.arange(key_length, device=query.device)[None, :]
                - torch.arange(length, device=query.device)[:, None])  # [L, R]: key position - query position
    index = (distance.clamp(-left, right) + left).expand(batch, heads, length, key_length)
    return query, torch.gather(per_distance, 3, index) * module.scaling


def build_model(cfg: ModelConfig, vocab: dict[str, int], pad_token_id: int):
    """Loads or creates the CTC model, sized to `vocab`, with the config's regularisation.

    Raises:
        ValueError: no model given, the pad id is not in the vocab, or the checkpoint is not CTC-capable.
    """
    from transformers import AutoModelForCTC

    use_fast_relative_key_attention()
    if pad_token_id not in vocab.values():
        raise ValueError(f"pad_token_id {pad_token_id} is not an id of the vocabulary; [PAD] must be the CTC blank")
    overrides = dict(
        vocab_size=len(vocab),
        pad_token_id=pad_token_id,
        ctc_loss_reduction="mean",
        ctc_zero_infinity=cfg.ctc_zero_infinity,
        mask_time_prob=cfg.mask_time_prob,
        mask_time_length=cfg.mask_time_length,
        mask_feature_prob=cfg.mask_feature_prob,
        mask_feature_length=cfg.mask_feature_length,
        hidden_dropout=cfg.hidden_dropout,
        activation_dropout=cfg.activation_dropout,
        attention_dropout=cfg.attention_dropout,
        feat_proj_dropout=cfg.feat_proj_dropout,
        final_dropout=cfg.final_dropout,
        layerdrop=cfg.layerdrop,
        **cfg.extra,
    )
    config = load_model_config(cfg)
    old_vocab = getattr(config, "vocab_size", None)
    for key, value in overrides.items():
        setattr(config, key, value)
    if not cfg.name_or_path:
        model = AutoModelForCTC.from_config(config)
    else:
        try:
            # Weights load from safetensors, or .bin with torch.load(weights_only=True) (transformers' default).
            model = AutoModelForCTC.from_pretrained(
                cfg.name_or_path,
                config=config,
                ignore_mismatched_sizes=True,  # a new CTC head when our vocab differs from the checkpoint's
                trust_remote_code=cfg.trust_remote_code,
            )
        except ValueError as e:
            raise ValueError(
                f"{cfg.name_or_path} cannot be loaded as a CTC model ({e}); use a wav2vec2/HuBERT/WavLM/XLS-R checkpoint"
            ) from e
        if old_vocab != len(vocab):
            logger.info("new CTC head: checkpoint vocab %s -> ours %d", old_vocab, len(vocab))
    if cfg.freeze_feature_encoder and hasattr(model, "freeze_feature_encoder"):
        model.freeze_feature_encoder()
    elif cfg.freeze_feature_encoder:
        logger.info("%s has no conv feature encoder: model.freeze_feature_encoder has nothing to freeze",
                    config.model_type)
    if cfg.gradient_checkpointing:
        # Non-reentrant checkpointing works with frozen inputs and DDP; transformers 5 renamed the method.
        kwargs = {"use_reentrant": False}
        if hasattr(model, "activation_checkpointing_enable"):
            model.activation_checkpointing_enable(activation_checkpointing_kwargs=kwargs)
        else:
            model.gradient_checkpointing_enable(gradient_checkpointing_kwargs=kwargs)
    return model


def _write_beside(src: Path, dst: Path, model, state: dict | None = None, metrics: dict | None = None) -> None:
    """Writes `model` to `dst` with every non-weight file of `src` (processor, card, LM folder) beside it;
    with `metrics`, those replace metrics.json and the card is rewritten from them.

    Built in a temporary directory and renamed, so `dst` is never half-written.
    """
    from asr.files import replace_dir
    from asr.model_card import METRICS_FILE, write_model_card

    tmp = dst.with_name(dst.name + ".tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    weights = {p.name for p in src.iterdir() if p.suffix in WEIGHT_SUFFIXES or p.name.endswith(".index.json")}
    # Only the top-level weights are rewritten: an LM folder's lm.bin is copied as it is.
    shutil.copytree(src, tmp, ignore=lambda d, names: [n for n in names if Path(d) == src and n in weights])
    model.save_pretrained(tmp, state_dict=state, safe_serialization=True)
    if metrics is not None:
        (tmp / METRICS_FILE).write_text(json.dumps(metrics, indent=2))
        write_model_card(tmp)
    replace_dir(tmp, dst)


def _load_exported(src: Path, dst: Path):
    """The float32 model of an exported model directory, in eval mode; a one-line error when it is none, or when
    `dst`, where it is to be written, is a file."""
    import torch
    from transformers import AutoModelForCTC

    if dst.exists() and not dst.is_dir():
        raise ValueError(f"{dst} is a file, not a directory; choose a directory to write the model to")
    if not (src / "config.json").is_file():
        raise ValueError(f"{src} has no config.json; pass the `model` directory a training run exported")
    use_fast_relative_key_attention()
    return AutoModelForCTC.from_pretrained(src, dtype=torch.float32).eval()


def _logit_change(model, dst: Path) -> tuple[float, str]:
    """Largest logit difference between `model` and the model saved in `dst` on one second of noise,
    and the dtype `dst` loads in."""
    import torch
    from transformers import AutoModelForCTC

    again = AutoModelForCTC.from_pretrained(dst).eval()
    generator = torch.Generator().manual_seed(0)
    if takes_filterbank(model.config):  # one second of normalised log-mel frames, stacked in pairs
        inputs = {"input_features": torch.randn(1, 50, model.config.feature_projection_input_dim, generator=generator)}
    else:
        inputs = {"input_values": torch.randn(1, 16000, generator=generator)}
    with torch.no_grad():
        diff = (model(**inputs).logits - again(**inputs).logits).abs().max().item()
    return diff, str(next(again.parameters()).dtype)


def publish_model(src: str | Path, dst: str | Path, dtype: str = "float16") -> dict[str, Any]:
    """Copies an exported model directory with its weights stored in `dtype` (a compact checkpoint to ship).

    The config keeps `dtype: float32`, so `AutoModelForCTC.from_pretrained(dst)` (and our training
    and inference code) load the weights back in float32 whatever transformers' default dtype is.

    Returns:
        {"bytes": size of the weights file, "params": parameter count, "max_abs_diff": largest
        logit difference between `src` and `dst` on one second of noise}.
    """
    import torch

    src, dst = Path(src), Path(dst)
    if dtype not in ("float16", "bfloat16", "float32"):
        raise ValueError(f"dtype must be float16, bfloat16 or float32, got {dtype!r}")
    model = _load_exported(src, dst)
    state = {k: v.to(getattr(torch, dtype)).contiguous() for k, v in model.state_dict().items()}
    model.config.dtype = "float32"
    _write_beside(src, dst, model, state)
    diff, loaded_dtype = _logit_change(model, dst)
    return {
        "bytes": (dst / "model.safetensors").stat().st_size,
        "params": sum(p.numel() for p in model.parameters()),
        "max_abs_diff": diff,
        "loaded_dtype": loaded_dtype,
    }


def deepen_model(src: str | Path, dst: str | Path, num_layers: int) -> dict[str, Any]:
    """Grows a trained pre-LN transformer to `num_layers` layers without changing what it computes.

    Each added layer is a copy of the layer before it whose two residual branches end in zeroed
    projections (attention `out_proj`, feed-forward `output_dense`), so it starts as the identity
    and the grown model's logits equal the original's; training then uses the extra depth. The new
    layers are spread evenly between the old ones. Works for wav2vec2/HuBERT/WavLM-style encoders
    with `do_stable_layer_norm` (pre-LN); post-LN layers normalise the residual sum, so a zeroed
    branch is not the identity there, and they are refused.

    Returns:
        {"layers": (old, new), "params": (old, new), "max_abs_diff": largest logit change on noise}.
    """
    import torch

    src, dst = Path(src), Path(dst)
    model = _load_exported(src, dst)
    config = model.config
    if not getattr(config, "do_stable_layer_norm", False):
        raise ValueError(f"{src} is a post-LN encoder (do_stable_layer_norm false): an added layer cannot start "
                         "as the identity there; only pre-LN models (wav2vec2-large/XLS-R style) can be deepened")
    layers = model.base_model.encoder.layers
    old = len(layers)
    if num_layers <= old:
        raise ValueError(f"{src} already has {old} layers; pass --layers above {old}")
    params_before = sum(p.numel() for p in model.parameters())
    extra = num_layers - old
    grown = []
    for i, layer in enumerate(layers):
        grown.append(layer)
        for _ in range(extra * (i + 1) // old - extra * i // old):
            new = copy.deepcopy(layer)
            with torch.no_grad():
                for proj in (new.attention.out_proj, new.feed_forward.output_dense):
                    proj.weight.zero_()
                    proj.bias.zero_()
            grown.append(new)
    reference = copy.deepcopy(model)
    model.base_model.encoder.layers = torch.nn.ModuleList(grown)
    config.num_hidden_layers = num_layers
    _write_beside(src, dst, model)
    return {
        "layers": (old, num_layers),
        "params": (params_before, sum(p.numel() for p in model.parameters())),
        "max_abs_diff": _logit_change(reference, dst)[0],
    }


def average_checkpoints(run_dir: str | Path, dst: str | Path, last: int | None = None,
                        steps: Sequence[int] | None = None) -> dict[str, Any]:
    """Writes the mean of a run's checkpoints (its `last` newest, or those of `steps`) as a model directory.

    The directory is the run's exported model (`run_dir/model`: processor, normaliser, LM folder, training
    config) with the averaged weights; metrics.json records the steps averaged instead of one step's dev
    metrics. Checkpoints of any launch (one process, DDP, DeepSpeed ZeRO-1/2/3) are read without running code.

    Returns:
        {"steps": the steps averaged, "max_abs_diff": the largest logit difference between the average and
        the run's exported model on one second of noise}.
    """
    from asr.averaging import average_weights, averaged_metrics, select_checkpoints
    from asr.model_card import AVERAGED_KEY

    run_dir, dst = Path(run_dir), Path(dst)
    folders = select_checkpoints(run_dir, last, steps)
    exported = _load_exported(run_dir / "model", dst)
    model = copy.deepcopy(exported)
    model.load_state_dict(average_weights(folders, model), strict=True)
    metrics = averaged_metrics(run_dir / "model", folders)
    _write_beside(run_dir / "model", dst, model, metrics=metrics)
    return {"steps": metrics[AVERAGED_KEY]["steps"], "max_abs_diff": _logit_change(exported, dst)[0]}
