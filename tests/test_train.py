"""The training script run for real: smoke run, exported model in the transformers pipeline, bad configs."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest
import torch

from asr.audio import load_audio
from asr.train import OptimConfig, build_optimizer, build_scheduler

from trainrun import ROOT, run_train


@pytest.fixture()
def corpus(synth_corpus) -> Path:
    return synth_corpus


def read_metrics(run: Path) -> list[dict]:
    return [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]


def test_two_step_smoke_run_exports_a_pipeline_model(corpus, tmp_path):
    run_train(corpus, tmp_path, "train.max_steps=2", "train.eval_every=2", "train.save_every=1", "train.log_every=1")
    run = tmp_path / "run"
    records = read_metrics(run)
    train = [r for r in records if r["kind"] == "train"]
    assert [r["step"] for r in train] == [1, 2]
    assert all(np.isfinite(r["loss"]) and r["loss"] > 0 for r in train)
    assert all(200 < r["rss_mb"] < 64_000 for r in train)  # the process's resident memory: torch alone is ~300 MB
    evals = [r for r in records if r["kind"] == "eval"]
    # scored against the dev references: two steps teach a random model nothing, so it reads next to nothing
    assert evals and evals[-1]["n"] == 4 and evals[-1]["cer"] > 0.5
    # save_total_limit=2 keeps the last two checkpoints, each complete
    assert sorted(p.name for p in (run / "checkpoints").iterdir()) == ["step_1", "step_2"]
    assert (run / "checkpoints" / "step_2" / "trainer_state.json").exists()
    assert json.loads((run / "checkpoints" / "step_2" / "trainer_state.json").read_text())["step"] == 2
    for name in ("config.json", "model.safetensors", "vocab.json", "preprocessor_config.json",
                 "normalizer.json", "README.md", "metrics.json", "train_config.yaml"):
        assert (run / "model" / name).exists(), name
    assert (run / "curves.png").stat().st_size > 1000
    # TensorBoard through accelerate's tracker: the loss curve is readable back
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    events = EventAccumulator(str(run / "trackers" / "run"))  # trackers/<run name: the output folder's>
    events.Reload()
    assert [e.step for e in events.Scalars("train/loss")] == [1, 2]

    from transformers import pipeline

    asr = pipeline("automatic-speech-recognition", model=str(run / "model"), device="cpu")
    wav = sorted((corpus / "audio" / "test").glob("*.wav"))[0]
    result = asr(load_audio(wav))  # an untrained model says little, but the pipeline must run end to end
    assert isinstance(result["text"], str)
    result_from_path = asr(str(wav))
    assert result_from_path["text"] == result["text"]


@pytest.mark.parametrize(
    "overrides, message",
    [
        (["optim.lrr=1"], "unknown key(s) lrr in optim"),
        (["data.train.text_column=sentence"], "text column 'sentence' not found"),
        (["data.max_batch_seconds=1"], "raise max_batch_seconds"),
        (["data.train.path=/nonexistent/train.jsonl"], "does not exist"),
    ],
)
def test_bad_configs_fail_before_training_with_one_line(corpus, tmp_path, overrides, message):
    proc = run_train(corpus, tmp_path, "train.max_steps=1", *overrides, check=False)
    assert proc.returncode == 2, proc.stderr[-2000:]
    errors = [line for line in proc.stderr.splitlines() if message in line]
    assert errors, proc.stderr[-2000:]
    assert "Traceback" not in proc.stderr


@pytest.mark.slow
def test_tiny_model_learns_its_corpus(trained_model):
    """The fixture's run (tiny wav2vec2 from scratch, a few minutes on 2 cores): CER falls far below its start."""
    records = read_metrics(trained_model.parent)
    evals = [r for r in records if r["kind"] == "eval"]
    train = [r for r in records if r["kind"] == "train"]
    assert evals[0]["cer"] >= 0.95  # blank output at first
    assert evals[-1]["cer"] < 0.3 * evals[0]["cer"]
    assert train[-1]["loss"] < 0.5 * train[0]["loss"]
    metrics = json.loads((trained_model / "metrics.json").read_text())
    assert metrics["wer"] == pytest.approx(min(r["wer"] for r in evals))  # model/ holds the best by dev WER


