# Medi-KUS developer entry points. `make demo` and `make test` each do all set-up first.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed-stamp

.PHONY: setup demo test lint typecheck imports pytest bench clean

setup: $(STAMP)

$(STAMP): pyproject.toml
	@./scripts/ensure-venv.sh "$(PYTHON)" "$(VENV)"
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -e '.[dev]'
	@touch $(STAMP)

demo: setup
	$(BIN)/medikus demo

lint: setup
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

typecheck: setup
	$(BIN)/mypy

imports: setup
	$(BIN)/lint-imports

pytest: setup
	$(BIN)/python -m pytest

test: lint typecheck imports pytest

# make bench [BENCH_ARGS="big --scale 10 --db postgresql"]; see python -m bench {,big,search} --help
bench: setup
	$(BIN)/python -m bench $(BENCH_ARGS)

clean:
	rm -rf $(VENV) .mypy_cache .ruff_cache .pytest_cache *.egg-info
