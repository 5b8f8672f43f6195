"""The bench package (bench.common and the benchmarks): what can be checked without timing anything.

Tables, the scaling model's arithmetic and the real parameter counts, bench_decode's baseline vs
our pyctcdecode on a fork pool (the same search, so the same transcripts), bench_transcribe's
transcript comparison with the transformers pipeline, bench_memory's fresh-process peaks, and
bench_train's samplers (without training) and its smoke run end to end (slow).
No assertion depends on speed.
"""

from __future__ import annotations

import json
import logging
import shutil
from pathlib import Path

import pytest

from bench import chunking, decode, feature_cache, memory, onednn_cache, scaling, train, transcribe
from bench.common import (
    ctc_vocab,
    markdown_table,
    ratio,
    time_runs,
    write_report,
)

ROOT = Path(__file__).resolve().parents[1]
logger = logging.getLogger(__name__)


# ------------------------------------------------------------------------------------------ tables
def test_markdown_table_formats_and_aligns():
    table = markdown_table(["decoder", "utt/s", "WER %", "ok"],
                           [["greedy", 21699.4, 59.26, None], ["beam", 4.8153, 0.001234, True],
                            ["flashlight", 43.0, 0.0, False]])
    assert table == ("| decoder | utt/s | WER % | ok |\n"
                     "|---|---:|---:|---|\n"
                     "| greedy | 21699 | 59.26 | - |\n"
                     "| beam | 4.815 | 0.001234 | yes |\n"
                     "| flashlight | 43.00 | 0 | no |\n")
    with pytest.raises(ValueError, match="2 cells for 4 headers"):
        markdown_table(["a", "b", "c", "d"], [[1, 2]])


def test_time_runs_counts_warmup_and_repeats(tmp_path):
    calls = []
    timing = time_runs(lambda: calls.append(1), repeats=3, warmup=2)
    assert len(calls) == 5 and len(timing.runs) == 3
    assert timing.best <= timing.median and all(t >= 0 for t in timing.runs)
    assert ratio(6.0, 2.0) == 3.0 and ratio(1.0, 0.0) != ratio(1.0, 0.0)  # NaN for a zero reference
    md, js = write_report(tmp_path / "out", "decode", "| a |\n", {"x": 1.5})
    assert md.read_text() == "| a |\n" and json.loads(js.read_text()) == {"x": 1.5}


def test_ctc_vocab_layout():
    vocab = ctc_vocab(32)
    assert len(vocab) == 32 and sorted(vocab.values()) == list(range(32))
    assert (vocab["[PAD]"], vocab["[UNK]"], vocab["|"], vocab["a"]) == (0, 1, 2, 3)


# ----------------------------------------------------------------------------------------- scaling
def test_real_parameter_counts():
    params, trainable = scaling.parameter_counts(scaling.build_meta_model("base"))
    assert abs(params - 94.4e6) / 94.4e6 < 0.01  # wav2vec2-base + 32-token CTC head (94,396,320)
    # The frozen conv feature encoder (7 conv layers, 512 channels) is what is not trained.
    assert 4.0e6 < params - trainable < 4.5e6
    xlsr, _ = scaling.parameter_counts(scaling.build_meta_model("xlsr-300m"))
    assert 3.0e8 < xlsr < 3.2e8


def test_memory_per_gpu_follows_the_zero_paper():
    a = scaling.Assumptions()
    psi = 1_000_000
    assert scaling.model_state_bytes("ddp", 8, psi, psi, a) == 16 * psi
    assert scaling.model_state_bytes("zero2", 8, psi, psi, a) == pytest.approx(2 * psi + 14 * psi / 8)
    assert scaling.model_state_bytes("zero3", 8, psi, psi, a) == pytest.approx(16 * psi / 8)
    for strategy in scaling.STRATEGIES:  # one GPU: nothing to shard
        assert scaling.model_state_bytes(strategy, 1, psi, psi, a) == 16 * psi
    zero3 = [scaling.model_state_bytes("zero3", n, psi, psi, a) for n in (1, 2, 8, 16, 64)]
    assert all(x > y for x, y in zip(zero3, zero3[1:]))
    # Frozen parameters keep their weights only.
    assert scaling.model_state_bytes("ddp", 1, 2 * psi, psi, a) == 2 * 2 * psi + 14 * psi


