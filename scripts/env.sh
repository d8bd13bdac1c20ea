# Sourced by the scripts: one cargo target directory outside the clone, so a machine that
# already built RocksDB (about 15 minutes of C++) reuses it. Correctness never depends on it.
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$HOME/.cache/backup-target}"
