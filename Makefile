# mack: every command a user needs. `make help` lists them.
SHELL := /bin/bash
.DEFAULT_GOAL := help

PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
TORCH_VERSION ?= 2.13.0
TIER ?= synthetic
# Real sample data root (coco-mini/, captions/, vg/, nltk_data/); see docs/data.md.
MACK_DATA ?= $(abspath ../shared/data)
export MACK_DATA
SETUP_STAMP := $(VENV)/.setup-done

.PHONY: help setup test test-all lint format reproduce coco-mini synthetic bench nltk-data \
        data-coco-mini data-paper clean

help:  ## List the targets.
	@grep -E '^[a-zA-Z_-]+:.*## ' $(MAKEFILE_LIST) | awk -F':.*## ' '{printf "  %-16s %s\n", $$1, $$2}'

setup: $(SETUP_STAMP)  ## Create .venv: torch (CPU wheel) first, then mack with its dev extras.

$(SETUP_STAMP): pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	# torch first and pinned: an unpinned torch pulls a multi-GB CUDA build.
	$(PY) -m pip install --quiet torch==$(TORCH_VERSION)
	$(PY) -m pip install --quiet -e ".[dev]"
	touch $@

test: setup  ## Run the fast test suite, offline (real-data tests skip without MACK_DATA).
	$(PY) -m pytest -q -m "not slow"

test-all: setup  ## Run every test, including the slow end-to-end runs on real and synthetic data.
	$(PY) -m pytest -q

lint: setup  ## Check style with ruff.
	$(VENV)/bin/ruff check mack tests benchmarks
	$(VENV)/bin/ruff format --check mack tests benchmarks

format: setup  ## Reformat the code with ruff.
	$(VENV)/bin/ruff format mack tests benchmarks
	$(VENV)/bin/ruff check --fix mack tests benchmarks

reproduce: setup  ## Run notebooks 01-07 on TIER (synthetic, coco-mini or paper).
	$(PY) -m mack.reproduce --tier $(TIER)

coco-mini: setup  ## The real COCO run: photos -> CNN regions -> knowledge -> matching.
	$(PY) -m mack.coco_mini --data-root $(MACK_DATA) --synonyms

synthetic: setup  ## Generate the embedded synthetic world into data/synthetic.
	$(PY) -m mack.synthetic --root data/synthetic --seed 0 --size small

bench: setup  ## Run every benchmark; writes benchmarks/results.json and results.md.
	$(PY) -m benchmarks.run_all

nltk-data: setup  ## Download the NLTK tagger once (needs internet).
	$(PY) -m nltk.downloader averaged_perceptron_tagger_eng universal_tagset

data-coco-mini: setup  ## Download COCO 2017 annotations and the coco-mini images (needs internet).
	$(PY) -m mack.data.download coco-mini --root $(MACK_DATA)

data-paper: setup  ## Download the paper-tier data into data/paper (needs internet; see docs/data.md).
	$(PY) -m mack.data.download paper --root data/paper

clean:  ## Remove caches and build outputs (keeps .venv, results and figures).
	rm -rf build data/cache .pytest_cache .ruff_cache
