# Tunseal developer entry points. Everything runs from a private virtual environment (.venv)
# that this Makefile creates; system packages come from installers/dev-deps.sh.
VENV   := .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.installed-stamp
PYTEST_ARGS ?=

.PHONY: all setup test lint demo demo-stop bench screenshots deb clean

all: test

$(STAMP): pyproject.toml installers/dev-deps.sh
	bash installers/dev-deps.sh
	test -x $(PY) || python3 -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -e '.[dev]'
	touch $(STAMP)

setup: $(STAMP)

## The test suite: lint, types, then every test (namespaces, real keyring, offscreen Qt).
test: $(STAMP) lint
	bash tests/run.sh $(PYTEST_ARGS)

lint: $(STAMP)
	$(VENV)/bin/ruff check .
	$(VENV)/bin/mypy core helper gui tools

## A working demo tunnel: an "office" namespace with a helper and a web page, reached from here.
demo: $(STAMP)
	$(PY) -m tools.demo up

demo-stop: $(STAMP)
	$(PY) -m tools.demo down

bench: $(STAMP)
	$(PY) -m bench.micro
	$(PY) -m bench.throughput
	$(PY) -m bench.gateway

screenshots: $(STAMP)
	$(PY) -m gui.screenshots docs/screenshots

deb: $(STAMP)
	bash installers/debian/build.sh

clean:
	rm -rf $(VENV) build dist *.egg-info .mypy_cache .ruff_cache .pytest_cache
