"""The model card (README.md) of an exported model directory: Hub metadata, results, how to use it.

The card is written from the directory's own files, so each step that changes what the directory holds
rewrites it, and it never describes an LM or a result the directory does not have:

    train_config.yaml   base model, licence, language, datasets (its `card:` section), the recipe   scripts/train.py
    metrics.json        greedy WER/CER on the dev set at the exported step, the data summary        scripts/train.py
    lm_info.json        the KenLM n-gram beside the model                                           scripts/build_lm.py
    decoder.json        tuned alpha/beta and the tuning set's beam/flashlight WER/CER               scripts/eval.py --tune

plus the evaluation table that `scripts/eval.py --tune` passes in (`CardResult`s).

    >>> write_model_card("runs/x/model")
    >>> card_metadata(Path("runs/x/model/README.md").read_text())["model-index"][0]["results"]

The YAML front matter follows the Hub's model card metadata (license, language, base_model, datasets,
metrics, model-index); model-index values are percentages, as the Hub's leaderboards show them.
"""

from __future__ import annotations

import json
import logging
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from asr.decoders import DECODER_FILE, INFO_FILE, has_lm
from asr.files import write_text_atomic

logger = logging.getLogger(__name__)

CARD_FILE = "README.md"
CONFIG_FILE = "train_config.yaml"  # written by scripts/train.py beside the weights
METRICS_FILE = "metrics.json"
AVERAGED_KEY = "averaged"  # metrics.json of an averaged model: the steps, in place of one step's dev metrics
DEFAULT_LICENSE = "apache-2.0"  # this toolkit's licence, for weights trained from scratch or from a base that names none
DECODER_TITLES = {"greedy": "greedy", "beam": "KenLM beam search (pyctcdecode)",
                  "flashlight": "KenLM beam search (flashlight-text)"}
PYCTCDECODE_BEAM_WIDTH = 100  # BeamSearchDecoderCTC.decode's default, which the pipeline uses


@dataclass
class CardConfig:
    """What the model card declares that the run cannot measure (train config section `card:`)."""

    license: str | None = None  # Hub licence id; None: the base checkpoint directory's card's, else apache-2.0
    language: tuple[str, ...] = ("en",)  # ISO 639-1 codes of the speech and transcripts
    datasets: tuple[str, ...] = ()  # Hub dataset ids of the training data; () names the train source itself


@dataclass(frozen=True)
class CardResult:
    """One decoder's error rates on one set, as the card reports it."""

    decoder: str  # greedy, beam or flashlight
    data: str  # the set: a Hub id or a path
    wer: float  # fraction, 0.12 = 12%
    cer: float
    utterances: int | None = None
    split: str | None = None  # dev, test, ...
    settings: str = ""  # e.g. "alpha=0.5 beta=1 beam=100"


@dataclass(frozen=True)
class _Directory:
    """What a model directory's files say, for the card."""

    name: str
    config: dict[str, Any]
    metrics: dict[str, Any]
    lm: dict[str, Any] | None
    tuned: dict[str, Any]


def write_model_card(model_dir: str | os.PathLike, evaluation: Sequence[CardResult] = ()) -> Path | None:
    """(Re)write `model_dir/README.md` from the directory's files; returns its path.

    Args:
        model_dir: A model directory written by scripts/train.py (it holds train_config.yaml).
        evaluation: Results of scripts/eval.py to report besides the dev set's and the tuning set's.

    Returns:
        The card's path, or None when the directory was not written by scripts/train.py (no
        train_config.yaml): a card written by someone else is left alone.
    """
    model_dir = Path(model_dir)
    if not (model_dir / CONFIG_FILE).is_file():
        logger.info("%s has no %s: its model card is not ours to rewrite", model_dir, CONFIG_FILE)
        return None
    path = model_dir / CARD_FILE
    write_text_atomic(path, render_model_card(model_dir, evaluation))
    return path


def card_after_tuning(model_dir: str | os.PathLike, lm_dir: str | os.PathLike | None, data: str, split: str | None,
                      results: Sequence[Any]) -> Path | None:
    """Rewrites the card with an evaluation's rows after tuning, when the tuned LM is part of the model directory.

    Args:
        results: The evaluation's rows (`asr.report.DecoderResult`: decoder, wer, cer, utterances, settings,
            reference); reference recognisers' rows are left out.

    Returns:
        The card's path, or None when the LM lives elsewhere or the directory is not ours (see write_model_card).
    """
    if lm_dir is None or Path(lm_dir).resolve() != Path(model_dir).resolve():
        return None
    rows = [CardResult(r.decoder, data, r.wer, r.cer, r.utterances, split, r.settings) for r in results if not r.reference]
    return write_model_card(model_dir, rows)


