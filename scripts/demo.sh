#!/usr/bin/env bash
# The main job on the embedded default (`make demo` runs it after set-up):
#   1. a synthetic corpus (train/dev/test with held-out voices, LM text),
#   2. `accelerate launch` fine-tuning of the shipped base checkpoint (assets/base_model) on voices it
#      never heard, on 2 CPU processes,
#   3. a KenLM 4-gram beside the model,
#   4. greedy vs beam+LM evaluation on the test set, with pocketsphinx (a classic offline recogniser) as a
#      reference row (~1 min more on 2 cores),
#   5. transcription of a directory of held-out audio,
# then the comparison table and where every artefact is.
# Knobs (environment): DEMO_DIR (runs/demo), DEMO_CORPUS (data/synth), DEMO_TRAIN (2000 utterances),
# DEMO_STEPS (fine-tuning steps), DEMO_PROCS (2), DEMO_BASE (assets/base_model).
set -euo pipefail
cd "$(dirname "$0")/.."
export HF_HUB_OFFLINE=1 HF_DATASETS_OFFLINE=1 TRANSFORMERS_OFFLINE=1 TOKENIZERS_PARALLELISM=false
export PATH="$PWD/tools/kenlm/bin:$PATH"
PY=.venv/bin/python
OUT=${DEMO_DIR:-runs/demo}
STEPS=${DEMO_STEPS:-300}
BASE=${DEMO_BASE:-assets/base_model}
# Voices the base model never heard (scripts/build_base_model.sh leaves them out of its corpus).
VOICES='flite:rms,festival:ked_diphone,espeak-ng:en-gb-scotland*,espeak-ng:en-029*'
PROCS=${DEMO_PROCS:-2}
CORPUS=${DEMO_CORPUS:-data/synth}
say() { printf '\n==> %s\n' "$*"; }
start=$(date +%s)

if [ ! -f "$BASE/config.json" ]; then
  echo "demo: no base checkpoint in $BASE; rebuild it with scripts/build_base_model.sh (or set DEMO_BASE)" >&2
  exit 2
fi

say "1/5 synthetic corpus in $CORPUS (voices the base model never heard)"
$PY scripts/make_corpus.py --out "$CORPUS" --train "${DEMO_TRAIN:-2000}" --dev 200 --test 200 --seed 0 \
  --voices "$VOICES" --no-progress

say "2/5 fine-tuning $BASE on $PROCS processes for $STEPS steps -> $OUT/model"
port=$($PY -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')
ACCELERATE_USE_CPU=true .venv/bin/accelerate launch --config_file configs/accelerate/cpu_2proc.yaml \
  --num_processes "$PROCS" --main_process_port "$port" \
  scripts/train.py --config configs/train/demo_finetune.yaml \
  train.output_dir="$OUT" train.max_steps="$STEPS" data.train.path="$CORPUS/train.jsonl" \
  data.dev.path="$CORPUS/dev.jsonl" data.feature_cache.dir="$OUT/feature_cache" model.name_or_path="$BASE" \
  data.vocab="$BASE" --resume latest

say "3/5 KenLM 4-gram from $CORPUS/lm.txt, beside the model"
$PY scripts/build_lm.py --model "$OUT/model" --text "$CORPUS/lm.txt" --order 4 --heldout-fraction 0.02

if [ -f scripts/eval.py ]; then
  say "4/5 greedy vs beam+LM on the test set (LM weight and word bonus tuned on the dev set first), pocketsphinx beside them"
  $PY scripts/eval.py --model "$OUT/model" --data "$CORPUS/test.jsonl" --decoder all --output "$OUT/eval" \
    --tune --tune-data "$CORPUS/dev.jsonl" --workers 2 --reference pocketsphinx
fi

if [ -f scripts/transcribe.py ]; then
  say "5/5 transcribing the held-out test audio directory"
  $PY scripts/transcribe.py "$CORPUS/audio/test" --model "$OUT/model" --decoder flashlight --output "$OUT/transcripts" \
    --formats txt,srt || true
fi

say "done in $(( $(date +%s) - start )) s"
[ -f "$OUT/eval/results.md" ] && cat "$OUT/eval/results.md"
# The demo's targets (README "Results"), on held-out sentences read by voices the base never heard.
$PY - "$OUT/eval/results.json" <<'PY'
import json, sys
rows = {r["decoder"]: r for r in json.load(open(sys.argv[1]))["results"]}
greedy, beam = rows["greedy"], min((rows[n] for n in ("beam", "flashlight") if n in rows), key=lambda r: r["wer"])
checks = [
    (f"greedy CER {100 * greedy['cer']:.1f}% <= 15%", greedy["cer"] <= 0.15),
    (f"{beam['decoder']}+LM WER {100 * beam['wer']:.1f}% <= 25%", beam["wer"] <= 0.25),
    (f"{beam['decoder']}+LM WER {100 * (1 - beam['wer'] / max(greedy['wer'], 1e-9)):.0f}% lower than greedy "
     f"{100 * greedy['wer']:.1f}% (target >= 30%)", beam["wer"] <= 0.7 * greedy["wer"]),
]
print("\ntargets:")
for text, ok in checks:
    print(f"  [{'met' if ok else 'MISSED'}] {text}")
PY
cat <<MSG
artefacts:
  model (HF dir + processor + LM): $OUT/model
  training curves:                 $OUT/curves.png  (metrics: $OUT/metrics.jsonl)
  eval table / per-utterance:      $OUT/eval/results.md, $OUT/eval/utterances.jsonl, $OUT/eval/comparison.png
  transcripts:                     $OUT/transcripts/transcripts.jsonl
  data reports:                    $OUT/data/*.dropped.jsonl
MSG
