# `make demo` and `make test` work on a fresh machine: they create .venv and install everything.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed

.PHONY: install demo test test-fast lint clean

$(STAMP): pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	# torch first and pinned, through pip, which reads the machine's own pip configuration (local wheels,
	# mirrors): an unpinned torch pulls the newest CUDA build (several GB).
	$(PY) -m pip install -q torch==2.14.1 torchvision==0.29.1
	# The rest through uv: parallel downloads and bytecode compiled in parallel; it keeps the torch above.
	# (pip 57-78 s, uv 25-29 s on 2 cores: `python -m benchmarks.install`.)
	$(PY) -m pip install -q uv
	$(PY) -m uv pip install -q --python $(PY) --compile-bytecode -e ".[dev]"
	touch $(STAMP)

install: $(STAMP)

demo: $(STAMP)
	$(PY) -m jf_lightning fit -c experiments/tiny.yaml

test: $(STAMP)
	$(PY) -m pytest -q

test-fast: $(STAMP)
	$(PY) -m pytest -q -m "not slow"

lint: $(STAMP)
	$(VENV)/bin/ruff check jf_lightning tests data eval benchmarks

clean:
	rm -rf $(VENV) mlruns mlflow.db lightning_logs
