# Two commands on a fresh machine: `make demo` and `make test` (and `make try`). Each sets up .venv itself.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed

.PHONY: compiled demo try test bench lock messages clean

$(STAMP): requirements.lock pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --disable-pip-version-check --no-deps -r requirements.lock
	$(PY) -m pip install --quiet --disable-pip-version-check --no-deps --no-build-isolation -e .
	touch $@

# pip compiles what it installs, but not an editable project: ours is compiled before each command (only what
# changed since), or (with PYTHONDONTWRITEBYTECODE set, as on these machines) every process would compile each
# module edited since the install again before it answers: a bench after an edit would time the compiler.
compiled: $(STAMP)
	@$(PY) -m compileall -q bot channels >/dev/null

demo: compiled
	$(VENV)/bin/debunkbot demo

# The demo, then left running: simulated outlets, a store and an inbox in var/try/ to submit to and watch.
try: compiled
	$(VENV)/bin/debunkbot demo --keep var/try

# The PostgreSQL half runs when a server answers on 127.0.0.1:5432 (or DEBUNKBOT_TEST_POSTGRES_URL is set).
PG_TEST_URL := postgresql+psycopg://postgres@127.0.0.1:5432/test
# axe-core for the browser tests' accessibility check, pinned in tests/web/axe/package-lock.json (npm ci; when npm is there).
AXE := tests/web/axe/node_modules/.package-lock.json
$(AXE): tests/web/axe/package-lock.json
	npm ci --prefix tests/web/axe --no-audit --no-fund --silent

test: compiled
	@if command -v npm >/dev/null; then $(MAKE) --no-print-directory $(AXE); fi
	@if [ -z "$$DEBUNKBOT_TEST_POSTGRES_URL" ] && command -v pg_isready >/dev/null && pg_isready -q -h 127.0.0.1 -p 5432; then \
	  export DEBUNKBOT_TEST_POSTGRES_URL=$(PG_TEST_URL); fi; \
	$(PY) -m pytest -q

bench: compiled
	$(PY) -m pip install --quiet --disable-pip-version-check --no-deps -r bench/requirements.lock
	@command -v nginx >/dev/null || { [ "$$(id -u)" = 0 ] && apt-get install -y -qq nginx-light libnginx-mod-http-echo >/dev/null; } \
	  || echo "nginx not installed: the benches use the aiohttp receiver"
	$(PY) bench/suite.py
	$(PY) bench/workers.py
	$(PY) bench/processes.py
	$(PY) bench/cli_start.py
	$(PY) bench/metrics.py
	$(PY) bench/api_load.py
	$(PY) bench/pages.py

lock:
	{ echo '# The whole dependency tree, pinned. Regenerate with: make lock'; \
	  $(PY) -m pip freeze --all --exclude-editable | grep -v -i -E '^(pip|apprise|requests-oauthlib|oauthlib|markdown)=='; } > requirements.lock

# The pages' message catalogue: extract the msgids again, and merge them into the Chinese catalogue a translator edits.
messages: $(STAMP)
	$(VENV)/bin/pybabel -q extract -F babel.cfg -k N_ --no-location --sort-output -o bot/web/locale/messages.pot .
	$(VENV)/bin/pybabel -q update -i bot/web/locale/messages.pot -d bot/web/locale -l zh_Hans --no-fuzzy-matching --ignore-obsolete

clean:
	rm -rf $(VENV) var .pytest_cache tests/web/axe/node_modules
