#!/usr/bin/env bash
# A whole grid on this machine, from one command (`make run`):
#   builds what is missing, starts a dev chain and one executor node, registers a farm, packs a
#   busybox image and serves it from a local hub, deploys examples/vm.toml with a 2-of-2 contract
#   approved by //Alice and //Bob, waits for the guest, then prints its console and the billing
#   events as they come. Ctrl-C stops everything.
#
#   scripts/run-local-grid.sh [--check] [--data-dir DIR] [--keep] [--no-build]
#     --check       non-interactive: exit 0 once the guest printed its entrypoint line and one
#                   consumption report was settled on chain; non-zero with logs otherwise
#     --data-dir    keep chain-independent data (node, image, hub, logs) in DIR (default: a
#                   temporary directory, removed on exit)
#     --keep        do not remove the temporary directory on exit
#     --no-build    use the binaries already built
#   Environment: RPC_PORT (default 9944; --check picks a free one), HUB_PORT (default 8420;
#   --check picks a free one), ZOS_RUN_SPEC (another spec to deploy), CHECK_TIMEOUT (s, 300),
#   ZOS_EXECUTOR_ARGS (extra executor flags), EXPLORER_PORT (default: a free one; the explorer
#   is built and served when npm is installed, not in --check mode).
set -euo pipefail
cd "$(dirname "$0")/.."
root_dir="$(pwd)"
source scripts/env.sh
profile="${CARGO_PROFILE:-ci}"
bin="$CARGO_TARGET_DIR/$profile"

check=0 keep=0 build=1 data_dir=""
while [ $# -gt 0 ]; do
  case "$1" in
    --check) check=1 ;;
    --keep) keep=1 ;;
    --no-build) build=0 ;;
    --data-dir) data_dir="${2:?--data-dir needs a directory}"; shift ;;
    --data-dir=*) data_dir="${1#--data-dir=}" ;;
    -h|--help) sed -n '2,18p' "$0" | sed 's/^# \{0,1\}//'; exit 0 ;;
    *) echo "unknown argument: $1 (see --help)" >&2; exit 2 ;;
  esac
  shift
done
timeout_total="${CHECK_TIMEOUT:-300}"

# ---- output helpers
if [ -t 1 ]; then bold=$'\e[1m' dim=$'\e[2m' green=$'\e[32m' red=$'\e[31m' cyan=$'\e[36m' off=$'\e[0m'; else bold="" dim="" green="" red="" cyan="" off=""; fi
t0=$SECONDS
say() { printf '%s[%4ss]%s %s\n' "$dim" "$((SECONDS - t0))" "$off" "$*"; }
step() { printf '%s[%4ss]%s %s%s%s\n' "$dim" "$((SECONDS - t0))" "$off" "$bold" "$*" "$off"; }
fail() { printf '%s[%4ss] FAILED:%s %s\n' "$red" "$((SECONDS - t0))" "$off" "$*" >&2; show_logs; exit 1; }

# wait_for <what> <timeout s> <command...>: runs the command every second until it succeeds,
# showing the time spent; fails (with logs) at the timeout.
wait_for() {
  local what="$1" limit="$2"; shift 2
  local start=$SECONDS
  while ! "$@" >/dev/null 2>&1; do
    if [ $((SECONDS - start)) -ge "$limit" ]; then
      [ -t 1 ] && printf '\n'
      fail "no $what after ${limit}s"
    fi
    if [ -t 1 ]; then printf '\r%s[%4ss]%s   waiting for %s… %ss ' "$dim" "$((SECONDS - t0))" "$off" "$what" "$((SECONDS - start))"; fi
    sleep 1
  done
  if [ -t 1 ]; then printf '\r\e[K'; fi
  say "  $what: ${green}ok${off} ($((SECONDS - start))s)"
}

free_port() {
  local port
  for _ in $(seq 50); do
    port=$((20000 + RANDOM % 30000))
    if ! (exec 3<>"/dev/tcp/127.0.0.1/$port") 2>/dev/null; then echo "$port"; return; fi
  done
  echo "no free port found" >&2; return 1
}

