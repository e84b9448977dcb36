# The two commands the README gives. Both do all set-up first (scripts/setup.sh is idempotent).
.PHONY: setup demo test test-unit lint
PYTEST_ARGS ?=

setup:
	./scripts/setup.sh

demo: setup
	.venv/bin/millrace demo $(DEMO_ARGS)

test: setup
	.venv/bin/python -m pytest $(PYTEST_ARGS)

test-unit: setup
	.venv/bin/python -m pytest tests/unit $(PYTEST_ARGS)

lint:
	.venv/bin/ruff check src tests benchmarks
