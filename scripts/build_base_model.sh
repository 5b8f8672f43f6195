#!/usr/bin/env bash
# Rebuilds the shipped base checkpoint (assets/base_model) with the project's own recipe:
#   1. the corpora: fortunes sentences read by every voice EXCEPT the demo's fine-tuning voices, the natural
#      Piper voice weighted 3x (8,000 utterances, 6 h), and Piper reading the 200 dev sentences (the dev set);
#      same seed as the demo, so the demo's test sentences are never base training text,
#   2. stage 1, from scratch on 2 CPU processes: configs/train/natural_w2v_bert.yaml (a wav2vec2-bert
#      conformer on log-mel features), stopped at step 1,500 of its 6,000-step cosine schedule,
#   3. stage 2, the same run resumed exactly with augmentation on and the schedule shortened to 3,000 steps
#      (configs/train/base_natural.yaml),
#   4. stages 3 to 5, three warm restarts, each from the previous stage's best model: a new cosine schedule
#      (peak 6e-4, 2,400 steps), augmentation on (configs/train/base_natural_stage3.yaml), each in its own run
#      folder (BASE_RESTARTS sets how many; the shipped base had 3),
#   5. five text stages (a sixth with BASE_TEXT_STAGES=6): the last restart's best model trained on a corpus of
#      15,000 sentences (made in step 1 beside the 8,000-sentence one, same seed, dev and test) at peak 3e-4 for
#      1,200 steps (configs/train/base_natural_stage6.yaml), then that stage's best model again at peak 2e-4 for 1,800 steps
#      with another seed (configs/train/base_natural_stage7.yaml), then that one's on NEW text: 5,769 sentences of
#      15-25 words (data/base_long, made in step 1; disjoint from every 4-14-word sentence the other corpora and the
#      demo use) at peak 2e-4 for 1,200 steps (configs/train/base_natural_stage8.yaml), then that one's on text of
#      two sources in one manifest: 12,000 of WordNet's usage examples (data/base_wn, made in step 1; no fortunes
#      sentence among them) beside the long sentences (data/base_mix/train.jsonl, `make_corpus.py --combine`) at
#      peak 1.5e-4 for 1,800 steps (configs/train/base_natural_stage9.yaml), then the mean of
#      that stage's last checkpoints on NEW WordNet sentences beside the long ones (data/base_wn2: 12,000 more of
#      WordNet's, `--exclude-sentences-of data/base_wn`; data/base_mix10/train.jsonl) for 1,800 steps
#      (configs/train/base_natural_stage10.yaml); the sixth (stage 11, not yet in the shipped base) continues
#      from the mean of stage 10's last checkpoints on the last new WordNet sentences beside the long ones
#      (data/base_wn3: the 9,400 neither earlier WordNet corpus speaks; data/base_mix11/train.jsonl) for 1,650
#      steps (configs/train/base_natural_stage11.yaml);
#      BASE_TEXT_STAGES=N stops after the first N (0 skips them),
#   6. five speaker stages (BASE_SPEAKER_STAGES=N runs the first N, 0 none): the last text stage's mean on NEW
#      SPEAKERS, data/base_nat beside 1,200 fortunes sentences read by Kokoro-82M's real speakers and their blends
#      (data/kokoro, made in step 1: `--engines kokoro`, jf_nezumi and its blends left out so that a test set can
#      measure an unheard speaker, no sentence of data/natural), one manifest (data/base_kokoro12/train.jsonl), 900
#      steps at peak 1.5e-4 (configs/train/base_natural_stage12.yaml); then that stage's mean on a CONTINUUM of
#      speakers: the same mix beside 2,000 more fortunes sentences, each read by its own random mix of two or three of
#      Kokoro's speakers (data/kokoro_mix: `--engines kokoro-mix`, jf_nezumi left out, no sentence of data/natural or
#      data/kokoro; data/base_kokoro13/train.jsonl), 1,200 steps (configs/train/base_natural_stage13.yaml); then that
#      stage's mean on 2,000 more mix sentences (data/kokoro_mix2, none of the corpora above) and 1,300 new sentences
#      read by Piper alone (data/piper14: no sentence of data/base_nat or above), which keep Piper's share of the audio
#      at 30% (data/base_kokoro14/train.jsonl), 1,500 steps (configs/train/base_natural_stage14.yaml); the fourth
#      (configs/train/base_natural_stage15.yaml; shipped by session 25) from that stage's mean on a NEW TEXT
#      SOURCE for Kokoro: 2,800 of WordNet's usage examples read by new mixes (data/kokoro_mix3: `--engines
#      kokoro-mix --text-source wordnet`, jf_nezumi left out) beside data/base_nat and the first Kokoro corpus
#      replayed (data/base_kokoro15r/train.jsonl; a fresh machine's budget: the other earlier Kokoro corpora cost
#      ~75 min more to remake), 1,200 steps; the fifth (configs/train/base_natural_stage16.yaml; shipped by
#      session 26) from that stage's mean on the same corpora replayed beside 2,000 more WordNet sentences read by
#      new mixes (data/kokoro_mix4: none of data/kokoro_mix3's sentences) and 1,000 new fortunes sentences read by
#      Piper alone (data/piper16: none of data/base_nat's, data/natural's or data/kokoro's), which hold Piper's
#      share near 30% (data/base_kokoro16/train.jsonl), 1,400 steps,
#   7. publishing with float16 weights (18 MB) into assets/base_model: after stage 9 or later, the mean of its
#      last BASE_AVERAGE (4) checkpoints (scripts/average_checkpoints.py: none picked on the dev set; stage 9's
#      best-WER step, 1,050, was worse on the test sets; every later stage starts from the previous mean); after an
#      earlier last stage (or BASE_AVERAGE=0), the last stage's best model by natural dev WER.
# Every stage is resumable: re-running the script continues where it stopped (~13 h on 2 idle cores in
# float32 on the CPUs the stages up to 10 were trained on; the speaker stages took 23, 30, 41, 34 and 36 min in bf16
# on an AVX512-BF16 CPU plus 21, 42, 33, 41-49 and 29 min for their corpora).
# Knobs (environment): BASE_CORPUS (data/base_nat), BASE_TRAIN (8000), BASE_TEXT_CORPUS (data/base_nat15),
# BASE_TEXT_TRAIN (15000), BASE_LONG_CORPUS (data/base_long), BASE_LONG_TRAIN (5769), BASE_LONG_DEV (100),
# BASE_WN_CORPUS (data/base_wn), BASE_WN_TRAIN (12000), BASE_WN_DEV (100), BASE_MIX (data/base_mix),
# BASE_WN2_CORPUS (data/base_wn2), BASE_WN2_TRAIN (12000), BASE_WN2_DEV (100), BASE_MIX10 (data/base_mix10),
# BASE_WN3_CORPUS (data/base_wn3), BASE_WN3_TRAIN (9400), BASE_WN3_DEV (100), BASE_MIX11 (data/base_mix11),
# BASE_SPEAKER_STAGES (5), BASE_KOKORO_CORPUS (data/kokoro), BASE_KOKORO_TRAIN (1200), BASE_MIX12 (data/base_kokoro12),
# BASE_STEPS12 (900), BASE_KOKORO_MIX_CORPUS (data/kokoro_mix), BASE_KOKORO_MIX_TRAIN (2000),
# BASE_MIX13 (data/base_kokoro13), BASE_STEPS13 (1200), BASE_KOKORO_MIX2_CORPUS (data/kokoro_mix2),
# BASE_KOKORO_MIX2_TRAIN (2000), BASE_PIPER_CORPUS (data/piper14), BASE_PIPER_TRAIN (1300),
# BASE_MIX14 (data/base_kokoro14), BASE_STEPS14 (1500), BASE_KOKORO_MIX3_CORPUS (data/kokoro_mix3),
# BASE_KOKORO_MIX3_TRAIN (2800), BASE_MIX15 (data/base_kokoro15r), BASE_STEPS15 (1200),
# BASE_KOKORO_MIX4_CORPUS (data/kokoro_mix4), BASE_KOKORO_MIX4_TRAIN (2000), BASE_PIPER16_CORPUS (data/piper16),
# BASE_PIPER16_TRAIN (1000), BASE_MIX16 (data/base_kokoro16), BASE_STEPS16 (1400), BASE_NATURAL (data/natural),
# BASE_NATURAL_DEV (200), BASE_NATURAL_TRAIN (600), BASE_NATURAL_TEST (200: the demo's natural test set),
# BASE_RUN (runs/base_natural),
# BASE_STOP1 (1500), BASE_STEPS (3000), BASE_STEPS3 (2400 per warm restart), BASE_RESTARTS (3),
# BASE_TEXT_STAGES (5; 6 adds stage 11), BASE_STEPS6 (1200), BASE_STEPS7 (1800), BASE_STEPS8 (1200),
# BASE_STEPS9 (1800), BASE_STEPS10 (1800), BASE_STEPS11 (1650),
# BASE_AVERAGE (4), BASE_OUT (assets/base_model),
# BASE_CORPORA_ONLY (0; 1 makes the corpora the stages ask for and stops: e.g. `BASE_TEXT_STAGES=0
# BASE_CORPORA_ONLY=1` makes only data/base_nat, data/natural and the speaker stages' corpora, what a speaker stage
# from the shipped base needs), BASE_PROCS (2),
# BASE_PRECISION (auto: bf16 where the CPU computes it natively; no: float32, as the shipped base).
# Stage N >= 3 writes to ${BASE_RUN}_stageN. Extra arguments go
# to every train.py run as config overrides (e.g. train.eval_every=50).
set -euo pipefail
cd "$(dirname "$0")/.."
export HF_HUB_OFFLINE=1 HF_DATASETS_OFFLINE=1 TRANSFORMERS_OFFLINE=1 TOKENIZERS_PARALLELISM=false
PY=.venv/bin/python
CORPUS=${BASE_CORPUS:-data/base_nat}
NATURAL=${BASE_NATURAL:-data/natural}
RUN=${BASE_RUN:-runs/base_natural}
OUT=${BASE_OUT:-assets/base_model}
PROCS=${BASE_PROCS:-2}
RESTARTS=${BASE_RESTARTS:-3}
TEXT_STAGES=${BASE_TEXT_STAGES:-5}
if ((TEXT_STAGES < 0 || TEXT_STAGES > 6)); then
  echo "build_base_model: BASE_TEXT_STAGES is $TEXT_STAGES; use 0, 1, 2, 3, 4, 5 or 6" >&2
  exit 2