# ---- build
if [ "$build" = 1 ]; then
  step "Building (cargo build --profile $profile --workspace --bins; only what changed)…"
  cargo build --profile "$profile" --workspace --bins
fi
for b in zos-chain-node zos-executor zos-image zos; do
  [ -x "$bin/$b" ] || { echo "missing $bin/$b (run without --no-build)" >&2; exit 1; }
done
zos() { "$bin/zos" --url "$url" "$@"; }
export ZOS_IMAGE_BIN="$bin/zos-image"

# ---- working directory
if [ -n "$data_dir" ]; then
  mkdir -p "$data_dir"
  data_dir="$(cd "$data_dir" && pwd)"
  if [ -n "$(ls -A "$data_dir")" ] && [ ! -f "$data_dir/.zos-local-grid" ]; then
    echo "--data-dir $data_dir is not empty and was not made by this script; refusing to use it" >&2
    exit 2
  fi
  # Every run starts a fresh chain: node state from an earlier chain must go.
  rm -rf "$data_dir/node" "$data_dir/hub" "$data_dir/image" "$data_dir/logs" "$data_dir/chain"
  owned_dir=0
else
  data_dir="$(mktemp -d "${TMPDIR:-/tmp}/zos-grid.XXXXXX")"
  owned_dir=1
fi
touch "$data_dir/.zos-local-grid"
logs="$data_dir/logs"
mkdir -p "$logs" "$data_dir/node"

if [ "$check" = 1 ]; then
  rpc_port="${RPC_PORT:-$(free_port)}"
  hub_port="${HUB_PORT:-$(free_port)}"
  access_port="${ACCESS_PORT:-$(free_port)}"
else
  rpc_port="${RPC_PORT:-9944}"
  hub_port="${HUB_PORT:-8420}"
  access_port="${ACCESS_PORT:-9102}"
fi
url="ws://127.0.0.1:$rpc_port"
# The node's access endpoint: signers of a contract read its VMs' consoles there (`zos logs`).
access_url="http://127.0.0.1:$access_port"
hub_url="http://127.0.0.1:$hub_port"

