.PHONY: setup run manage test lint format bench

setup:
	bash scripts/setup.sh

run: setup
	bash scripts/run.sh

# manage.py against the local cluster's supervisor, e.g. make manage ARGS="create_api_token admin"
manage:
	.venv/bin/python scripts/cluster_manage.py $(ARGS)

# ARGS go to pytest, e.g. make test ARGS='-m "not cluster"' (the fast subset)
test:
	bash scripts/test.sh $(ARGS)

lint:
	.venv/bin/ruff check . && .venv/bin/ruff format --check . && .venv/bin/lint-imports --no-cache

format:
	.venv/bin/ruff format . && .venv/bin/ruff check --fix .

bench: setup
	bash bench/run
