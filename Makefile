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

install: $(BIN)/.installed

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
	$(BIN)/python -m pytest -m gpu tests/ml/test_gpu.py
	$(BIN)/python benchmarks/gpu_throughput.py

clean:
	rm -rf $(VENV) var .pytest_cache
