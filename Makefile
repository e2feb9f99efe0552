# make train export benchmark   -- the whole pipeline (demo dataset unless DATA is given)
# make test                     -- the checks (make lint), then the test suite, slow tests on the Leeds butterflies included
# make lint                     -- ruff, the import contracts (the floors of docs/architecture.md), the type check of edge_runtime
# make bundle                   -- dist/<run>.tar.gz for a device: the gate-passing candidates, checked there
# make pi-check                 -- that bundle's selfcheck, select and serve on an emulated Raspberry Pi
# make serve-check              -- the device service under load and faults on 127.0.0.1
# make scale-check              -- 300 classes, 20,100 generated images through train, export and benchmark
# Every target creates .venv first when it is missing; each runs the `edgeclf` command installed in it
# (`.venv/bin/edgeclf COMMAND --help` lists every option; variables below set the common ones).

PYTHON    ?= python3
VENV      := .venv
PY        := $(VENV)/bin/python
EDGECLF   := $(VENV)/bin/edgeclf
STAMP     := $(VENV)/.installed
export TF_USE_LEGACY_KERAS := 1
export TF_CPP_MIN_LOG_LEVEL := 2

# Options, passed through when set (see docs/ and `.venv/bin/edgeclf COMMAND --help`).
DATA ?=
CSV ?=
RUN ?=
BACKBONE ?=
WEIGHTS ?=
ALPHA ?=
IMG_SIZE ?=
EPOCHS ?=
EPOCHS_HEAD ?=
EPOCHS_FINETUNE ?=
BATCH ?=
MAX_PER_CLASS ?=
AUGMENT ?=
AUGMENT_STYLE ?=
RESIZE ?=
EXTRA_DATA ?=
UNFREEZE_FROM ?=
UNFREEZE_LAYERS ?=
SEED ?=
OVERWRITE ?=
MIXED_PRECISION ?=
XLA ?=
PRECISION ?=
TRAIN_ARGS ?=
VARIANTS ?=
UNKNOWN ?=
FIELD ?=
CALIB ?=
QAT_EPOCHS ?=
QAT ?=
EXPORT_ARGS ?=
MAX_DROP ?=
MIN_AGREEMENT ?=
MAX_CLASS_DROP ?=
BENCH_ARGS ?=
VARIANT ?=
CANDIDATES ?=
GPU ?=
PYTEST_ARGS ?=

opt = $(if $(strip $(2)),$(1) $(2))
flag = $(if $(filter 1 yes true,$(2)),$(1))

TRAIN_OPTS = $(call opt,--data,$(DATA)) $(call opt,--csv,$(CSV)) $(call opt,--run,$(RUN)) \
  $(call opt,--backbone,$(BACKBONE)) $(call opt,--weights,$(WEIGHTS)) $(call opt,--alpha,$(ALPHA)) \
  $(call opt,--image-size,$(IMG_SIZE)) $(call opt,--epochs,$(EPOCHS)) $(call opt,--epochs-head,$(EPOCHS_HEAD)) \
  $(call opt,--epochs-finetune,$(EPOCHS_FINETUNE)) $(call opt,--batch-size,$(BATCH)) \
  $(call opt,--max-per-class,$(MAX_PER_CLASS)) $(call opt,--augment,$(AUGMENT)) \
  $(call opt,--augment-style,$(AUGMENT_STYLE)) $(call opt,--resize,$(RESIZE)) $(call opt,--extra-data,$(EXTRA_DATA)) \
  $(call opt,--unfreeze-from,$(UNFREEZE_FROM)) $(call opt,--unfreeze-layers,$(UNFREEZE_LAYERS)) \
  $(call opt,--seed,$(SEED)) $(call flag,--overwrite,$(OVERWRITE)) \
  $(call flag,--mixed-precision,$(MIXED_PRECISION)) $(call opt,--precision,$(PRECISION)) $(call flag,--xla,$(XLA)) \
  $(TRAIN_ARGS)
