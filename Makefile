# The two commands the README gives. Both do all set-up first (scripts/setup.sh is idempotent).
.PHONY: setup demo test test-unit lint
PYTEST_ARGS ?=

setup:
	./scripts/setup.sh

demo: setup
	.venv/bin/millrace demo $(DEMO_ARGS)

# Lint first (ruff check, ruff format --check, mypy), then every test.
test: setup lint
	.venv/bin/python -m pytest $(PYTEST_ARGS)

test-unit: setup
	.venv/bin/python -m pytest tests/unit $(PYTEST_ARGS)

LINT_PATHS = src tests benchmarks examples

lint: setup
	.venv/bin/ruff check $(LINT_PATHS)
	.venv/bin/ruff format --check $(LINT_PATHS)
	.venv/bin/mypy src/millrace
