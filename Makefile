# The two commands: `make demo` (bring the platform up with demo users and data) and
# `make test` (every test but the GPU ones). See README.md.

PYTHON ?= python3.11
VENV ?= .venv
PY := $(VENV)/bin/python
SERVICES := platform/services.sh
HTTP_HOST ?= 127.0.0.1
HTTP_PORT ?= 8000
PYTEST_ARGS ?=

export PLATFORM_HTTP_HOST := $(HTTP_HOST)
export PLATFORM_HTTP_PORT := $(HTTP_PORT)
export PLATFORM_VENV := $(abspath $(VENV))

.PHONY: help venv frontend services demo test stop status lint format bench clean-var

help:
	@echo "make demo    set up everything and run the platform at http://$(HTTP_HOST):$(HTTP_PORT)/"
	@echo "make test    run every test except the GPU ones"
	@echo "make frontend build the viewer (frontend/, Vite + Cornerstone3D) into frontend/dist/"
	@echo "make stop    stop the web server, workers, Orthanc and the Redis started here"
	@echo "make status  show what runs"
	@echo "make lint    ruff check and ruff format --check"
	@echo "make bench   run the benchmarks in bench/"

# The virtualenv, reinstalled when pyproject.toml or constraints.txt change. pyproject.toml
# lists the dependencies (the one source of truth); constraints.txt pins the whole tree.
venv: $(VENV)/.installed

$(VENV)/.installed: pyproject.toml constraints.txt
	@test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -c constraints.txt '.[dev]'
	@touch $@

# The viewer: npm ci when the lock file changes, a Vite build (with a type check) when a
# source changes. Django serves frontend/dist/viewer/ as /static/viewer/.
FRONTEND_SOURCES := $(wildcard frontend/src/*) $(wildcard frontend/test/*) frontend/vite.config.ts frontend/tsconfig.json
frontend: frontend/dist/viewer/viewer.js

frontend/node_modules/.package-lock.json: frontend/package.json frontend/package-lock.json
	bash $(SERVICES) install node
	cd frontend && npm ci --no-audit --no-fund --loglevel=error
	@touch $@

frontend/dist/viewer/viewer.js: frontend/node_modules/.package-lock.json $(FRONTEND_SOURCES)
	@# Vite warns for every Node built-in a codec's Emscripten glue names; those are not used.
	@cd frontend && { npm run --silent build -- --logLevel warn >.build.log 2>&1; rc=$$?; \
	  grep -v 'externalized for browser' .build.log; rm -f .build.log; \
	  [ $$rc = 0 ] || echo "make frontend: the viewer build failed (exit $$rc)" >&2; exit $$rc; }
	@touch $@

services:
	bash $(SERVICES) install all
	bash $(SERVICES) start all

demo: venv frontend services
	$(PY) manage.py migrate --noinput
	$(PY) manage.py collectstatic --noinput --verbosity 0
	$(PY) manage.py demo
	bash $(SERVICES) start app
	@echo
	@echo "The platform runs at http://$(HTTP_HOST):$(HTTP_PORT)/  (API docs: /api/docs, admin: /admin/)"
	@cat var/demo-credentials.txt
	@echo "Logs are in var/log/. Stop everything with: make stop"

# Tests start their own Orthanc (a temporary one per session) and need Redis.
test: venv frontend
	bash $(SERVICES) install all chromium
	bash $(SERVICES) start redis
	@# pytest exits 5 when it collected nothing: that is a failure, said plainly.
	@rc=0; $(PY) -m pytest -m "not gpu" $(PYTEST_ARGS) || rc=$$?; \
	if [ $$rc = 5 ]; then echo "make test: pytest collected no tests (exit 5)" >&2; fi; \
	exit $$rc

stop:
	bash $(SERVICES) stop everything

status:
	-bash $(SERVICES) status everything

lint: venv
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .

format: venv
	$(VENV)/bin/ruff check --fix .
	$(VENV)/bin/ruff format .

bench: venv
	@set -e; found=0; for script in bench/*.py; do \
	  [ -e "$$script" ] || continue; found=1; \
	  echo "== $$script"; $(PY) "$$script"; \
	done; [ $$found = 1 ] || echo "bench/ holds no benchmarks yet"
