# wahook: `make run` to try it, `make test` to check it. Both set up .venv on first use.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python

.PHONY: run test lint format bench clean

$(VENV)/.runtime: requirements.txt
	$(PYTHON) -m venv $(VENV)
	$(VENV)/bin/pip install --quiet --disable-pip-version-check -r requirements.txt
	touch $@

$(VENV)/.dev: $(VENV)/.runtime requirements-dev.txt
	$(VENV)/bin/pip install --quiet --disable-pip-version-check -r requirements-dev.txt
	touch $@

run: $(VENV)/.runtime
	$(PY) run.py

# Many tests wait on real processes (gunicorn, workers, Redis, PostgreSQL, Chromium), so more
# pytest workers than cores keep a small machine busy. On 2 cores the tests' own times added up
# to 29 minutes in a run with six workers, about 5 each; four would leave each more than 7.
# `make test TEST_WORKERS=1` runs them in one.
TEST_WORKERS ?= 6

test: $(VENV)/.dev
	$(PY) -m pytest -n $(TEST_WORKERS) --dist loadgroup --durations=10

lint: $(VENV)/.dev
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .

format: $(VENV)/.dev
	$(VENV)/bin/ruff check --fix .
	$(VENV)/bin/ruff format .

bench: $(VENV)/.dev
	$(PY) bench/run.py

clean:
	rm -rf $(VENV) .pytest_cache .ruff_cache test-output bench-output
