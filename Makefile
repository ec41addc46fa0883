# Everything a newcomer needs: `make run` serves, `make test` tests; both install first.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
PROTOS := $(shell find protos -name '*.proto')
STAMP := $(VENV)/.installed
# The TypeScript worker codec: its node tests run under pytest, so install installs it when npm exists.
TS_CLIENT := clients/typescript
TS_STAMP := $(if $(shell command -v npm 2>/dev/null),$(TS_CLIENT)/node_modules/.installed)

.PHONY: install proto run test lint format clean bench bench-instructions bench-workers fuzz soak

install: $(STAMP) proto $(TS_STAMP)

# Pinned dependencies (requirements.lock), then this package in editable mode.
$(STAMP): requirements.lock pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -r requirements.lock
	$(BIN)/pip install --quiet --no-deps -e .
	touch $@

$(TS_CLIENT)/node_modules/.installed: $(TS_CLIENT)/package-lock.json $(TS_CLIENT)/package.json
	npm ci --prefix $(TS_CLIENT)
	touch $@

# Generated code lives next to the package and is never committed or edited.
proto: $(STAMP)
	$(BIN)/python -m grpc_tools.protoc -Iprotos --python_out=. --pyi_out=. --grpc_python_out=. $(PROTOS)

run: install
	DEV_KMS=$${DEV_KMS:-auto} $(BIN)/python server.py

test: install
	$(BIN)/pytest

# A tool, not a test: BENCHMARKS.md records runs. BENCH_ARGS="--only gateway" runs one section.
bench: install
	$(BIN)/python -m tests.bench.run $(BENCH_ARGS)

# Instructions per call under valgrind (tests/bench/instructions.py): repeatable where CPU time is noisy.
bench-instructions: install
	$(BIN)/python -m tests.bench.instructions $(BENCH_ARGS)

# The property and fuzz tests with many more examples than `make test` gives them; ends by itself.
FUZZ_EXAMPLES ?= 3000
fuzz: install
	FUZZ_EXAMPLES=$(FUZZ_EXAMPLES) $(BIN)/pytest -m fuzz --timeout 3600 --hypothesis-show-statistics

# A bounded mixed load against server.py and its gateway (tests/bench/soak.py); non-zero exit on any
# error, mismatch or memory growth. SOAK_SECONDS sets the duration.
SOAK_SECONDS ?= 120
soak: install
	$(BIN)/python -m tests.bench.soak --seconds $(SOAK_SECONDS)

# WORKERS=1 against WORKERS=2 under the same load (BENCHMARKS.md, "Scaling out").
bench-workers: install
	$(BIN)/python -m tests.bench.scaling $(BENCH_ARGS)

lint: install
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/mypy

format: install
	$(BIN)/ruff format .
	$(BIN)/ruff check --fix .

clean:
	rm -rf $(VENV) build *.egg-info codec_grpc/v1/*_pb2*.py codec_grpc/v1/*_pb2.pyi
	rm -rf $(TS_CLIENT)/node_modules $(TS_CLIENT)/build $(TS_CLIENT)/dist $(TS_CLIENT)/protos