def test_communication_volumes():
    a = scaling.Assumptions()
    psi = 1_000_000
    grads = psi * a.grad_bytes
    for n in (1, 2, 8, 16):
        ddp = scaling.comm_bytes_per_gpu("ddp", n, psi, psi, a)
        assert ddp == pytest.approx(2 * (n - 1) / n * grads)
        assert scaling.comm_bytes_per_gpu("zero2", n, psi, psi, a) == pytest.approx(ddp)
        assert scaling.comm_bytes_per_gpu("zero3", n, psi, psi, a) == pytest.approx(1.5 * ddp)
    assert scaling.bus_bandwidth(8, a) == a.intra_node_gbs * 1e9
    assert scaling.bus_bandwidth(16, a) == a.inter_node_gbps * 1e9 / 8
    with pytest.raises(ValueError, match="mfu"):
        scaling.Assumptions(mfu=0)


def test_estimates_hide_communication_behind_compute():
    a = scaling.Assumptions(seconds_per_gpu=10.0, overlap=0.5)
    cost = scaling.ModelCost("m", 100_000_000, 100_000_000, 1e13, 1e13)
    one, = scaling.estimates([cost], [1], ["ddp"], a)
    assert one.comm_seconds == 0 and one.step_seconds == one.compute_seconds and one.efficiency == 1.0
    rows = {r.gpus: r for r in scaling.estimates([cost], [8, 16], ["zero3"], a)}
    for r in rows.values():
        expected = r.compute_seconds + max(0.0, r.comm_seconds - 0.5 * r.compute_seconds)
        assert r.step_seconds == pytest.approx(expected)
        assert r.audio_hours_per_hour == pytest.approx(r.gpus * 10.0 / r.step_seconds)
    assert rows[16].comm_seconds > rows[8].comm_seconds  # across nodes: the network, not NVLink


def test_flop_count_grows_with_utterance_length():
    model = scaling.build_meta_model("tiny")
    short, long = scaling.count_step_flops(model, 2.0), scaling.count_step_flops(model, 4.0)
    # Between linear (convs, projections) and quadratic (attention, a large share only in a model this narrow).
    assert short > 0 and 2.0 < long / short < 2.5


# ------------------------------------------------------------------------------------------ decode
def test_bench_decode_pool_equals_baseline(tmp_path):
    from asr.corpus import load_sentences

    bench = decode
    decode_set = bench.synthetic_set(tmp_path, num_utterances=6, lm_sentences=2000, sentences=load_sentences())
    rows = bench.run_benchmark(decode_set, processes=2, repeats=1)
    by_name = {r.name: r for r in rows}
    baseline = rows[0]
    assert baseline.name == "pyctcdecode (baseline)" and len(baseline.texts) == 6
    # The same search without its idle frames, in one process and on a fork pool: the same transcripts.
    assert by_name["pyctcdecode beam 100, idle frames skipped"].texts == baseline.texts
    assert by_name["pyctcdecode beam 100, idle frames skipped, fork pool x2"].texts == baseline.texts
    assert baseline.wer < by_name["greedy (ceiling)"].wer  # the LM corrects the noisy log-probs
    flashlight = by_name["flashlight"]
    assert by_name["flashlight, fork pool x2"].texts == flashlight.texts
    logger.warning("6 noisy utterances: WER baseline %.3f, flashlight %.3f (difference %+.3f)", baseline.wer,
                   flashlight.wer, flashlight.wer - baseline.wer)
    info = {"cpus": 2, "load_average_1min": 0.0}
    table = bench.render(decode_set, rows, info)
    assert "ΔWER (pp)" in table and f"{100 * (flashlight.wer - baseline.wer):+.2f}" in table
    assert "| pyctcdecode beam 100, idle frames skipped, fork pool x2 | 2 |" in table
    skipping = [r for r in rows if "idle frames <" in r.name]
    assert len(skipping) == 3 * len(bench.IDLE_TOKEN_LOGPS)
    assert all(len(r.texts) == 6 and r.ours and r.processes == 2 for r in skipping)  # WERs: see the real run
    assert "| flashlight beam 32, 8 tokens/frame, idle frames < -8 skipped, fork pool x2 | 2 |" in table


