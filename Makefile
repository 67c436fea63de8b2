# Aether: `make run` starts the platform on embedded defaults; `make test` runs the test suite.
SHELL := /bin/bash
.DEFAULT_GOAL := help

PYTHON ?= python3
# Use uv from PATH; otherwise install it once into .tools/ (needs only Python 3.11 and pip).
UV := $(or $(shell command -v uv 2>/dev/null),.tools/bin/uv)
export UV_PYTHON_DOWNLOADS := never
MANAGE := $(UV) run --locked python manage.py

COMPANY ?= Firm
DIRECTORS ?= director1:director1@example.com director2:director2@example.com
HOST ?= 127.0.0.1:8000

.PHONY: help install run test lint clean

help:
	@echo "make run    start Aether on embedded defaults (SQLite, no Redis, all accounts in simulation):"
	@echo "            web, Celery worker and beat, and replayed market data on an accelerated clock"
	@echo "make test   run the test suite (SQLite unless DATABASE_URL is set)"
	@echo "make lint   ruff and the migrations check"

.tools/bin/uv:
	$(PYTHON) -m venv .tools
	.tools/bin/pip install --quiet uv

install: $(UV)
	$(UV) sync --locked

# Embedded mode: whatever DATABASE_URL / REDIS_URL / AETHER_ENV the shell has, `make run` ignores them.
# Market data is replayed on an accelerated clock unless AETHER_MARKET_DATA=live is set.
EMBEDDED := env -u DATABASE_URL -u REDIS_URL -u AETHER_ENV AETHER_MARKET_DATA=$(or $(AETHER_MARKET_DATA),replay)

run: install
	$(EMBEDDED) $(MANAGE) migrate --noinput
	$(EMBEDDED) $(MANAGE) sync_universe --from-file
	$(EMBEDDED) $(MANAGE) bootstrap_accounts --company "$(COMPANY)" \
		$(foreach d,$(DIRECTORS),--director $(d))
	$(EMBEDDED) $(MANAGE) prepare_embedded
	$(EMBEDDED) $(MANAGE) run_platform --host $(HOST)

test: install
	$(UV) run --locked pytest

lint: install
	$(UV) run --locked ruff check .
	$(UV) run --locked ruff format --check .
	$(MANAGE) makemigrations --check --dry-run

clean:
	rm -rf .venv .tools .pytest_cache .ruff_cache
