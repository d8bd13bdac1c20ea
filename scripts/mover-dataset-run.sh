#!/usr/bin/env bash
# Full backup, CBT incremental and restore of a dataset from ../shared/bench/make-dataset.sh,
# through a fresh repo-server on loopback, reporting wall and CPU seconds, peak RSS and bytes.
# Usage: scripts/mover-dataset-run.sh DATASET_DIR [WORK_DIR]
set -euo pipefail
cd "$(dirname "$0")/.."
. scripts/env.sh
DS=$(realpath "${1:?dataset dir (disk.raw, disk2.raw, cbt.json)}")
WORK=${2:-$(mktemp -d /var/tmp/mover-run.XXXX)}
cargo build --release --locked --workspace -q
BIN=$CARGO_TARGET_DIR/release
rm -rf "$WORK/repo" "$WORK/state" "$WORK/restored.raw"; mkdir -p "$WORK"
"$BIN/repo-server" --listen 127.0.0.1:0 --data "$WORK/repo" > "$WORK/server.out" 2> "$WORK/server.log" &
SPID=$!
trap 'kill $SPID 2>/dev/null' EXIT
for _ in $(seq 100); do grep -q listening "$WORK/server.out" 2>/dev/null && break; sleep 0.1; done
R="http://$(sed -n 's/^listening on //p' "$WORK/server.out")"
T="$WORK/repo/admin.token"
cpu() { awk '{print ($14+$15)/100}' /proc/$SPID/stat; }
step() {
  local name=$1; shift
  local c0; c0=$(cpu)
  /usr/bin/time -f "%e %U %S %M" -o "$WORK/time" "$@" > "$WORK/$name.json"
  read -r wall user sys rss < "$WORK/time"
  local c1; c1=$(cpu)
  printf '| %s | %s | %.2f | %.2f | %d | %s |\n' "$name" "$wall" "$(echo "$user + $sys" | bc)" "$(echo "$c1 - $c0" | bc)" "$((rss / 1024))" \
    "$(jq -r '[ (if .read_bytes then "read \(.read_bytes/1e6|floor) MB" else empty end), (if .sent_bytes then "sent \(.sent_bytes/1e6|floor) MB" else empty end), (if .stored_bytes then "stored \(.stored_bytes/1e6|floor) MB" else empty end), (if .written_bytes then "written \(.written_bytes/1e6|floor) MB" else empty end), (if .skipped_bytes then "skipped " + ([.skipped_bytes|to_entries[]|select(.value>0)|"\(.key) \(.value/1e6|floor) MB"]|join(", ")) else empty end)] | join("; ")' "$WORK/$name.json")"
}
echo "dataset: $DS ($(du -h --apparent-size "$DS/disk.raw" | cut -f1) apparent, $(du -h "$DS/disk.raw" | cut -f1) allocated); $(nproc) cores"
echo
echo "| step | wall s | mover CPU s | server CPU s | mover peak RSS MiB | bytes |"
echo "|---|---|---|---|---|---|"
M=(--repo "$R" --token-file "$T" --source vm-bench --state-dir "$WORK/state" --json)
step full "$BIN/source-mover" backup "${M[@]}" --disk "disk0=$DS/disk.raw" --base none
# The dataset's list has no base (make-dataset.sh cannot know the backup id): it counts from the full.
jq --arg b "$(jq -r .backup_id "$WORK/full.json")" '. + {base: $b}' "$DS/cbt.json" > "$WORK/cbt.json"
step cbt-incremental "$BIN/source-mover" backup "${M[@]}" --disk "disk0=$DS/disk2.raw" --cbt "disk0=$WORK/cbt.json"
step restore "$BIN/source-mover" restore --repo "$R" --token-file "$T" --backup latest --source vm-bench --disk disk0 --to "$WORK/restored.raw" --json
echo
echo "repository on disk: $(du -sb "$WORK/repo" | cut -f1) bytes; server peak RSS $(awk '/VmHWM/{print int($2/1024)}' /proc/$SPID/status) MiB"
