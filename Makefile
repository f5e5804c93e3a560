# Everything needs only Python 3.11+ and the package registry: the venv, uv and every dependency
# are installed by these targets, from uv.lock.
SHELL := /bin/bash
.DEFAULT_GOAL := help

PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
MANAGE := $(BIN)/python manage.py
# Rebuilt when the lock or the project file changes; re-running `make demo` is then instant.
STAMP := $(VENV)/.scrm-installed
PYTEST_ARGS ?=
HOST ?= 127.0.0.1
PORT ?= 8000

# uv must use the venv made by `python3 -m venv`, never download an interpreter of its own.
export UV_PROJECT_ENVIRONMENT := $(VENV)
export UV_PYTHON_DOWNLOADS := never
# The uv cache and the venv may sit on different filesystems; copying avoids a warning per file.
export UV_LINK_MODE := copy

.PHONY: help install demo run test lint format messages clean distclean system-packages

help:
	@echo "make demo      install, migrate, seed demo data, run web + worker + beat"
	@echo "make test      install (with apt: chromium, CJK fonts, gettext), run the whole test suite (PYTEST_ARGS='-k foo' to narrow)"
	@echo "make lint      ruff, import contracts, Django checks, missing migrations"
	@echo "make format    ruff format + ruff check --fix"
	@echo "make messages  extract and compile translations (needs gettext)"
	@echo "make clean     remove caches and collected static files (distclean: also venv, data)"

$(BIN)/python:
	@$(PYTHON) -c 'import sys; sys.exit(sys.version_info < (3, 11))' \
		|| { echo "Python 3.11 or newer is needed (found $$($(PYTHON) --version))"; exit 1; }
	$(PYTHON) -m venv $(VENV)

$(BIN)/uv: | $(BIN)/python
	$(BIN)/pip install -q uv

$(STAMP): uv.lock pyproject.toml | $(BIN)/uv
	$(BIN)/uv sync --frozen --inexact
	@touch $@

install: $(STAMP)

demo: install
	$(MANAGE) migrate --no-input
	$(MANAGE) setup_periodic_tasks
	$(MANAGE) setup_roles
	$(MANAGE) seed_demo
	$(MANAGE) runall --host $(HOST) --port $(PORT)

# Like demo, without touching the data: for a second start.
run: install
	$(MANAGE) runall --host $(HOST) --port $(PORT)

test: install system-packages
	$(BIN)/pytest $(PYTEST_ARGS)

# The browser tests drive Debian's Chromium with the fonts the layout checks measure: Noto CJK
# for Chinese, Liberation Sans (the stylesheet's stand-in for Arial; without it English text
# falls back to the wider DejaVu Sans); gettext builds translations. Installed with apt when missing (as root or with sudo); elsewhere a
# warning names them and the browser tests say what they miss.
SYSTEM_PACKAGES := chromium fonts-noto-cjk fonts-liberation gettext
system-packages:
	@missing=(); \
	for pkg in $(SYSTEM_PACKAGES); do \
		dpkg-query -W -f='$${Status}' "$$pkg" 2>/dev/null | grep -q "install ok installed" \
			|| missing+=("$$pkg"); \
	done; \
	if (( $${#missing[@]} == 0 )); then exit 0; fi; \
	sudo=""; [[ $$(id -u) -eq 0 ]] || sudo="sudo -n"; \
	if command -v apt-get >/dev/null && { [[ -z $$sudo ]] || sudo -n true 2>/dev/null; }; then \
		echo "installing $${missing[*]} with apt-get"; \
		DEBIAN_FRONTEND=noninteractive $$sudo apt-get update -q \
			&& DEBIAN_FRONTEND=noninteractive $$sudo apt-get install -y -q --no-install-recommends "$${missing[@]}"; \
	else \
		echo "warning: $${missing[*]} not installed and apt-get not usable here;" \
			"the browser tests need them (or run with PYTEST_ARGS='-m \"not browser\"')" >&2; \
	fi

lint: install
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/lint-imports
	$(MANAGE) check
	$(MANAGE) makemigrations --check --dry-run

format: install
	$(BIN)/ruff format .
	$(BIN)/ruff check --fix .

# .venv holds Django's own catalogues; without --ignore, compilemessages would rebuild them too.
MESSAGE_IGNORES := --ignore=.venv --ignore=data --ignore=staticfiles --ignore=static --ignore=node_modules

messages: install
	$(MANAGE) makemessages --locale zh_Hans --locale en --no-obsolete $(MESSAGE_IGNORES)
	$(MANAGE) compilemessages $(MESSAGE_IGNORES)

clean:
	find . -path ./$(VENV) -prune -o -type d -name __pycache__ -print0 | xargs -0 rm -rf
	rm -rf .pytest_cache .ruff_cache .hypothesis test-results staticfiles $(STAMP)

distclean: clean
	rm -rf $(VENV) data