# ---- cleanup: every process started here, by pid
pids=()
chain_pid="" executor_pid=""
show_logs() {
  for f in "$logs"/*.log; do
    [ -f "$f" ] || continue
    printf '\n%s---- %s (last 40 lines)%s\n' "$bold" "$(basename "$f")" "$off" >&2
    tail -n 40 "$f" >&2
  done
  local console
  console="$(find "$data_dir/node" -name console.log 2>/dev/null | head -n 1)"
  if [ -n "$console" ]; then printf '\n%s---- guest console%s\n' "$bold" "$off" >&2; tail -n 40 "$console" >&2; fi
}
stop_pid() { # stop_pid <pid> <signal>: signal, wait up to 10 s, then SIGKILL
  local pid="$1" sig="$2"
  kill -0 "$pid" 2>/dev/null || return 0
  kill "-$sig" "$pid" 2>/dev/null || true
  for _ in $(seq 100); do kill -0 "$pid" 2>/dev/null || return 0; sleep 0.1; done
  kill -KILL "$pid" 2>/dev/null || true
}
# The private network's leftovers: the node's namespaces, links and userspace WireGuard (they
# outlive the executor by design), its nftables tables, and the laptop namespace.
net_prefix="${ZOS_NET_PREFIX:-zr}"
laptop_ns="zos-laptop"
clean_networks() {
  [ "$(id -u)" = 0 ] || return 0
  ip netns del "$laptop_ns" 2>/dev/null || true
  ip link del lap-zos-h 2>/dev/null || true
  rm -f /var/run/wireguard/zoslap.sock
  local ns link
  for ns in $(ip netns list 2>/dev/null | awk -v p="$net_prefix-net-" 'index($1, p) == 1 { print $1 }'); do
    ip netns del "$ns" 2>/dev/null || true
  done
  pkill -f "wireguard-go -f ${net_prefix}w" 2>/dev/null || true
  for link in $(ip -o link 2>/dev/null | awk -F': ' '{ sub(/@.*/, "", $2); print $2 }' | grep -E "^${net_prefix}[bvltw][0-9a-f]{10}$"); do
    ip link del "$link" 2>/dev/null || true
  done
  nft delete table inet "zos_$net_prefix" 2>/dev/null || true
  nft delete table arp "zos_$net_prefix" 2>/dev/null || true
}
cleaned=0
cleanup() {
  [ "$cleaned" = 1 ] && return
  cleaned=1
  trap '' INT TERM
  printf '\n'
  step "Stopping…"
  # Followers and the hub first, then the executor (it stops its VMs), then the chain.
  for p in "${pids[@]}"; do
    [ "$p" = "$executor_pid" ] || [ "$p" = "$chain_pid" ] || stop_pid "$p" TERM
  done
  [ -n "$executor_pid" ] && stop_pid "$executor_pid" INT
  # Guests outlive the executor in their shims (`zos-executor vm-shim <dir>`): SIGTERM stops
  # each guest and unmounts its image.
  while IFS= read -r pidfile; do
    local pid
    pid="$(cat "$pidfile" 2>/dev/null || true)"
    [[ "$pid" =~ ^[0-9]+$ ]] || continue
    if { tr '\0' ' ' <"/proc/$pid/cmdline"; } 2>/dev/null | grep -qF "vm-shim $(dirname "$pidfile")"; then stop_pid "$pid" TERM; fi
  done < <(find "$data_dir/node" -name shim.pid 2>/dev/null)
  # A hypervisor the executor left behind: its pid file names it; the command line must too.
  while IFS= read -r pidfile; do
    local pid
    pid="$(cat "$pidfile" 2>/dev/null || true)"
    [[ "$pid" =~ ^[0-9]+$ ]] || continue
    if { tr '\0' ' ' <"/proc/$pid/cmdline"; } 2>/dev/null | grep -qF "$pidfile"; then kill -KILL "$pid" 2>/dev/null || true; fi
  done < <(find "$data_dir/node" -name hypervisor.pid 2>/dev/null)
  # Image mounts left under the data directory.
  awk -v d="$data_dir/" 'index($2, d) == 1 { print $2 }' /proc/mounts 2>/dev/null | sort -r | while read -r m; do
    fusermount3 -u "$m" 2>/dev/null || fusermount -u "$m" 2>/dev/null || umount -l "$m" 2>/dev/null || true
  done
  [ -n "$chain_pid" ] && stop_pid "$chain_pid" TERM
  wait 2>/dev/null || true
  clean_networks
  if [ "$owned_dir" = 1 ] && [ "$keep" = 0 ]; then
    rm -rf "$data_dir" 2>/dev/null || true
    say "stopped; temporary data removed"
  else
    say "stopped; data and logs kept in $data_dir"
  fi
}
trap cleanup EXIT
trap 'exit 130' INT TERM

# json_num <key> / json_str <key>: the first such field of the JSON on stdin.
json_num() { grep -o "\"$1\":[0-9]*" | head -n 1 | cut -d: -f2; }
json_str() { grep -o "\"$1\":\"[^\"]*\"" | head -n 1 | cut -d'"' -f4; }

spawn() { # spawn <log name> <command...>: background, output to logs/<name>.log
  local name="$1"; shift
  "$@" >"$logs/$name.log" 2>&1 </dev/null &
  pids+=("$!")
}

# ---- chain
step "Starting a dev chain on $url"
spawn chain "$bin/zos-chain-node" --dev --base-path "$data_dir/chain" --rpc-port "$rpc_port" \
  --listen-addr /ip4/127.0.0.1/tcp/0 --no-mdns --no-telemetry --no-prometheus --rpc-cors all
chain_pid="${pids[-1]}"
wait_for "chain RPC" 60 zos farm list

