# Everything runs from the project's own virtualenv, built on first use.
# Needs only Python >= 3.11 and make:  make test,  make demo,  make bench,  make lint.

PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
# Written once `pip install` succeeded; a newer pyproject.toml installs again.
STAMP := $(VENV)/.installed
PYTEST_ARGS ?=

.PHONY: venv test demo bench lint

venv: $(STAMP)

$(STAMP): pyproject.toml
	@$(PYTHON) -c 'import sys; sys.exit(sys.version_info < (3, 11))' \
		|| { echo "$(PYTHON) is older than Python 3.11: run make PYTHON=python3.11 ..." >&2; exit 1; }
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --disable-pip-version-check -e '.[test]'
	touch $(STAMP)

test: venv
	$(BIN)/python -m pytest $(PYTEST_ARGS)

demo: venv
	$(BIN)/progress-service demo

# Every script runs; each exits 1 when it misses its target, and bench fails
# at the end naming those that did. Needs the Redis and PostgreSQL of REDIS_URL
# and DATABASE_URL (defaults: 127.0.0.1).
bench: venv
	@missed=""; for script in bench/*.py; do \
		[ -e "$$script" ] || continue; \
		echo "== $$script"; \
		$(BIN)/python "$$script" || missed="$$missed $$script"; \
	done; \
	if [ -n "$$missed" ]; then echo "bench: missed a target or failed:$$missed" >&2; exit 1; fi

# ruff, then mypy: strict on the core library (it ships py.typed), plain on the
# worker, the web app and the CLI. Settings in pyproject.toml's [tool.mypy].
lint: venv
	$(BIN)/ruff check .
	$(BIN)/mypy --strict progress_service/
	$(BIN)/mypy worker/ web/ progress_cli/
