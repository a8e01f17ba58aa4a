# fastgw: the two set-up commands are `make run` and `make test`.
PYTHON ?= python3
VENV   := .venv
PY     := $(VENV)/bin/python
PIP    := $(VENV)/bin/pip

.PHONY: run test compile debug bench-micro clean lint

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

clean:
	rm -rf build *.egg-info fastgw/_core/*.c fastgw/_core/*.so fastgw/_core/*.html
