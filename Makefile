# The two commands of the README: `make demo` and `make test`. Both build .venv from nothing if needed.
PYTHON ?= python3
VENV   ?= .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.installed
ROOT   ?= datasets

.PHONY: install demo test test-fast data lint clean

$(STAMP): setup.cfg pyproject.toml
	@test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --disable-pip-version-check -e ".[dev]"
	@touch $(STAMP)

install: $(STAMP)  ## create .venv and install the package with its dev extras

demo: $(STAMP)  ## synthetic data -> train BoT and LFM -> same/cross-domain evaluation -> export -> results table
	$(PY) tools/demo.py --root $(ROOT)

test: $(STAMP)  ## the whole test suite (CPU only)
	$(PY) -m pytest -q

test-fast: $(STAMP)  ## unit tests only, without the end-to-end runs
	$(PY) -m pytest -q -m "not slow"

data: $(STAMP)  ## generate both synthetic domains under $(ROOT)
	$(PY) tools/make_synthetic.py --style both --root $(ROOT)

lint: $(STAMP)
	$(PY) -m flake8 reid tools tests

clean:
	rm -rf $(VENV) output .pytest_cache
