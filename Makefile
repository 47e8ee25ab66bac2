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

bench: venv
	@for script in bench/*.py; do \
		[ -e "$$script" ] || continue; \
		echo "== $$script"; \
		$(BIN)/python "$$script" || exit 1; \
	done

lint: venv
	$(BIN)/ruff check .