def test_bf16_mixed_precision_runs_to_the_device_boundary(corpus, tmp_path):
    """bf16 autocast works on CPU too: the mixed-precision path (float32 CTC loss) runs for real here."""
    run_train(corpus, tmp_path, "train.max_steps=2", "train.log_every=1", "train.mixed_precision=bf16")
    train = [r for r in read_metrics(tmp_path / "run") if r["kind"] == "train"]
    assert len(train) == 2 and all(np.isfinite(r["loss"]) and r["loss"] > 0 for r in train)


# ------------------------------------------------------------------------------ optimizer and schedule
def tiny_model():
    from asr.model import ModelConfig, build_model

    arch = dict(model_type="wav2vec2", hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
                intermediate_size=64, conv_dim=[32] * 7, num_conv_pos_embeddings=16, num_conv_pos_embedding_groups=4)
    vocab = {"[PAD]": 0, "[UNK]": 1, "|": 2, **{c: i + 3 for i, c in enumerate("abcdefghij")}}
    torch.manual_seed(0)
    return build_model(ModelConfig(architecture=arch, freeze_feature_encoder=False), vocab, pad_token_id=0)


def test_weight_decay_shrinks_weight_matrices_only():
    """One AdamW step with zero gradients moves a parameter only by its weight decay (lr x wd x p):
    weight matrices shrink, biases and norm weights must not move at all."""
    model = tiny_model()
    cfg = OptimConfig(lr=0.1, weight_decay=0.5)
    optimizer = build_optimizer(model, cfg)
    decay, no_decay = optimizer.param_groups
    assert (decay["weight_decay"], no_decay["weight_decay"]) == (0.5, 0.0)
    by_id = {id(p): name for name, p in model.named_parameters()}
    decayed = {by_id[id(p)] for p in decay["params"]}
    kept = {by_id[id(p)] for p in no_decay["params"]}
    assert decayed and kept and not decayed & kept
    assert decayed | kept == {n for n, p in model.named_parameters() if p.requires_grad}
    # the names the rule is for, each on its side
    assert "lm_head.weight" in decayed and "wav2vec2.encoder.layers.0.attention.q_proj.weight" in decayed
    for name in ("lm_head.bias", "wav2vec2.encoder.layers.0.attention.q_proj.bias",
                 "wav2vec2.encoder.layers.0.layer_norm.weight", "wav2vec2.encoder.layer_norm.weight",
                 "wav2vec2.feature_projection.layer_norm.bias", "wav2vec2.masked_spec_embed",
                 # the weight-normed positional convolution (3-D weights): decay would fight the norm's gain
                 "wav2vec2.encoder.pos_conv_embed.conv.parametrizations.weight.original1"):
        assert name in kept, name
    assert all(p.ndim < 2 or "pos_conv" in n or "norm" in n for n, p in model.named_parameters() if n in kept)

    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    for p in model.parameters():
        p.grad = torch.zeros_like(p)
    optimizer.step()
    for name, p in model.named_parameters():
        if name in kept:
            assert torch.equal(p, before[name]), name
        elif name in decayed:
            torch.testing.assert_close(p, before[name] * (1 - 0.1 * 0.5)), name


def tiny_model_of(**arch):
    from asr.model import ModelConfig, build_model

    arch = dict(model_type="wav2vec2", hidden_size=32, num_hidden_layers=3, num_attention_heads=2,
                intermediate_size=64, conv_dim=[32] * 7, num_conv_pos_embeddings=16, num_conv_pos_embedding_groups=4,
                **arch)
    vocab = {"[PAD]": 0, "[UNK]": 1, "|": 2, **{c: i + 3 for i, c in enumerate("abcdefghij")}}
    torch.manual_seed(0)
    return build_model(ModelConfig(architecture=arch, freeze_feature_encoder=False), vocab, pad_token_id=0)


