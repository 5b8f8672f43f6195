"""Export a trained CTC model to ONNX for serving, checked against PyTorch on real speech.

    $ .venv/bin/python scripts/export.py --model runs/tiny/model --output runs/tiny/onnx
    $ .venv/bin/python scripts/export.py --model runs/tiny/model --output runs/tiny/onnx --lm runs/lm --opset 17
    $ .venv/bin/python scripts/export.py --model runs/demo/model --output runs/demo/onnx_int8 --quantize int8 \
          --parity-data data/synth/dev.jsonl
    $ .venv/bin/python scripts/transcribe.py recordings/ --backend onnx --model runs/tiny/onnx --output out/

Writes --output (atomically: a hidden temporary directory renamed into place once checked):
`model.onnx` (dynamic batch and time axes; inputs `input_values` [batch, samples] float32, plus
`attention_mask` [batch, samples] int64 for models whose processor uses one; output `logits`
[batch, frames, vocab]), every other file of the model directory but its weights (config, processor,
normalizer.json, model card), the KenLM directory (the model's own, or --lm DIR), and
`export_report.json`: exporter, versions, opset, tolerance, and the largest logit difference per
clip length and batch size. The check synthesises speech with espeak-ng/flite (or reads --audio
files), runs clips of 0.37-30 s in batches of 1, 2 and 4 through PyTorch and ONNX Runtime, and
fails unless the logits agree within --tolerance and greedy transcripts are identical.
With --quantize int8, that float graph's MatMul/Gemm weights are then stored as int8 (ONNX Runtime dynamic
quantization, ~3x smaller) and the gate is greedy WER on labelled speech (the synthesised sentences, or
--parity-data): at most --max-wer-increase (0.5 points) above PyTorch's, else nothing is written.

Exit code: 0 exported, 1 the check failed or the environment lacks something (nothing written),
2 bad arguments.
"""

from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path

from asr.cli import ArgumentParser, add_common_flags, setup_logging
from asr.constants import EXIT_CRASH, EXIT_OK, EXIT_USAGE
from asr.defaults import DEFAULT_MAX_WER_INCREASE, DEFAULT_OPSET, DEFAULT_TOLERANCE, QUANTIZE_CHOICES

logger = logging.getLogger("export")
# The library (torch, onnx) is imported in the functions below, after parsing, so that --help is instant.


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    """Command-line arguments."""
    p = ArgumentParser(description=__doc__)
    p.add_argument("--model", type=Path, required=True, help="model directory (the model/ of a training run)")
    p.add_argument("--output", type=Path, required=True, help="export directory (replaced if it holds an export)")
    p.add_argument("--opset", type=int, default=DEFAULT_OPSET, help="ONNX opset (14-20)")
    p.add_argument("--lm", type=Path, default=None, help="KenLM directory from scripts/build_lm.py to ship "
                   "(default: the model directory's own language_model/, if any)")
    p.add_argument("--tolerance", type=float, default=DEFAULT_TOLERANCE, help="largest |logit difference| allowed")
    p.add_argument("--audio", type=Path, nargs="+", default=None,
                   help="recordings for the parity check (default: speech synthesised with espeak-ng/flite)")
    p.add_argument("--quantize", choices=QUANTIZE_CHOICES, default=None,
                   help="store MatMul/Gemm weights as int8 (default: float32), gated on greedy WER")
    p.add_argument("--max-wer-increase", type=float, default=DEFAULT_MAX_WER_INCREASE,
                   help="int8 gate: greedy WER may exceed PyTorch's by this fraction (0.005 = 0.5 points)")
    p.add_argument("--parity-data", type=Path, default=None,
                   help="labelled speech for the int8 WER gate: a manifest or corpus folder, e.g. a dev set "
                        "(default: the synthesised parity sentences)")
    add_common_flags(p)
    return p.parse_args(argv)


def _read_labelled(path: Path) -> list[tuple]:
    """(audio, text) pairs of a manifest/corpus for the int8 gate."""
    from asr.audio import AudioError, load_audio
    from asr.sources import SourceConfig, load_source

    try:
        utterances = load_source(SourceConfig(path=str(path)))
        return [(load_audio(u.audio), u.text) for u in utterances]
    except (ValueError, AudioError) as e:
        raise ValueError(f"--parity-data {path}: {e}") from e


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    setup_logging(args)
    import transformers

    from asr.audio import AudioError, load_audio
    from asr.onnx_export import ExportOptions, ParityError, export_onnx

    transformers.utils.logging.disable_progress_bar()
    try:
        options = ExportOptions(opset=args.opset, tolerance=args.tolerance, quantize=args.quantize,
                                max_wer_increase=args.max_wer_increase)
        if args.parity_data and not args.quantize:
            raise ValueError("--parity-data is the int8 gate's data; add --quantize int8 or leave it out")
        labelled = _read_labelled(args.parity_data) if args.parity_data else None
        audios = None
        if args.audio:
            try:
                audios = [load_audio(path) for path in args.audio]
            except AudioError as e:
                raise ValueError(f"--audio: {e}") from e
        report = export_onnx(args.model, args.output, args.lm, options, audios, labelled)
    except ValueError as e:
        logger.error("%s", e)
        return EXIT_USAGE
    except RuntimeError as e:  # ParityError included: the message carries the measurements
        logger.error("%s", e)
        if isinstance(e, ParityError) and (e.report.quantized is None or e.report.quantized.passed):
            for check in e.report.checks:
                logger.error("  %5.2f s in a batch of %d: max |diff| %.2e, greedy %s", check.seconds,
                             check.batch_size, check.max_abs_diff, "same" if check.greedy_identical else "DIFFERENT")
        return EXIT_CRASH
    logger.info("export report: %s", args.output / "export_report.json")
    print(report.summary())
    return EXIT_OK


if __name__ == "__main__":
    sys.exit(main())
