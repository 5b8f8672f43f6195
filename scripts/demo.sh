#!/usr/bin/env bash
# The main job on the embedded default (`make demo` runs it after set-up):
#   1. a synthetic corpus (train/dev/test with held-out voices, LM text),
#   2. `accelerate launch` training on 2 CPU processes,
#   3. a KenLM 4-gram beside the model,
#   4. greedy vs beam+LM evaluation on the test set,
#   5. transcription of a directory of held-out audio,
# then the comparison table and where every artefact is.
# Knobs (environment): DEMO_DIR (default runs/demo), DEMO_STEPS (training steps), DEMO_PROCS (2).
set -euo pipefail
cd "$(dirname "$0")/.."
export HF_HUB_OFFLINE=1 HF_DATASETS_OFFLINE=1 TRANSFORMERS_OFFLINE=1 TOKENIZERS_PARALLELISM=false
export PATH="$PWD/tools/kenlm/bin:$PATH"
PY=.venv/bin/python
OUT=${DEMO_DIR:-runs/demo}
STEPS=${DEMO_STEPS:-600}
PROCS=${DEMO_PROCS:-2}
CORPUS=data/synth
say() { printf '\n==> %s\n' "$*"; }
start=$(date +%s)

say "1/5 synthetic corpus in $CORPUS"
$PY scripts/make_corpus.py --out "$CORPUS" --train 2000 --dev 200 --test 200 --seed 0 --heldout-voices 3

say "2/5 training on $PROCS processes for $STEPS steps -> $OUT/model"
port=$($PY -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')
ACCELERATE_USE_CPU=true .venv/bin/accelerate launch --config_file configs/accelerate/cpu_2proc.yaml \
  --num_processes "$PROCS" --main_process_port "$port" \
  scripts/train.py --config configs/train/tiny_cpu.yaml \
  train.output_dir="$OUT" train.max_steps="$STEPS" data.train.path="$CORPUS/train.jsonl" \
  data.dev.path="$CORPUS/dev.jsonl" --resume latest

say "3/5 KenLM 4-gram from $CORPUS/lm.txt, beside the model"
$PY scripts/build_lm.py --model "$OUT/model" --text "$CORPUS/lm.txt" --order 4 --heldout-fraction 0.02

if [ -f scripts/eval.py ]; then
  say "4/5 greedy vs beam+LM on the test set"
  $PY scripts/eval.py --model "$OUT/model" --data "$CORPUS/test.jsonl" --decoder all --output "$OUT/eval"
fi

if [ -f scripts/transcribe.py ]; then
  say "5/5 transcribing the held-out test audio directory"
  $PY scripts/transcribe.py "$CORPUS/audio/test" --model "$OUT/model" --decoder flashlight --output "$OUT/transcripts" \
    --formats txt,srt || true
fi

say "done in $(( $(date +%s) - start )) s"
[ -f "$OUT/eval/results.md" ] && cat "$OUT/eval/results.md"
cat <<MSG
artefacts:
  model (HF dir + processor + LM): $OUT/model
  training curves:                 $OUT/curves.png  (metrics: $OUT/metrics.jsonl)
  eval table / per-utterance:      $OUT/eval/results.md, $OUT/eval/utterances.jsonl, $OUT/eval/comparison.png
  transcripts:                     $OUT/transcripts/transcripts.jsonl
  data reports:                    $OUT/data/*.dropped.jsonl
MSG
