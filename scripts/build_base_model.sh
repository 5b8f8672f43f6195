#!/usr/bin/env bash
# Rebuilds the shipped base checkpoint (assets/base_model) with the project's own recipe:
#   1. the base corpus: fortunes sentences read by every voice EXCEPT the demo's fine-tuning voices,
#   2. training from scratch on 2 CPU processes (configs/train/base_synth.yaml; resumable),
#   3. publishing the exported model with float16 weights (a few MB) into assets/base_model.
# Knobs (environment): BASE_CORPUS (data/base), BASE_TRAIN (6000 utterances), BASE_RUN (runs/base),
# BASE_STEPS (1100), BASE_OUT (assets/base_model), BASE_PROCS (2). Extra arguments go to train.py as
# config overrides (e.g. train.eval_every=50).
set -euo pipefail
cd "$(dirname "$0")/.."
export HF_HUB_OFFLINE=1 HF_DATASETS_OFFLINE=1 TRANSFORMERS_OFFLINE=1 TOKENIZERS_PARALLELISM=false
PY=.venv/bin/python
CORPUS=${BASE_CORPUS:-data/base}
RUN=${BASE_RUN:-runs/base}
OUT=${BASE_OUT:-assets/base_model}
PROCS=${BASE_PROCS:-2}
# The voices the demo fine-tunes and tests on (scripts/demo.sh): the base model never hears them.
DEMO_VOICES='flite:rms,festival:ked_diphone,espeak-ng:en-gb-scotland*,espeak-ng:en-029*'
say() { printf '\n==> %s\n' "$*"; }

say "1/3 base corpus in $CORPUS (every voice but the demo's)"
# Same seed and dev/test sizes as the demo corpus, so the demo's test sentences are never base training text.
$PY scripts/make_corpus.py --out "$CORPUS" --train "${BASE_TRAIN:-6000}" --dev 200 --test 200 --seed 0 \
  --exclude-voices "$DEMO_VOICES" --no-progress

say "2/3 training from scratch on $PROCS processes -> $RUN"
port=$($PY -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')
ACCELERATE_USE_CPU=true .venv/bin/accelerate launch --config_file configs/accelerate/cpu_2proc.yaml \
  --num_processes "$PROCS" --main_process_port "$port" \
  scripts/train.py --config configs/train/base_synth.yaml train.output_dir="$RUN" \
  train.max_steps="${BASE_STEPS:-1100}" data.train.path="$CORPUS/train.jsonl" data.dev.path="$CORPUS/dev.jsonl" \
  "$@" --resume latest

say "3/3 publishing $RUN/model -> $OUT (float16 weights)"
$PY scripts/publish_model.py --model "$RUN/model" --output "$OUT"
