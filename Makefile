# The two commands: `make run` and `make test`. Both create .venv when it is missing.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin

.PHONY: run test test-fast lint lock clean

# serve migrates before it starts its workers (and they find the database at its head).
run: $(VENV)/.installed
	$(BIN)/tapefit serve --host 127.0.0.1 --port 8000 --workers 1

test: $(VENV)/.installed-dev
	$(BIN)/python -m pytest

# Everything but real processes and training: a quick check while editing.
test-fast: $(VENV)/.installed-dev
	$(BIN)/python -m pytest -m "not slow"

lint: $(VENV)/.installed-dev
	$(BIN)/ruff check .
	$(BIN)/lint-imports

# Upgrade every dependency to the newest release pyproject.toml allows and pin the result;
# run `make test` before committing the new constraints.txt.
lock: $(VENV)/.installed-dev
	$(BIN)/python -m pip install --quiet --upgrade -e ".[dev]"
	{ grep '^#' constraints.txt; $(BIN)/python -m pip freeze --exclude-editable; } > constraints.new
	mv constraints.new constraints.txt

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip

# Reinstall when the dependencies change; the stamp files record the last install. The
# constraints pin every package to the versions the suite passed with, so a new release
# upstream cannot change what a fresh clone installs.
$(VENV)/.installed: pyproject.toml constraints.txt | $(BIN)/python
	$(BIN)/python -m pip install --quiet -c constraints.txt -e .
	touch $@

$(VENV)/.installed-dev: pyproject.toml constraints.txt | $(BIN)/python
	$(BIN)/python -m pip install --quiet -c constraints.txt -e ".[dev]"
	touch $@ $(VENV)/.installed

clean:
	rm -rf $(VENV) tapefit-data .pytest_cache