# ---- explorer: the browser UI (explorer/), built with npm and served on a free local port; it
# talks to the chain's RPC itself. Skipped in --check mode and when npm is missing.
explorer_url=""
if [ "$check" = 0 ] && command -v npm >/dev/null 2>&1; then
  step "Building the explorer (explorer/, npm)"
  if (cd "$root_dir/explorer" && { [ -d node_modules ] || npm ci --no-audit --no-fund; } && node build.mjs) >"$logs/explorer-build.log" 2>&1; then
    spawn explorer node "$root_dir/explorer/serve.mjs" --port "${EXPLORER_PORT:-$(free_port)}" --rpc "$url"
    wait_for "explorer server" 30 grep -q '^explorer: http' "$logs/explorer.log"
    explorer_url="$(grep -o 'http://[^ ]*' "$logs/explorer.log" | head -n 1)"
    say "  explorer: ${cyan}$explorer_url${off}"
  else
    say "  ${red}note:${off} the explorer did not build (see $logs/explorer-build.log); going on without it"
  fi
fi

# ---- farm and node
step "Registering a farm and a node"
node_account="$(zos --json key new "$data_dir/node/identity.json" | json_str account)"
[ -n "$node_account" ] || fail "creating the node identity"
# Two signers, two transactions in the same blocks: //Ferdie funds the node while //Alice
# creates the farm.
zos --key //Ferdie transfer "$node_account" 1000 >"$logs/fund.out" 2>&1 &
fund_pid=$!
farm="$(zos --key //Alice --json farm create "local-farm" | json_num farm)"
[ -n "$farm" ] || fail "creating the farm"
say "  farm $farm created by //Alice"
wait "$fund_pid" || { cat "$logs/fund.out" >&2; fail "funding the node account"; }
say "  node account $node_account funded with 1000 ZGT by //Ferdie"
zos --key //Alice farm authorize-node "$farm" "$node_account" >"$logs/authorize.out" 2>&1 \
  || { cat "$logs/authorize.out" >&2; fail "authorizing the node to join the farm"; }
say "  node account authorized by //Alice to join farm $farm"
# shellcheck disable=SC2086
spawn executor env RUST_LOG="${RUST_LOG:-info}" ZOS_NET_PREFIX="$net_prefix" "$bin/zos-executor" --chain-url "$url" --farm-id "$farm" \
  --data-dir "$data_dir/node" --report-interval 10 --heartbeat-interval 15 --metrics-addr off \
  --access-addr "127.0.0.1:$access_port" --capacity cru=2,mru_mib=4096,sru_gib=50 ${ZOS_EXECUTOR_ARGS:-}
executor_pid="${pids[-1]}"
node_online() { zos --json node list --farm "$farm" | grep -q '"status":"online"'; }
wait_for "node registered and online" 120 node_online
node_id="$(zos --json node list --farm "$farm" | json_num node)"
say "  node $node_id online"

# ---- image
step "Packing a busybox image and serving it on $hub_url"
rootfs="$data_dir/image/rootfs"
mkdir -p "$rootfs"/{bin,sbin,etc,proc,sys,dev,tmp,run,data,root}
busybox_bin="$(command -v busybox || true)"
[ -n "$busybox_bin" ] || fail "busybox is not installed (apt-get install busybox-static)"
cp "$busybox_bin" "$rootfs/bin/busybox"
for applet in $("$rootfs/bin/busybox" --list); do
  [ "$applet" = busybox ] || ln -sf busybox "$rootfs/bin/$applet"
done
echo "zos-example" >"$rootfs/etc/hostname"
printf 'root:x:0:0:root:/root:/bin/sh\n' >"$rootfs/etc/passwd"
image_root="$(zos image pack "$rootfs" --store "$data_dir/hub" 2>"$logs/pack.log" | tail -n 1 | grep -oE '[0-9a-f]{64}' || true)"
[ -n "$image_root" ] || fail "packing the image"
say "  image root $image_root"
head -c 24 /dev/urandom | od -An -tx1 | tr -d ' \n' >"$data_dir/hub.token"
spawn hub "$bin/zos-image" serve --store "$data_dir/hub" --listen "127.0.0.1:$hub_port" --token-file "$data_dir/hub.token"
wait_for "image hub" 30 bash -c "exec 3<>/dev/tcp/127.0.0.1/$hub_port"

