# Two commands on a fresh machine: `make demo` and `make test`. Each sets up .venv itself.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed

.PHONY: demo test test-sqlite bench lock clean

$(STAMP): requirements.lock pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --disable-pip-version-check --no-deps -r requirements.lock
	$(PY) -m pip install --quiet --disable-pip-version-check --no-deps --no-build-isolation -e .
	touch $@

demo: $(STAMP)
	$(VENV)/bin/debunkbot demo

test: $(STAMP)
	$(PY) -m pytest -q

bench: $(STAMP)
	$(PY) -m pip install --quiet --disable-pip-version-check --no-deps -r bench/requirements.lock
	$(PY) bench/suite.py

lock:
	$(PY) -m pip freeze --exclude-editable | grep -v -i -E '^(apprise|requests|requests-oauthlib|oauthlib|markdown|charset-normalizer|urllib3)==' > requirements.lock

clean:
	rm -rf $(VENV) var .pytest_cache
