# spared-book: two commands for a newcomer.
#   make book   set up .venv, regenerate notebooks from their .py, execute them (papermill), build the HTML book
#   make test   set up .venv, then pytest: unit tests, every notebook in fast mode, the book build
# FAST=0 make book runs the full-size notebook defaults (meant for a GPU machine).
SHELL := /bin/bash
.SHELLFLAGS := -euo pipefail -c
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
FAST ?= 1
export FAST

.PHONY: book test venv notebooks execute html clean rehearse lint
.DEFAULT_GOAL := book

$(VENV)/.installed: pyproject.toml
	@test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet -e ".[dev,book]"
	@touch $@

venv: $(VENV)/.installed

notebooks: venv
	$(PY) tools/book.py sync

execute: notebooks
	$(PY) tools/book.py execute

html: venv
	$(PY) tools/book.py build

book: notebooks
	$(PY) tools/book.py execute
	$(PY) tools/book.py build
	@echo "The book is in _build/html/index.html"

# Unit tests and notebooks on every core (one thread each), then the book and the checks of it.
JOBS ?= $(shell nproc 2>/dev/null || echo 2)
test: notebooks
	OMP_NUM_THREADS=1 MKL_NUM_THREADS=1 $(PY) -m pytest -n $(JOBS) --dist loadgroup -m "not book"
	$(PY) -m pytest -m book

# The GitHub workflows through actionlint and zizmor (also part of `make test`: tests/test_workflows.py).
lint: venv
	$(VENV)/bin/actionlint
	$(VENV)/bin/zizmor --offline --persona=pedantic .github/workflows

# The real run's rehearsal on CPU (benchmarks/rehearse.py; not part of `make test`): hours on 2 cores.
# A part of it: make rehearse REHEARSE_ARGS="--chapters 00,01 --cli-args '--lrs 1e-5'"
REHEARSE_ARGS ?=
rehearse: venv
	$(PY) benchmarks/rehearse.py $(REHEARSE_ARGS)

clean:
	rm -rf _build .pytest_cache
