#!/usr/bin/env bash
# Rebuilds the shipped base checkpoint (assets/base_model) with the project's own recipe:
#   1. the base corpora: fortunes sentences read by every voice EXCEPT the demo's fine-tuning voices
#      (6,000 utterances for stage 1, 15,000 for stage 2; same seed, so the same dev/test sentences),
#   2. stage 1, from scratch on 2 CPU processes (configs/train/base_synth.yaml, 1,100 steps),
#   3. stage 2, a warm restart from stage 1 on the larger corpus (configs/train/base_synth_continue.yaml),
#   4. stage 3, stage 2's model with its conv encoder frozen and cached (configs/train/base_synth_stage3.yaml),
#   5. publishing stage 3's exported model with float16 weights (a few MB) into assets/base_model.
# Every stage is resumable: re-running the script continues where it stopped.
# Knobs (environment): BASE_CORPUS (data/base), BASE_TRAIN (6000), BASE_RUN (runs/base), BASE_STEPS (1100),
# BASE_CORPUS2 (data/base15k), BASE_TRAIN2 (15000), BASE_RUN2 (runs/base2), BASE_STEPS2 (2500),
# BASE_RUN3 (runs/base3), BASE_STEPS3 (2400), BASE_FEATURES (data/feature_cache),
# BASE_OUT (assets/base_model), BASE_PROCS (2). Extra arguments go to every train.py run as config
# overrides (e.g. train.eval_every=50).
set -euo pipefail
cd "$(dirname "$0")/.."
export HF_HUB_OFFLINE=1 HF_DATASETS_OFFLINE=1 TRANSFORMERS_OFFLINE=1 TOKENIZERS_PARALLELISM=false
PY=.venv/bin/python
CORPUS=${BASE_CORPUS:-data/base}
CORPUS2=${BASE_CORPUS2:-data/base15k}
RUN=${BASE_RUN:-runs/base}
RUN2=${BASE_RUN2:-runs/base2}
RUN3=${BASE_RUN3:-runs/base3}
OUT=${BASE_OUT:-assets/base_model}
PROCS=${BASE_PROCS:-2}
# The voices the demo fine-tunes and tests on (scripts/demo.sh): the base model never hears them.
DEMO_VOICES='flite:rms,festival:ked_diphone,espeak-ng:en-gb-scotland*,espeak-ng:en-029*'
say() { printf '\n==> %s\n' "$*"; }
train() {  # train CONFIG OVERRIDES...: one resumable run on $PROCS processes
  local port
  port=$($PY -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')
  ACCELERATE_USE_CPU=true .venv/bin/accelerate launch --config_file configs/accelerate/cpu_2proc.yaml \
    --num_processes "$PROCS" --main_process_port "$port" scripts/train.py --config "$@" --resume latest
}

say "1/5 base corpora in $CORPUS and $CORPUS2 (every voice but the demo's)"
# Same seed and dev/test sizes as the demo corpus, so the demo's test sentences are never base training text.
for spec in "$CORPUS:${BASE_TRAIN:-6000}" "$CORPUS2:${BASE_TRAIN2:-15000}"; do
  $PY scripts/make_corpus.py --out "${spec%:*}" --train "${spec##*:}" --dev 200 --test 200 --seed 0 \
    --exclude-voices "$DEMO_VOICES" --no-progress
done

say "2/5 stage 1: from scratch on $PROCS processes -> $RUN"
train configs/train/base_synth.yaml train.output_dir="$RUN" train.max_steps="${BASE_STEPS:-1100}" \
  data.train.path="$CORPUS/train.jsonl" data.dev.path="$CORPUS/dev.jsonl" "$@"

say "3/5 stage 2: from $RUN/model on the larger corpus -> $RUN2"
train configs/train/base_synth_continue.yaml train.output_dir="$RUN2" train.max_steps="${BASE_STEPS2:-2500}" \
  model.name_or_path="$RUN/model" data.vocab="$RUN/model" \
  data.train.path="$CORPUS2/train.jsonl" data.dev.path="$CORPUS2/dev.jsonl" "$@"

say "4/5 stage 3: from $RUN2/model, conv encoder frozen and cached -> $RUN3"
train configs/train/base_synth_stage3.yaml train.output_dir="$RUN3" train.max_steps="${BASE_STEPS3:-2400}" \
  model.name_or_path="$RUN2/model" data.vocab="$RUN2/model" data.feature_cache.dir="${BASE_FEATURES:-data/feature_cache}" \
  data.train.path="$CORPUS2/train.jsonl" data.dev.path="$CORPUS2/dev.jsonl" "$@"

say "5/5 publishing $RUN3/model -> $OUT (float16 weights)"
$PY scripts/publish_model.py --model "$RUN3/model" --output "$OUT"
