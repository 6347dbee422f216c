# Tunseal developer entry points. Everything runs from a private virtual environment (.venv)
# that this Makefile creates; system packages come from installers/dev-deps.sh.
VENV   := .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.installed-stamp
NATIVE := $(VENV)/.native-stamp
CARGO  := $(shell command -v cargo 2>/dev/null)
PYTEST_ARGS ?=

.PHONY: all setup native native-check test test-pure lint demo demo-stop bench screenshots deb clean

all: test

$(STAMP): pyproject.toml installers/dev-deps.sh
	bash installers/dev-deps.sh
	test -x $(PY) || python3 -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -e '.[dev]'
	touch $(STAMP)

## The native data-path core (native/, Rust) built into the venv, when cargo exists; without
## it everything runs on the pure-Python data path.
$(NATIVE): $(STAMP) native/Cargo.toml native/Cargo.lock $(wildcard native/src/*.rs)
ifneq ($(CARGO),)
	VIRTUAL_ENV=$(abspath $(VENV)) $(VENV)/bin/maturin develop --release --locked -q \
		-m native/Cargo.toml
	touch $(NATIVE)
else
	@echo "tunseal: no cargo here: the native core is not built (pure-Python data path)"
endif

native: $(NATIVE)

## fmt, clippy and the crate's own tests (CI runs these).
native-check:
	cd native && cargo fmt --check && cargo clippy --locked --release -- -D warnings \
		&& cargo clippy --locked --no-default-features --all-targets -- -D warnings \
		&& cargo test --locked --no-default-features

setup: $(STAMP) $(NATIVE)

## The test suite: lint, types, then every test (namespaces, real keyring, offscreen Qt).
test: $(STAMP) $(NATIVE) lint
	bash tests/run.sh $(PYTEST_ARGS)

## The data-path tests again on the pure-Python core (TUNSEAL_NATIVE=0): the reference and the
## fallback must keep passing beside the native core (CI runs this after `make test`).
test-pure: $(STAMP) lint
	TUNSEAL_NATIVE=0 bash tests/run.sh tests/unit tests/native tests/net/test_tunnel_modes.py \
		tests/net/test_tunnel_attacks.py tests/net/test_ecn.py tests/net/test_path.py \
		tests/net/test_gateway.py $(PYTEST_ARGS)

lint: $(STAMP) $(NATIVE)
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
	rm -rf $(VENV) build dist *.egg-info .mypy_cache .ruff_cache .pytest_cache native/target
