# Two commands set everything up: `make demo` runs the main job on the embedded demo
# data, `make test` runs the test suite. Each creates the virtual environment it needs.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
PIP := $(PY) -m pip
export TF_CPP_MIN_LOG_LEVEL ?= 2

.PHONY: venv venv-test demo test summary clean

$(VENV)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PIP) install -q --upgrade pip
	$(PIP) install -q -e .
	touch $@

$(VENV)/.installed-test: $(VENV)/.installed pyproject.toml
	$(PIP) install -q torch==2.13.0
	$(PIP) install -q -e '.[test,torch,export]'
	$(PIP) install -q --no-deps geffnet==1.0.2
	touch $@

venv: $(VENV)/.installed
venv-test: $(VENV)/.installed-test

demo: venv
	$(PY) -m efficientnet_jax.main --config=configs/demo.py --workdir=runs/demo

# Two test processes (pytest-xdist, a file each at a time): the cores overlap one test's
# compiling with another's running. The tests that watch machine-wide state run alone after.
test: venv-test
	$(PY) -m pytest -q -n 2 --dist loadfile -m "not serial" --durations=15
	$(PY) -m pytest -q -m serial

summary: venv
	$(PY) -m efficientnet_jax.models.summary

clean:
	rm -rf $(VENV) runs
