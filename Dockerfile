# Temporal codec server image. Two stages:
#   build   - installs pip (requirements/pip.lock), then the runtime and the build tools
#             (requirements/build.lock: the runtime lock plus grpcio-tools and setuptools), every file
#             checked against its hash; generates the protobuf code (the same protoc command as
#             `make proto`); downloads the wheels of the runtime lock, hash-checked, and builds the
#             package's wheel offline.
#   runtime - python:3.11-slim plus those wheels only, installed again with --require-hashes: no
#             compilers, no protoc, no dev packages.
# Runs as a numeric non-root user, writes nothing outside /tmp (read-only root filesystem works).
# Build: docker build -t temporal-codec:dev .
# Needs BuildKit (the default builder since Docker 23; DOCKER_BUILDKIT=1 on 20.10) for RUN --mount,
# and no image but the base: no `# syntax=` line, whose frontend image would be pulled from Docker Hub.
# PYTHON_IMAGE: the base, pinned by digest (a tag moves, a digest names the same bytes forever): the
# multi-platform index of python:3.11-slim (Python 3.11.16, Debian trixie; pushed 2026-08-16) as
# public code records it (Dockerfiles pinned to it, a BuildKit log resolving
# docker.io/library/python:3.11-slim@sha256:9c900dea…, an image-pin inventory naming it the index of
# python:3.11-slim-trixie); no registry was reachable to re-check it where this line was written.
# To update it (docs/operations.md#the-base-images-digest): `crane digest python:3.11-slim` or
# `docker buildx imagetools inspect python:3.11-slim`, then the digest below. A mirror keeps the digest:
#   docker build --build-arg PYTHON_IMAGE=registry.example.com/library/python:3.11-slim@sha256:<digest> .
ARG PYTHON_IMAGE=python:3.11-slim@sha256:9c900dea9e8fb7e16277c179b555cc72d29a352dbc33cff48ad5a0412fd5bfc7

FROM ${PYTHON_IMAGE} AS build
ENV PIP_NO_CACHE_DIR=1 PIP_DISABLE_PIP_VERSION_CHECK=1
WORKDIR /src
COPY requirements/pip.lock requirements/runtime.lock requirements/build.lock requirements/
RUN python -m venv .venv && .venv/bin/pip install --quiet --require-hashes -r requirements/pip.lock && .venv/bin/pip install --quiet --require-hashes -r requirements/build.lock
COPY pyproject.toml ./
COPY protos protos
COPY codec_grpc codec_grpc
COPY server.py README.md ./
RUN .venv/bin/python -m grpc_tools.protoc -Iprotos --python_out=. --pyi_out=. --grpc_python_out=. $(find protos -name '*.proto')
# Wheels of pip and of the runtime dependencies at the versions and hashes the locks pin (every one
# ships a wheel for linux/amd64 and linux/arm64, so these are the files PyPI serves, hashes intact),
# then the package's own wheel, built offline with build.lock's setuptools and no dependencies.
RUN .venv/bin/pip wheel --quiet --require-hashes --wheel-dir /wheels -r requirements/pip.lock -r requirements/runtime.lock \
    && .venv/bin/pip wheel --quiet --no-deps --no-build-isolation --wheel-dir /wheels .

FROM ${PYTHON_IMAGE} AS runtime
# No .pyc writes at run time (pip compiles them at install); logs unbuffered; HOME for botocore's ~/.aws.
ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    HOME=/tmp
# Offline, from the build stage's wheels: pip first, then the runtime lock (hashes checked again), then
# the package alone; `pip check` proves the lock gave it every dependency it declares.
RUN --mount=type=bind,from=build,source=/wheels,target=/wheels \
    --mount=type=bind,from=build,source=/src/requirements,target=/requirements \
    pip install --no-index --find-links /wheels --require-hashes -r /requirements/pip.lock \
    && pip install --no-index --find-links /wheels --require-hashes -r /requirements/runtime.lock \
    && pip install --no-index --find-links /wheels --no-deps temporal-codec-grpc \
    && pip check
# A container is reached through its interfaces, not its loopback: listen on all of them. The server
# then refuses to start (exit 2, naming the fix) until callers are authenticated (AUTH_JWKS_URL,
# TLS_CLIENT_CA_FILE) or ALLOW_UNAUTHENTICATED=true says otherwise, loudly (docs/security.md).
ENV GRPC_HOST=0.0.0.0 \
    GATEWAY_HOST=0.0.0.0 \
    METRICS_HOST=0.0.0.0
# Buffers over 128 KiB (a large request's copies) go back to the system when freed, instead of
# staying in glibc's heap: the peak for one 16 MiB request falls from 180 to 151 MiB (bench/bombs.py),
# inside the chart's 192 MiB limit with room to spare.
ENV MALLOC_MMAP_THRESHOLD_=131072
USER 10001:10001
WORKDIR /tmp
# gRPC, HTTP gateway, Prometheus metrics
EXPOSE 50051 8081 9464
CMD ["codec-server"]
