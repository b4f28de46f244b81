# Two commands on a fresh machine: `make demo` (the main job end to end) and `make test`.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
CONFIG ?= configs/etth.yaml
export SKEWLESS_HOME ?= $(CURDIR)/skewless_home
DEMO_PORT ?= 8000

.PHONY: demo test test-unit lint bench-online bench-ltsf bench-serving bench-shedding bench-scale bench-cli bench-xgboost bench-streaming clean

# torch first and pinned exactly: a CPU build lies on local disk, anything else downloads GBs.
$(BIN)/python:
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet torch==2.13.0

$(VENV)/.installed: $(BIN)/python pyproject.toml
	$(BIN)/pip install --quiet -e .
	touch $@

$(VENV)/.installed-dev: $(VENV)/.installed
	$(BIN)/pip install --quiet -e '.[dev,ray]'
	touch $@

demo: $(VENV)/.installed
	$(BIN)/skewless ingest $(CONFIG)
	$(BIN)/skewless apply $(CONFIG)
	$(BIN)/skewless materialize $(CONFIG)
	$(BIN)/skewless windows $(CONFIG) --tail 5
	$(BIN)/skewless train $(CONFIG)
	$(BIN)/skewless models promote etth_forecaster latest --alias production
	$(BIN)/skewless forecast $(CONFIG) --alias production
	$(BIN)/skewless verify-skew $(CONFIG) --alias production --samples 20
	$(BIN)/skewless serve $(CONFIG) --alias production --port $(DEMO_PORT) & server=$$!; \
	  $(BIN)/python scripts/ask_server.py http://127.0.0.1:$(DEMO_PORT) 2018-06-26T19:00:00Z 1 2; \
	  status=$$?; kill $$server; wait $$server; exit $$status
	$(BIN)/skewless monitor $(CONFIG) || test $$? -eq 2  # exit code 2: alerts fired
	$(BIN)/skewless report $(CONFIG)

# In random order (pytest-randomly prints the seed); PYTEST_ARGS="--randomly-seed=N" repeats one.
# The check names any missing service first (README: What make test needs).
test: $(VENV)/.installed-dev
	$(BIN)/python scripts/check_test_prerequisites.py
	$(BIN)/pytest $(PYTEST_ARGS)

# The tests that need no service, server, Ray or long training (tests/conftest.py marks them).
test-unit: $(VENV)/.installed-dev
	$(BIN)/pytest -m unit $(PYTEST_ARGS)

lint: $(VENV)/.installed-dev
	$(BIN)/ruff check src tests benchmarks scripts
	$(BIN)/mypy

bench-online: $(VENV)/.installed-dev
	$(BIN)/python benchmarks/online_read.py

bench-serving: $(VENV)/.installed-dev
	$(BIN)/python benchmarks/serving.py

bench-shedding: $(VENV)/.installed-dev
	$(BIN)/python benchmarks/shedding.py

bench-xgboost: $(VENV)/.installed-dev
	$(BIN)/python benchmarks/xgboost_formulations.py

bench-scale: $(VENV)/.installed-dev
	$(BIN)/python benchmarks/scale.py

bench-streaming: $(VENV)/.installed-dev
	$(BIN)/python benchmarks/streaming.py

bench-cli: $(VENV)/.installed
	$(BIN)/python benchmarks/cli_startup.py

bench-ltsf: $(VENV)/.installed
	$(BIN)/skewless benchmark ltsf --data data/ETTh1.csv --lookback 336 \
		--models naive,nlinear,nlinear_gd,xgboost,tft --drop-last-batch 32 --out benchmarks/results/ltsf_etth1.json

clean:
	rm -rf $(VENV) skewless_home
