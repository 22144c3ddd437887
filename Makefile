# densemtl: `make demo` and `make test` set everything up on a fresh machine.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed
# passive OpenMP waiting: spinning threads make CPU torch 10-100x slower when another process holds a core
export OMP_WAIT_POLICY ?= PASSIVE

.PHONY: setup demo test test-all lint bench bench-smoke bench-peers clean

setup: $(STAMP)

$(STAMP): pyproject.toml constraints.txt
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -c constraints.txt -e '.[test]'
	touch $(STAMP)

demo: $(STAMP)
	$(VENV)/bin/densemtl demo

test: $(STAMP)
	$(PY) -m ruff check src tests benchmarks
	$(PY) -m pytest -q

test-all: $(STAMP)
	$(PY) -m ruff check src tests benchmarks
	$(PY) -m pytest -q -m ''

bench: $(STAMP)
	for b in benchmarks/bench_*.py; do echo "== $$b"; $(PY) $$b || exit 1; done

bench-smoke: $(STAMP)
	for b in benchmarks/bench_*.py; do echo "== $$b"; $(PY) $$b --smoke || exit 1; done

# peer implementations for bench_weighting.py's comparison (LibMTL 1.1.5, torchjd 0.18 with its solvers);
# benchmark-only, never runtime or test dependencies
bench-peers: $(STAMP)
	$(PY) -m pip install -q -c constraints.txt -e '.[bench-peers]'
	$(PY) -m pip install -q --no-deps LibMTL==1.1.5

clean:
	rm -rf $(VENV) runs data_cache .pytest_cache
