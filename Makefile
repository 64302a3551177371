# The two entry points of the project. Both install what a new Debian 12 machine lacks first.
#   make run   - build and start a whole local grid (chain, node, image hub, a deployed VM)
#   make test  - run every test (unit, pallet, real-node end to end)
SHELL := /bin/bash
ENV := source scripts/env.sh
CARGO := $(ENV) && cargo

.PHONY: run chain test setup build node fmt clippy chain-specs

setup:
	@bash scripts/setup-toolchain.sh

build: setup
	@$(CARGO) build --profile $${CARGO_PROFILE:-ci} --workspace --bins

# The local grid builds every binary it needs itself (cargo build --workspace --bins).
run: setup
	@$(ENV) && bash scripts/run-local-grid.sh $(ARGS)

# A bare single-validator development chain on 127.0.0.1.
chain: build
	@$(ENV) && bash scripts/run-dev-chain.sh

test: setup
	@$(ENV) && bash scripts/test.sh

chain-specs: build
	@$(ENV) && bash chain-spec/build.sh

fmt:
	@cargo fmt --all

clippy: setup
	@$(CARGO) clippy --profile $${CARGO_PROFILE:-ci} --workspace --all-targets