# -------------------------------------------------------------------------------------- transcribe
def test_bench_transcribe_compares_with_the_pipeline(synth_corpus, tmp_path):
    if shutil.which("ffmpeg") is None:
        pytest.skip("the transformers pipeline reads files with FFmpeg; run `bash scripts/setup.sh`")
    from asr.transcribe import find_audio

    bench = transcribe
    model = bench.tiny_random_model(tmp_path / "model")
    items = find_audio([synth_corpus / "audio" / "test"])
    assert len(items) == 4
    sides, differing, durations = bench.benchmark(model, items, batch_size=2, max_batch_seconds=60.0, repeats=1,
                                                  work=tmp_path / "work", onnx=True)
    base, preloaded, ours, onnx_fp32, onnx_int8 = sides
    assert [s.name for s in sides[3:]] == ["ours, ONNX Runtime float32", "ours, ONNX Runtime int8"]
    import onnx

    ops = {n.op_type for n in onnx.load(tmp_path / "work" / "onnx_int8" / "model.onnx").graph.node}
    assert {"DynamicQuantizeLinear", "MatMulInteger"} <= ops  # int8 weights, not the float graph again
    assert onnx_fp32.texts == ours.texts  # the export's parity gate passed: same greedy transcripts as PyTorch
    assert set(onnx_int8.texts) == set(ours.texts)
    assert set(base.texts) == set(ours.texts) == {str(i.file) for i in items}
    assert preloaded.texts == base.texts  # reading by FFmpeg or soundfile gives the same audio to the model
    # In each pipeline batch of 2, the longer file has no padding: the transcripts must be equal. The
    # shorter one may only gain text decoded from its padding frames.
    for start in (0, 2):
        pair = items[start : start + 2]
        longer = max(pair, key=lambda item: durations[items.index(item)])
        assert str(longer.file) not in differing
    assert set(bench.only_trailing(base, ours, differing)) == set(differing)
    assert base.padding == pytest.approx(bench.padding_fraction([durations[:2], durations[2:]]))
    assert 0 <= ours.padding < 1
    table = bench.render(sides, differing, len(items), sum(durations), "tiny", True, {"cpus": 2, "torch_threads": 2,
                                                                                      "load_average_1min": 0})
    assert "| ours, ONNX Runtime int8 |" in table and "texts != ours (PyTorch)" in table


def test_bench_chunking_compares_segmenters_on_noisy_joined_recordings(synth_corpus, tmp_path, capsys):
    bench = chunking
    model = transcribe.tiny_random_model(tmp_path / "model")
    bench.main(["--model", str(model), "--manifest", str(synth_corpus / "test.jsonl"), "--minutes", "0.5",
                "--noises", "none,pink:10", "--chunks", "8:2,8:pauses,8:webrtc,oracle", "--output", str(tmp_path / "out")])
    report = json.loads((tmp_path / "out" / "bench_chunking.json").read_text())
    rows = [(r["noise"], r["chunk_seconds"], r["cut"]) for r in report["rows"]]
    assert rows == [(noise, length, cut) for noise in ("none", "pink")
                    for length, cut in ((8.0, "2"), (8.0, "energy"), (8.0, "webrtc"), (0.0, "oracle"))]
    # scored against the joined recording's reference (a random model reads next to none of it)
    assert all(r["cer"] > 0.5 and r["seconds"] > 0 and 30 <= r["audio_seconds"] < 45 for r in report["rows"])
    assert all(r["pieces"] >= 4 and 0 <= r["cuts_in_pauses"] <= 1 for r in report["rows"])
    assert all(r["cuts_in_pauses"] == 1 for r in report["rows"] if r["cut"] == "oracle")
    assert bench.chunk_options(8, "2").chunk_spec(320).segmenter is None  # length:overlap is the grid
    out = capsys.readouterr().out
    assert "| clean | 8 s / 2 s |" in out and "| pink 10 dB | webrtc, <= 8 s |" in out
    for bad in ("10:6", "10:vad", ""):
        with pytest.raises(SystemExit, match="--chunks"):
            bench.parse_chunks(bad)
    with pytest.raises(SystemExit, match="--noises"):
        bench.parse_noises("fan:10")
    assert bench.parse_chunks("10:2,15:pauses,30:silero,unchunked,oracle") == [
        (10.0, "2"), (15.0, "energy"), (30.0, "silero"), (0.0, ""), (0.0, "oracle")]


