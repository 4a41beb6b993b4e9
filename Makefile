# Two set-up commands: `make run` and `make test`. Both create .venv and install on first use.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: setup run test bench lint ui

setup: $(STAMP)

# torch and torchvision first, pinned, so that pip takes this machine's builds and no other package
# pulls a different torch.
$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --disable-pip-version-check torch==2.14.1 torchvision==0.29.1
	$(BIN)/pip install --quiet --disable-pip-version-check -e '.[test]'
	touch $(STAMP)

run: setup
	$(BIN)/gentrain run jobs/dcgan_digits.yaml

# One process: a run's Ray workers already take both cores (two test processes side by side
# were slower than one, measured one day). Then the multi-node cluster tests, without embedded Ray.
test: setup
	$(BIN)/pytest -q -m "not cluster" --durations=40
	$(BIN)/pytest -q -m cluster

bench: setup
	@for b in bench/*.py; do echo "== $$b"; $(BIN)/python $$b || exit 1; done

lint: setup
	$(BIN)/ruff check platform tests bench
	$(BIN)/ruff format --check platform tests bench

ui: setup
	$(BIN)/gentrain ui
