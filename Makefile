# Each target creates its own virtual environment, so a fresh machine needs only Python 3.10+.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
# torch is pinned for reproducible CI; pyproject.toml keeps a range for users.
TORCH ?= torch==2.13.0
# pytest-xdist workers for `make test`; each gets an equal share of the cores (tests/conftest.py).
TEST_WORKERS ?= 2

.PHONY: test lint example bench clean system-deps mini

$(VENV)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q "$(TORCH)"
	$(PY) -m pip install -q -e ".[test]"
	touch $@

## system-deps: the Debian packages the tests and `make mini` use (apt-get as root, else named)
system-deps:
	@tools/system-deps

## test: install everything into .venv, lint, run the offline test suite
test: system-deps $(VENV)/.installed
	$(VENV)/bin/ruff check querysep tests bench demo
	$(VENV)/bin/ruff format --check querysep tests bench demo
	HF_HUB_OFFLINE=1 $(PY) -m pytest -q -n $(TEST_WORKERS)

lint: $(VENV)/.installed
	$(VENV)/bin/ruff check querysep tests bench demo
	$(VENV)/bin/ruff format --check querysep tests bench demo

## example: separate a bundled recording (pass MODEL=bundle-or-hub-id for real weights)
example: $(VENV)/.installed
	$(PY) demo/example.py $(if $(MODEL),--model "$(MODEL)",) $(if $(QUERY),--query "$(QUERY)",)

## mini: rebuild the corpus and retrain querysep-mini from scratch on this CPU, pack it into
## the package and measure it (1 h 44 min on 2 cores with bf16 units such as AMX, about 2 h 40
## min without them; figures in bench/README.md)
mini: system-deps $(VENV)/.installed
	rm -rf runs/mini runs/mini-long runs/mini-clap
	$(VENV)/bin/querysep data corpus data/corpus
	$(VENV)/bin/querysep train-clap data/corpus/train.jsonl runs/mini-clap \
		--valid data/corpus/valid.jsonl --steps 1800 --batch-size 32 --batched-features --bf16
	$(VENV)/bin/querysep train configs/train/mini.yaml
	$(VENV)/bin/querysep train configs/train/mini-long.yaml
	$(VENV)/bin/querysep pack runs/mini-long/final querysep/weights/querysep-mini \
		--sounds data/corpus/classes.json --force
	$(PY) bench/mini.py querysep/weights/querysep-mini data/corpus

bench: $(VENV)/.installed
	$(PY) bench/separate.py

clean:
	rm -rf $(VENV) separated .pytest_cache
