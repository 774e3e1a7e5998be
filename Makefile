# Each target creates its own virtual environment, so a fresh machine needs only Python 3.10+.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
# torch is pinned for reproducible CI; pyproject.toml keeps a range for users.
TORCH ?= torch==2.13.0

.PHONY: test lint example bench clean

$(VENV)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q "$(TORCH)"
	$(PY) -m pip install -q -e ".[test]"
	touch $@

## test: install everything into .venv, lint, run the offline test suite
test: $(VENV)/.installed
	$(VENV)/bin/ruff check querysep tests bench demo
	$(VENV)/bin/ruff format --check querysep tests bench demo
	HF_HUB_OFFLINE=1 $(PY) -m pytest -q

lint: $(VENV)/.installed
	$(VENV)/bin/ruff check querysep tests bench demo
	$(VENV)/bin/ruff format --check querysep tests bench demo

## example: separate a bundled recording (pass MODEL=bundle-or-hub-id for real weights)
example: $(VENV)/.installed
	$(PY) demo/example.py $(if $(MODEL),--model "$(MODEL)",) $(if $(QUERY),--query "$(QUERY)",)

bench: $(VENV)/.installed
	$(PY) bench/separate.py

clean:
	rm -rf $(VENV) separated .pytest_cache
