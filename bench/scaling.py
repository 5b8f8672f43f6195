"""Scaling on paper: expected fine-tuning throughput and memory per GPU for DDP, ZeRO-2 and ZeRO-3.

    $ .venv/bin/python bench/scaling.py --output runs/bench/
    $ .venv/bin/python bench/scaling.py --gpu-tflops 989 --mfu 0.35 --inter-node-gbps 400  # H100

No GPU is needed: every number is computed from the real models and the assumptions below, each
a command-line option whose default is printed with the table.

Compute. The models are built by this project's `asr.model.build_model` from the transformers
configs (`Wav2Vec2Config()` = wav2vec2-base; XLS-R 300M = 24 layers x 1024, 16 heads, FFN 4096,
pre-LN, layer-norm conv encoder) with a 32-token CTC head, on the `meta` device: shapes only, no
memory. Parameter counts come from those modules. One forward + backward of one utterance of
`--utterance-seconds` is run on the meta device under `torch.utils.flop_counter.FlopCounterMode`,
which counts the FLOPs of every matmul, attention product and convolution of the real graph (the
frozen conv encoder has no backward; with --gradient-checkpointing the recomputed forward counts).
FLOPs per second of audio = that count / utterance length; a step of `--seconds-per-gpu` of audio
per GPU costs that many times more, and runs at `--gpu-tflops` x `--mfu` FLOP/s.

Communication, per GPU per step, of S = trainable parameters x `--grad-bytes` gradient bytes, over
N GPUs (ring collectives move (N-1)/N of the buffer per GPU for a reduce-scatter or an all-gather):
- DDP: one all-reduce of the gradients = reduce-scatter + all-gather: 2 (N-1)/N x S;
- ZeRO-2: reduce-scatter of the gradients + all-gather of the updated parameter shards: the same
  volume as DDP (with parameters and gradients both in bf16);
- ZeRO-3: reduce-scatter of the gradients + an all-gather of the parameters in the forward and
  another in the backward: 3 (N-1)/N x S = 1.5x DDP.
Time = volume / bus bandwidth: `--intra-node-gbs` (NVLink, achieved all-reduce bus bandwidth) up to
`--gpus-per-node` GPUs, the node's network `--inter-node-gbps` beyond (a multi-node collective runs
at about the per-node NIC bandwidth). Communication hides behind up to `--overlap` x the compute
time (bucketed all-reduce during the backward, prefetched all-gathers); the rest adds to the step.

Memory per GPU: model states per the ZeRO paper (Rajbhandari et al. 2020) for mixed-precision Adam:
`--param-bytes` 2 (bf16 weights) + `--grad-bytes` 2 (bf16 gradients) + `--optimizer-bytes` 12
(fp32 master weights, momentum, variance) = 16 bytes per parameter under DDP; ZeRO-2 shards
gradients and optimizer states: 2 + 14/N; ZeRO-3 also the weights: 16/N. Frozen parameters (the
conv encoder) hold weights only. Activations come on top and depend on batch shape and
checkpointing: bench/memory.py measures them.

Throughput = N x seconds-per-GPU of audio per step time, in audio-hours per hour (= audio-seconds
per second); efficiency = throughput / (N x the 1-GPU throughput).
"""

from __future__ import annotations

import sys

if __package__ in (None, ""):  # run by path (python bench/scaling.py): the repository root, not bench/, goes first
    sys.path[0] = str(__import__("pathlib").Path(__file__).resolve().parents[1])

import argparse
import logging
import math
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from bench.common import ARCHITECTURES, ctc_vocab, markdown_table, write_report

logger = logging.getLogger("bench_scaling")

STRATEGIES = ("ddp", "zero2", "zero3")
MODELS = {"wav2vec2-base": "base", "xls-r-300m": "xlsr-300m"}  # table name -> bench.common.ARCHITECTURES key
GB = 1e9