def render_model_card(model_dir: str | os.PathLike, evaluation: Sequence[CardResult] = ()) -> str:
    """The card's text (YAML front matter, then Markdown) for a model directory; see `write_model_card`."""
    directory = _read_directory(Path(model_dir))
    results = card_results(directory, evaluation)
    front = card_front_matter(directory, results)
    return "---\n" + yaml.safe_dump(front, sort_keys=False, allow_unicode=True, width=1000) + "---\n" \
        + _body(directory, results)


def card_metadata(text: str) -> dict[str, Any]:
    """The YAML front matter of a card, as a dict.

    Raises:
        ValueError: The text does not start with a `---` delimited YAML block.
    """
    lines = text.splitlines()
    if not lines or lines[0].strip() != "---" or "---" not in (line.strip() for line in lines[1:]):
        raise ValueError("The model card has no YAML front matter (a block between two '---' lines at the top).")
    end = next(i for i, line in enumerate(lines[1:], 1) if line.strip() == "---")
    return yaml.safe_load("\n".join(lines[1:end])) or {}


def card_results(directory: _Directory, evaluation: Sequence[CardResult] = ()) -> list[CardResult]:
    """Greedy dev WER/CER from training, the tuned beam decoders on their tuning set, then `evaluation`."""
    results = []
    metrics, data = directory.metrics, directory.config.get("data", {})
    if "wer" in metrics:
        dev = data.get("dev") or {}
        results.append(CardResult("greedy", dev.get("path") or "dev", metrics["wer"], metrics["cer"],
                                  (metrics.get("data", {}).get("dev") or {}).get("utterances"), "dev",
                                  f"step {metrics.get('step')}"))
    tuned = directory.tuned.get("tuned", {}) if directory.lm is not None else {}
    for decoder, wer in tuned.get("wer", {}).items():
        cer = tuned.get("cer", {}).get(decoder)
        if cer is None:  # decoder.json written before CER was stored
            continue
        results.append(CardResult(decoder, tuned.get("data") or "tuning set", wer, cer, tuned.get("utterances"),
                                  "tuning", _tuned_settings(directory.tuned, decoder)))
    return results + list(evaluation)


def card_front_matter(directory: _Directory, results: Sequence[CardResult]) -> dict[str, Any]:
    """The card's Hub metadata."""
    config = directory.config
    card = config.get("card") or {}
    base = (config.get("model") or {}).get("name_or_path")
    front: dict[str, Any] = {"license": card.get("license") or _base_license(base) or DEFAULT_LICENSE,
                             "language": list(card.get("language") or CardConfig.language)}
    if hub_id(base):  # the Hub links base_model to a model page: a local path would be a broken link
        front["base_model"] = base
    datasets = list(card.get("datasets") or ())
    if not datasets:
        train = ((config.get("data") or {}).get("train") or {}).get("path")
        datasets = [train] if hub_id(train) else []
    if datasets:
        front["datasets"] = datasets
    front.update(library_name="transformers", pipeline_tag="automatic-speech-recognition",
                 tags=["ctc", "asr-toolkit"] + (["kenlm", "pyctcdecode"] if directory.lm is not None else []),
                 metrics=["wer", "cer"])
    front["model-index"] = [{"name": directory.name, "results": [_index_entry(r) for r in results]}]
    return front


def _index_entry(result: CardResult) -> dict[str, Any]:
    """One model-index result: the task, the set, WER and CER in percent."""
    title = DECODER_TITLES.get(result.decoder, result.decoder)
    dataset = {"name": result.data, "type": result.data}
    if result.split:
        dataset["split"] = result.split
    metrics = [{"type": "wer", "value": round(100 * result.wer, 2), "name": f"WER ({title})"},
               {"type": "cer", "value": round(100 * result.cer, 2), "name": f"CER ({title})"}]
    for metric in metrics:
        metric["args"] = {"decoder": result.decoder, **({"settings": result.settings} if result.settings else {})}
    return {"task": {"type": "automatic-speech-recognition", "name": "Speech Recognition"},
            "dataset": dataset, "metrics": metrics}


