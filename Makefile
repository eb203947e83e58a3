# Medi-KUS developer entry points. `make demo` and `make test` each do all set-up first.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed-stamp

.PHONY: setup frontend-test demo test lint typecheck imports security audit sbom pytest bench clean

# The web apps (frontend/, Vite): built into frontend/dist when the lock file exists. npm ci runs
# again only when the lock file changes; the build when a source changes.
FRONTEND_CI_STAMP := frontend/node_modules/.ci-stamp
FRONTEND_STAMP := frontend/dist/.build-stamp
FRONTEND_SOURCES := frontend/package.json frontend/tsconfig.json frontend/vite.config.ts \
	$(wildcard frontend/*.html) $(shell find frontend/src -type f 2>/dev/null)

setup: $(STAMP) $(if $(wildcard frontend/package-lock.json),$(FRONTEND_STAMP))

$(FRONTEND_CI_STAMP): frontend/package-lock.json
	@command -v npm >/dev/null || { echo "npm is missing: run 'sudo apt-get install nodejs npm' (Node >= 20.19) and try again." >&2; exit 1; }
	npm ci --prefix frontend --no-audit --no-fund --loglevel=error
	@touch $@

$(FRONTEND_STAMP): $(FRONTEND_CI_STAMP) $(FRONTEND_SOURCES)
	npm run build --prefix frontend
	@touch $@

# Unit tests of the web apps' pure logic (vitest).
frontend-test: $(FRONTEND_CI_STAMP)
	npm test --prefix frontend

$(STAMP): pyproject.toml
	@./scripts/ensure-debian-packages.sh
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

# Known vulnerabilities in the installed dependencies (pip-audit, OSV by default). Fails on a
# finding or an unaudited package; an unreachable service only warns, loudly (see the script).
audit: setup
	$(BIN)/python scripts/audit_dependencies.py

# CycloneDX SBOM of what `pip install .` ships (no dev tools), from a fresh environment (~2 min).
SBOM_VENV := build/sbom-venv
sbom: setup
	rm -rf $(SBOM_VENV)
	@./scripts/ensure-venv.sh "$(PYTHON)" "$(SBOM_VENV)"
	$(SBOM_VENV)/bin/pip install --quiet .
	$(BIN)/cyclonedx-py environment --pyproject pyproject.toml --output-reproducible \
		-o build/sbom.cdx.json $(SBOM_VENV)
	@echo "SBOM: build/sbom.cdx.json"

pytest: setup
	$(BIN)/python -m pytest

test: lint typecheck imports security audit frontend-test pytest

# make bench [BENCH_ARGS="big --scale 10 --db postgresql"]; see python -m bench {,big,search} --help
bench: setup
	$(BIN)/python -m bench $(BENCH_ARGS)

clean:
	rm -rf $(VENV) build .mypy_cache .ruff_cache .pytest_cache *.egg-info frontend/dist frontend/node_modules
