# Everyday commands. `make demo` and `make test` are the two on the README's first screen.
.PHONY: demo local-demo test lint fmt build bench tools

demo:            ## the system on a local Kubernetes control plane
	scripts/demo.sh

local-demo:      ## sidecars and agents only, no cluster
	scripts/local-demo.sh

test: tools lint ## everything CI runs
	cargo test --workspace --all-targets

lint:
	cargo fmt --all -- --check
	cargo clippy --workspace --all-targets -- -D warnings

fmt:
	cargo fmt --all

build:
	cargo build --workspace --release

bench:           ## ballast-sidecar vs HAProxy, figures printed
	scripts/bench-proxies.sh

tools:           ## what the tests need beyond cargo, installed if missing
	scripts/ensure-tools.sh