# The parity budget: export's fallback aims at it, the benchmark's gate checks it.
PARITY_OPTS = $(call opt,--max-drop,$(MAX_DROP)) $(call opt,--min-agreement,$(MIN_AGREEMENT)) \
  $(call opt,--max-class-drop,$(MAX_CLASS_DROP))
EXPORT_OPTS = $(call opt,--run,$(RUN)) $(call opt,--variants,$(VARIANTS)) $(call opt,--calibration-images,$(CALIB)) \
  $(call opt,--qat,$(QAT)) $(call opt,--qat-epochs,$(QAT_EPOCHS)) $(call opt,--unknown,$(UNKNOWN)) $(PARITY_OPTS) $(EXPORT_ARGS)
BENCH_OPTS = $(call opt,--run,$(RUN)) $(call opt,--variants,$(VARIANTS)) $(call opt,--unknown,$(UNKNOWN)) \
  $(call opt,--field,$(FIELD)) $(PARITY_OPTS) $(BENCH_ARGS)

.PHONY: setup train export benchmark lint test test-fast bundle pi-check serve-check scale-check preview-augment clean

# GPU=1 adds TensorFlow's CUDA wheels, also to an environment that already exists (its own stamp).
GPU_STAMP := $(VENV)/.installed-gpu
ENV := $(STAMP) $(if $(filter 1 yes true,$(GPU)),$(GPU_STAMP))

setup: $(ENV)

# The locked requirements, then this project itself (editable, so the checkout's code runs) with its
# console commands, edgeclf and edgeclf-runtime.
$(STAMP): requirements.txt pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -r requirements.txt
	$(PY) -m pip install --quiet --no-deps -e .
	touch $(STAMP)

$(GPU_STAMP): $(STAMP)
	$(PY) -m pip install --quiet "tensorflow[and-cuda]==$$(grep '^tensorflow==' requirements.txt | cut -d= -f3)"
	touch $(GPU_STAMP)

train: $(ENV)
	$(EDGECLF) train $(TRAIN_OPTS)

preview-augment: $(ENV)
	$(EDGECLF) preview-augment $(call opt,--data,$(DATA)) $(call opt,--image-size,$(IMG_SIZE)) $(call opt,--augment,$(AUGMENT))

export: $(ENV)
	$(EDGECLF) export $(EXPORT_OPTS)

benchmark: $(ENV)
	$(EDGECLF) benchmark $(BENCH_OPTS)

# The bundle on an emulated aarch64 Raspberry Pi OS-like Python (installs qemu-user-static and mmdebstrap
# from Debian's packages when missing; needs root for that and for unpacking the arm64 userland into .pi/).
pi-check: $(ENV)
	$(EDGECLF) pi-check --cache .pi $(call opt,--run,$(RUN)) $(call opt,--variant,$(VARIANT))

# A generated many-class dataset through train, export and benchmark; figures in runs/scale-check/scale_check.md.
SCALE_ARGS ?=
scale-check: $(ENV)
	$(EDGECLF) scale-check $(SCALE_ARGS)

# The device service under load and faults, on 127.0.0.1; figures in runs/<name>/serve_check/serve_check.md.
serve-check: $(ENV)
	$(EDGECLF) serve-check $(call opt,--run,$(RUN))

bundle: $(ENV)
	$(EDGECLF) bundle $(call opt,--run,$(RUN)) $(call opt,--variant,$(VARIANT)) $(call opt,--variants,$(CANDIDATES))

# Zero findings or the target fails: ruff (pyproject.toml [tool.ruff]), the import contracts ([tool.importlinter]),
# and mypy over edge_runtime, what ships to devices ([tool.mypy]).
lint: $(ENV)
	$(VENV)/bin/ruff check .
	$(VENV)/bin/lint-imports --no-cache
	$(VENV)/bin/mypy

test: lint
	$(PY) -m pytest $(PYTEST_ARGS)

test-fast: lint
	$(PY) -m pytest -m "not slow" $(PYTEST_ARGS)

clean:
	rm -rf dist .pytest_cache
