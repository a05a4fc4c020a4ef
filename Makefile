# `make demo` and `make test` work on a fresh machine: they create .venv and install everything.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed
PIP_SOURCES = $$($(PY) -m pip config get global.find-links 2>/dev/null | xargs -rn1 printf -- '--find-links %s ') \
	$$($(PY) -m pip config get global.extra-index-url 2>/dev/null | xargs -rn1 printf -- '--extra-index-url %s ')

.PHONY: install demo test test-fast lint clean

$(STAMP): pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	# Everything through uv: parallel downloads, unpacking and bytecode compilation (2 cores: torch 26 s
	# against pip's 53 s; the rest 25-29 s against 57-78 s, `python -m benchmarks.install`).
	$(PY) -m pip install -q uv
	# torch first and pinned: an unpinned torch pulls the newest CUDA build (several GB). uv reads no pip
	# configuration, so it is handed the find-links and extra indexes pip is configured with (where a
	# machine keeps its torch wheels); with none, it takes PyPI's, as pip would.
	$(PY) -m uv pip install -q --python $(PY) --compile-bytecode $(PIP_SOURCES) torch==2.14.1 torchvision==0.29.1
	$(PY) -m uv pip install -q --python $(PY) --compile-bytecode -e ".[dev]"
	touch $(STAMP)

install: $(STAMP)

demo: $(STAMP)
	$(PY) -m jf_lightning prepare -c experiments/tiny.yaml
	$(PY) -m jf_lightning fit -c experiments/tiny.yaml

test: $(STAMP)
	$(PY) -m pytest -q

test-fast: $(STAMP)
	$(PY) -m pytest -q -m "not slow"

lint: $(STAMP)
	$(VENV)/bin/ruff check jf_lightning tests data eval benchmarks

clean:
	rm -rf $(VENV) mlruns mlflow.db lightning_logs