def _body(directory: _Directory, results: Sequence[CardResult]) -> str:
    """The Markdown under the front matter."""
    config, metrics = directory.config, directory.metrics
    model = config.get("model") or {}
    base = model.get("name_or_path") or f"{(model.get('architecture') or {}).get('model_type', 'wav2vec2')} " \
                                        "(from scratch)"
    lm = directory.lm
    lines = [f"# CTC speech recogniser fine-tuned from {base}", ""]
    if lm is not None:
        lines += [f"With a KenLM {lm.get('order')}-gram {lm.get('unit', 'word')} language model in `language_model/`: "
                  "transformers' ASR pipeline decodes with it (beam search), see Use.", ""]
    lines += ["## Results", ""]
    if not results:  # an averaged model: no evaluation belongs to its weights until one is run
        lines.append("No evaluation of these weights recorded: `scripts/eval.py --model MODEL_DIR --data MANIFEST`.")
    else:
        lines += ["| decoder | data | split | utterances | WER | CER | settings |", "|---|---|---|---:|---:|---:|---|"]
    for r in results:
        lines.append(f"| {DECODER_TITLES.get(r.decoder, r.decoder)} | {r.data} | {r.split or ''} | "
                     f"{'' if r.utterances is None else r.utterances} | {100 * r.wer:.2f}% | {100 * r.cer:.2f}% | "
                     f"{r.settings} |")
    if lm is not None:
        corpus, heldout = lm.get("corpus") or {}, lm.get("heldout")
        lines += ["", "## Language model", "",
                  f"KenLM {lm.get('order')}-gram over {lm.get('unit', 'word')}s ({lm.get('format')}, "
                  f"{lm.get('size_bytes', 0) / 1e6:.1f} MB): {lm.get('num_unigrams')} distinct {lm.get('unit', 'word')}s, "
                  f"{lm.get('num_train_sentences')} training sentences of {corpus.get('num_input')} read, normalised "
                  "like the model's labels (normalizer.json)"
                  + (f"; held-out perplexity {heldout['perplexity']:.1f}, OOV {100 * heldout['oov_rate']:.1f}%"
                     if heldout else "") + ". Built by scripts/build_lm.py (lm_info.json has the report); "
                  + ("alpha/beta tuned by scripts/eval.py --tune (decoder.json)." if directory.tuned.get("tuned")
                     else "alpha/beta are the defaults until `scripts/eval.py --tune` tunes them.")]
    summary = metrics.get("data") or {}
    if summary:
        lines += ["", "## Training data", "", "| split | source | utterances | hours | dropped |", "|---|---|---|---|---|"]
        for split, s in summary.items():
            lines.append(f"| {split} | {s['source']} | {s['utterances']} | {s['hours']:.2f} | {s['dropped']} |")
    lines += ["", "## Use", "", *_usage(directory)]
    optim, data = config.get("optim") or {}, config.get("data") or {}
    averaged = metrics.get(AVERAGED_KEY)
    if averaged:
        lines += ["", f"Weights: the mean of the run's checkpoints at steps {', '.join(map(str, averaged['steps']))} "
                      "(scripts/average_checkpoints.py)."]
    if "step" in metrics:
        lines += ["", f"Training: {metrics['step']} steps, peak LR {optim.get('lr')}, {optim.get('schedule')} "
                      f"schedule, {data.get('max_batch_seconds')} s of audio per batch per process. The resolved "
                      "config is train_config.yaml."]
    return "\n".join(lines) + "\n"


