# fedkey: `make demo` and `make test` work on a fresh machine; both install into .venv first.
PY := .venv/bin/python
STAMP := .venv/.installed
RUN_DIR ?= runs/demo

# apt-get needs root: sudo when not root already.
SUDO := $(shell [ "$$(id -u)" = 0 ] || echo sudo)

.PHONY: install browser demo test test-python test-kotlin lint clean

install: $(STAMP) browser

# Headless Chromium renders RUN/report.html in tests/test_report.py; installed (Debian) when missing.
browser:
	@command -v chromium >/dev/null 2>&1 || { $(SUDO) apt-get update -qq && \
		$(SUDO) env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium >/dev/null; }

# Re-installs only when pyproject.toml changes; pip's cache keeps a re-install quick.
$(STAMP): pyproject.toml
	test -x $(PY) || python3 -m venv .venv
	$(PY) -m pip install --quiet --upgrade pip==26.3
	$(PY) -m pip install --quiet -e '.[dev]'
	touch $(STAMP)

demo: install
	.venv/bin/fedkey demo --out $(RUN_DIR)

test: install lint test-python test-kotlin

test-python: install
	$(PY) -m pytest -q

# The Kotlin core is tested on the JVM with ONNX Runtime Java (android_client/core, Maven). Python first
# exports a tiny bundle + expected outputs for the parity tests (skipped when already up to date).
test-kotlin: install
	@if [ -f android_client/core/pom.xml ]; then \
		$(PY) android_client/core/scripts/make_fixtures.py && \
		mvn -B -ntp -f android_client/core/pom.xml test; \
	else echo "android_client/core has no Maven build yet: no Kotlin tests to run"; fi

lint: install
	.venv/bin/ruff check .
	.venv/bin/ruff format --check .

clean:
	rm -rf .venv runs .pytest_cache
