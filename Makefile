# The two commands of the README. Both create .venv in the repo root (scripts/bootstrap.sh).
.PHONY: serve test setup lint

HOST ?= 127.0.0.1
PORT ?= 8080
MODELS ?= models

## serve: set up .venv, put the default model (Gemma 3 270M) in models/, serve models/ on $(HOST):$(PORT)
serve:
	bash scripts/bootstrap.sh gemma
	.venv/bin/python scripts/default_model.py models
	.venv/bin/llama-router serve --models-dir $(MODELS) --host $(HOST) --port $(PORT)

## test: set up .venv with the test tools, then lint, type-check and run every test
test:
	bash scripts/bootstrap.sh test
	$(MAKE) lint
	.venv/bin/python -m pytest
	# llama.cpp's own router tests, unmodified, offline (tests/llama_cpp_router/README.md)
	.venv/bin/python -m pytest tests/llama_cpp_router -p tests.llama_cpp_router.offline_plugin

lint:
	.venv/bin/ruff check .
	.venv/bin/ruff format --check .
	.venv/bin/mypy
