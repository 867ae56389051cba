# PACS Hub: two commands. `make run` starts the hub; `make test` runs the whole suite.
# Each sets up what it needs (Python venv; for tests, Debian packages too).
PYTHON ?= python3
VENV   ?= .venv
BIN    := $(VENV)/bin
SUDO   := $(shell [ "$$(id -u)" = 0 ] || echo sudo)
TEST_DEBS := dcmtk orthanc orthanc-dicomweb postgresql chromium redis-server
export PACS_HUB_DATA_DIR ?= $(CURDIR)/data

.PHONY: run test lint bench system-deps clean help viewer npm

help:  ## list the targets
	@grep -E '^[a-z-]+:.*##' $(MAKEFILE_LIST) | sed 's/:.*##/:/'

$(BIN)/.runtime: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -q -e .
	touch $@

$(BIN)/.test: $(BIN)/.runtime pyproject.toml
	$(BIN)/pip install -q -e '.[test]'
	touch $@

viewer:  ## fetch the OHIF viewer from npm into viewers/ohif/dist (once; needs npm)
	@viewers/ohif/fetch.sh

npm:  ## install Debian's npm when the machine has none (the viewer comes from the npm registry)
	@command -v npm >/dev/null 2>&1 || { echo "installing Debian package: npm"; \
	  $(SUDO) apt-get update -q && DEBIAN_FRONTEND=noninteractive $(SUDO) apt-get install -y -q npm; } \
	  || echo "make: could not install npm; the web viewer will be unavailable"

run: $(BIN)/.runtime npm  ## set up and run the hub (and its viewer) on the embedded default (SQLite + ./data)
	@viewers/ohif/fetch.sh || echo "make run: could not fetch the web viewer (reason above); starting the hub anyway"
	PACS_HUB_UNKNOWN_CALLERS=$${PACS_HUB_UNKNOWN_CALLERS:-accept} $(BIN)/pacs-hub serve

system-deps:  ## install the Debian packages the tests start as real peers (and npm for the viewer)
	@missing=""; for p in $(TEST_DEBS); do dpkg -s $$p >/dev/null 2>&1 || missing="$$missing $$p"; done; \
	command -v npm >/dev/null 2>&1 || missing="$$missing npm"; \
	if [ -n "$$missing" ]; then \
	  echo "installing Debian packages:$$missing"; \
	  $(SUDO) apt-get update -q && DEBIAN_FRONTEND=noninteractive $(SUDO) apt-get install -y -q $$missing; \
	fi

lint: $(BIN)/.test  ## ruff and mypy
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/mypy

test: system-deps $(BIN)/.test lint viewer  ## set up and run the whole test suite
	$(BIN)/pytest -q -p no:cacheprovider -n $${PYTEST_WORKERS:-2} --dist loadscope

bench: system-deps $(BIN)/.test  ## hub vs Orthanc benchmarks, written to bench/RESULTS.md
	$(BIN)/python -m bench.run

clean:  ## remove the venv (not the data folder)
	rm -rf $(VENV)