# ---- the contract
spec="${ZOS_RUN_SPEC:-}"
if [ -z "$spec" ]; then
  if [ -e "$root_dir/zos-executor/src/drivers/vm.rs" ] || [ -d "$root_dir/zos-executor/src/drivers/vm" ]; then
    spec="$root_dir/examples/vm.toml"
  else
    # This executor has no VM driver yet: deploy the example's disk alone.
    spec="$data_dir/disk.toml"
    printf 'version = 0\n\n[[workloads]]\nname = "data"\nkind.disk.size_mib = 1024\n' >"$spec"
    say "  ${red}note:${off} this executor has no VM driver: deploying a disk-only contract"
  fi
fi
has_vm=0
grep -q 'kind.vm' "$spec" && has_vm=1

# A private network for the example VM when this host can serve one (root, nftables,
# WireGuard): `zos network plan` makes the node's network workload and a wg-quick file for a
# "laptop" namespace joined to this host by a veth (documentation addresses 203.0.113.0/30).
vm_ip="10.20.2.2"
with_network=0
if [ -z "${ZOS_RUN_SPEC:-}" ] && [ "$has_vm" = 1 ] && [ "$(id -u)" = 0 ] \
  && command -v nft >/dev/null && command -v wg-quick >/dev/null \
  && { [ -e /sys/module/wireguard ] || command -v wireguard-go >/dev/null; }; then
  with_network=1
  step "Planning a private network: node $node_id serves 10.20.2.0/24, a laptop namespace joins over WireGuard"
  clean_networks
  ip netns add "$laptop_ns"
  ip link add lap-zos-h type veth peer name eth0 netns "$laptop_ns"
  ip addr add 203.0.113.1/30 dev lap-zos-h && ip link set lap-zos-h up
  ip -n "$laptop_ns" addr add 203.0.113.2/30 dev eth0
  ip -n "$laptop_ns" link set eth0 up && ip -n "$laptop_ns" link set lo up
  printf 'name = "net"\nip_range = "10.20.0.0/16"\nlaptop = true\n\n[[nodes]]\nnode = %s\nendpoint = "203.0.113.1"\n' \
    "$node_id" >"$data_dir/network-plan.toml"
  zos network plan "$data_dir/network-plan.toml" --out "$data_dir/network" >"$logs/network-plan.out" 2>&1 \
    || { cat "$logs/network-plan.out" >&2; fail "planning the network"; }
  # The example VM with a card on the network, plus the planned network workload.
  awk -v ip="$vm_ip" '{ print } /^rootfs_mib = / { printf "networks = [{ network = \"net\", ip = \"%s\" }]\n", ip }' \
    "$spec" >"$data_dir/vm-with-network.toml"
  cat "$data_dir/network/node-$node_id.network.toml" >>"$data_dir/vm-with-network.toml"
  spec="$data_dir/vm-with-network.toml"
  cp "$data_dir/network/laptop.conf" "$data_dir/network/zoslap.conf"
fi
step "Deploying $(basename "$spec") on node $node_id: 2-of-2 contract, //Alice and //Bob required"
deploy_out="$(zos --key //Alice --json deploy "$spec" --node "$node_id" \
  --signer //Alice:1:required --signer //Bob:1:required --threshold 2 \
  --image-root "$image_root" --image-source "$hub_url")" || fail "deploying $spec"
contract="$(json_num contract <<<"$deploy_out")"
[ -n "$contract" ] || fail "no contract id in: $deploy_out"
say "  contract $contract created by //Alice (waiting for //Bob)"
zos --key //Bob approve "$contract" | sed 's/^/  /'

# Chain events of the contract (deployment reports, billing) as they are finalized.
spawn events "$bin/zos" --url "$url" events --follow --from 1 --contract "$contract"
events_pid="${pids[-1]}"
deployed() { zos --json contract show "$contract" | grep -qE '"state":"(Deployed|Failed)'; }
wait_for "contract $contract deployed by the node" 180 deployed
state="$(zos --json contract show "$contract" | json_str state)"
[ "$state" = Deployed ] || fail "the node reported: $state"
zos contract show "$contract" | sed 's/^/  /'