@pytest.mark.parametrize("pre_ln", [False, True])
def test_layer_decay_steps_each_layer_at_its_own_rate(pre_ln):
    """optim.layer_decay=0.5 on a 3-layer model: the head at lr, layer 2 at lr/2, layer 1 at lr/4, layer 0 at
    lr/8 and the front end at lr/16. Adam's first step moves every weight by its rate (the gradient's sign),
    so one real step with unit gradients and no weight decay shows the rate each parameter trained at."""
    model = tiny_model_of(do_stable_layer_norm=pre_ln)
    lr = 0.01
    optimizer = build_optimizer(model, OptimConfig(lr=lr, weight_decay=0.0, layer_decay=0.5))
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    for p in model.parameters():
        p.grad = torch.ones_like(p)
    optimizer.step()
    expected = {"lm_head.weight": lr, "lm_head.bias": lr,
                "wav2vec2.encoder.layers.2.feed_forward.output_dense.weight": lr / 2,
                "wav2vec2.encoder.layers.1.attention.q_proj.bias": lr / 4,
                "wav2vec2.encoder.layers.0.layer_norm.weight": lr / 8,
                "wav2vec2.feature_projection.projection.weight": lr / 16,
                "wav2vec2.feature_extractor.conv_layers.0.conv.weight": lr / 16,
                "wav2vec2.encoder.pos_conv_embed.conv.bias": lr / 16,
                "wav2vec2.masked_spec_embed": lr / 16,
                # a pre-LN encoder's norm follows the last layer; a post-LN one's precedes the first
                "wav2vec2.encoder.layer_norm.weight": lr if pre_ln else lr / 16}
    for name, rate in expected.items():
        moved = (before[name] - dict(model.named_parameters())[name]).abs()
        torch.testing.assert_close(moved, torch.full_like(moved, rate), rtol=1e-3, atol=1e-7, msg=name)
    # every trainable parameter in exactly one group, weight decay still split as without the decay
    grouped = [id(p) for g in optimizer.param_groups for p in g["params"]]
    assert sorted(grouped) == sorted(id(p) for p in model.parameters() if p.requires_grad)
    assert sorted({g["lr"] for g in optimizer.param_groups}) == [lr / 16, lr / 8, lr / 4, lr / 2, lr]


def test_layer_decay_rates_keep_their_ratios_through_the_schedule():
    model = tiny_model_of()
    optimizer = build_optimizer(model, OptimConfig(lr=1e-3, layer_decay=0.8))
    scheduler = build_scheduler(optimizer, OptimConfig(lr=1e-3, warmup_steps=4, schedule="cosine"), 20)
    peaks = [g["initial_lr"] for g in optimizer.param_groups]  # the peaks the schedule scales
    for _ in range(7):
        optimizer.step()
        scheduler.step()
    factor = 0.5 * (1 + math.cos(math.pi * 3 / 16))  # 7 steps: 4 of warmup, 3 of 16 into the cosine
    assert scheduler.get_last_lr() == pytest.approx([peak * factor for peak in peaks])
    assert max(peaks) == 1e-3 and min(peaks) == pytest.approx(1e-3 * 0.8 ** 4)


