# agentfleet: the two commands that matter are `make demo` and `make test`.
.PHONY: demo test prerequisites test-rust test-cluster cluster-start cluster-stop build-tests deploy-check e2e-observability bench bench-quick bench-cluster build fmt lint

CARGO ?= cargo

demo:
	bash scripts/demo.sh

test: prerequisites test-rust test-cluster deploy-check e2e-observability

# A Redis at REDIS_URL (started if none answers) and the deployment tools (helm, promtool,
# kubernetes-validate, docker-compose) and the inspector test's chromium and chromedriver,
# installed once; both are quick when already there.
prerequisites:
	bash scripts/ensure-redis.sh
	bash scripts/redis-cluster.sh start
	bash .ci/install-deploy-tools.sh

# Release profile: the end-to-end tests push 100,000 tasks through real workers. The tests'
# binaries carry fail points (fault injection no outside event can cause, off unless the
# FAILPOINTS variable names one); `build` makes the binaries that ship, without them.
TEST_FEATURES = --features agentfleet-runtime/failpoints

build-tests:
	$(CARGO) build --release --workspace --bins $(TEST_FEATURES)

test-rust: build-tests
	$(CARGO) test --release --workspace --no-fail-fast $(TEST_FEATURES)

# The queue tests' same bodies again, on the local Redis Cluster (scripts/redis-cluster.sh;
# the cluster's own tests, tests/tests/cluster.rs, run in test-rust).
test-cluster: build-tests
	AGENTFLEET_TEST_REDIS_CLUSTER=$$(bash scripts/redis-cluster.sh seeds) \
		$(CARGO) test --release --workspace $(TEST_FEATURES) --test queue

# A local Redis Cluster: three masters, one replica each, on 127.0.0.1:7000-7005.
cluster-start:
	bash scripts/redis-cluster.sh start

cluster-stop:
	bash scripts/redis-cluster.sh stop

# Helm, compose, Prometheus and Grafana files, validated without a cluster or Docker engine
# (tools from .ci/install-deploy-tools.sh).
deploy-check:
	bash deploy/check.sh

# A real Prometheus scrapes a fleet under load; every dashboard query must return data.
e2e-observability: build-tests
	python3 scripts/e2e_observability.py

# The figures of BENCHMARKS.md (a few minutes); bench-quick proves every scenario runs.
bench: build
	target/release/agentfleet bench

# CI only proves every scenario runs: it may reuse the tests' build (BENCH_BUILD=build-tests,
# fail points compiled in but off) instead of building the shipping binaries again.
BENCH_BUILD ?= build

bench-quick: $(BENCH_BUILD)
	target/release/agentfleet bench --quick
	bash scripts/redis-cluster.sh start
	REDIS_URL=$$(bash scripts/redis-cluster.sh seeds) AGENTFLEET_REDIS_CLUSTER=true \
		target/release/agentfleet bench --cluster --quick

# The Redis Cluster figures of BENCHMARKS.md (one role drained with 1 and 3 shards), on the
# local cluster of scripts/redis-cluster.sh.
bench-cluster: build
	bash scripts/redis-cluster.sh start
	REDIS_URL=$$(bash scripts/redis-cluster.sh seeds) AGENTFLEET_REDIS_CLUSTER=true \
		target/release/agentfleet bench --cluster

build:
	$(CARGO) build --release --bins

fmt:
	$(CARGO) fmt --all

lint:
	$(CARGO) fmt --all -- --check
	$(CARGO) clippy --workspace --all-targets -- -D warnings
