#!/usr/bin/env bash
# Builds a Windows-like raw disk image for `bench compare --dataset DIR`, beside
# ../shared/bench/make-dataset.sh (the Linux one), with real tools and no mount: an MBR disk with
# one NTFS partition (type 0x07, `mkntfs -Q`, 4 KiB clusters) holding
#   - a Windows-like tree copied in through libntfs-3g (tests/ntfs/helper.c): /Windows/System32
#     from /usr/bin, /Program Files from /usr/share, /Users/bench/Documents from /usr/include
#     (about 1.1 GB);
#   - a 1 GiB \pagefile.sys and a 256 MiB \hiberfil.sys of random bytes;
#   - free space with stale data: 1 GiB of random files written, then deleted;
# and disk2.raw, the "next day": new files, files rewritten, files deleted, 64 MiB of the page
# file rewritten in place (as Windows pages do), plus cbt.json, the changed 64 KiB blocks (no base
# named: `bench compare` adds it). The volume stays `ntfsfix -n` clean.
# Usage: scripts/make-ntfs-dataset.sh DIR [SIZE_GIB]   (needs scripts/setup.sh's ntfs-3g, gcc)
set -euo pipefail
dir=${1:?dir}; gib=${2:-4}
here=$(cd "$(dirname "$0")/.." && pwd)
mkdir -p "$dir" && cd "$dir"
gcc -O2 -Wall -o ntfs-helper "$here/tests/ntfs/helper.c" -lntfs-3g
p1=$(( gib*1024 - 2 ))                  # MiB for NTFS: 1 MiB gap before, 1 MiB after
rm -f p1.ntfs disk.raw disk2.raw
truncate -s ${p1}M p1.ntfs
mkntfs -F -Q -q -c 4096 -L Windows -p 2048 -H 16 -S 63 p1.ntfs
rnd() { python3 -c "import random,sys; r=random.Random(int(sys.argv[2])); f=open(sys.argv[1],'wb')
for _ in range(int(sys.argv[3])): f.write(r.randbytes(1<<20))" "$@"; }
# The page and hibernation files first, as a Windows installation has them.
rnd pagefile.sys 7 1024; ntfscp -q p1.ntfs pagefile.sys /pagefile.sys; rm pagefile.sys
rnd hiberfil.sys 8 256; ntfscp -q p1.ntfs hiberfil.sys /hiberfil.sys; rm hiberfil.sys
./ntfs-helper p1.ntfs mkdir /Users /Users/bench /Users/bench/AppData /Users/bench/AppData/Local
./ntfs-helper p1.ntfs mkdir /Windows
./ntfs-helper p1.ntfs copy /usr/bin /Windows/System32
./ntfs-helper p1.ntfs copy /usr/share "/Program Files"
./ntfs-helper p1.ntfs copy /usr/include /Users/bench/Documents
# Stale data: written, then deleted (its clusters are free, its bytes stay).
mkdir -p stale
for i in 0 1 2 3; do rnd stale/s$i.bin $((50+i)) 256; done
./ntfs-helper p1.ntfs copy stale /Users/bench/AppData/Local/Stale
./ntfs-helper p1.ntfs rm /Users/bench/AppData/Local/Stale/s0.bin /Users/bench/AppData/Local/Stale/s1.bin \
  /Users/bench/AppData/Local/Stale/s2.bin /Users/bench/AppData/Local/Stale/s3.bin
rm -rf stale
ntfsfix -n p1.ntfs | grep -q 'processed successfully' || { echo "day 1 volume not clean" >&2; exit 1; }
truncate -s ${gib}G disk.raw
printf 'label: dos\nlabel-id: 0x5eed0002\nstart=2048, size=%d, type=7\n' $((p1*2048)) | sfdisk -q disk.raw
dd if=p1.ntfs of=disk.raw bs=4M seek=1M oflag=seek_bytes conv=notrunc,sparse status=none
# Day 2, through libntfs-3g: ~3 % of the volume changed.
mkdir -p day2
for i in $(seq 0 15); do rnd day2/new$i.bin $((200+i)) 4; done
./ntfs-helper p1.ntfs copy day2 /Users/bench/Documents/day2
rm -rf day2
python3 - <<'PY'
import random, subprocess
r = random.Random(11)
out = subprocess.run(["ntfsls", "-p", "/Users/bench/Documents", "p1.ntfs"], capture_output=True, text=True).stdout.split()
names = [n for n in out if n.endswith(".h")]
gone = r.sample(names, 50)
subprocess.run(["./ntfs-helper", "p1.ntfs", "rm"] + ["/Users/bench/Documents/" + n for n in gone], check=True)
for n in r.sample([n for n in names if n not in gone], 60):  # rewritten files
    data = r.randbytes(r.choice([64, 256, 1024]) << 10)
    open("rw.bin", "wb").write(data)
    subprocess.run(["ntfscp", "-q", "p1.ntfs", "rw.bin", "/Users/bench/Documents/" + n], check=True)
# 64 MiB of the page file rewritten in place, where its clusters are.
info = subprocess.run(["ntfsinfo", "-v", "-F", "/pagefile.sys", "p1.ntfs"], capture_output=True, text=True).stdout
runs = info[info.rfind("Runlist:"):].splitlines()[1:]
lcn = int(runs[0].split()[1], 16)
with open("p1.ntfs", "r+b") as f:
    for k in range(16):
        f.seek((lcn + r.randrange(0, 250 * 256)) * 4096); f.write(r.randbytes(4 << 20))
PY
rm -f rw.bin
ntfsfix -n p1.ntfs | grep -q 'processed successfully' || { echo "day 2 volume not clean" >&2; exit 1; }
cp --sparse=always disk.raw disk2.raw
dd if=p1.ntfs of=disk2.raw bs=4M seek=1M oflag=seek_bytes conv=notrunc status=none
rm -f p1.ntfs ntfs-helper
python3 - <<'PY'
import json
B = 64 << 10
a, b = open("disk.raw", "rb"), open("disk2.raw", "rb")
ranges, total, off = [], 0, 0
while True:
    x, y = a.read(16 << 20), b.read(16 << 20)
    if not x:
        break
    for i in range(0, len(x), B):
        if x[i:i + B] != y[i:i + B]:
            o = off + i
            if ranges and ranges[-1][0] + ranges[-1][1] == o:
                ranges[-1][1] += B
            else:
                ranges.append([o, B])
            total += B
    off += len(x)
json.dump({"changed": ranges, "bytes": total}, open("cbt.json", "w"))
print("changed bytes", total, "extents", len(ranges))
PY
ls -ls disk.raw disk2.raw
