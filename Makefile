# Everything a newcomer needs: `make run` serves, `make test` tests; both install first.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
PROTOS := $(shell find protos -name '*.proto')
STAMP := $(VENV)/.installed
# The Python worker codec, its own distribution: built from its sources and protos/, into this venv.
PY_CLIENT := clients/python
PY_CLIENT_STAMP := $(VENV)/.client-installed
PY_CLIENT_SOURCES := $(shell find $(PY_CLIENT)/temporal_codec_client -name '*.py' -not -name '*_pb2.py') \
	$(PY_CLIENT)/setup.py $(PY_CLIENT)/pyproject.toml
# The TypeScript worker codec: its node tests run under pytest, so install installs it when npm exists.
TS_CLIENT := clients/typescript
TS_STAMP := $(if $(shell command -v npm 2>/dev/null),$(TS_CLIENT)/node_modules/.installed)

.PHONY: install lock proto run test test-unit lint docs format clean bench bench-instructions bench-workers fuzz soak

install: $(STAMP) proto $(PY_CLIENT_STAMP) $(TS_STAMP)

# Hashed locks (requirements/, docs/development.md#dependencies): pip itself, then every package the
# tests, lint and benchmarks need (dev.lock: complete, every file checked against its hash), then this
# package in editable mode.
$(STAMP): requirements/pip.lock requirements/dev.lock pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --require-hashes -r requirements/pip.lock
	$(BIN)/pip install --quiet --require-hashes -r requirements/dev.lock
	$(BIN)/pip install --quiet --no-deps -e .
	touch $@

# Recompiles requirements/*.lock from requirements/*.in with uv (pinned in dev.lock): run it after
# changing a .in file or pyproject.toml's dependencies. Pins that still fit stay where they are;
# LOCK_ARGS=--upgrade moves every pin to the newest release, LOCK_ARGS="--upgrade-package boto3" one.
# Each lock is constrained by the one it extends, so runtime ⊂ build ⊂ dev at the same versions.
UV_COMPILE = $(abspath $(BIN))/uv pip compile --quiet --generate-hashes --universal --python-version 3.11 \
	--custom-compile-command 'make lock' $(LOCK_ARGS)
lock: $(STAMP)
	cd requirements && $(UV_COMPILE) pip.in -o pip.lock
	cd requirements && $(UV_COMPILE) runtime.in -o runtime.lock
	cd requirements && $(UV_COMPILE) build.in -c runtime.lock -o build.lock
	cd requirements && $(UV_COMPILE) dev.in -c build.lock -o dev.lock

# Not editable: its build generates its protobuf code. Rebuilt when a proto changes, so that the
# server's and the client's generated code always describe the same messages (one descriptor pool).
$(PY_CLIENT_STAMP): $(STAMP) $(PROTOS) $(PY_CLIENT_SOURCES)
	$(BIN)/pip install --quiet --no-deps --no-build-isolation --force-reinstall ./$(PY_CLIENT)
	rm -rf $(PY_CLIENT)/build $(PY_CLIENT)/*.egg-info
	touch $@

$(TS_CLIENT)/node_modules/.installed: $(TS_CLIENT)/package-lock.json $(TS_CLIENT)/package.json
	npm ci --prefix $(TS_CLIENT)
	touch $@

# Generated code lives next to the package and is never committed or edited.
proto: $(STAMP)
	$(BIN)/python -m grpc_tools.protoc -Iprotos --python_out=. --pyi_out=. --grpc_python_out=. $(PROTOS)

run: install
	DEV_KMS=$${DEV_KMS:-auto} $(BIN)/python server.py

# Every tier: tests/unit, tests/integration, tests/system, tests/docs, and the Python client's tests.
test: install
	$(BIN)/pytest

# The inner loop: pure unit tests, no servers, a few seconds.
test-unit: install
	$(BIN)/pytest tests/unit

lint: install
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/mypy
	cd $(PY_CLIENT) && ../../$(BIN)/mypy
	$(BIN)/lint-imports

# Rewrites the generated sections of docs/ from the code (tests/docs fails when they are stale).
docs: install
	$(BIN)/python docs/generate.py

format: install
	$(BIN)/ruff format .
	$(BIN)/ruff check --fix .

clean:
	rm -rf $(VENV) build *.egg-info codec_grpc/v1/*_pb2*.py codec_grpc/v1/*_pb2.pyi
	rm -rf $(PY_CLIENT)/build $(PY_CLIENT)/*.egg-info $(PY_CLIENT)/temporal_codec_client/v1/*_pb2.py*
	rm -rf $(TS_CLIENT)/node_modules $(TS_CLIENT)/build $(TS_CLIENT)/dist $(TS_CLIENT)/protos

# A tool, not a test: docs/benchmarks.md records runs. BENCH_ARGS="--only gateway" runs one section.
# Speed (bench.run: gRPC and the gateway against their echo and sample servers), then memory (bench.bombs:
# server.py's peak for the worst bodies against the chart's limits). BOMBS_ARGS=--sidecar adds the gateway.
bench: install
	$(BIN)/python -m bench.run $(BENCH_ARGS)
	$(BIN)/python -m bench.bombs $(BOMBS_ARGS)

# Instructions per call under valgrind (bench/instructions.py): repeatable where CPU time is noisy.
bench-instructions: install
	$(BIN)/python -m bench.instructions $(BENCH_ARGS)

# The property and fuzz tests with many more examples than `make test` gives them; ends by itself.
FUZZ_EXAMPLES ?= 3000
fuzz: install
	FUZZ_EXAMPLES=$(FUZZ_EXAMPLES) $(BIN)/pytest -m fuzz --timeout 3600 --hypothesis-show-statistics

# A bounded mixed load against server.py and its gateway (bench/soak.py); non-zero exit on any
# error, mismatch or memory growth. SOAK_SECONDS sets the duration.
SOAK_SECONDS ?= 120
soak: install
	$(BIN)/python -m bench.soak --seconds $(SOAK_SECONDS)

# WORKERS=1 against WORKERS=2 under the same load (docs/benchmarks.md, "Scaling out").
bench-workers: install
	$(BIN)/python -m bench.scaling $(BENCH_ARGS)
