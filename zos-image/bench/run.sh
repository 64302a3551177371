#!/usr/bin/env bash
# Measures the zos-image goals in one run and prints a table.
#
#   sudo zos-image/bench/run.sh            # builds the binary, benchmarks /usr
#   ZOS_IMAGE_BIN=path/to/zos-image BENCH_TREE=/usr BENCH_DIR=/dev/shm/x zos-image/bench/run.sh
#
# Needs root (FUSE, bind mount, chroot), python3 and zstd. Everything talks to a hub started
# here on 127.0.0.1; nothing else is contacted.
set -euo pipefail

HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
REPO="$(cd "$HERE/../.." && pwd)"
TREE="${BENCH_TREE:-/usr}"
WORK="${BENCH_DIR:-/dev/shm/zos-image-bench}"
BIG_MB="${BENCH_BIG_MB:-1024}"
ROUNDS="${BENCH_ROUNDS:-3}"
HELPER="python3 $HERE/helper.py"

if [ "$(id -u)" != 0 ]; then echo "run as root (FUSE, bind mounts, chroot)" >&2; exit 1; fi
command -v zstd >/dev/null || { echo "zstd is required" >&2; exit 1; }

if [ -z "${ZOS_IMAGE_BIN:-}" ]; then
  # Hot paths at full optimisation, whatever the profile's default.
  (cd "$REPO" && [ -f scripts/env.sh ] && . scripts/env.sh
   opt=(--config 'profile.ci.package.zos-image.opt-level=3' --config 'profile.ci.package.blake3.opt-level=3'
        --config 'profile.ci.package.fastcdc.opt-level=3' --config 'profile.ci.package.zstd-sys.opt-level=3'
        --config 'profile.ci.package.zstd-safe.opt-level=3' --config 'profile.ci.package.zstd.opt-level=3')
   cargo build -q --profile ci -p zos-image --bin zos-image "${opt[@]}")
  ZOS_IMAGE_BIN="${CARGO_TARGET_DIR:-$REPO/target}/ci/zos-image"
  if [ -f "$REPO/scripts/env.sh" ]; then ZOS_IMAGE_BIN="$(cd "$REPO" && . scripts/env.sh && echo "$CARGO_TARGET_DIR")/ci/zos-image"; fi
fi
BIN="$ZOS_IMAGE_BIN"