def test_layer_decay_on_a_model_without_encoder_layers_fails_in_one_line():
    from asr.config import ConfigError

    class NoLayers(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.body = torch.nn.Linear(4, 4)

    with pytest.raises(ConfigError, match="optim.layer_decay needs encoder layers named encoder.layers.N, and "
                                          "NoLayers has none; set optim.layer_decay=null"):
        build_optimizer(NoLayers(), OptimConfig(layer_decay=0.9))


# (schedule, step) -> LR factor, from the schedule's definition: linear warmup from 0 over 10 steps (peak at the
# 10th), then linear or cosine decay over the remaining 100 to 0 at step 110. Step n is the n-th optimizer step.
WARMUP, MAX_STEPS = 10, 110
EXPECTED_LR = {
    "linear": {1: 0.1, 5: 0.5, 10: 1.0, 11: 1.0, 36: 0.75, 61: 0.5, 110: 0.01},
    "cosine": {1: 0.1, 5: 0.5, 10: 1.0, 11: 1.0, 36: 0.5 * (1 + math.cos(math.pi / 4)), 61: 0.5,
               110: 0.5 * (1 + math.cos(math.pi * 0.99))},
    "constant": {1: 0.1, 10: 1.0, 61: 1.0, 110: 1.0},
}


@pytest.mark.parametrize("schedule", list(EXPECTED_LR))
def test_lr_at_warmup_end_mid_decay_and_last_step(schedule):
    """The LR each optimizer step runs with, stepped as scripts/train.py steps it (scheduler after optimizer)."""
    params = [torch.nn.Parameter(torch.zeros(2, 2)), torch.nn.Parameter(torch.zeros(2))]
    optimizer = torch.optim.AdamW([{"params": params[:1]}, {"params": params[1:]}], lr=2e-3)
    scheduler = build_scheduler(optimizer, OptimConfig(lr=2e-3, warmup_steps=WARMUP, schedule=schedule), MAX_STEPS)
    used = {}
    for step in range(1, MAX_STEPS + 1):
        used[step] = [group["lr"] for group in optimizer.param_groups]  # what optimizer.step() would use now
        optimizer.step()
        scheduler.step()
    for step, factor in EXPECTED_LR[schedule].items():
        assert used[step] == pytest.approx([2e-3 * factor] * 2, abs=1e-12), (schedule, step)
    if schedule != "constant":  # decays to 0 at max_steps
        assert scheduler.get_last_lr()[0] == pytest.approx(0.0, abs=1e-12)


# ------------------------------------------------------------------------------------------ precision
@pytest.fixture()
def fresh_accelerate_state():
    """Accelerate keeps its state in process-wide singletons; each precision test starts from none."""
    from accelerate.state import AcceleratorState

    AcceleratorState._reset_state(reset_partial_state=True)
    yield
    AcceleratorState._reset_state(reset_partial_state=True)


def train_script():
    import importlib.util
    import sys

    spec = importlib.util.spec_from_file_location("train_script", ROOT / "scripts" / "train.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    return module


def test_overrides_may_come_before_and_after_the_options():
    """`train.py --config C a=1 --resume latest b=2` keeps both overrides (plain argparse refused the second)."""
    args = train_script().parse_args(["--config", "c.yaml", "optim.lr=1e-3", "--resume", "latest", "--no-progress",
                                      "train.max_steps=5", "train.seed=2"])
    assert args.overrides == ["optim.lr=1e-3", "train.max_steps=5", "train.seed=2"]
    assert (args.config, args.resume, args.no_progress) == ("c.yaml", "latest", True)


def precision_step(tmp_path, precision: str) -> tuple[object, list[torch.dtype], torch.Tensor]:
    """scripts/train.py's accelerator for `train.mixed_precision`, one prepared training step of the tiny model;
    returns (accelerator, dtypes a transformer layer's feed-forward produced, loss)."""
    from asr.config import load_config
    from asr.train import TrainConfig, forward_loss

    cfg = load_config(TrainConfig, ROOT / "configs/train/tiny_cpu.yaml",
                      [f"train.mixed_precision='{precision}'", f"train.output_dir={tmp_path}"])
    accelerator = train_script().make_accelerator(cfg)
    model = tiny_model()
    optimizer = build_optimizer(model, cfg.optim)
    model, optimizer = accelerator.prepare(model, optimizer)
    unwrapped = accelerator.unwrap_model(model)
    seen = []
    unwrapped.wav2vec2.encoder.layers[0].feed_forward.intermediate_dense.register_forward_hook(
        lambda module, inputs, output: seen.append(output.dtype))
    g = torch.Generator().manual_seed(0)
    batch = {"input_values": torch.randn(2, 16000, generator=g), "input_lengths": torch.tensor([16000, 12000]),
             "labels": torch.tensor([[3, 4, 2, 5, 6], [7, 8, 9, -100, -100]])}
    loss, logits, _ = forward_loss(model, unwrapped, batch, accelerator.device)
    accelerator.backward(loss)
    optimizer.step()
    assert all(p.dtype == torch.float32 for p in unwrapped.parameters())  # master weights stay float32
    return accelerator, seen, loss


def test_bf16_autocast_really_runs_the_layers_in_bfloat16(tmp_path, fresh_accelerate_state):
    accelerator, seen, loss = precision_step(tmp_path, "bf16")
    assert accelerator.mixed_precision == "bf16"
    assert seen == [torch.bfloat16]  # the matmul ran under autocast
    assert loss.dtype == torch.float32 and torch.isfinite(loss)  # CTC in float32 (asr.train.ctc_loss)


def test_no_mixed_precision_runs_in_float32(tmp_path, fresh_accelerate_state):
    """The control for the bf16 test: the hook does see float32 without autocast."""
    accelerator, seen, _ = precision_step(tmp_path, "no")
    assert accelerator.mixed_precision == "no" and seen == [torch.float32]


def test_auto_precision_is_bf16_exactly_where_the_cpu_computes_it(tmp_path, fresh_accelerate_state):
    """train.mixed_precision=auto: bf16 autocast on a CPU with bfloat16 hardware (AVX512-BF16 or AMX, as
    /proc/cpuinfo lists them), float32 on any other; the run really computes in the resolved precision."""
    from asr.hardware import cpu_computes_bf16, resolve_mixed_precision

    cpuinfo = Path("/proc/cpuinfo")
    if cpuinfo.is_file():  # torch's probe agrees with the kernel's view of the CPU
        flags = set(cpuinfo.read_text().split())
        assert cpu_computes_bf16() == bool(flags & {"avx512_bf16", "amx_tile"})
    expected = "bf16" if cpu_computes_bf16() else "no"
    assert resolve_mixed_precision("auto", cuda=False) == expected
    assert [resolve_mixed_precision(s, cuda=False) for s in ("no", "fp16", "bf16")] == ["no", "fp16", "bf16"]
    accelerator, seen, loss = precision_step(tmp_path, "auto")
    assert accelerator.mixed_precision == expected
    assert seen == [torch.bfloat16 if expected == "bf16" else torch.float32] and torch.isfinite(loss)


def test_fp16_is_selected_up_to_the_device_boundary(tmp_path, fresh_accelerate_state):
    """fp16 autocast and its loss scaler exist only on CUDA: on CPU, Accelerate takes the setting and runs float32.

    What is testable here is that train.mixed_precision=fp16 reaches the accelerator; on a GPU the test
    below checks that the layers run in float16 with a GradScaler.
    """
    accelerator, seen, loss = precision_step(tmp_path, "fp16")
    assert accelerator.mixed_precision == "fp16"
    if not torch.cuda.is_available():
        assert seen == [torch.float32] and accelerator.scaler is None and torch.isfinite(loss)


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_auto_precision_on_gpu_is_bf16_where_supported_else_fp16():
    from asr.hardware import resolve_mixed_precision

    assert resolve_mixed_precision("auto", cuda=True) == ("bf16" if torch.cuda.is_bf16_supported() else "fp16")


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="fp16 autocast needs CUDA")
def test_fp16_autocast_and_loss_scaler_on_gpu(tmp_path, fresh_accelerate_state):
    accelerator, seen, loss = precision_step(tmp_path, "fp16")
    assert seen == [torch.float16] and accelerator.scaler is not None
    assert loss.dtype == torch.float32


def test_filtered_utterances_are_listed_in_the_runs_data_reports(corpus, tmp_path):
    """data/{train,dev}.dropped.jsonl of the run hold exactly the utterances the filters dropped, with the reason."""
    rows = {split: [json.loads(line) for line in (corpus / f"{split}.jsonl").read_text().splitlines()]
            for split in ("train", "dev")}
    for split in rows:
        for row in rows[split]:
            row["audio_filepath"] = str(corpus / row["audio_filepath"])
    rows["train"].append({"id": "gone", "audio_filepath": str(tmp_path / "gone.wav"), "text": "hello there"})
    rows["dev"].append({"id": "punct", "audio_filepath": rows["dev"][0]["audio_filepath"], "text": "?!"})
    data = tmp_path / "corpus"
    data.mkdir()
    for split, split_rows in rows.items():
        (data / f"{split}.jsonl").write_text("".join(json.dumps(r) + "\n" for r in split_rows))
    run_train(data, tmp_path, "train.max_steps=1", "train.eval_every=1")
    reports = {split: [json.loads(line) for line in (tmp_path / "run" / "data" / f"{split}.dropped.jsonl").open()]
               for split in ("train", "dev")}
    assert [(d["id"], d["reason"]) for d in reports["train"]] == [("gone", "missing_audio")]
    assert [(d["id"], d["reason"]) for d in reports["dev"]] == [("punct", "empty_transcript")]
    assert [r for r in read_metrics(tmp_path / "run") if r["kind"] == "eval"][-1]["n"] == 4  # the 4 kept


def test_fp16_on_a_cpu_says_it_trains_in_float32(corpus, tmp_path):
    """Accelerate quietly runs fp16 as float32 on a CPU: the run says so instead of claiming fp16."""
    if torch.cuda.is_available():
        pytest.skip("a CUDA device runs fp16 for real")
    proc = run_train(corpus, tmp_path, "train.max_steps=1", "train.mixed_precision=fp16")
    assert [line for line in proc.stderr.splitlines() if "fp16 on a CPU" in line and "use bf16" in line]


def test_a_dev_set_that_cannot_be_read_skips_evaluations_not_training(corpus, tmp_path):
    """Dev audio that breaks after data preparation (files replaced, a disk gone) costs the evaluations, not the
    run: each is skipped with a warning, checkpoints are still written and model/ holds the last weights."""
    import shutil

    data = tmp_path / "corpus"
    shutil.copytree(corpus, data)
    run_train(data, tmp_path, "train.max_steps=1")  # prepares (and caches) both splits while the audio is good
    shutil.rmtree(tmp_path / "run")
    for row in (json.loads(line) for line in (data / "dev.jsonl").read_text().splitlines()):
        (data / row["audio_filepath"]).write_bytes(b"not a wav file" * 100)
    proc = run_train(data, tmp_path, "train.max_steps=2", "train.eval_every=1", "train.save_every=1")
    assert "Traceback" not in proc.stderr
    skipped = [line for line in proc.stderr.splitlines() if "no dev utterance could be read" in line]
    assert len(skipped) == 2, proc.stderr[-3000:]  # steps 1 and 2
    run = tmp_path / "run"
    assert [r for r in read_metrics(run) if r["kind"] == "eval"] == []
    assert sorted(p.name for p in (run / "checkpoints").iterdir()) == ["step_1", "step_2"]
    assert "holds step 2's weights" in proc.stderr
    assert json.loads((run / "model" / "metrics.json").read_text())["step"] == 2
    assert (run / "model" / "model.safetensors").is_file()


def test_curves_plot_the_learning_rate_and_mark_the_best_step(tmp_path):
    """curves.png: loss, LR on its own axis, dev WER/CER with the exported (best) step marked, the run's name."""
    from asr.train import plot_curves

    records = [{"kind": "train", "step": s, "loss": 3.0 / s, "lr": 1e-3 * min(1, s / 4)} for s in range(1, 11)]
    records += [{"kind": "eval", "step": s, "wer": w, "cer": w / 3, "loss": w} for s, w in ((4, 0.9), (8, 0.5), (10, 0.6))]
    drawn = plot_curves(records, tmp_path / "curves.png", "demo")
    assert drawn == {"title": "run demo", "best_step": 8, "marker": "best: step 8, WER 50.0%", "lr_points": 10,
                     "evals": 3}
    assert (tmp_path / "curves.png").read_bytes()[:4] == b"\x89PNG"
    assert [p.name for p in tmp_path.iterdir()] == ["curves.png"]  # written atomically, no temporary left
    # a run with no evaluation yet (or none that could read its dev set) still gets its loss curve
    assert plot_curves(records[:10], tmp_path / "early.png")["best_step"] is None


@pytest.mark.parametrize("metric, step, marker", [("wer", 8, "best: step 8, WER 50.0%"),
                                                  ("cer", 4, "best: step 4, CER 16.7%"),
                                                  ("loss", 8, "best: step 8, loss 0.400"),  # tie: the first
                                                  ("last", 10, "last: step 10")])
def test_curves_mark_the_step_the_best_metric_exports(tmp_path, metric, step, marker):
    from asr.train import chosen_eval, plot_curves

    evals = [{"kind": "eval", "step": 4, "wer": 0.9, "cer": 1 / 6, "loss": 0.7},
             {"kind": "eval", "step": 8, "wer": 0.5, "cer": 0.2, "loss": 0.4},
             {"kind": "eval", "step": 10, "wer": 0.6, "cer": 0.3, "loss": 0.4}]
    assert chosen_eval(evals, metric)["step"] == step and chosen_eval([], metric) is None
    drawn = plot_curves(evals, tmp_path / "curves.png", "", metric)
    assert (drawn["best_step"], drawn["marker"]) == (step, marker)


def test_eval_shards_deal_the_same_batches_on_any_number_of_processes():
    """Dev batches do not depend on the world size (a model without an attention mask reads the padding), every
    rank runs the same number of forward passes (ZeRO-3), and the union is each batch at least once."""
    from asr.sampler import DurationBatchSampler
    from asr.train import EvalShards

    durations = [1.0, 2.5, 0.7, 3.1, 1.9, 2.2, 0.9]
    batches = list(DurationBatchSampler(durations, 4.0, shuffle=False))
    assert len(batches) == 5
    for world in (1, 2, 3, 4, 8):
        shards = [list(EvalShards(batches, world, rank)) for rank in range(world)]
        assert len({len(s) for s in shards}) == 1
        dealt = [b for s in shards for b in s]
        assert sorted(map(tuple, set(map(tuple, dealt)))) == sorted(map(tuple, batches))  # the same batches
        assert len(dealt) - len(batches) < world  # repeats only to even the ranks out
    assert list(EvalShards(batches, 1, 0)) == batches
