#!/usr/bin/env bash
# The simulator at a million agents: `ballast-fleet simulate --scenario incident` with
# 1,000,000 agents on 50 pods, every strategy, in a release build. Prints the table, then the
# wall time and peak memory of the whole run (goal: under 60 s and under 1 GiB on 2 cores).
set -euo pipefail
cd "$(dirname "$0")/.."
echo "[bench-sim] building ballast-fleet (release)…" >&2
cargo build --release -p ballast-fleet --quiet
echo "[bench-sim] $(nproc) cores; running the incident with 1,000,000 agents on 50 pods…" >&2
target/release/ballast-fleet simulate --scenario incident --agents 1000000 --pods 50 "$@"
