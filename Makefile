# The two commands of the quick start: `make demo` and `make test`.
PYTHON ?= $(shell command -v python3.11 || command -v python3)
VENV ?= .venv
BIN := $(VENV)/bin
# systemd-python (journal, sd_notify) builds only where libsystemd's headers are installed;
# elsewhere the daemon logs to stderr and skips sd_notify.
JOURNAL := $(shell pkg-config --exists libsystemd 2>/dev/null && echo ,journal)

.PHONY: demo test lint bench train clean

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip

# Runtime and test tools: what the demo needs.
$(VENV)/.runtime: pyproject.toml | $(BIN)/python
	$(BIN)/python -m pip install -q -e '.[dev$(JOURNAL)]'
	touch $@

# Plus TensorFlow: the tests prove the training pipeline end to end on a tiny subset.
$(VENV)/.train: $(VENV)/.runtime
	$(BIN)/python -m pip install -q -e '.[dev,train$(JOURNAL)]'
	touch $@

# The daemon on fake hardware (gpiozero mock pins, a camera serving the sample images) with
# the real model; hold and cool-down times simulated. Events and unsure frames go to .demo/.
demo: $(VENV)/.runtime
	@rm -f .demo/events.jsonl
	STATE_DIRECTORY=$(CURDIR)/.demo $(BIN)/bin-daemon run --hardware fake \
	  --images tests/data/samples --max-items 24 --events .demo/events.jsonl

test: $(VENV)/.train
	$(BIN)/ruff check bin_daemon tests
	$(BIN)/python -m pytest

lint: $(VENV)/.runtime
	$(BIN)/ruff check bin_daemon tests
	$(BIN)/ruff format --check bin_daemon tests

# Speed and memory of the shipped int8 model against float TFLite and Keras (each in a fresh
# process, 1/2/4 threads), and the daemon on fake hardware (READY time, trigger to lid).
# Writes docs/benchmarks.json and docs/BENCHMARKS.md. A few minutes; run it on a quiet machine.
bench: $(VENV)/.train
	$(BIN)/python bench/run.py --command "make bench"

# The real training run (about 27 minutes on 2 cores, 7 GB of RAM); writes models/ and its card.
# Soak: 100,000 items in-process on fake hardware with the real model, simulated time, the
# event log and a spool with a small quota; RSS, open files and spool size sampled every
# 10,000 items. About 20-25 minutes on 2 cores. Writes docs/soak.json and the "## Soak"
# section of docs/BENCHMARKS.md.
.PHONY: soak
soak: $(VENV)/.runtime
	$(BIN)/python bench/soak.py --items 100000

train: $(VENV)/.train
	$(BIN)/bin-daemon train --data ../shared/datasets/trashnet --out models/

clean:
	rm -rf $(VENV) .pytest_cache .ruff_cache

# CI's arm64 stage: install and run bin-daemon on Debian bookworm arm64 (the Pi's userland)
# under qemu in a chroot, compare its classifications with x86's, and check that install.sh
# refuses 32-bit (armhf). Needs root; caches the roots in /var/cache/bin-daemon-arm64.
# See docs/ARM64.md.
.PHONY: test-arm64
test-arm64: $(VENV)/.runtime
	bash ci/arm64/stage.sh

# --- issue 15: cross-validation and whole-pool training (docs/TRAINING.md) -----------------
# `make crossval`: 5-fold stratified cross-validation of the recipe (CV_ARGS: recipe flags).
# The defaults are the shipped recipe: EfficientNet-Lite2 at 288 px, top 11 blocks fine-tuned,
# twice the hard camera views; 3 h 5 min on 2 cores (measured, 5 folds of 36-38 min);
# resumes finished folds, also from a report copied from docs/crossval/. Another recipe, e.g.
# CV_OUT=runs/cv/lite0-bc CV_ARGS= for the Lite0 one (2 h 57 min). `make train-all`: the recipe
# on the whole pool (about 45 min for the shipped recipe), epochs, inference size, temperature
# and threshold from CV_OUT; the card reports the cross-validated figure. POOL_ARGS must repeat
# CV_ARGS's recipe flags (a differing recipe is refused), with whole-pool teachers (DIR-pool)
# in place of cross-validated ones. A folder of folds made with another recipe is retrained.
CV_OUT ?= runs/cv/lite2-288-hv08
CV_ARGS ?= --backbone efficientnet-lite2 --input-size 288 --export-sizes --finetune-blocks 11 \
  --hard-views 0.8
POOL_ARGS ?= $(CV_ARGS)
.PHONY: crossval train-all
crossval: $(VENV)/.train
	$(BIN)/bin-daemon train --data ../shared/datasets/trashnet --folds 5 --out $(CV_OUT) \
	  --work-dir runs/work/$(notdir $(CV_OUT)) --compare none $(CV_ARGS)

train-all: $(VENV)/.train
	$(BIN)/bin-daemon train --data ../shared/datasets/trashnet --all-data --crossval $(CV_OUT) \
	  --out models/ --work-dir runs/work/$(notdir $(CV_OUT))-pool --compare none $(POOL_ARGS)
# ----------------------------------------------------------------------------------------------
