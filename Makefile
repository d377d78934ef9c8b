# Quick start on a fresh machine:  `make demo`  (the main job)   and   `make test`  (the whole suite).
PYTHON ?= python3
# torch pinned to 2.13.0's CPU wheel for tests and CI: an unpinned torch pulls a multi-GB CUDA build.
TORCH_SPEC ?= torch==2.13.0
STAMP := .make/setup-$(shell cat pyproject.toml Makefile | cksum | cut -d' ' -f1)

.PHONY: setup demo test test-fast bench clean

setup: $(STAMP)

$(STAMP): pyproject.toml Makefile
	$(PYTHON) -c "import torch" 2>/dev/null || $(PYTHON) -m pip install -q "$(TORCH_SPEC)"
	$(PYTHON) -m pip install -q -e ".[test,batch,bench,demo]"
	@mkdir -p .make && rm -f .make/setup-* && touch $(STAMP)

demo: setup
	iqt-enhance demo --out demo_output

test: setup
	$(PYTHON) -m pytest -q -ra Testing/Python

test-fast: setup
	$(PYTHON) -m pytest -q -m "not slow" Testing/Python

clean:
	rm -rf .make demo_output .pytest_cache
