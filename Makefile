# The two commands of the README: `make demo` and `make test`. Each builds .venv on first use.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
PROMPT ?= a red circle moving to the right
OUT ?= outputs/demo.mp4
PYTEST_ARGS ?=
# The venv's jax runs on the CPU; libtpu (in [test], for AOT compiles) must not probe for a TPU.
# Set JAX_PLATFORMS=tpu (or cuda) yourself after installing the [tpu] extra or a CUDA jax.
export JAX_PLATFORMS ?= cpu

.PHONY: demo test test-fast lint bench gifs clean

$(VENV)/.core: setup.py
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -e .
	touch $@

$(VENV)/.test: $(VENV)/.core setup.py
	$(PY) -m pip install -q -e ".[test]"
	touch $@

demo: $(VENV)/.core
	$(PY) experiments/sample.py --checkpoint=checkpoints/shapes --prompt="$(PROMPT)" --out=$(OUT) --overwrite

test: $(VENV)/.test
	$(PY) -m pytest -n 2 --dist loadfile -q $(PYTEST_ARGS) tests

# The fast tier: everything but the tests marked slow or parity (pytest.ini), a few minutes.
test-fast: $(VENV)/.test
	$(PY) -m pytest -n 2 --dist loadfile -q -m "not slow and not parity" $(PYTEST_ARGS) tests

# One style for the whole tree (pyproject.toml); `make test` checks it too (tests/test_style.py).
lint: $(VENV)/.test
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .

bench: $(VENV)/.test
	$(PY) experiments/benchmark.py dit --json=outputs/bench_dit.json

gifs: $(VENV)/.core
	$(PY) experiments/capabilities.py --checkpoint=checkpoints/shapes --out=docs/gifs

clean:
	rm -rf $(VENV) outputs