def test_bench_feature_cache_smoke_accounts_the_saving_per_operator(tmp_path):
    bench = feature_cache
    assert bench.main(["--smoke", "--profile", "1", "--output", str(tmp_path)]) == 0
    results = json.loads((tmp_path / "feature_cache.json").read_text())["results"]
    assert [r["arch"] for r in results] == ["tiny_cpu", "tiny"]
    for r in results:
        assert r["max_loss_diff"] < 1e-5  # the cached step computes the uncached step's loss (float rounding)
        calls = r["profile"]["calls"]
        # the conv encoder's convolutions leave the step (counted calls, not times): only the positional one stays
        conv_layers = len(bench.architecture(r["arch"]).get("conv_dim", [512] * 7))  # Wav2Vec2Config: 7 layers
        assert calls["cached"]["aten::convolution"] == 1
        assert calls["uncached"]["aten::convolution"] == 1 + conv_layers
    assert "uncached - cached" in (tmp_path / "feature_cache.md").read_text()


# ------------------------------------------------------------------------------------------ memory
def test_bench_onednn_cache_rows_run_in_their_precision_and_capacity(tmp_path):
    """Four fresh processes (float32/bf16 x oneDNN's cache / ours) train a tiny filterbank model; every row is
    reported with its memory marks and time, and the capacity reached each child through its environment."""
    from asr.allocator import ONEDNN_CACHE_CAPACITY
    from asr.model import ModelConfig, build_model
    from asr.text import build_vocab

    model_dir = tmp_path / "tiny_w2v_bert"
    arch = dict(model_type="wav2vec2-bert", hidden_size=32, num_hidden_layers=1, num_attention_heads=2,
                intermediate_size=64, feature_projection_input_dim=160, conv_depthwise_kernel_size=3)
    build_model(ModelConfig(architecture=arch), build_vocab(["a tiny model"]), pad_token_id=0).save_pretrained(model_dir)
    assert onednn_cache.main(["--model", str(model_dir), "--steps", "4", "--output", str(tmp_path / "out")]) == 0
    rows = json.loads((tmp_path / "out" / "onednn_cache.json").read_text())["rows"]
    assert [(r["precision"], r["capacity"]) for r in rows] == [
        ("float32", 1024), ("float32", int(ONEDNN_CACHE_CAPACITY)), ("bf16", 1024), ("bf16", int(ONEDNN_CACHE_CAPACITY))]
    assert all(list(r["rss_mb"]) == ["1", "4"] and min(r["rss_mb"].values()) > 0 and r["seconds"] > 0 for r in rows)
    assert [r["capacity_seen"] for r in rows] == [r["capacity"] for r in rows]
    assert "| bf16 | 64 |" in (tmp_path / "out" / "onednn_cache.md").read_text()


def test_bench_memory_tiny_peaks():
    bench = memory
    measured = bench.compare_checkpointing("tiny", seconds=1.0, batch_size=1, limit_bytes=None)
    plain, checkpointed = measured[False], measured[True]
    for m in (plain, checkpointed):
        assert m["peak"] > 0 and m["step_peak"] > 0 and m["peak"] >= m["rss_before"]
        assert m["trainable"] < m["params"]  # the conv encoder is frozen
    assert plain["checkpointing"] is False and checkpointed["checkpointing"] is True
    assert plain["loss"] == pytest.approx(checkpointed["loss"], rel=1e-5)  # same seed: the same step


