# `make test` and `make demo` set themselves up on a fresh machine.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed

.PHONY: test demo install clean

$(STAMP): setup.cfg pyproject.toml Makefile
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -e '.[dev,torch]'
	# The FID reference for tests/test_inception.py only. Its package requires torchvision, whose wheel does not
	# load beside the CPU torch; the test loads the one module it needs, so torchvision is left out.
	$(PY) -m pip install -q --no-deps torch-fidelity==0.4.0
	touch $(STAMP)

install: $(STAMP)

# pytest exits 5 when it collected nothing; that must fail, so it is not special-cased.
# Test files are spread over TEST_WORKERS processes, each file on one, so module fixtures compile once.
TEST_WORKERS ?= 2
test: $(STAMP)
	$(PY) -m pytest -q -n $(TEST_WORKERS) --dist loadfile tests

demo: $(STAMP)
	$(PY) -m var_jax.demo --out demo_out

clean:
	rm -rf $(VENV) demo_out
