# The two commands of the README: `make run` (the service on its embedded default) and `make test`.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
# torch/torchvision pinned to the pair the project is tested with (installed before the rest so pip
# does not pick another build); CUDA hosts use the Docker image instead.
TORCH := torch==2.14.1 torchvision==0.29.1

.PHONY: install run test lint bench gpu-check clean

$(BIN)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -q $(TORCH)
	$(BIN)/pip install -q -e '.[test]'
	touch $@

# The dashboard's JavaScript libraries, pinned by app/ui/package-lock.json (npm ci: exactly those versions, their
# integrity hashes checked). Without npm the dashboard still works, with its charts off and a note saying so.
UI_VENDOR := app/ui/node_modules/.package-lock.json

$(UI_VENDOR): app/ui/package.json app/ui/package-lock.json
	@if command -v npm >/dev/null 2>&1; then \
		npm ci --prefix app/ui --no-audit --no-fund --ignore-scripts --loglevel=error \
			|| echo "npm ci failed (offline?): the /ui dashboard runs without its charts until it succeeds"; \
	else \
		echo "npm not found: the /ui dashboard runs without its charts (install Node.js + npm, then make install)"; \
	fi

install: $(BIN)/.installed $(UI_VENDOR)

run: install
	$(BIN)/visiontune run

test: install
	$(BIN)/python -m pytest

lint: install
	$(BIN)/ruff check app worker launcher visiontune migrations tests benchmarks
	$(BIN)/lint-imports
	$(BIN)/mypy app worker launcher visiontune

bench: install
	$(BIN)/python benchmarks/finetune_cifar.py

# On a CUDA host: the GPU tests (skipped elsewhere), then the ResNet-50 throughput benchmark.
gpu-check: install
	$(BIN)/python -m pytest -m gpu tests
	$(BIN)/python benchmarks/gpu_throughput.py

clean:
	rm -rf $(VENV) var .pytest_cache app/ui/node_modules
