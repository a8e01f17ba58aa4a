# fastgw: the two set-up commands are `make run` and `make test`.
PYTHON ?= python3
VENV   := .venv
PY     := $(VENV)/bin/python
PIP    := $(VENV)/bin/pip

.PHONY: run test compile debug bench-micro bench bench-quick bench-memory clean lint

$(VENV)/bin/activate:
	$(PYTHON) -m venv $(VENV)
	$(PIP) install -q --upgrade pip

# Installed "editable", with the build tools in the venv, so that `make compile`
# rebuilds the extensions in place after a .pyx changes.
$(VENV)/.installed: $(VENV)/bin/activate pyproject.toml setup.py
	$(PIP) install -q 'Cython>=3.0' 'setuptools>=68' wheel
	$(PIP) install -q -e '.[test]'
	touch $@

run: $(VENV)/.installed
	$(VENV)/bin/fastgw demo

test: $(VENV)/.installed compile
	$(PY) -m pytest $(PYTEST_ARGS)

compile: $(VENV)/.installed
	$(PY) setup.py -q build_ext --inplace

debug: $(VENV)/.installed
	FASTGW_DEBUG=1 $(PY) setup.py -q build_ext --inplace --force

bench-micro: $(VENV)/.installed compile
	$(PY) -m pytest benchmarks -q

# fastgw against nginx (needs nginx, wrk, h2load: apt-get install nginx-light wrk nghttp2-client).
# The full suite takes about 13 minutes and wants an otherwise idle machine; BENCH_ARGS
# passes options through, e.g. make bench BENCH_ARGS="--scenario json_4k --duration 5".
bench: $(VENV)/.installed compile
	$(PY) benchmarks/macro.py $(BENCH_ARGS)

# CI short mode: every scenario once, 2 s, -c50. Reports, never judges a ratio.
bench-quick: $(VENV)/.installed compile
	$(PY) benchmarks/macro.py --quick

# Worker RSS with 10,000 idle keep-alive connections, fastgw and nginx (under a minute).
bench-memory: $(VENV)/.installed compile
	$(PY) benchmarks/memory.py

clean:
	rm -rf build *.egg-info; find fastgw \( -name "*.c" -o -name "*.so" -o -name "*.html" \) -delete
