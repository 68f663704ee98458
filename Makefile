# dme: the two commands a newcomer needs.
#   make run   set up, build (release) and run the whole system with the embedded model
#   make test  set up, then run every test against a real nats-server and ONNX Runtime
SHELL := /bin/bash
.SHELLFLAGS := -eu -o pipefail -c
ENV = eval "$$(scripts/setup.sh)"

.PHONY: run test setup build lint fmt

setup:
	@scripts/setup.sh >/dev/null

build:
	cargo build --release --bin dme

run: setup build
	@$(ENV); echo "dme: starting; the web API will be at http://$${DME_HTTP_ADDR:-127.0.0.1:8080}/"; \
	exec target/release/dme up

test: setup
	@$(ENV); cargo test --workspace --no-fail-fast 2>&1

lint:
	cargo fmt --all -- --check
	cargo clippy --workspace --all-targets -- -D warnings

fmt:
	cargo fmt --all
