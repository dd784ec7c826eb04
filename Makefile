# Wallet BFF: everyday commands. GNU make; works from a fresh clone as root on Debian 12.
#
#   make run         migrate, seed demo data and serve HTTP + websockets on 127.0.0.1:$PORT (8000), SQLite,
#                    with a local dev chain (anvil on 127.0.0.1:$CHAINS_DEV_PORT, 8545) and the watcher in process
#   make test        pytest against PostgreSQL, Redis and anvil started for the run (.ci/with-services)
#   make test-quick  pytest on SQLite, no services (tests that need them skip themselves)
#   make lint        ruff check
#   make bench-*     benchmarks: api, ledger, stream, branding, chains, balances (see docs/BENCHMARKS.md)

SHELL := /bin/bash
.SHELLFLAGS := -euo pipefail -c

PYTHON ?= python3.11
UV_VERSION := 0.13.9
VENV := .venv
PY := $(VENV)/bin/python
PYTEST_ARGS ?= -q -p no:cacheprovider

.PHONY: venv run test test-quick lint bench-api bench-ledger bench-stream bench-branding bench-chains bench-balances

venv: $(VENV)/.installed
	@:

# Re-installs only when the lock changes. `uv pip install`, not `sync`: sync would remove uv itself.
$(VENV)/.installed: requirements.lock
	@test -x $(PY) || $(PYTHON) -m venv $(VENV) || { \
	  rm -rf $(VENV); echo "make: $(PYTHON) -m venv failed; installing python3.11-venv" >&2; \
	  { apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq python3.11-venv; } >/dev/null; \
	  $(PYTHON) -m venv $(VENV); }
	@if [ "$$($(VENV)/bin/uv --version 2>/dev/null | cut -d' ' -f2)" != $(UV_VERSION) ]; then \
	  { $(PY) -m pip install -q --disable-pip-version-check 'uv==$(UV_VERSION)' 2>&1 1>&3 \
	    | { grep -v "^WARNING: Location '.*' is ignored" || true; } >&2; } 3>&1; \
	fi
	@$(VENV)/bin/uv pip install --python $(PY) -q -r requirements.lock
	@touch $@

run: venv
	@.ci/services install-anvil >/dev/null || echo "make: anvil could not be installed; serving without the local dev chain" >&2
	$(PY) manage.py migrate --noinput
	$(PY) manage.py seed_demo
	exec $(PY) manage.py serve --host 127.0.0.1 --port $${PORT:-8000}

test: venv
	.ci/with-services $(PY) -m pytest $(PYTEST_ARGS)

test-quick: venv
	env -u DATABASE_URL -u REDIS_URL -u ANVIL_RPC_URL $(PY) -m pytest $(PYTEST_ARGS)

lint: venv
	$(VENV)/bin/ruff check .

bench-api: venv
	.ci/with-services $(PY) bench/api.py

bench-ledger: venv
	.ci/with-services $(PY) bench/ledger.py

bench-stream: venv
	.ci/with-services $(PY) bench/stream.py

bench-branding: venv
	.ci/with-services $(PY) bench/branding.py

bench-chains: venv
	.ci/with-services $(PY) bench/chains.py

bench-balances: venv
	.ci/with-services $(PY) bench/balances.py
