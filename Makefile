# Everyday commands. `make demo` and `make test` are the two on the README's first screen.
.PHONY: demo local-demo test soak lint fmt build images test-images bench bench-reports bench-rotations bench-sim simulate tools

demo:            ## the system on a local Kubernetes control plane
	scripts/demo.sh

local-demo:      ## sidecars and agents only, no cluster
	scripts/local-demo.sh

# Property tests draw their cases from this seed, so that a run is reproducible (set
# PROPTEST_RNG_SEED to draw others); `make soak` draws many more from random seeds.
PROPTEST_RNG_SEED ?= 1124
export PROPTEST_RNG_SEED

test: tools lint ## everything CI runs
	cargo test --workspace --all-targets

soak:            ## the planner's properties on 2,000 random cases each
	env -u PROPTEST_RNG_SEED PROPTEST_CASES=2000 cargo test --release -p ballast-planner --test properties

lint:
	cargo fmt --all -- --check
	cargo clippy --workspace --all-targets -- -D warnings

fmt:
	cargo fmt --all

build:
	cargo build --workspace --release

images:          ## OCI images of the operator, the sidecar and the sample gateway in target/images (podman, no daemon)
	cargo build --release -p ballast-operator -p ballast-sidecar -p ballast-fleet
	scripts/images.sh

test-images: images ## the images checked: user 65532, entrypoint, labels, no shell, each binary run inside its root filesystem
	scripts/check-images.sh

bench:           ## ballast-sidecar vs HAProxy vs nginx, figures printed
	scripts/bench-proxies.sh

bench-reports:   ## one operator under 1,000 reporting sidecars: RSS, CPU, p99 report → answer
	scripts/bench-reports.sh

bench-rotations: tools ## a renewal 3 ways (Reloader, plain rolling, Ballast) on 3 pods and 3,000 agents, simulator beside: one table
	cargo test -p ballast-e2e --test rotations -- --ignored --exact benchmark_restarts_reloader_plain_rolling_and_ballast --nocapture

bench-sim:       ## the simulator at 1,000,000 agents: wall time and peak memory printed
	scripts/bench-simulator.sh

simulate:        ## the incident replayed, every strategy side by side, plots in target/simulate
	cargo run --release -q -p ballast-fleet -- simulate --scenario incident --plot target/simulate

tools:           ## what the tests need beyond cargo, installed if missing
	scripts/ensure-tools.sh
