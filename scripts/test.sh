#!/usr/bin/env bash
# The whole test suite: set-up, one release build (RocksDB compiles once per profile, so
# everything, tests included, uses the release profile), then every unit and integration test
# of the workspace, and a closing line with the totals.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
. scripts/env.sh
cargo build --release --locked --workspace --all-targets
LOG=$(mktemp)
trap 'rm -f "$LOG"' EXIT
status=0
cargo test --release --locked --workspace --lib --bins --tests 2>&1 | tee "$LOG" || status=$?
# The repository suite again with every test server's data on a real Samba share through the
# gateway's SMB store (TEST_STORE=smb; the catalog stays local): the conformance run of the
# gateway against every endpoint and error code.
TEST_STORE=smb cargo test --release --locked -p tests --test it -- \
  protocol:: hostile:: tenancy:: catalog:: retention:: limits:: concurrency:: lifecycle:: \
  mover:: tls:: wan:: nbd_export:: 2>&1 | sed 's/^\(test .*\)$/\1 [smb store]/' | tee -a "$LOG" || status=$?
passed=$(sed -n 's/^test result: .* \([0-9]*\) passed; \([0-9]*\) failed.*/\1/p' "$LOG" | paste -sd+ | bc)
failed=$(sed -n 's/^test result: .* \([0-9]*\) passed; \([0-9]*\) failed.*/\2/p' "$LOG" | paste -sd+ | bc)
echo
echo "all tests: ${passed:-0} passed, ${failed:-0} failed"
exit $status
