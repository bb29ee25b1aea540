# syntax=docker/dockerfile:1
# dedup-worker image: a Debian 12 build stage and a slim runtime stage with only the shared
# libraries the binary links against. Both package lists mirror scripts/setup (BUILD_PACKAGES and
# RUNTIME_PACKAGES); tests/helm/test_dockerfile.py fails when they drift apart.
#
#   docker build -t dedup-worker:0.1.0 .
#   docker run --rm dedup-worker:0.1.0 --help

FROM debian:12 AS build
ARG DEBIAN_FRONTEND=noninteractive
RUN apt-get update \
 && apt-get install -y --no-install-recommends \
      build-essential cmake ninja-build pkg-config git \
      librdkafka-dev libpqxx-dev libpq-dev libssl-dev \
      libspdlog-dev libfmt-dev prometheus-cpp-dev \
      nlohmann-json3-dev libyaml-cpp-dev libcli11-dev libcivetweb-dev \
      libgtest-dev libgmock-dev \
 && rm -rf /var/lib/apt/lists/*
WORKDIR /src
COPY . .
# The release preset, without the test suites and benchmarks (they run in CI, not in the image).
RUN cmake --preset release -DDEDUP_BUILD_TESTS=OFF -DDEDUP_BUILD_BENCH=OFF \
 && cmake --build --preset release --target dedup-worker \
 && install -m 0755 -s build/release/worker/dedup-worker /usr/local/bin/dedup-worker

FROM debian:12-slim AS runtime
ARG DEBIAN_FRONTEND=noninteractive
RUN apt-get update \
 && apt-get install -y --no-install-recommends \
      librdkafka1 libpqxx-6.4 libpq5 libssl3 libspdlog1.10 libfmt9 \
      libprometheus-cpp-core1.0 libcivetweb1 libyaml-cpp0.7 ca-certificates \
 && rm -rf /var/lib/apt/lists/*
# A fixed non-root uid/gid (the chart's podSecurityContext uses 10001), no home, no shell.
RUN groupadd --system --gid 10001 dedup \
 && useradd --system --uid 10001 --gid 10001 --no-create-home --home-dir /nonexistent \
      --shell /usr/sbin/nologin dedup
COPY --from=build /usr/local/bin/dedup-worker /usr/local/bin/dedup-worker
# Read-only-root friendly: the worker writes nothing but temporary files, under /tmp.
ENV TMPDIR=/tmp
WORKDIR /tmp
USER 10001:10001
# Metrics, /healthz and /readyz (--metrics-addr).
EXPOSE 9464
ENTRYPOINT ["dedup-worker"]
CMD ["run"]
