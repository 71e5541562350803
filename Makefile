# agentfleet: the two commands that matter are `make demo` and `make test`.
.PHONY: demo test test-rust deploy-check bench build fmt lint e2e-observability

CARGO ?= cargo

demo:
	bash scripts/demo.sh

test: test-rust deploy-check

test-rust:
	$(CARGO) build --workspace --bins
	$(CARGO) test --workspace --no-fail-fast

deploy-check:
	@if [ -x deploy/check.sh ]; then bash deploy/check.sh; fi

build:
	$(CARGO) build --release --bins

fmt:
	$(CARGO) fmt --all

lint:
	$(CARGO) fmt --all -- --check
	$(CARGO) clippy --workspace --all-targets -- -D warnings
