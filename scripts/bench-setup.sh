#!/usr/bin/env bash
# What `bench compare` needs beyond the test set-up: restic and borg (Debian's packages), and
# the tools make-dataset.sh uses (e2fsprogs, fdisk, python3 is on the machine).
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
need=()
have() { dpkg-query -W -f='${Status}' "$1" 2>/dev/null | grep -q 'install ok installed'; }
for p in restic borgbackup e2fsprogs fdisk time; do have "$p" || need+=("$p"); done
if [ ${#need[@]} -gt 0 ]; then
  echo "bench-setup: installing ${need[*]}"
  SUDO=""; [ "$(id -u)" -eq 0 ] || SUDO="sudo"
  $SUDO apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq -o DPkg::Lock::Timeout=600 "${need[@]}" >/dev/null
fi