@dataclass(frozen=True)
class Assumptions:
    """Everything the estimate assumes; each is a command-line option."""

    gpu_tflops: float = 312.0  # peak dense bf16 TFLOP/s per GPU (A100: 312; H100 SXM: 989)
    mfu: float = 0.3  # achieved share of the peak (model FLOPs utilisation): an assumption; calibrate it with
    # a real run's step time (data loading, padding and small kernels all lower it)
    gpus_per_node: int = 8
    intra_node_gbs: float = 230.0  # GB/s all-reduce bus bandwidth inside a node (A100 NVLink3, nccl-tests ~230)
    inter_node_gbps: float = 200.0  # Gb/s network per node (clouds: 100-400 Gb/s; DGX A100: 8 x 200)
    overlap: float = 0.5  # share of the compute time communication can hide behind
    seconds_per_gpu: float = 200.0  # audio seconds per GPU per optimizer step (~3.2 M samples, the fairseq recipe)
    utterance_seconds: float = 15.0  # utterance length the FLOPs are counted at (attention grows with its square)
    param_bytes: int = 2  # bf16 weights
    grad_bytes: int = 2  # bf16 gradients (what is communicated)
    optimizer_bytes: int = 12  # fp32 master weights + Adam momentum + variance

    def __post_init__(self) -> None:
        checks = {"gpu_tflops": self.gpu_tflops > 0, "mfu": 0 < self.mfu <= 1, "gpus_per_node": self.gpus_per_node >= 1,
                  "intra_node_gbs": self.intra_node_gbs > 0, "inter_node_gbps": self.inter_node_gbps > 0,
                  "overlap": 0 <= self.overlap <= 1, "seconds_per_gpu": self.seconds_per_gpu > 0,
                  "utterance_seconds": self.utterance_seconds > 0}
        bad = [name for name, ok in checks.items() if not ok]
        if bad:
            raise ValueError(f"Assumption(s) out of range: {', '.join(f'{n}={getattr(self, n)}' for n in bad)}; "
                             "rates must be positive, mfu in (0, 1], overlap in [0, 1].")


@dataclass(frozen=True)
class ModelCost:
    """What one model costs: parameters and FLOPs of a forward + backward per second of audio."""

    name: str
    params: int
    trainable: int
    flops_per_audio_second: float  # counted on the real graph (FlopCounterMode)
    rule_of_thumb_per_audio_second: float  # 6 x trainable params x frames per second, for comparison


@dataclass(frozen=True)
class Estimate:
    """One row: a model, a strategy, a GPU count."""

    model: str
    strategy: str
    gpus: int
    compute_seconds: float
    comm_seconds: float
    step_seconds: float
    audio_hours_per_hour: float
    efficiency: float  # vs N x one GPU
    memory_gb: float  # model states per GPU

# ------------------------------------------------------------------------------------------ models
def build_meta_model(arch: str, gradient_checkpointing: bool = False, train_feature_encoder: bool = False):
    """The CTC model of `arch` (32-token vocabulary) on the meta device, built by asr.model.build_model."""
    import torch

    from asr.model import ModelConfig, build_model

    cfg = ModelConfig(architecture=dict(ARCHITECTURES[arch]), gradient_checkpointing=gradient_checkpointing,
                      freeze_feature_encoder=not train_feature_encoder)
    with torch.device("meta"):
        return build_model(cfg, ctc_vocab(), pad_token_id=0)


def parameter_counts(model) -> tuple[int, int]:
    """(all parameters, trainable parameters)."""
    return (sum(p.numel() for p in model.parameters()),
            sum(p.numel() for p in model.parameters() if p.requires_grad))


def count_step_flops(model, seconds: float) -> float:
    """FLOPs of forward + backward of one `seconds`-long utterance (meta tensors: nothing is computed)."""
    import torch
    from torch.utils.flop_counter import FlopCounterMode

    from asr.constants import SAMPLE_RATE

    model.train()
    model.config.mask_time_prob = 0.0  # SpecAugment's boolean indexing has no meta kernel; it adds no FLOPs
    model.config.mask_feature_prob = 0.0
    # No attention mask: one unpadded utterance needs none, and building it reads values (no meta kernel).
    audio = torch.zeros(1, int(seconds * SAMPLE_RATE), device="meta")
    with FlopCounterMode(display=False) as counter:
        logits = model(input_values=audio).logits
        # Any scalar loss: CTC's own FLOPs are negligible, and the backward depends only on the logits' shape.
        logits.float().square().mean().backward()
    return float(counter.get_total_flops())


