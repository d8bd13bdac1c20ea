#!/usr/bin/env bash
# Installs what building and testing this project needs, from Debian's packages. Idempotent:
# packages already present are skipped without touching apt.
#   libclang-dev   bindgen for librocksdb-sys (RocksDB is built from source by cargo)
#   zstd, b3sum    the README's curl walkthrough makes chunks with them
#   curl, jq       the walkthrough itself
#   bc, time       totals and measurements in the scripts
#   e2fsprogs, fdisk, util-linux   mke2fs, debugfs, e2fsck, sfdisk, mkswap: the demo and the tests build real disk images
#   samba, smbclient   the gateway's tests run a real Samba server on loopback (smbclient inspects the share)
#   chromium, chromium-driver, python3-venv   the console's browser tests drive a real headless Chromium over WebDriver
#                      (Python selenium, pinned, in a venv under the cargo target directory: see the end)
#   qemu-utils, libnbd-bin   the NBD tests and bench: qemu-img, qemu-io, qemu-nbd, qemu-storage-daemon; nbdinfo, nbdcopy (and instant recovery's clients)
#   ntfs-3g, ntfs-3g-dev, gcc  mkntfs, ntfscp, ntfscat, ntfsls, ntfsinfo, ntfscluster, ntfsfix: the NTFS tests build
#                  and check real NTFS images; the tests compile a small libntfs-3g helper to make directories
set -euo pipefail
need=()
have() { dpkg-query -W -f='${Status}' "$1" 2>/dev/null | grep -q 'install ok installed'; }
for p in libclang-dev zstd b3sum curl jq e2fsprogs fdisk util-linux bc time samba smbclient chromium chromium-driver python3-venv qemu-utils libnbd-bin ntfs-3g ntfs-3g-dev gcc; do have "$p" || need+=("$p"); done
if [ ${#need[@]} -gt 0 ]; then
  echo "setup: installing ${need[*]}"
  SUDO=""; [ "$(id -u)" -eq 0 ] || SUDO="sudo"
  $SUDO apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq -o DPkg::Lock::Timeout=600 "${need[@]}" >/dev/null
fi
command -v cargo >/dev/null || { echo "setup: cargo is not installed (see https://rustup.rs)"; exit 1; }
# The console's browser tests (tests/tests/it/console.rs) run tests/browser/console.py with the
# Python of this venv; selenium is pinned and talks to Debian's chromedriver (no driver download).
. "$(dirname "$0")/env.sh"
VENV="$CARGO_TARGET_DIR/browser-venv"
SELENIUM=4.27.1
if ! "$VENV/bin/python3" -c "import selenium, sys; sys.exit(selenium.__version__ != '$SELENIUM')" 2>/dev/null; then
  echo "setup: installing selenium $SELENIUM into $VENV"
  python3 -m venv "$VENV"
  "$VENV/bin/pip" install -q --disable-pip-version-check "selenium==$SELENIUM"
fi
