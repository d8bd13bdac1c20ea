#!/usr/bin/env bash
# The main job end to end, on embedded defaults: builds everything, runs `source-mover demo`
# (a repository server on an ephemeral port, a VM disk built with real tools, full and CBT
# incremental backups, restores checked with e2fsck and byte comparison), then starts
# repo-server on its defaults (127.0.0.1:8080, ./repo-data, a generated admin token) and runs
# the README's curl walkthrough against it, exactly as the README shows it.
# `--keep` leaves that server running afterwards.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
. scripts/env.sh
cargo build --release --locked --workspace --all-targets
"$CARGO_TARGET_DIR/release/source-mover" demo
BIN="$CARGO_TARGET_DIR/release/repo-server"
if curl -s -o /dev/null http://127.0.0.1:8080/healthz; then
  echo "quickstart: something already answers on 127.0.0.1:8080; stop it first" >&2; exit 1
fi
"$BIN" > repo-server.out 2> repo-server.log &
PID=$!
trap '[ "${KEEP:-}" = 1 ] || kill $PID 2>/dev/null' EXIT
for _ in $(seq 100); do curl -s -o /dev/null http://127.0.0.1:8080/healthz && break; sleep 0.1; done
echo "repo-server running (pid $PID); log in repo-server.log"
[ "${1:-}" = "--keep" ] && KEEP=1
# The walkthrough is the README's own code block, run as written.
WALK=$(mktemp)
sed -n '/<!-- walkthrough:start -->/,/<!-- walkthrough:end -->/p' README.md | sed '1,2d;$d' | sed '$d' > "$WALK"
(set -x && . "$WALK")
echo "quickstart: walkthrough finished without error"