def model_cost(name: str, arch: str, utterance_seconds: float, gradient_checkpointing: bool = False,
               train_feature_encoder: bool = False) -> ModelCost:
    """Parameters and FLOPs per audio second of one model."""
    model = build_meta_model(arch, gradient_checkpointing, train_feature_encoder)
    params, trainable = parameter_counts(model)
    flops = count_step_flops(model, utterance_seconds)
    frames_per_second = 1 / (math.prod(model.config.conv_stride) / 16_000)  # 50 for wav2vec2
    return ModelCost(name, params, trainable, flops / utterance_seconds, 6 * trainable * frames_per_second)

# ------------------------------------------------------------------------------------------ arithmetic
def model_state_bytes(strategy: str, gpus: int, params: int, trainable: int, a: Assumptions) -> float:
    """Weights + gradients + optimizer states held by each GPU (ZeRO paper accounting)."""
    weights = params * a.param_bytes
    sharded = trainable * (a.grad_bytes + a.optimizer_bytes)
    if strategy == "ddp":
        return weights + sharded
    if strategy == "zero2":
        return weights + sharded / gpus
    if strategy == "zero3":
        return (weights + sharded) / gpus
    raise ValueError(f"Strategy {strategy!r} is unknown; use one of {', '.join(STRATEGIES)}.")


def comm_bytes_per_gpu(strategy: str, gpus: int, params: int, trainable: int, a: Assumptions) -> float:
    """Bytes each GPU sends per optimizer step (ring collectives)."""
    share = (gpus - 1) / gpus  # of a buffer, moved per GPU by one reduce-scatter or all-gather
    grads = trainable * a.grad_bytes
    if strategy == "ddp":
        return 2 * share * grads  # all-reduce = reduce-scatter + all-gather
    if strategy == "zero2":
        return share * grads + share * trainable * a.param_bytes  # reduce-scatter grads, all-gather new params
    if strategy == "zero3":
        return share * grads + 2 * share * params * a.param_bytes  # + gather params in forward and in backward
    raise ValueError(f"Strategy {strategy!r} is unknown; use one of {', '.join(STRATEGIES)}.")


def bus_bandwidth(gpus: int, a: Assumptions) -> float:
    """Bytes/s a collective over `gpus` GPUs runs at: NVLink inside a node, the node's network across nodes."""
    if gpus <= a.gpus_per_node:
        return a.intra_node_gbs * GB
    return min(a.intra_node_gbs * GB, a.inter_node_gbps * GB / 8)


def estimate(cost: ModelCost, strategy: str, gpus: int, a: Assumptions) -> Estimate:
    """Step time, throughput and memory of one configuration."""
    compute = cost.flops_per_audio_second * a.seconds_per_gpu / (a.gpu_tflops * 1e12 * a.mfu)
    comm = comm_bytes_per_gpu(strategy, gpus, cost.params, cost.trainable, a) / bus_bandwidth(gpus, a)
    step = compute + max(0.0, comm - a.overlap * compute)
    throughput = gpus * a.seconds_per_gpu / step  # audio seconds per second = audio hours per hour
    one_gpu = a.seconds_per_gpu / compute  # the same per-GPU batch without any communication
    return Estimate(cost.name, strategy, gpus, compute, comm, step, throughput, throughput / (gpus * one_gpu),
                    model_state_bytes(strategy, gpus, cost.params, cost.trainable, a) / GB)


def estimates(costs: list[ModelCost], gpu_counts: list[int], strategies: list[str], a: Assumptions) -> list[Estimate]:
    """Every (model, strategy, GPU count) row."""
    return [estimate(cost, s, n, a) for cost in costs for s in strategies for n in gpu_counts]