def test_longest_passing_binary_search():
    bench = memory
    probed = []

    def fits(seconds):
        probed.append(seconds)
        return seconds <= 37.5

    assert bench.longest_passing(fits, max_seconds=120, resolution=1.0) == (37.0, len(probed))
    assert len(probed) <= 8  # log2(120) + the first probe at the maximum
    assert bench.longest_passing(lambda s: True, 60)[0] == 60
    assert bench.longest_passing(lambda s: False, 60)[0] == 0.0



# ------------------------------------------------------------------------------------------- train
def _train_config(batch_seconds: float):
    from asr.train import TrainConfig

    cfg = TrainConfig()
    cfg.data.max_batch_seconds = batch_seconds
    return cfg


@pytest.mark.parametrize("processes", [1, 2])
def test_bench_train_samplers_without_training(processes):
    import numpy as np

    bench = train
    rng = np.random.default_rng(0)  # read-speech lengths in whole samples, as prepared splits hold them
    durations = [round(d * 16_000) / 16_000 for d in np.clip(rng.lognormal(np.log(3.5), 0.5, 2000), 0.5, 15.0)]
    cfg = _train_config(80.0 / processes)  # 80 s per global batch
    epoch = bench.ours_epoch(durations, cfg, processes, 0)
    # The replay is train.py's epoch: every utterance once, one batch per process per step.
    assert sorted(i for step in epoch for batch in step for i in batch) == list(range(len(durations)))
    assert all(len(step) == processes for step in epoch)
    assert bench.ours_steps(durations, cfg, processes, len(epoch) + 3)[len(epoch):] == \
        bench.ours_epoch(durations, cfg, processes, 1)[:3]  # the loop goes on into the next epoch
    # The baseline's fixed batch holds our mean batch's audio.
    batch_size = bench.baseline_batch_size(durations, cfg, processes)
    ours_mean = sum(durations) / sum(len(step) for step in epoch)
    assert batch_size * sum(durations) / len(durations) == pytest.approx(ours_mean, rel=0.05)
    ours, baseline = bench.epoch_padding(durations, cfg, processes, batch_size)
    assert 0 <= ours <= 0.03 and 0 <= baseline < 1 and ours < baseline


@pytest.mark.slow
def test_bench_train_smoke_end_to_end(synth_corpus, tmp_path):
    bench = train
    out = tmp_path / "out"
    code = bench.main(["--smoke", "--manifest", str(synth_corpus / "train.jsonl"), "--output", str(out),
                       "--work-dir", str(tmp_path / "work")])
    assert code == 0
    table = (out / "train.md").read_text()
    lines = [line for line in table.splitlines() if line.startswith("|")]
    assert lines[0] == ("| side | setup | steps timed | audio s / step | padded % (timed) | padded % (epoch) | "
                        "audio s / wall s | vs baseline |")
    assert lines[2].startswith("| HF Trainer (baseline) | group_by_length, per_device_train_batch_size=")
    assert lines[3].startswith("| ours (scripts/train.py) | DurationBatchSampler")
    assert len(lines) == 4 and lines[2].endswith("| 1.00x |") and "Targets: ours" in table
    base, ours = json.loads((out / "train.json").read_text())["sides"]
    for side in (base, ours):
        assert side["steps"] == 3 and side["audio_seconds"] > 0 and side["wall_seconds"] > 0
        assert 0 <= side["padded_timed"] <= 1 and 0 <= side["padded_epoch"] <= 1
    assert ours["padded_timed"] <= base["padded_timed"] and ours["padded_epoch"] <= base["padded_epoch"]
    # Both trained the same model: the baseline's loss comes from it, ours logged one per step.
    assert len(ours["losses"]) == 4 and base["training_loss"] > 0
