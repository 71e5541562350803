# agentfleet: the two commands that matter are `make demo` and `make test`.
.PHONY: demo test test-rust deploy-check bench build fmt lint e2e-observability

CARGO ?= cargo

demo:
	bash scripts/demo.sh

test: test-rust deploy-check

# Release profile: the end-to-end tests push 100,000 tasks through real workers, and one
# optimised build serves the tests, the demo and the benchmarks alike.
test-rust:
	$(CARGO) build --release --workspace --bins
	$(CARGO) test --release --workspace --no-fail-fast

deploy-check:
	@if [ -x deploy/check.sh ]; then bash deploy/check.sh; fi

build:
	$(CARGO) build --release --bins

fmt:
	$(CARGO) fmt --all

lint:
	$(CARGO) fmt --all -- --check
	$(CARGO) clippy --workspace --all-targets -- -D warnings
