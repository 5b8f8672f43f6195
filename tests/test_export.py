"""ONNX export (asr.onnx_export, scripts/export.py) and the ONNX backend (asr.onnx_model, --backend onnx).

Two tiny randomly initialised wav2vec2 models, as training writes them: layer-norm feature encoder
with an attention mask, and group-norm without one (it sees the zero padding of a batch). Both are
exported, then run by PyTorch and ONNX Runtime on real synthesised speech of several lengths in
several batch sizes: logits must agree and greedy transcripts must be identical. Their transcripts
are noise, but deterministic noise, which is all a parity check needs.
"""

from __future__ import annotations

import importlib.util
import json
import logging
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf

from asr.audio import load_audio
from asr.beam import GreedyCTC
from asr.decoders import LM_SUBDIR, build_decoder
from asr.inference import load_acoustic_model, log_probs_batch, prepare_batch
from asr.onnx_export import ExportOptions, ExportReport, ParityError, export_onnx
from asr.onnx_model import ONNX_FILE, REPORT_FILE, load_onnx_model
from asr.text import TextNormalizer, build_vocab, make_processor, save_processor
from lm.build import LMBuildOptions, build_lm

from compare import same_transcripts
from trainrun import env

ROOT = Path(__file__).resolve().parents[1]
TOLERANCE = 1e-4  # measured: <= 2e-5 (group norm) and <= 1e-6 (layer norm) on these models
# Shorter than the exporter's defaults (up to 30 s in batches of 4) to keep the file fast; same kinds of cases.
OPTIONS = ExportOptions(parity_seconds=(0.37, 1.93, 4.41, 9.07), batch_sizes=(1, 2, 3))
NORMS = ("layer", "group")


def tiny_model(out: Path, vocab: dict[str, int], norm: str) -> Path:
    """An untrained 2-layer wav2vec2 CTC model directory (the layout scripts/train.py exports)."""
    import torch

    from asr.model import ModelConfig, build_model

    mask = norm == "layer"
    arch = dict(model_type="wav2vec2", hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
                intermediate_size=64, conv_dim=[32] * 7, num_conv_pos_embeddings=16,
                num_conv_pos_embedding_groups=4, feat_extract_norm=norm, do_stable_layer_norm=mask)
    torch.manual_seed(0)
    build_model(ModelConfig(architecture=arch), vocab, pad_token_id=vocab["[PAD]"]).save_pretrained(out)
    save_processor(make_processor(vocab, return_attention_mask=mask), TextNormalizer(), out)
    (out / "README.md").write_text("model card\n")
    return out


