# The README's two commands: `make demo` (main job on embedded defaults) and `make test`.
# Both create .venv when missing and reinstall only when requirements.lock or pyproject.toml changed.
PYTHON ?= python3.11
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed
LAKE ?= var/lake
# torch 2.13.0+cpu is a local wheel on these machines; say where even if PIP_FIND_LINKS is not set.
PIP_FLAGS := $(if $(wildcard /opt/wheels),--find-links /opt/wheels,)

.PHONY: demo test lint lock clean

$(STAMP): requirements.lock pyproject.toml
	@test -x $(PY) || $(PYTHON) -m venv $(VENV) || python3 -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q $(PIP_FLAGS) -r requirements.lock
	$(PY) -m pip install -q --no-deps -e .
	@touch $(STAMP)

# Synthetic logs -> dealrec_daily -> dealrec_finetune through `airflow dags test` (state under var/; scripts/demo.py).
demo: $(STAMP)
	$(PY) scripts/demo.py --lake $(LAKE)

lint: $(STAMP)
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .

# pytest exits 5 when it collects no test (e.g. a filtered run): that is not a failure of the suite.
test: $(STAMP) lint
	$(VENV)/bin/pytest -q $(PYTEST_ARGS) || [ $$? -eq 5 ]

# Re-resolve the pinned set after editing pyproject.toml's dependencies.
lock: $(STAMP)
	$(PY) -m pip install -q $(PIP_FLAGS) -e '.[test]'
	$(PY) -m pip freeze --exclude-editable > requirements.lock

clean:
	rm -rf var .pytest_cache .ruff_cache