def _usage(directory: _Directory) -> list[str]:
    """The Use section: the pipeline, then greedy and (with an LM) pyctcdecode on the model's logits."""
    lm = directory.lm is not None
    width = int((directory.tuned.get("pyctcdecode") or {}).get("beam_width", PYCTCDECODE_BEAM_WIDTH))
    width_arg = "" if width == PYCTCDECODE_BEAM_WIDTH else f", beam_width={width}"
    pipeline_note = ("# KenLM beam search: the processor files name Wav2Vec2ProcessorWithLM" if lm
                     else "# greedy: no language model in this directory")
    lines = ["```python", "from transformers import pipeline", "",
             'asr = pipeline("automatic-speech-recognition", model="MODEL_DIR")  ' + pipeline_note,
             'print(asr("audio.wav")["text"])']
    if lm and width_arg:
        lines.append(f'print(asr("audio.wav", decoder_kwargs={{"beam_width": {width}}})["text"])  # the tuned width')
    lines += ["```", "",
              "Without the pipeline (transformers v6 drops its LM decoding; pyctcdecode keeps it):" if lm
              else "Without the pipeline:", "",
              "```python", "import soundfile as sf", "import torch",
              "from transformers import AutoFeatureExtractor, AutoModelForCTC, AutoTokenizer", "",
              'model = AutoModelForCTC.from_pretrained("MODEL_DIR").eval()',
              'features = AutoFeatureExtractor.from_pretrained("MODEL_DIR")',
              'audio, rate = sf.read("audio.wav", dtype="float32")  # 16 kHz mono',
              "with torch.no_grad():",
              '    logits = model(**features(audio, sampling_rate=rate, return_tensors="pt")).logits[0]',
              'print(AutoTokenizer.from_pretrained("MODEL_DIR").decode(logits.argmax(-1)))  # greedy']
    if lm:
        lines += ["", "from pyctcdecode import BeamSearchDecoderCTC", "",
                  'decoder = BeamSearchDecoderCTC.load_from_dir("MODEL_DIR")  # language_model/ and alphabet.json',
                  "# decode_beams is the pipeline's search (decode() merges beams ending in the same words)",
                  f"print(decoder.decode_beams(logits.numpy(){width_arg})[0][0])  # KenLM beam search"]
    lines.append("```")
    if not lm:
        lines += ["", "Build a KenLM n-gram beside the model (`python scripts/build_lm.py --model MODEL_DIR --text "
                      "LM_TEXT.txt`) and the pipeline decodes with it."]
    return lines


def _read_directory(model_dir: Path) -> _Directory:
    """The files of a model directory that the card is made from (missing ones read as empty)."""
    config = yaml.safe_load((model_dir / CONFIG_FILE).read_text(encoding="utf-8")) \
        if (model_dir / CONFIG_FILE).is_file() else {}
    lm = _read_json(model_dir / INFO_FILE) if has_lm(model_dir) else None
    resolved = model_dir.resolve()
    # scripts/train.py exports into RUN/model (written as RUN/model.tmp, then renamed): the run's name says which
    # model it is
    stem = resolved.name.removesuffix(".tmp")
    name = resolved.parent.name if stem == "model" else stem
    return _Directory(name=name, config=config or {}, metrics=_read_json(model_dir / METRICS_FILE), lm=lm,
                      tuned=_read_json(model_dir / DECODER_FILE) if lm is not None else {})


def _tuned_settings(stored: Mapping[str, Any], decoder: str) -> str:
    """`alpha=0.5 beta=1 beam=100` from decoder.json."""
    if decoder == "beam":
        o = stored.get("pyctcdecode") or {}
        return f"alpha={o.get('alpha'):g} beta={o.get('beta'):g} beam={o.get('beam_width')}" if o else ""
    o = stored.get("flashlight") or {}
    return f"lm_weight={o.get('lm_weight'):.3g} word_score={o.get('word_score'):g} beam={o.get('beam_size')}" \
        if o else ""


def hub_id(name: str | None) -> bool:
    """Whether `name` reads as a Hub repo id (`owner/name` or `name`) rather than a local path or file."""
    if not name or Path(name).exists() or name.startswith((".", "/", "~")) or name.count("/") > 1:
        return False
    if Path(name).suffix in (".jsonl", ".json", ".csv", ".tsv", ".parquet", ".arrow", ".txt"):
        return False
    from huggingface_hub.utils import HFValidationError, validate_repo_id

    try:
        validate_repo_id(name)
    except HFValidationError:
        return False
    return True


def _base_license(base: str | None) -> str | None:
    """The licence the base checkpoint's own card names, when it is a local directory with one."""
    if not base or not (Path(base) / CARD_FILE).is_file():
        return None
    try:
        return card_metadata((Path(base) / CARD_FILE).read_text(encoding="utf-8")).get("license")
    except (ValueError, yaml.YAMLError):
        return None


def _read_json(path: Path) -> dict[str, Any]:
    """A JSON object from `path`, or {} when the file is absent."""
    return json.loads(path.read_text(encoding="utf-8")) if path.is_file() else {}
