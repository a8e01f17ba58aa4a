# fastgw: the two set-up commands are `make run` and `make test`.
PYTHON ?= python3
VENV   := .venv
PY     := $(VENV)/bin/python
PIP    := $(VENV)/bin/pip
# The demo's port: make run PORT=9000
PORT   ?= 8080
# Parallel compiler jobs for the native modules.
JOBS   ?= $(shell nproc 2>/dev/null || echo 2)

.PHONY: prereq run test compile debug bench-micro bench bench-quick bench-memory bench-guard bench-guard-update clean lint

$(VENV)/bin/activate:
	@echo "fastgw: making the virtual environment $(VENV)"
	$(PYTHON) -m venv $(VENV)
	$(PIP) install --upgrade pip

# Built once: the extensions are compiled in place first (the compiler's lines show; the
# objects stay in build/), then fastgw is installed "editable" with its test extras, without
# build isolation, so that its build finds every module up to date and copies it instead of
# compiling it again (setup.py). After that `make compile` is a no-op until a .pyx or .pxd
# changes, and then rebuilds only what changed.
$(VENV)/.installed: $(VENV)/bin/activate pyproject.toml setup.py
	@echo "fastgw: installing the build tools into $(VENV)"
	$(PIP) install 'Cython>=3.0' 'setuptools>=77' wheel
	@echo "fastgw: building the native modules (the Cython modules, a minute or two the first time)..."
	$(PY) setup.py build_ext --inplace --parallel $(JOBS)
	@echo "fastgw: installing fastgw and its dependencies into $(VENV)"
	$(PIP) install --no-build-isolation -e '.[test]'
	touch $@
	@echo "fastgw: installed; the fastgw command is $(VENV)/bin/fastgw (or '. $(VENV)/bin/activate', then fastgw)"

run: $(VENV)/.installed
	$(VENV)/bin/fastgw demo --port $(PORT)

# What the build and the tests need from the system (Debian 12 package names): stop at once
# naming the one apt-get line that installs what is missing.
NGHTTP2_HEADER ?= /usr/include/nghttp2/nghttp2.h
prereq:
	@missing=""; \
	for pair in curl:curl openssl:openssl redis-server:redis-server h2load:nghttp2-client \
	            chromium:chromium chromedriver:chromium-driver; do \
	  command -v $${pair%%:*} >/dev/null 2>&1 || missing="$$missing $${pair#*:}"; \
	done; \
	[ -f "$(NGHTTP2_HEADER)" ] || missing="$$missing libnghttp2-dev"; \
	if [ -n "$$missing" ]; then \
	  echo "fastgw: the tests need system packages that are missing; install them with:"; \
	  echo "  sudo apt-get install$$missing"; \
	  exit 1; \
	fi

test: prereq $(VENV)/.installed compile
	$(PY) -m pytest $(PYTEST_ARGS)

compile: $(VENV)/.installed
	$(PY) setup.py -q build_ext --inplace --parallel $(JOBS)

debug: $(VENV)/.installed
	FASTGW_DEBUG=1 $(PY) setup.py -q build_ext --inplace --force --parallel $(JOBS)

bench-micro: $(VENV)/.installed compile
	$(PY) -m pytest benchmarks -q

# fastgw against nginx (needs nginx and wrk, and benchmarks/macro.py checks for h2load too:
# apt-get install nginx-light wrk nghttp2-client).
# The full suite takes about 30 minutes and wants an otherwise idle machine; BENCH_ARGS
# passes options through, e.g. make bench BENCH_ARGS="--scenario json_4k --duration 5".
bench: $(VENV)/.installed compile
	$(PY) benchmarks/macro.py $(BENCH_ARGS)

# CI short mode: every scenario once, 2 s, -c50. Reports, never judges a ratio.
bench-quick: $(VENV)/.installed compile
	$(PY) benchmarks/macro.py --quick

# The speed guard (under a minute): fastgw's CPU per request relative to nginx's, against
# benchmarks/guard_baseline.json; fails when it grew by more than guard.py's MARGIN.
bench-guard: $(VENV)/.installed compile
	$(PY) benchmarks/guard.py

# Records a new baseline (about 90 s): only for a cost that is wanted, or a new machine
# (benchmarks/README.md, "The speed guard").
bench-guard-update: $(VENV)/.installed compile
	$(PY) benchmarks/guard.py --update

# Worker RSS with 10,000 idle keep-alive connections, fastgw and nginx (under a minute).
bench-memory: $(VENV)/.installed compile
	$(PY) benchmarks/memory.py

clean:
	rm -rf build *.egg-info; find fastgw \( -name "*.c" -o -name "*.so" -o -name "*.html" \) ! -name admin_ui.html -delete
