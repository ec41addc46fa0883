# Temporal codec server image. Two stages:
#   build   - installs the pinned toolchain (requirements.lock, as `make install` does), generates the
#             protobuf code (the same protoc command as `make proto`) and builds wheels of the package
#             and its runtime dependencies, pinned by requirements.lock.
#   runtime - python:3.11-slim plus those wheels only: no compilers, no protoc, no dev packages.
# Runs as a numeric non-root user, writes nothing outside /tmp (read-only root filesystem works).
# Build: docker build -t temporal-codec:dev .
# Needs BuildKit (the default builder since Docker 23; DOCKER_BUILDKIT=1 on 20.10) for RUN --mount,
# and no image but the base: no `# syntax=` line, whose frontend image would be pulled from Docker Hub.
# PYTHON_IMAGE: the same base from a mirror or internal registry, e.g.
#   docker build --build-arg PYTHON_IMAGE=registry.example.com/library/python:3.11-slim .
ARG PYTHON_IMAGE=python:3.11-slim

FROM ${PYTHON_IMAGE} AS build
ENV PIP_NO_CACHE_DIR=1 PIP_DISABLE_PIP_VERSION_CHECK=1
WORKDIR /src
COPY requirements.lock pyproject.toml ./
RUN python -m venv .venv && .venv/bin/pip install --quiet --upgrade pip && .venv/bin/pip install --quiet -r requirements.lock
COPY protos protos
COPY codec_grpc codec_grpc
COPY server.py README.md ./
RUN .venv/bin/python -m grpc_tools.protoc -Iprotos --python_out=. --pyi_out=. --grpc_python_out=. $(find protos -name '*.proto')
# The package's wheel, then wheels of its runtime dependencies at the versions requirements.lock pins.
RUN .venv/bin/pip wheel --wheel-dir /wheels --constraint requirements.lock .

FROM ${PYTHON_IMAGE} AS runtime
# No .pyc writes at run time (pip compiles them at install); logs unbuffered; HOME for botocore's ~/.aws.
ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    HOME=/tmp
RUN --mount=type=bind,from=build,source=/wheels,target=/wheels \
    pip install --no-index --find-links /wheels temporal-codec-grpc
# A container is reached through its interfaces, not its loopback: listen on all of them. The server
# then refuses to start (exit 2, naming the fix) until callers are authenticated (AUTH_JWKS_URL,
# TLS_CLIENT_CA_FILE) or ALLOW_UNAUTHENTICATED=true says otherwise, loudly (docs/security.md).
ENV GRPC_HOST=0.0.0.0 \
    GATEWAY_HOST=0.0.0.0 \
    METRICS_HOST=0.0.0.0
USER 10001:10001
WORKDIR /tmp
# gRPC, HTTP gateway, Prometheus metrics
EXPOSE 50051 8081 9464
CMD ["codec-server"]
