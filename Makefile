# The README's commands: `make demo` (the nightly job, offline), `make test` and `make bench`.
VENV ?= .venv
PY := $(VENV)/bin/python

.PHONY: setup demo test bench package-check
setup: $(VENV)/.installed

$(VENV)/.installed: pyproject.toml
	python3 -m venv $(VENV)
	$(VENV)/bin/pip install --quiet --upgrade pip uv
	# byte-compiled as pip would (uv does not by default): with PYTHONDONTWRITEBYTECODE set, every
	# Airflow subprocess would otherwise compile its imports from source on each start
	$(VENV)/bin/uv pip install --quiet --compile-bytecode --python $(PY) -e '.[test]'
	touch $@

demo: setup
	$(PY) scripts/demo.py

test: setup
	$(PY) -m pytest

bench: setup
	$(PY) -m benchmarks

package-check: setup
	$(PY) scripts/check_package.py --oldest