def render(costs: list[ModelCost], rows: list[Estimate], a: Assumptions, dataset_hours: float,
           gradient_checkpointing: bool) -> str:
    """Tables: the models, then every estimate, then the assumptions."""
    text = ["## Scaling on paper: fine-tuning throughput and memory per GPU\n",
            markdown_table(["model", "parameters", "trainable", "TFLOP per audio-s (counted)",
                            "6 x N x frames rule", "counted / rule"],
                           [[c.name, f"{c.params:,}", f"{c.trainable:,}", c.flops_per_audio_second / 1e12,
                             c.rule_of_thumb_per_audio_second / 1e12,
                             f"{c.flops_per_audio_second / c.rule_of_thumb_per_audio_second:.2f}"] for c in costs]),
            f"\nFLOPs of forward + backward{' (with checkpointing recompute)' if gradient_checkpointing else ''} "
            f"counted on the meta device for one {a.utterance_seconds:g} s utterance; the conv encoder frozen "
            "unless --train-feature-encoder.\n",
            markdown_table(["model", "strategy", "GPUs", "compute s/step", "comm s/step", "step s",
                            "audio-h per h", "efficiency", f"h per {dataset_hours:g} h epoch",
                            "model states GB/GPU"],
                           [[r.model, r.strategy, r.gpus, r.compute_seconds, r.comm_seconds, r.step_seconds,
                             r.audio_hours_per_hour, f"{100 * r.efficiency:.0f}%",
                             dataset_hours / r.audio_hours_per_hour, r.memory_gb] for r in rows]),
            "\nAssumptions (command-line options): "
            + ", ".join(f"{k.replace('_', '-')}={v}" for k, v in asdict(a).items()) + ".\n"]
    return "\n".join(text)

# ---------------------------------------------------------------------------------------------- main
def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    """Command-line arguments: one per assumption, defaults from Assumptions."""
    d = Assumptions()
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--models", nargs="+", choices=sorted(MODELS), default=list(MODELS))
    p.add_argument("--gpus", nargs="+", type=int, default=[1, 8, 16], help="GPU counts")
    p.add_argument("--strategies", nargs="+", choices=STRATEGIES, default=list(STRATEGIES))
    p.add_argument("--gpu-tflops", type=float, default=d.gpu_tflops, help="peak dense bf16 TFLOP/s per GPU")
    p.add_argument("--mfu", type=float, default=d.mfu, help="achieved share of the peak")
    p.add_argument("--gpus-per-node", type=int, default=d.gpus_per_node)
    p.add_argument("--intra-node-gbs", type=float, default=d.intra_node_gbs, help="NVLink bus bandwidth, GB/s")
    p.add_argument("--inter-node-gbps", type=float, default=d.inter_node_gbps, help="network per node, Gb/s")
    p.add_argument("--overlap", type=float, default=d.overlap, help="share of compute time hiding communication")
    p.add_argument("--seconds-per-gpu", type=float, default=d.seconds_per_gpu, help="audio seconds per GPU per step")
    p.add_argument("--utterance-seconds", type=float, default=d.utterance_seconds,
                   help="utterance length of the FLOP count")
    p.add_argument("--param-bytes", type=int, default=d.param_bytes)
    p.add_argument("--grad-bytes", type=int, default=d.grad_bytes)
    p.add_argument("--optimizer-bytes", type=int, default=d.optimizer_bytes)
    p.add_argument("--gradient-checkpointing", action="store_true", help="count the recomputed forward")
    p.add_argument("--train-feature-encoder", action="store_true", help="the conv encoder trains too")
    p.add_argument("--dataset-hours", type=float, default=960.0, help="epoch length for the hours column "
                   "(LibriSpeech: 960)")
    p.add_argument("--output", type=Path, default=None, help="also write scaling.md and scaling.json here")
    return p.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s", datefmt="%H:%M:%S")
    try:
        a = Assumptions(args.gpu_tflops, args.mfu, args.gpus_per_node, args.intra_node_gbs, args.inter_node_gbps,
                        args.overlap, args.seconds_per_gpu, args.utterance_seconds, args.param_bytes,
                        args.grad_bytes, args.optimizer_bytes)
    except ValueError as e:
        logger.error("%s", e)
        return 2
    costs = [model_cost(name, MODELS[name], a.utterance_seconds, args.gradient_checkpointing,
                        args.train_feature_encoder) for name in args.models]
    rows = estimates(costs, sorted(set(args.gpus)), args.strategies, a)
    markdown = render(costs, rows, a, args.dataset_hours, args.gradient_checkpointing)
    print("\n" + markdown)
    if args.output is not None:
        data: dict[str, Any] = {"assumptions": asdict(a), "command": " ".join(sys.argv),
                                "models": [asdict(c) for c in costs], "estimates": [asdict(r) for r in rows]}
        write_report(args.output, "scaling", markdown, data)
    return 0

if __name__ == "__main__":
    sys.exit(main())
