#!/usr/bin/env bash
# The whole test suite: set-up, one release build (RocksDB compiles once per profile, so
# everything, tests included, uses the release profile), then every test of the workspace.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
. scripts/env.sh
cargo build --release --locked --workspace --all-targets
cargo test --release --locked --workspace