def load_script(name: str):
    """scripts/<name>.py as a module, to call its main() in-process."""
    spec = importlib.util.spec_from_file_location(f"{name}_script", ROOT / "scripts" / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def read_jsonl(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines()]


# ------------------------------------------------------------------------------------------ fixtures
@pytest.fixture(scope="module")
def texts(synth_corpus) -> list[str]:
    return [row["text"] for split in ("train", "dev", "test") for row in read_jsonl(synth_corpus / f"{split}.jsonl")]


@pytest.fixture(scope="module")
def utterances(synth_corpus) -> list[np.ndarray]:
    return [load_audio(p) for p in sorted(synth_corpus.glob("audio/*/*.wav"))]


@pytest.fixture(scope="module")
def lm_dir(tmp_path_factory, texts) -> Path:
    """A standalone word 2-gram over half the corpus sentences (scripts/build_lm.py --output DIR)."""
    out = tmp_path_factory.mktemp("lm")
    build_lm(texts[: len(texts) // 2], out, vocab=build_vocab(texts), options=LMBuildOptions(order=2))
    return out


@pytest.fixture(scope="module")
def models(tmp_path_factory, texts) -> dict[str, Path]:
    """Norm -> model directory; the group-norm model carries its own LM (build_lm beside the model)."""
    out = {norm: tiny_model(tmp_path_factory.mktemp(f"{norm}_model"), build_vocab(texts), norm) for norm in NORMS}
    build_lm(texts, out["group"], vocab=build_vocab(texts), options=LMBuildOptions(order=3))
    return out


@pytest.fixture(scope="module")
def exports(models, tmp_path_factory, utterances) -> dict[str, tuple[Path, ExportReport]]:
    """Norm -> (export directory, report), checked on the corpus's real speech."""
    out = {}
    for norm, model_dir in models.items():
        path = tmp_path_factory.mktemp(f"{norm}_export") / "onnx"
        out[norm] = path, export_onnx(model_dir, path, options=OPTIONS, audios=utterances[:6])
    return out


# ------------------------------------------------------------------------------------------- export
@pytest.mark.parametrize("norm", NORMS)
def test_export_writes_a_complete_checked_serving_directory(models, exports, norm):
    model_dir, (out, report) = models[norm], exports[norm]
    files = {p.relative_to(out).as_posix() for p in out.rglob("*") if p.is_file()}
    expected = {ONNX_FILE, REPORT_FILE, "config.json", "vocab.json", "normalizer.json", "preprocessor_config.json",
                "tokenizer_config.json", "README.md"}
    assert expected <= files
    assert not [f for f in files if f.endswith(".safetensors")]
    assert not [p for p in out.parent.iterdir() if p.name.startswith(".")]  # no temporary directory left
    if norm == "group":  # the model's own LM comes along, its KenLM binary included
        assert {f"{LM_SUBDIR}/lm.bin", f"{LM_SUBDIR}/unigrams.txt", f"{LM_SUBDIR}/attrs.json", "alphabet.json",
                "lm_info.json"} <= files
        assert report.lm == str(model_dir.resolve())

    saved = json.loads((out / REPORT_FILE).read_text())
    assert saved == json.loads(json.dumps(report.to_dict()))
    assert saved["passed"] and saved["greedy_identical"]
    assert saved["max_abs_diff"] <= saved["tolerance"] == OPTIONS.tolerance
    assert saved["max_abs_diff"] == max(c["max_abs_diff"] for c in saved["checks"])
    assert {(c["seconds"], c["batch_size"]) for c in saved["checks"]} == {
        (s, b) for s in OPTIONS.parity_seconds for b in OPTIONS.batch_sizes}
    assert any(c["padded_samples"] > c["samples"] for c in saved["checks"])  # padding was exercised
    assert ("attention_mask" in saved["inputs"]) == (norm == "layer")
    assert saved["inputs"]["input_values"] == ["batch", "samples"]
    assert saved["outputs"]["logits"][:2] == ["batch", "frames"]
    import torch

    assert saved["versions"]["torch"] == torch.__version__  # the torch that exported it, whatever is installed
    print(f"{norm}: {report.summary()}")


@pytest.mark.parametrize("batch_size", [1, 2, 4])
@pytest.mark.parametrize("norm", NORMS)
def test_onnx_logits_and_greedy_transcripts_match_torch(models, exports, utterances, norm, batch_size):
    torch_model = load_acoustic_model(models[norm], "torch")
    onnx_model = load_acoustic_model(exports[norm][0], "onnx")
    assert onnx_model.vocab == torch_model.vocab and onnx_model.blank_id == torch_model.blank_id
    assert onnx_model.seconds_per_frame == torch_model.seconds_per_frame
    assert onnx_model.return_attention_mask == torch_model.return_attention_mask
    # Real speech of many lengths: whole utterances, a cut inside one frame's hop, and a long concatenation.
    clips = [utterances[0][:8_321], *utterances[1:6], np.concatenate(utterances[6:10])]
    greedy = GreedyCTC(torch_model.vocab)
    diffs = []
    for start in range(0, len(clips), batch_size):
        audios = clips[start: start + batch_size]
        inputs = prepare_batch(torch_model, audios)
        expected, got = torch_model.logits(*inputs), onnx_model.logits(*inputs)
        assert got.shape == expected.shape == (len(audios), torch_model.frames(inputs[0].shape[1]),
                                               len(torch_model.vocab))
        for row, audio in enumerate(audios):
            frames = torch_model.frames(len(audio))
            assert onnx_model.frames(len(audio)) == frames
            diffs.append((len(audio), float(np.abs(expected[row, :frames] - got[row, :frames]).max())))
        texts_torch = [greedy.decode(lp).text for lp in log_probs_batch(torch_model, audios)]
        texts_onnx = [greedy.decode(lp).text for lp in log_probs_batch(onnx_model, audios)]
        assert texts_onnx == texts_torch
    print(f"{norm} norm, batch {batch_size}: " + ", ".join(f"{n / 16000:.2f}s {d:.1e}" for n, d in diffs))
    assert max(d for _, d in diffs) <= TOLERANCE


def test_lm_copied_from_another_directory_replaces_the_models_own(models, lm_dir, utterances, tmp_path):
    out = tmp_path / "onnx"
    export_onnx(models["group"], out, lm_dir=lm_dir, options=ExportOptions(parity_seconds=(2.0,), batch_sizes=(1,)),
                audios=utterances[:2])
    assert json.loads((out / REPORT_FILE).read_text())["lm"] == str(lm_dir.resolve())
    shipped, own = (out / LM_SUBDIR / "lm.bin").read_bytes(), (models["group"] / LM_SUBDIR / "lm.bin").read_bytes()
    assert shipped == (lm_dir / LM_SUBDIR / "lm.bin").read_bytes() != own
    assert (out / "lm_info.json").read_text() == (lm_dir / "lm_info.json").read_text()
    log_probs = log_probs_batch(load_onnx_model(out), utterances[:1])[0]
    vocab = load_onnx_model(out).vocab
    assert build_decoder("flashlight", vocab, out).decode(log_probs) == build_decoder("flashlight", vocab, lm_dir).decode(
        log_probs)


@pytest.mark.parametrize("norm", NORMS)
def test_failed_parity_check_writes_nothing_and_keeps_the_earlier_export(models, utterances, tmp_path, norm):
    model_dir, out = models[norm], tmp_path / "onnx"
    export_onnx(model_dir, out, options=ExportOptions(parity_seconds=(1.0,), batch_sizes=(1,)), audios=utterances[:1])
    before = (out / REPORT_FILE).read_text()
    strict = ExportOptions(tolerance=1e-12, parity_seconds=(3.0,), batch_sizes=(2,))  # float32 cannot meet it
    with pytest.raises(ParityError, match="does not reproduce PyTorch") as caught:
        export_onnx(model_dir, out, options=strict, audios=utterances[:2])
    assert caught.value.report.max_abs_diff > 1e-12 and not caught.value.report.passed
    assert (out / REPORT_FILE).read_text() == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["onnx"]
    with pytest.raises(ParityError):
        export_onnx(model_dir, tmp_path / "fresh", options=strict, audios=utterances[:2])
    assert sorted(p.name for p in tmp_path.iterdir()) == ["onnx"]


# --------------------------------------------------------------------------------------------- CLIs
def test_transcribing_a_directory_with_the_onnx_backend_equals_torch(models, exports, utterances, tmp_path):
    # The group-norm model: it sees the zero padding of its batches, so batching must match exactly too.
    model_dir, exported = models["group"], exports["group"]
    inputs = tmp_path / "in"
    for i, audio in enumerate(utterances[:7]):
        (inputs / f"d{i % 2}").mkdir(parents=True, exist_ok=True)
        sf.write(inputs / f"d{i % 2}" / f"u{i}.wav", audio, 16000, subtype="PCM_16")
    sf.write(inputs / "long.flac", np.concatenate(utterances[7:12]), 16000)  # longer than a chunk: streamed
    script = load_script("transcribe")
    common = [str(inputs), "--max-batch-seconds", "8", "--chunk-seconds", "6", "--overlap-seconds", "1", "--segmenter", "grid",
              "--decoder", "greedy", "--formats", "srt"]
    assert script.main([*common, "--model", str(model_dir), "--output", str(tmp_path / "torch")]) == 0
    assert script.main([*common, "--backend", "onnx", "--model", str(exported[0]),
                        "--output", str(tmp_path / "onnx")]) == 0
    torch_rows = read_jsonl(tmp_path / "torch" / "transcripts.jsonl")
    onnx_rows = read_jsonl(tmp_path / "onnx" / "transcripts.jsonl")
    assert len(torch_rows) == 8 and any(r["text"] for r in torch_rows)
    same_transcripts(onnx_rows, torch_rows)
    assert all(r["model"] == str(exported[0].resolve()) for r in onnx_rows)
    for row in torch_rows:
        srt = Path(row["path"]).with_suffix(".srt")
        assert (tmp_path / "onnx" / srt).read_text() == (tmp_path / "torch" / srt).read_text()


def test_export_cli_writes_and_bad_inputs_are_one_line_errors(models, exports, utterances, tmp_path, caplog):
    model_dir, exported = models["layer"], exports["layer"]
    audio = tmp_path / "speech.wav"
    sf.write(audio, np.concatenate(utterances[:3]), 16000, subtype="PCM_16")
    (tmp_path / "notes").mkdir()
    (tmp_path / "notes" / "todo.txt").write_text("not a model\n")
    script = load_script("export")
    cases = [
        (["--model", str(tmp_path / "missing")], "does not exist; pass the model/ directory"),
        (["--model", str(tmp_path / "notes")], "is not a model directory (no config.json)"),
        (["--model", str(exported[0])], "is already an ONNX export; pass the PyTorch model directory"),
        (["--model", str(model_dir), "--output", str(model_dir / "onnx")], "is inside --model"),
        (["--model", str(model_dir), "--output", str(tmp_path / "notes")], "is not an earlier export"),
        (["--model", str(model_dir), "--lm", str(tmp_path / "notes")], "build one with scripts/build_lm.py"),
        (["--model", str(model_dir), "--opset", "9"], "is outside 14-20"),
        (["--model", str(model_dir), "--audio", str(tmp_path / "notes" / "todo.txt")], "--audio"),
        (["--model", str(model_dir), "--parity-data", str(tmp_path / "notes")], "add --quantize int8"),
        (["--model", str(model_dir), "--quantize", "int8", "--parity-data", str(tmp_path / "none.jsonl")],
         "--parity-data"),
        (["--model", str(model_dir), "--quantize", "int8", "--max-wer-increase", "2"], "must be in [0, 1)"),
    ]
    for args, message in cases:
        if "--output" not in args:
            args = [*args, "--output", str(tmp_path / "out")]
        caplog.clear()
        with caplog.at_level(logging.ERROR):
            assert script.main(args) == 2, args
        errors = [r.getMessage() for r in caplog.records if r.levelno >= logging.ERROR]
        assert len(errors) == 1 and "\n" not in errors[0] and message in errors[0], (args, errors)
        assert not (tmp_path / "out").exists()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["notes", "speech.wav"]
    # the same through a real process: exit code 2, one line, no traceback
    proc = subprocess.run([sys.executable, str(ROOT / "scripts/export.py"), "--model", str(tmp_path / "missing"),
                           "--output", str(tmp_path / "out")], capture_output=True, text=True, env=env(), cwd=ROOT,
                          timeout=120)
    assert proc.returncode == 2 and "Traceback" not in proc.stderr
    assert [line for line in proc.stderr.splitlines() if "does not exist" in line] == [proc.stderr.strip()]

    # and a real export, parity-checked on given recordings
    assert script.main(["--model", str(model_dir), "--output", str(tmp_path / "out"), "--audio", str(audio)]) == 0
    report = json.loads((tmp_path / "out" / REPORT_FILE).read_text())
    assert report["passed"] and report["audio"] == "1 recordings given"

    transcribe = load_script("transcribe")
    sf.write(tmp_path / "notes" / "a.wav", utterances[0], 16000)
    for backend, model, message in (("onnx", model_dir, "has no model.onnx; it is a PyTorch model directory"),
                                    ("torch", tmp_path / "out", "holds an ONNX export without PyTorch weights")):
        caplog.clear()
        assert transcribe.main([str(tmp_path / "notes"), "--backend", backend, "--model", str(model),
                                "--output", str(tmp_path / f"t_{backend}")]) == 2
        assert message in caplog.text


# ---------------------------------------------------------------------------------------------- int8
@pytest.mark.slow
def test_int8_export_of_the_shipped_base_keeps_its_wer_and_is_a_third_of_the_size(synth_corpus, tmp_path):
    """--quantize int8 on a trained model: MatMul/Gemm weights int8, greedy WER on labelled speech within the gate,
    and the ONNX backend reads the quantized directory like any export."""
    base = ROOT / "assets" / "base_model"
    rows = [r for split in ("train", "dev", "test") for r in read_jsonl(synth_corpus / f"{split}.jsonl")]
    labelled = [(load_audio(synth_corpus / r["audio_filepath"]), r["text"]) for r in rows]
    # 20 utterances, 163 words: one changed word is 0.6 points, so the gate here allows 2 (measured: +0.6)
    options = ExportOptions(parity_seconds=(1.93, 4.41), batch_sizes=(1, 2), quantize="int8", max_wer_increase=0.02)
    report = export_onnx(base, tmp_path / "int8", options=options, audios=[a for a, _ in labelled], labelled=labelled)
    check = report.quantized
    assert check is not None and check.passed and report.passed and check.utterances == len(rows)
    assert check.ops == ("MatMul", "Gemm") and check.references == f"{len(rows)} labelled recordings given"
    assert check.wer_quantized <= check.wer_torch + 0.02 and check.max_wer_increase == 0.02
    assert report.onnx_bytes < 0.45 * check.float_bytes  # measured 13.5 of 37.0 MB
    written = json.loads((tmp_path / "int8" / REPORT_FILE).read_text())
    assert written["quantized"]["wer_quantized"] == check.wer_quantized
    # the float32 graph was checked before quantizing, and int8 logits are not float32's
    assert report.max_abs_diff <= options.tolerance and check.max_abs_diff > options.tolerance
    import onnx

    ops = {node.op_type for node in onnx.load(str(tmp_path / "int8" / ONNX_FILE)).graph.node}
    assert "MatMulInteger" in ops or "DynamicQuantizeMatMul" in ops, sorted(ops)
    served = load_acoustic_model(tmp_path / "int8", "onnx")
    greedy = GreedyCTC(served.vocab)
    audios = [a for a, _ in labelled]
    texts = [greedy.decode(lp).text for i in range(0, len(audios), 4) for lp in log_probs_batch(served, audios[i:i + 4])]
    from asr.metrics import error_rates

    # the directory written is the graph the gate measured (batched as the gate batches), and it reads speech
    assert error_rates([r["text"] for r in rows], texts).wer == pytest.approx(check.wer_quantized)
    assert check.wer_quantized < 0.8


def test_int8_that_reads_worse_than_torch_writes_nothing(models, utterances, tmp_path):
    """The WER gate refuses: an untrained model's near-flat logits flip under int8, PyTorch's own transcripts are
    the references (no texts given), and no increase is allowed."""
    options = ExportOptions(parity_seconds=(1.93,), batch_sizes=(1,), quantize="int8", max_wer_increase=0.0)
    with pytest.raises(ParityError, match="int8 export .* reads worse than PyTorch") as caught:
        export_onnx(models["layer"], tmp_path / "onnx", options=options, audios=utterances[:6])
    check = caught.value.report.quantized
    assert check.references == "PyTorch's transcripts of the recordings given" and check.wer_torch == 0.0
    assert check.transcripts_changed > 0 and check.wer_quantized > 0 and not check.passed
    assert list(tmp_path.iterdir()) == []  # nothing written, no temporary left


def test_int8_options_are_checked():
    with pytest.raises(ValueError, match="--quantize int4 is unknown"):
        ExportOptions(quantize="int4")
    with pytest.raises(ValueError, match="--max-wer-increase 5"):
        ExportOptions(quantize="int8", max_wer_increase=5)


@pytest.mark.parametrize("decoder", [pytest.param("beam", marks=pytest.mark.slow), "flashlight"])  # beam: ~3 min
def test_onnx_backend_with_a_beam_decoder_and_the_exported_lm_equals_torch(models, exports, utterances, tmp_path,
                                                                           decoder):
    """scripts/transcribe.py and asr.Recognizer, KenLM beam search over ONNX Runtime's log-probs: the same
    transcripts as over PyTorch's, with the LM the export carries (the group-norm model's own)."""
    from asr.recognizer import Recognizer

    model_dir, (export_dir, _) = models["group"], exports["group"]
    assert (export_dir / LM_SUBDIR).is_dir()
    inputs = tmp_path / "in"
    inputs.mkdir()
    for i, audio in enumerate(utterances[:5]):
        sf.write(inputs / f"u{i}.wav", audio, 16000, subtype="PCM_16")
    script = load_script("transcribe")
    common = [str(inputs), "--max-batch-seconds", "8", "--decoder", decoder]
    assert script.main([*common, "--model", str(model_dir), "--output", str(tmp_path / "torch")]) == 0
    assert script.main([*common, "--backend", "onnx", "--model", str(export_dir),
                        "--output", str(tmp_path / "onnx")]) == 0
    torch_rows = read_jsonl(tmp_path / "torch" / "transcripts.jsonl")
    onnx_rows = read_jsonl(tmp_path / "onnx" / "transcripts.jsonl")
    assert len(torch_rows) == 5 and any(r["words"] for r in torch_rows)
    assert all(r["decoder"] == decoder and r["lm"] == str(export_dir.resolve()) for r in onnx_rows)
    same_transcripts(onnx_rows, torch_rows)

    files = sorted(inputs.glob("*.wav"))
    onnx = Recognizer.from_pretrained(export_dir, backend="onnx", max_batch_seconds=8).transcribe(files, decoder)
    torch_ = Recognizer.from_pretrained(model_dir, max_batch_seconds=8).transcribe(files, decoder)
    assert [(t.text, t.words) for t in onnx] == [(t.text, t.words) for t in torch_]
    assert [t.text for t in onnx] == [r["text"] for r in torch_rows]