console=""
if [ "$has_vm" = 1 ]; then
  find_console() { console="$(find "$data_dir/node/contracts/$contract" -name console.log 2>/dev/null | head -n 1)"; [ -n "$console" ]; }
  wait_for "guest console" 120 find_console
  wait_for "the entrypoint's line on the guest console" 180 grep -q "hello from" "$console"
fi

if [ "$with_network" = 1 ]; then
  # nsenter rather than `ip netns exec`, whose private mount namespace the wireguard-go daemon
  # would keep (with a copy of the VM's image mount) after the grid stops.
  WG_QUICK_USERSPACE_IMPLEMENTATION=wireguard-go nsenter --net="/run/netns/$laptop_ns" \
    wg-quick up "$data_dir/network/zoslap.conf" >"$logs/wg-quick.log" 2>&1 || { cat "$logs/wg-quick.log" >&2; fail "wg-quick up in the laptop namespace"; }
  laptop_pings() { ip netns exec "$laptop_ns" busybox ping -c 1 -W 1 "$vm_ip" >/dev/null 2>&1; }
  wait_for "the VM answering the laptop namespace over WireGuard ($vm_ip)" 120 laptop_pings
fi

if [ "$check" = 1 ]; then
  wait_for "a settled consumption report (Billing.ReportSettled)" 120 grep -q "ReportSettled" "$logs/events.log"
  [ -n "$console" ] && { printf '%s---- guest console%s\n' "$bold" "$off"; grep -a "hello from" "$console" | head -n 3; }
  grep ReportSettled "$logs/events.log" | head -n 3
  if [ "$has_vm" = 1 ]; then
    # A signer reads the console from the node; a stranger's key is refused.
    signer_view="$(zos --key //Bob logs "$contract" --node-url "$access_url")" || fail "zos logs as a signer"
    grep -aq "hello from" <<<"$signer_view" || fail "zos logs: no entrypoint output in the console"
    ! zos --key //Dave logs "$contract" --node-url "$access_url" 2>/dev/null || fail "zos logs served a stranger"
    say "  zos logs: the signer //Bob read the console, //Dave was refused"
  fi
  # The farmer's eviction with notice, withdrawn through the CLI: the node keeps its contract.
  removal="$(zos --key //Alice --json node remove "$node_id")" || fail "zos node remove"
  grep -q '"removed":false' <<<"$removal" || fail "a node running a contract was not given notice: $removal"
  zos --key //Alice node keep "$node_id" | sed 's/^/  /' || fail "zos node keep"
  [ "$(zos --json contract show "$contract" | json_str state)" = Deployed ] || fail "the contract did not survive a withdrawn removal"
  step "${green}local grid check passed${off} in $((SECONDS - t0))s"
  exit 0
fi

# ---- interactive: follow the guest console and the chain until Ctrl-C
step "Running. Guest console (${cyan}guest |${off}) and chain events (${cyan}chain |${off}) follow; Ctrl-C stops everything."
cat <<MSG
  try in another terminal:
    $bin/zos --url $url contract show $contract
    $bin/zos --url $url node show $node_id
    $bin/zos --url $url --key //Bob logs $contract --follow --node-url $access_url
${explorer_url:+  or open the explorer: $explorer_url#/contract/$contract
}  logs: $logs
MSG
if [ "$with_network" = 1 ]; then
  cat <<MSG
  the VM is $vm_ip on private network 10.20.0.0/16; a laptop namespace is joined over WireGuard
  (its wg-quick file: $data_dir/network/zoslap.conf):
    sudo ip netns exec $laptop_ns ping $vm_ip
MSG
fi
if [ -n "$console" ]; then
  tail --pid=$$ -n +1 -F "$console" 2>/dev/null | sed -u "s/^/${cyan}guest |${off} /" &
  pids+=("$!")
fi
tail --pid=$$ -n +1 -F "$logs/events.log" 2>/dev/null | sed -u "s/^/${cyan}chain |${off} /" &
pids+=("$!")
while kill -0 "$chain_pid" 2>/dev/null && kill -0 "$executor_pid" 2>/dev/null && kill -0 "$events_pid" 2>/dev/null; do
  sleep 1
done
fail "a grid process exited on its own"
