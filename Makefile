# Medi-KUS developer entry points. `make demo` and `make test` each do all set-up first.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed-stamp

.PHONY: setup demo test lint typecheck imports security pytest bench clean

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

# Static security analysis (BSI TR-03161 O.Source_9); settings and reviewed exceptions in
# pyproject.toml [tool.bandit] and `# nosec <id> # reason` at the line. Bandit warns
# "nosec encountered ... but no failed test" for every sub-expression of a justified line
# (PyCQA/bandit#942, #1041): that false warning alone is dropped, the exit status is bandit's.
SECURITY_SCAN := fhir_server compliance medikus devices video care_network
security: setup
	@log=$$(mktemp); $(BIN)/bandit -q -c pyproject.toml -r $(SECURITY_SCAN) 2>"$$log"; \
	status=$$?; grep -v 'nosec encountered' "$$log" >&2; rm -f "$$log"; exit $$status

pytest: setup
	$(BIN)/python -m pytest

test: lint typecheck imports security pytest

# make bench [BENCH_ARGS="big --scale 10 --db postgresql"]; see python -m bench {,big,search} --help
bench: setup
	$(BIN)/python -m bench $(BENCH_ARGS)

clean:
	rm -rf $(VENV) .mypy_cache .ruff_cache .pytest_cache *.egg-info
