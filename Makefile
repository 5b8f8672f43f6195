# The two commands of the README:
#   make demo   set up, then run the main job on the embedded default (synthetic corpus, small model)
#   make test   set up, then run the fast test suite
# `make test-slow` runs the slow end-to-end tests (CI runs both).
export HF_HUB_OFFLINE := 1
export HF_DATASETS_OFFLINE := 1
export TRANSFORMERS_OFFLINE := 1
export PATH := $(CURDIR)/tools/kenlm/bin:$(PATH)
PY := .venv/bin/python

.PHONY: setup demo test test-slow
setup:
	@bash scripts/setup.sh

demo: setup
	@bash scripts/demo.sh

test: setup
	$(PY) -m pytest -q

test-slow: setup
	$(PY) -m pytest -q -m slow
