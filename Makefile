.PHONY: setup run test lint format bench

setup:
	bash scripts/setup.sh

run: setup
	bash scripts/run.sh

# ARGS go to pytest, e.g. make test ARGS='-m "not cluster"' (the fast subset)
test:
	bash scripts/test.sh $(ARGS)

lint:
	.venv/bin/ruff check . && .venv/bin/ruff format --check . && .venv/bin/lint-imports --no-cache

format:
	.venv/bin/ruff format . && .venv/bin/ruff check --fix .

bench: setup
	bash bench/run