MOUNTS=()
PIDS=()
cleanup() {
  for pid in "${PIDS[@]:-}"; do [ -n "$pid" ] && kill "$pid" 2>/dev/null || true; done
  sleep 0.3
  for ((i=${#MOUNTS[@]}-1; i>=0; i--)); do umount -l "${MOUNTS[$i]}" 2>/dev/null || true; done
  rm -rf "$WORK" "${NATIVE_DIR:-}"
}
trap cleanup EXIT
rm -rf "$WORK"; mkdir -p "$WORK"
cd "$WORK"

now() { date +%s.%N; }
ratio() { python3 -c "import sys; a,b=float(sys.argv[1]),float(sys.argv[2]); print(f'{a/b:.3f}' if b else 'n/a')" "$1" "$2"; }
json() { python3 -c "import json,sys; print(json.loads(sys.argv[1])[sys.argv[2]])" "$1" "$2"; }

# Mount an image in the background; prints the mount process id.
start_mount() { # root mnt cache store...
  local root=$1 mnt=$2 cache=$3; shift 3
  local args=(); for s in "$@"; do args+=(--store "$s"); done
  mkdir -p "$mnt"
  "$BIN" mount "$root" "$mnt" --cache "$cache" "${args[@]}" >/dev/null 2>"$mnt.log" &
  local pid=$!
  # "mounted" is printed once the mount is fully set up (kernel readahead raised, workers running).
  for _ in $(seq 200); do grep -q "^mounted " "$mnt.log" 2>/dev/null && break; sleep 0.05; done
  echo "$pid"
}
stop_mount() { # pid mnt -> prints bytes fetched
  kill -TERM "$1"
  while kill -0 "$1" 2>/dev/null; do sleep 0.05; done   # not our child: started in a subshell
  sed -n 's/^fetched [0-9]* chunks (\([0-9]*\) bytes).*/\1/p' "$2.log"
}

echo "== staging a root filesystem from $TREE"
mkdir -p rootfs/usr rootfs/dev rootfs/proc rootfs/tmp rootfs/etc
mount --bind "$TREE" rootfs/usr && MOUNTS+=("$WORK/rootfs/usr")
mount -o remount,bind,ro rootfs/usr
for d in bin sbin lib lib64; do [ -e "$TREE/$d" ] && ln -s "usr/$d" "rootfs/$d"; done
files=$(find rootfs/usr -xdev | wc -l)

echo "== pack ($files entries)"
t0=$(now); ROOT=$("$BIN" pack rootfs --store store 2>pack.log); t1=$(now)
cat pack.log
IMAGE_BYTES=$($HELPER du-files store/chunks)
TREE_BYTES=$(du -sb --apparent-size rootfs/usr | cut -f1)

echo "== index size vs rfs-style SQLite"
cp "store/images/$ROOT.idx" index.bin
zstd -q -19 -f index.bin -o index.bin.zst
$HELPER rfs-index rootfs rfs.sqlite >/dev/null
zstd -q -19 -f rfs.sqlite -o rfs.sqlite.zst
IDX=$(stat -c %s index.bin); IDXZ=$(stat -c %s index.bin.zst)
SQL=$(stat -c %s rfs.sqlite); SQLZ=$(stat -c %s rfs.sqlite.zst)

echo "== hub on loopback"
PORT=$($HELPER free-port)
head -c 32 /dev/urandom | od -An -tx1 | tr -d ' \n' > token
"$BIN" serve --store store --listen "127.0.0.1:$PORT" --token-file token 2>hub.log &
PIDS+=($!)
HUB="http://127.0.0.1:$PORT"
for _ in $(seq 100); do curl -s -o /dev/null "$HUB/v1/images/x" 2>/dev/null && break; python3 -c "import socket; socket.create_connection(('127.0.0.1', $PORT)).close()" 2>/dev/null && break; sleep 0.05; done

echo "== cold start: python3 from a lazily mounted image"
pid=$(start_mount "$ROOT" "$WORK/cold" "$WORK/cache-cold" "$HUB"); PIDS+=("$pid"); MOUNTS+=("$WORK/cold")
t2=$(now)
chroot "$WORK/cold" /usr/bin/python3 -c 'import json, sqlite3, ssl, email.parser; print("started")' >/dev/null
t3=$(now)
COLD_FETCHED=$(stop_mount "$pid" "$WORK/cold")

echo "== pack throughput per core (incompressible, ${BIG_MB} MiB, 1 thread)"
mkdir -p big
head -c "$((BIG_MB << 20))" /dev/urandom > big/random.bin
cat big/random.bin > /dev/null
t4=$(now); BIG_ROOT=$("$BIN" pack big --store bigstore --threads 1 2>/dev/null); t5=$(now)
PACK_MBS=$(python3 -c "print(f'{$BIG_MB*1048576/($t5-$t4)/1e6:.0f}')")

echo "== warm read through the mount vs native"
pid=$(start_mount "$BIG_ROOT" "$WORK/bigmnt" "$WORK/cache-big" "$WORK/bigstore"); PIDS+=("$pid"); MOUNTS+=("$WORK/bigmnt")
fastest() { for _ in 1 2 3; do $HELPER read-file "$1"; done | python3 -c "import sys,json; print(json.dumps(min((json.loads(l) for l in sys.stdin), key=lambda d: d['seconds'])))"; }
$HELPER read-file "$WORK/bigmnt/random.bin" >/dev/null          # first read fills the caches
MNT_WARM=$(fastest "$WORK/bigmnt/random.bin")
NATIVE=$(fastest big/random.bin)
# The same file on the disk filesystem an unpacked image would normally live on.
NATIVE_DIR="${BENCH_NATIVE_DIR:-/var/tmp}/zos-image-bench-native.$$"
mkdir -p "$NATIVE_DIR" && cp big/random.bin "$NATIVE_DIR/" && $HELPER read-file "$NATIVE_DIR/random.bin" >/dev/null
NATIVE_DISK=$(fastest "$NATIVE_DIR/random.bin")
rm -rf "$NATIVE_DIR"
stop_mount "$pid" "$WORK/bigmnt" >/dev/null
# A fresh mount over the same local cache: every chunk comes from disk, re-verified.
pid=$(start_mount "$BIG_ROOT" "$WORK/bigmnt" "$WORK/cache-big" "$WORK/bigstore"); PIDS+=("$pid")
MNT_DISK=$($HELPER read-file "$WORK/bigmnt/random.bin")
stop_mount "$pid" "$WORK/bigmnt" >/dev/null
mbs() { python3 -c "import json,sys; d=json.loads(sys.argv[1]); print(f\"{d['bytes']/d['seconds']/1e6:.0f}\")" "$1"; }

echo "== full sequential read through a cold lazy mount vs unpack (both from the hub, median of $ROUNDS)"
SUB_ROOT=$("$BIN" pack rootfs/usr/lib --store store 2>/dev/null)
UNPACK_S=(); UNPACK_READ=(); SEQ_RUNS=()
for round in $(seq "$ROUNDS"); do
  rm -rf "$WORK/unpacked"
  t6=$(now); "$BIN" unpack "$SUB_ROOT" "$WORK/unpacked" --store "$HUB" 2>/dev/null; t7=$(now)
  UNPACK_S+=("$(python3 -c "print($t7-$t6)")")
  # Unpacking is only half of that job: the tree still has to be read.
  UNPACK_READ+=("$($HELPER read-tree "$WORK/unpacked")")
  rm -rf "$WORK/unpacked" "$WORK/cache-seq"
  pid=$(start_mount "$SUB_ROOT" "$WORK/seq" "$WORK/cache-seq" "$HUB"); PIDS+=("$pid"); MOUNTS+=("$WORK/seq")
  SEQ_RUNS+=("$($HELPER read-tree "$WORK/seq")")
  stop_mount "$pid" "$WORK/seq" >/dev/null
done
median() { python3 -c "import sys,statistics; print(statistics.median(float(x) for x in sys.argv[1:]))" "$@"; }
median_json() { python3 -c "import sys,json,statistics; print(statistics.median(json.loads(x)['seconds'] for x in sys.argv[1:]))" "$@"; }
UNPACK_MED=$(median "${UNPACK_S[@]}")
UNPACK_READ_MED=$(median_json "${UNPACK_READ[@]}")
SEQ_MED=$(median_json "${SEQ_RUNS[@]}")
SEQ="${SEQ_RUNS[0]}"
echo "   unpack s: ${UNPACK_S[*]}"
echo "   lazy read: ${SEQ_RUNS[*]}"

export TREE files TREE_BYTES IMAGE_BYTES t0 t1 t2 t3 t4 t5 t6 t7 IDX IDXZ SQL SQLZ COLD_FETCHED
export MNT_WARM NATIVE NATIVE_DISK MNT_DISK SEQ PACK_MBS BIG_MB UNPACK_MED UNPACK_READ_MED SEQ_MED
python3 - <<'PY'
import json, os
e = os.environ
f = lambda k: float(e[k])
def mbs(k):
    d = json.loads(e[k])
    return d["bytes"] / d["seconds"] / 1e6
seq = json.loads(e["SEQ"])
seq_s, unpack_s, unpack_read_s = f("SEQ_MED"), f("UNPACK_MED"), f("UNPACK_READ_MED")
rows = [
    ("tree", f"{e['TREE']}: {e['files']} entries, {f('TREE_BYTES')/1e9:.2f} GB", f"image {f('IMAGE_BYTES')/1e9:.2f} GB stored", ""),
    ("pack, all cores", f"{f('TREE_BYTES')/(f('t1')-f('t0'))/1e6:.0f} MB/s", f"{f('t1')-f('t0'):.1f} s", ""),
    ("index raw / zstd-19", f"{int(e['IDX']):,} / {int(e['IDXZ']):,} B", f"rfs sqlite {int(e['SQL']):,} / {int(e['SQLZ']):,} B", f"{f('SQLZ')/f('IDXZ'):.1f}x smaller (goal >= 2.4x)"),
    ("cold start python3", f"{int(e['COLD_FETCHED']):,} B fetched, {f('t3')-f('t2'):.2f} s", f"of {int(e['IMAGE_BYTES']):,} B", f"{100*f('COLD_FETCHED')/f('IMAGE_BYTES'):.2f}% (goal <= 10%)"),
    ("warm read, page cache", f"{mbs('MNT_WARM'):.0f} MB/s mount", f"{mbs('NATIVE_DISK'):.0f} MB/s native, disk fs", f"{100*mbs('MNT_WARM')/mbs('NATIVE_DISK'):.0f}% (goal >= 90%)"),
    ("", "", f"{mbs('NATIVE'):.0f} MB/s native tmpfs", f"{100*mbs('MNT_WARM')/mbs('NATIVE'):.0f}%"),
    ("warm read, chunk cache", f"{mbs('MNT_DISK'):.0f} MB/s (fresh mount)", "", ""),
    ("cold lazy full read", f"{seq_s:.2f} s for {seq['bytes']/1e6:.0f} MB", f"unpack {unpack_s:.2f} s + read {unpack_read_s:.2f} s", f"{seq_s/(unpack_s+unpack_read_s):.2f}x (goal <= 1.2x)"),
    ("", "", "unpack alone", f"{seq_s/unpack_s:.2f}x"),
    ("pack 1 core, random", f"{e['PACK_MBS']} MB/s ({e['BIG_MB']} MiB)", "", "goal >= 300 MB/s"),
]
w = [max(len(r[i]) for r in rows) for i in range(4)]
print()
for r in rows:
    print("  ".join(c.ljust(w[i]) for i, c in enumerate(r)).rstrip())
PY