fi
TEXT_STAGE=$((TEXT_STAGES > 0))  # whether the bigger corpus is needed
TEXT_CORPUS=${BASE_TEXT_CORPUS:-data/base_nat15}
LONG_CORPUS=${BASE_LONG_CORPUS:-data/base_long}
WN_CORPUS=${BASE_WN_CORPUS:-data/base_wn}
MIX=${BASE_MIX:-data/base_mix}
WN2_CORPUS=${BASE_WN2_CORPUS:-data/base_wn2}
MIX10=${BASE_MIX10:-data/base_mix10}
WN3_CORPUS=${BASE_WN3_CORPUS:-data/base_wn3}
MIX11=${BASE_MIX11:-data/base_mix11}
SPEAKER_STAGES=${BASE_SPEAKER_STAGES:-${BASE_SPEAKER_STAGE:-5}}  # (BASE_SPEAKER_STAGE: its name when there was one)
case "$SPEAKER_STAGES" in
  0 | 1 | 2 | 3 | 4 | 5) ;;
  *) echo "build_base_model: BASE_SPEAKER_STAGES is $SPEAKER_STAGES; use 5 (every speaker stage), 4, 3, 2, 1 or 0 (none)" >&2
    exit 2 ;;
esac
KOKORO_CORPUS=${BASE_KOKORO_CORPUS:-data/kokoro}
MIX12=${BASE_MIX12:-data/base_kokoro12}
KOKORO_MIX_CORPUS=${BASE_KOKORO_MIX_CORPUS:-data/kokoro_mix}
MIX13=${BASE_MIX13:-data/base_kokoro13}
KOKORO_MIX2_CORPUS=${BASE_KOKORO_MIX2_CORPUS:-data/kokoro_mix2}
PIPER_CORPUS=${BASE_PIPER_CORPUS:-data/piper14}
MIX14=${BASE_MIX14:-data/base_kokoro14}
KOKORO_MIX3_CORPUS=${BASE_KOKORO_MIX3_CORPUS:-data/kokoro_mix3}
MIX15=${BASE_MIX15:-data/base_kokoro15r}
KOKORO_MIX4_CORPUS=${BASE_KOKORO_MIX4_CORPUS:-data/kokoro_mix4}
PIPER16_CORPUS=${BASE_PIPER16_CORPUS:-data/piper16}
MIX16=${BASE_MIX16:-data/base_kokoro16}
# corpora, stages 1 and 2, the warm restarts, the text stages, the speaker stages, publishing
TOTAL=$((RESTARTS + TEXT_STAGES + SPEAKER_STAGES + 4))
# The voices the demo fine-tunes and tests on (scripts/demo.sh): the base model never hears them.
DEMO_VOICES='flite:rms,festival:ked_diphone,espeak-ng:en-gb-scotland*,espeak-ng:en-029*'
say() { printf '\n==> %s\n' "$*"; }
# The stages' arithmetic (train.mixed_precision): auto = bf16 autocast where the CPU computes bfloat16 natively
# (AMX, AVX512-BF16; 1.5x faster steps at the same dev error, README "Mixed precision on a CPU"), else float32.
PRECISION=${BASE_PRECISION:-auto}
train() {  # train CONFIG OVERRIDES...: one resumable run on $PROCS processes
  local config=$1 port
  shift
  port=$($PY -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')
  ACCELERATE_USE_CPU=true .venv/bin/accelerate launch --config_file configs/accelerate/cpu_2proc.yaml \
    --num_processes "$PROCS" --main_process_port "$port" scripts/train.py --config "$config" \
    train.mixed_precision="'$PRECISION'" "$@" --resume latest
}

say "1/$TOTAL corpora: $CORPUS (every voice but the demo's, Piper x3)$( ((TEXT_STAGE)) && echo ", $TEXT_CORPUS (the same, more text)")$( ((TEXT_STAGES > 2)) && echo ", $LONG_CORPUS (long sentences)")$( ((TEXT_STAGES > 3)) && echo ", $WN_CORPUS (WordNet's sentences)")$( ((TEXT_STAGES > 4)) && echo ", $WN2_CORPUS (more of them)")$( ((TEXT_STAGES > 5)) && echo ", $WN3_CORPUS (the rest)")$( ((SPEAKER_STAGES)) && echo ", $KOKORO_CORPUS (Kokoro's speakers)")$( ((SPEAKER_STAGES > 1)) && echo ", $KOKORO_MIX_CORPUS (mixes of them)")$( ((SPEAKER_STAGES > 2)) && echo ", $KOKORO_MIX2_CORPUS (more mixes), $PIPER_CORPUS (Piper alone)")$( ((SPEAKER_STAGES > 3)) && echo ", $KOKORO_MIX3_CORPUS (mixes reading WordNet)")$( ((SPEAKER_STAGES > 4)) && echo ", $KOKORO_MIX4_CORPUS (more of them), $PIPER16_CORPUS (Piper alone)") and $NATURAL (Piper, the dev set)"
# Same seed and dev/test sizes as the demo's corpora, so the demo's test sentences are never base training text.
$PY scripts/make_corpus.py --out "$CORPUS" --train "${BASE_TRAIN:-8000}" --dev 200 --test 200 --seed 0 \
  --engine-weights piper=3 --exclude-voices "$DEMO_VOICES" --no-progress
if ((TEXT_STAGE)); then  # the same options with nearly every usable sentence: the text stage's corpus
  $PY scripts/make_corpus.py --out "$TEXT_CORPUS" --train "${BASE_TEXT_TRAIN:-15000}" --dev 200 --test 200 --seed 0 \
    --engine-weights piper=3 --exclude-voices "$DEMO_VOICES" --no-progress
fi
if ((TEXT_STAGES > 2)); then  # new text: the sentences of 15-25 words, none of which any other corpus reads
  $PY scripts/make_corpus.py --out "$LONG_CORPUS" --train "${BASE_LONG_TRAIN:-5769}" --dev "${BASE_LONG_DEV:-100}" \
    --test 0 --seed 9 --min-words 15 --max-words 25 --engine-weights piper=3 --exclude-voices "$DEMO_VOICES" \
    --no-progress
fi
if ((TEXT_STAGES > 3)); then  # a second text source: WordNet's usage examples, none of them a fortunes sentence
  $PY scripts/make_corpus.py --out "$WN_CORPUS" --text-source wordnet --train "${BASE_WN_TRAIN:-12000}" \
    --dev "${BASE_WN_DEV:-100}" --test 0 --seed 11 --engine-weights piper=3 --exclude-voices "$DEMO_VOICES" \
    --no-progress
  # stage 9 reads both sources at once: WordNet alone pulled the model away from fortunes-style sentences
  $PY scripts/make_corpus.py --combine "$WN_CORPUS" "$LONG_CORPUS" --out "$MIX/train.jsonl" --no-progress
fi
if ((TEXT_STAGES > 4)); then  # WordNet's sentences the first WordNet corpus does not speak, again beside the long ones
  $PY scripts/make_corpus.py --out "$WN2_CORPUS" --text-source wordnet --exclude-sentences-of "$WN_CORPUS" \
    --train "${BASE_WN2_TRAIN:-12000}" --dev "${BASE_WN2_DEV:-100}" --test 0 --seed 13 --engine-weights piper=3 \
    --exclude-voices "$DEMO_VOICES" --no-progress
  $PY scripts/make_corpus.py --combine "$WN2_CORPUS" "$LONG_CORPUS" --out "$MIX10/train.jsonl" --no-progress
fi
if ((TEXT_STAGES > 5)); then  # the WordNet sentences neither earlier WordNet corpus speaks, beside the long ones
  $PY scripts/make_corpus.py --out "$WN3_CORPUS" --text-source wordnet --exclude-sentences-of "$WN_CORPUS" \
    "$WN2_CORPUS" --train "${BASE_WN3_TRAIN:-9400}" --dev "${BASE_WN3_DEV:-100}" --test 0 --seed 14 \
    --engine-weights piper=3 --exclude-voices "$DEMO_VOICES" --no-progress
  $PY scripts/make_corpus.py --combine "$WN3_CORPUS" "$LONG_CORPUS" --out "$MIX11/train.jsonl" --no-progress
fi
# The natural corpus is made with the demo's arguments (its 600 train utterances are the demo's rehearsal mix, not
# used here), so that both scripts share data/natural.
$PY scripts/make_corpus.py --out "$NATURAL" --engines piper --train "${BASE_NATURAL_TRAIN:-600}" \
  --dev "${BASE_NATURAL_DEV:-200}" --test "${BASE_NATURAL_TEST:-200}" --seed 0 --no-progress
# Stages 12-14: each speaker corpus reads none of the sentences of data/natural and of the Kokoro corpora before it;
# each stage trains on the first corpus beside every Kokoro corpus so far (stage 14 beside Piper's new sentences too).
# Stages 15-16: mixes reading WordNet (none is a fortunes sentence) beside the first Kokoro corpus and the earlier
# WordNet mixes, not kokoro_mix/kokoro_mix2/piper14 (a fresh machine could not remake them all in one session).
kokoro=()  # the Kokoro corpora made so far
if ((SPEAKER_STAGES)); then  # other real speakers (Kokoro's), reading none of data/natural's sentences, beside data/base_nat
  $PY scripts/make_corpus.py --out "$KOKORO_CORPUS" --engines kokoro --exclude-voices 'kokoro:*jf_nezumi*' \
    --exclude-sentences-of "$NATURAL" --train "${BASE_KOKORO_TRAIN:-1200}" --dev 0 --test 0 --seed 0 --no-progress
  kokoro+=("$KOKORO_CORPUS")
  $PY scripts/make_corpus.py --combine "$CORPUS" "${kokoro[@]}" --out "$MIX12/train.jsonl" --no-progress
fi
if ((SPEAKER_STAGES > 1)); then  # a new in-between speaker per sentence (never jf_nezumi), on sentences of neither above
  $PY scripts/make_corpus.py --out "$KOKORO_MIX_CORPUS" --engines kokoro-mix --exclude-voices 'kokoro-mix:*jf_nezumi*' \
    --exclude-sentences-of "$NATURAL" "${kokoro[@]}" --train "${BASE_KOKORO_MIX_TRAIN:-2000}" --dev 0 --test 0 \
    --seed 1 --no-progress
  kokoro+=("$KOKORO_MIX_CORPUS")
  $PY scripts/make_corpus.py --combine "$CORPUS" "${kokoro[@]}" --out "$MIX13/train.jsonl" --no-progress
fi
if ((SPEAKER_STAGES > 2)); then  # more mixes, and Piper alone on new sentences so that its share stays at 30%
  $PY scripts/make_corpus.py --out "$KOKORO_MIX2_CORPUS" --engines kokoro-mix --exclude-voices 'kokoro-mix:*jf_nezumi*' \
    --exclude-sentences-of "$NATURAL" "${kokoro[@]}" --train "${BASE_KOKORO_MIX2_TRAIN:-2000}" \
    --dev 0 --test 0 --seed 2 --no-progress
  kokoro+=("$KOKORO_MIX2_CORPUS")
  $PY scripts/make_corpus.py --out "$PIPER_CORPUS" --engines piper --exclude-sentences-of "$NATURAL" "$CORPUS" \
    "${kokoro[@]}" --train "${BASE_PIPER_TRAIN:-1300}" --dev 0 --test 0 --seed 3 --no-progress
  $PY scripts/make_corpus.py --combine "$CORPUS" "${kokoro[@]}" "$PIPER_CORPUS" --out "$MIX14/train.jsonl" --no-progress
fi
if ((SPEAKER_STAGES > 3)); then  # new mixes on a new text source (WordNet holds no fortunes sentence), beside the
  # first corpus and the first Kokoro corpus only: what a fresh machine could remake in one session
  $PY scripts/make_corpus.py --out "$KOKORO_MIX3_CORPUS" --engines kokoro-mix --exclude-voices 'kokoro-mix:*jf_nezumi*' \
    --text-source wordnet --train "${BASE_KOKORO_MIX3_TRAIN:-2800}" --dev 0 --test 0 --seed 15 --no-progress
  $PY scripts/make_corpus.py --combine "$CORPUS" "$KOKORO_CORPUS" "$KOKORO_MIX3_CORPUS" --out "$MIX15/train.jsonl" \
    --no-progress
fi
if ((SPEAKER_STAGES > 4)); then  # more mixes on WordNet sentences the first WordNet mixes do not read, and Piper
  # alone on new fortunes sentences (its share of the audio stays near 30%), beside everything stage 15 read
  $PY scripts/make_corpus.py --out "$KOKORO_MIX4_CORPUS" --engines kokoro-mix --exclude-voices 'kokoro-mix:*jf_nezumi*' \
    --text-source wordnet --exclude-sentences-of "$KOKORO_MIX3_CORPUS" --train "${BASE_KOKORO_MIX4_TRAIN:-2000}" \
    --dev 0 --test 0 --seed 16 --no-progress
  $PY scripts/make_corpus.py --out "$PIPER16_CORPUS" --engines piper --exclude-sentences-of "$NATURAL" "$CORPUS" \
    "$KOKORO_CORPUS" --train "${BASE_PIPER16_TRAIN:-1000}" --dev 0 --test 0 --seed 16 --no-progress
  $PY scripts/make_corpus.py --combine "$CORPUS" "$KOKORO_CORPUS" "$KOKORO_MIX3_CORPUS" "$KOKORO_MIX4_CORPUS" \
    "$PIPER16_CORPUS" --out "$MIX16/train.jsonl" --no-progress
fi
if [ "${BASE_CORPORA_ONLY:-0}" = 1 ]; then  # a fresh machine's first step before a stage run by hand
  say "corpora made (BASE_CORPORA_ONLY=1: no training)"
  exit 0
fi

data=(data.train.path="$CORPUS/train.jsonl" data.dev.path="$NATURAL/dev.jsonl" train.output_dir="$RUN")
say "2/$TOTAL stage 1: from scratch on $PROCS processes, to step ${BASE_STOP1:-1500} -> $RUN"
train configs/train/natural_w2v_bert.yaml "${data[@]}" train.stop_at="${BASE_STOP1:-1500}" "$@"

say "3/$TOTAL stage 2: the same run, augmentation on, schedule ending at step ${BASE_STEPS:-3000} -> $RUN"
train configs/train/base_natural.yaml "${data[@]}" train.max_steps="${BASE_STEPS:-3000}" "$@"

prev="$RUN"
for ((stage = 3; stage < RESTARTS + 3; stage++)); do
  next="${RUN}_stage$stage"
  say "$((stage + 1))/$TOTAL stage $stage: a warm restart from $prev/model, schedule of ${BASE_STEPS3:-2400} steps -> $next"
  train configs/train/base_natural_stage3.yaml data.train.path="$CORPUS/train.jsonl" data.dev.path="$NATURAL/dev.jsonl" \
    model.name_or_path="$prev/model" data.vocab="$prev/model" train.output_dir="$next" \
    train.max_steps="${BASE_STEPS3:-2400}" "$@"
  prev="$next"
done

# The text stages: stage6.yaml (1,200 steps), stage7.yaml (1,800 steps, another seed), both on the 15,000 sentences,
# then stage8.yaml (1,200 steps) on the long sentences, stage9.yaml (1,800 steps) on WordNet's and the long ones,
# stage10.yaml (1,800 steps) on more of WordNet's and the long ones, stage11.yaml (1,650 steps) on the rest of WordNet's
# and the long ones.
text_configs=(configs/train/base_natural_stage6.yaml configs/train/base_natural_stage7.yaml
  configs/train/base_natural_stage8.yaml configs/train/base_natural_stage9.yaml configs/train/base_natural_stage10.yaml
  configs/train/base_natural_stage11.yaml)
text_corpora=("$TEXT_CORPUS" "$TEXT_CORPUS" "$LONG_CORPUS" "$MIX" "$MIX10" "$MIX11")
text_steps=("${BASE_STEPS6:-1200}" "${BASE_STEPS7:-1800}" "${BASE_STEPS8:-1200}" "${BASE_STEPS9:-1800}"
  "${BASE_STEPS10:-1800}" "${BASE_STEPS11:-1650}")
AVERAGE=${BASE_AVERAGE:-4}
src="$prev/model"
for ((i = 0; i < TEXT_STAGES; i++)); do
  stage=$((RESTARTS + 3 + i))
  next="${RUN}_stage$stage"
  say "$((stage + 1))/$TOTAL stage $stage: more text, from $src on ${text_corpora[i]}, ${text_steps[i]} steps -> $next"
  train "${text_configs[i]}" data.train.path="${text_corpora[i]}/train.jsonl" \
    data.dev.path="$NATURAL/dev.jsonl" model.name_or_path="$src" data.vocab="$src" \
    train.output_dir="$next" train.max_steps="${text_steps[i]}" "$@"
  prev="$next"
  src="$prev/model"
  if ((i >= 3 && AVERAGE > 0)); then  # stages 9 to 11 keep every checkpoint: the mean of the last ones goes on
    src="$prev/average"
    $PY scripts/average_checkpoints.py --run "$prev" --last "$AVERAGE" --output "$src"
  fi
done

# The speaker stages: stage12.yaml (900 steps) on Kokoro's speakers and blends, stage13.yaml (1,200 steps) beside
# their mixes too, stage14.yaml (1,500 steps) beside more mixes and more Piper, stage15.yaml (1,200 steps) on mixes
# reading WordNet beside the first Kokoro corpus, stage16.yaml (1,400 steps) beside more of them and more Piper; each
# from the previous stage's mean, each published as its own mean.
speaker_configs=(configs/train/base_natural_stage12.yaml configs/train/base_natural_stage13.yaml
  configs/train/base_natural_stage14.yaml configs/train/base_natural_stage15.yaml configs/train/base_natural_stage16.yaml)
speaker_mixes=("$MIX12" "$MIX13" "$MIX14" "$MIX15" "$MIX16")
speaker_steps=("${BASE_STEPS12:-900}" "${BASE_STEPS13:-1200}" "${BASE_STEPS14:-1500}" "${BASE_STEPS15:-1200}"
  "${BASE_STEPS16:-1400}")
speaker_what=("new speakers" "a continuum of speakers" "more of them, and more Piper" "mixes reading new text"
  "more mixes reading new text, and more Piper")
for ((i = 0; i < SPEAKER_STAGES; i++)); do
  stage=$((RESTARTS + 3 + TEXT_STAGES + i))
  next="${RUN}_stage$stage"
  say "$((stage + 1))/$TOTAL stage $stage: ${speaker_what[i]}, from $src on ${speaker_mixes[i]}, ${speaker_steps[i]} steps -> $next"
  train "${speaker_configs[i]}" data.train.path="${speaker_mixes[i]}/train.jsonl" \
    data.dev.path="$NATURAL/dev.jsonl" model.name_or_path="$src" data.vocab="$src" \
    train.output_dir="$next" train.max_steps="${speaker_steps[i]}" "$@"
  src="$next/model"
  if ((AVERAGE > 0)); then
    src="$next/average"
    $PY scripts/average_checkpoints.py --run "$next" --last "$AVERAGE" --output "$src"
  fi
done

say "$TOTAL/$TOTAL publishing $src -> $OUT (float16 weights)"
$PY scripts/publish_model.py --model "$src" --output "$OUT"
