#!/usr/bin/env bash
# Regenerates zos-client/metadata/zos-runtime.scale (the metadata the chain client's static
# subxt code is generated from) from the runtime built in this workspace. The client's test
# `metadata_matches_runtime` fails when the committed file is stale.
set -euo pipefail
cd "$(dirname "$0")/.."
source scripts/env.sh
node="${ZOS_CHAIN_NODE_BIN:-$CARGO_TARGET_DIR/${CARGO_PROFILE:-ci}/zos-chain-node}"
out="zos-client/metadata/zos-runtime.scale"
port=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')
"$node" --dev --tmp --rpc-port "$port" --listen-addr /ip4/127.0.0.1/tcp/0 --no-prometheus \
  --no-telemetry --no-mdns >/dev/null 2>&1 &
pid=$!
trap 'kill $pid 2>/dev/null || true' EXIT
python3 - "$port" "$out" <<'PY'
import json, sys, time, urllib.request
port, out = sys.argv[1], sys.argv[2]
def call(method, params):
    req = urllib.request.Request(f"http://127.0.0.1:{port}", data=json.dumps(
        {"id": 1, "jsonrpc": "2.0", "method": method, "params": params}).encode(),
        headers={"Content-Type": "application/json"})
    return json.load(urllib.request.urlopen(req, timeout=10))["result"]
for _ in range(300):
    try:
        call("system_health", []); break
    except Exception:
        time.sleep(0.2)
# Metadata_metadata_at_version(16) -> Option<OpaqueMetadata>: 0x01 + compact length + bytes.
raw = bytes.fromhex(call("state_call", ["Metadata_metadata_at_version", "0x10000000"])[2:])
assert raw[0] == 1, "runtime has no metadata v16"
b = raw[1]
mode = b & 3
if mode == 0: n, off = b >> 2, 2
elif mode == 1: n, off = int.from_bytes(raw[1:3], "little") >> 2, 3
elif mode == 2: n, off = int.from_bytes(raw[1:5], "little") >> 2, 5
else: raise SystemExit("metadata longer than a 4-byte compact length")
data = raw[off:off + n]
assert len(data) == n
open(out, "wb").write(data)
print(f"{out}: {n} bytes")
PY
