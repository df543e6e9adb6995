# The two commands of the README: `make demo` runs the main job, `make test` runs the tests.
# Both create the virtual environment in .venv on first use (and again when pyproject changes).
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed-dev

.PHONY: install demo test lint bench clean

# setup.py and the C hub's source too: pip builds the optional C hub (services/rendezvous/_hub.c)
# in place, or leaves it out where there is no compiler (the server then runs the Python hub)
$(STAMP): pyproject.toml setup.py $(wildcard services/rendezvous/_hub*.[ch])
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --disable-pip-version-check -e '.[dev]'
	touch $(STAMP)

install: $(STAMP)

demo: $(STAMP)
	$(VENV)/bin/cosmic demo

lint: $(STAMP)
	$(PY) -m ruff check services tests bench

test: lint
	$(PY) -m pytest

bench: $(STAMP)
	$(PY) bench/rendezvous_server.py
	$(PY) bench/allreduce_links.py
	$(PY) bench/pair_latency.py
	$(PY) bench/collectives.py
	$(PY) bench/lambda_runtime.py
	$(PY) bench/inference.py
	$(PY) bench/engines.py
	$(PY) bench/worker_invocation.py
	$(PY) bench/coordinator.py
	$(PY) bench/job_overhead.py

clean:
	rm -rf $(VENV) build *.egg-info .pytest_cache .ruff_cache services/rendezvous/_hub*.so
