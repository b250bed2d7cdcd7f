.PHONY: setup run test lint format bench

setup:
	bash scripts/setup.sh

run: setup
	bash scripts/run.sh

test:
	bash scripts/test.sh

lint:
	.venv/bin/ruff check . && .venv/bin/ruff format --check .

format:
	.venv/bin/ruff format . && .venv/bin/ruff check --fix .

bench: setup
	bash bench/run
