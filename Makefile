# The README's two commands: `make demo` and `make test`. Both create .venv when needed.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed-stamp

.PHONY: demo test test-decode lint chromium clean

$(PY):
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip

# Reinstall when the project's dependencies change.
$(STAMP): pyproject.toml | $(PY)
	$(PY) -m pip install -q -e '.[dev,ray]'
	touch $(STAMP)

demo: $(STAMP)
	$(PY) examples/demo.py

lint: $(STAMP)
	$(VENV)/bin/ruff check agr_batch trainer tests benchmarks examples
	$(VENV)/bin/ruff format --check agr_batch trainer tests benchmarks examples
	$(VENV)/bin/hadolint Dockerfile

test: lint chromium test-decode
	$(PY) -m pytest -q

# The decode tests again in light environments (PyAV, NumPy, Pillow; no torch): Python 3.12
# with the newest PyAV (19.x needs Python >= 3.12) and the oldest PyAV the project accepts.
# insightface is installed without its dependencies: only its bundled photos are used.
PY312 ?= $(shell PYENV_VERSION=3.12.1 pyenv which python3.12 2>/dev/null || command -v python3.12)
DECODE_TESTS := tests/agr_batch/stages/test_sources.py tests/agr_batch/stages/test_decode_lookahead.py
AV_FLOOR := 17.1.0

.venv-decode-py312/.stamp:
	@test -n "$(PY312)" || { echo "Python 3.12 not found (pyenv 3.12.1 or python3.12 on PATH)"; exit 1; }
	$(PY312) -m venv .venv-decode-py312
	.venv-decode-py312/bin/pip install -q --upgrade av numpy pillow pytest
	.venv-decode-py312/bin/pip install -q --no-deps insightface
	touch $@

.venv-decode-floor/.stamp:
	$(PYTHON) -m venv .venv-decode-floor
	.venv-decode-floor/bin/pip install -q av==$(AV_FLOOR) numpy pillow pytest
	.venv-decode-floor/bin/pip install -q --no-deps insightface
	touch $@

test-decode: .venv-decode-py312/.stamp .venv-decode-floor/.stamp
	PYTHONPATH=. .venv-decode-py312/bin/python -c "import sys, av; print('decode tests: Python', sys.version.split()[0], 'PyAV', av.__version__)"
	PYTHONPATH=. .venv-decode-py312/bin/python -m pytest -q -p no:cacheprovider $(DECODE_TESTS)
	PYTHONPATH=. .venv-decode-floor/bin/python -c "import sys, av; print('decode tests: Python', sys.version.split()[0], 'PyAV', av.__version__)"
	PYTHONPATH=. .venv-decode-floor/bin/python -m pytest -q -p no:cacheprovider $(DECODE_TESTS)

# The report test renders in headless Chromium (Debian's package); install it when possible.
chromium:
	@command -v chromium >/dev/null 2>&1 || { \
	  if [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then \
	    echo "installing Debian's chromium for the report test"; \
	    apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium >/dev/null; \
	  else echo "chromium not installed: the report rendering test will be skipped"; fi; }

clean:
	rm -rf $(VENV) .venv-decode-py312 .venv-decode-floor build *.egg-info .pytest_cache .ruff_cache
