#!/usr/bin/env bash
# The Xuzhou example tree on one machine, with the real commands a county IT officer uses:
#
#   320000 江苏省 (province) ← 320300 徐州市 (city) ← 320303 云龙区 (district)
#                                                ← 320300-GA 徐州市公安局 (department)
#
#   tree.sh up     [BASE]   enrol the four nodes (first time only), start them, wait until healthy
#   tree.sh status [BASE]   `fednode health` and `fednode status` of every node
#   tree.sh down   [BASE]   stop every node (SIGTERM: each finishes its transaction and exits)
#
# BASE (default ./xuzhou-tree) holds one node home per code, the CSRs and bundles that travelled,
# and each node's log (BASE/CODE/node.log, JSON lines). Environment:
#   FEDNODE              the fednode command (default: fednode on PATH)
#   FEDNODE_PORT_BASE    link ports: province BASE, city BASE+1 (default 7700, as in the configs)
#   FEDNODE_METRICS_BASE metrics ports: BASE .. BASE+3 (default 9464, as in the configs)
set -euo pipefail

HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
ACTION="${1:-up}"
BASE="${2:-./xuzhou-tree}"
FEDNODE="${FEDNODE:-fednode}"
PORT_BASE="${FEDNODE_PORT_BASE:-7700}"
METRICS_BASE="${FEDNODE_METRICS_BASE:-9464}"

# code | name | level | parent code   (parents before children)
NODES=(
  "320000|江苏省|province|"
  "320300|徐州市|city|320000"
  "320303|云龙区|county|320300"
  "320300-GA|徐州市公安局|department|320300"
)

say() { printf '%s\n' "$*" >&2; }

# the example config, with the ports moved when FEDNODE_PORT_BASE / FEDNODE_METRICS_BASE say so
config_for() {
  sed -e "s/127\.0\.0\.1:7700\"/127.0.0.1:$((PORT_BASE))\"/" \
      -e "s/127\.0\.0\.1:7701\"/127.0.0.1:$((PORT_BASE + 1))\"/" \
      -e "s/127\.0\.0\.1:9464/127.0.0.1:$((METRICS_BASE))/" \
      -e "s/127\.0\.0\.1:9465/127.0.0.1:$((METRICS_BASE + 1))/" \
      -e "s/127\.0\.0\.1:9466/127.0.0.1:$((METRICS_BASE + 2))/" \
      -e "s/127\.0\.0\.1:9467/127.0.0.1:$((METRICS_BASE + 3))/" \
      "$HERE/$1.toml"
}

enrol() {
  local code="$1" name="$2" level="$3" parent="$4" home="$BASE/$1"
  if [ -e "$home/keys/sign.crt" ]; then
    say "$code: already enrolled"
    return
  fi
  if [ ! -e "$home/node.toml" ]; then
    say "$code: fednode init"
    "$FEDNODE" init "$home" --code "$code" --name "$name" --level "$level" >/dev/null
    config_for "$code" >"$home/node.toml"
  fi
  if [ -z "$parent" ]; then
    say "$code: fednode pki init-root (the province holds the root CA)"
    "$FEDNODE" pki init-root "$home" >/dev/null
  else
    say "$code: fednode pki request → $parent signs → fednode pki install"
    "$FEDNODE" pki request "$home" >"$BASE/$code.csr"
    "$FEDNODE" pki sign "$BASE/$parent" "$BASE/$code.csr" >"$BASE/$code.bundle"
    "$FEDNODE" pki install "$home" "$BASE/$code.bundle" >/dev/null
  fi
}

running() { [ -e "$1/fednode.pid" ] && kill -0 "$(cat "$1/fednode.pid")" 2>/dev/null; }

start() {
  local code="$1" home="$BASE/$1"
  if running "$home"; then
    say "$code: running (pid $(cat "$home/fednode.pid"))"
    return
  fi
  nohup "$FEDNODE" run "$home" >>"$home/node.log" 2>&1 </dev/null &
  echo $! >"$home/fednode.pid"
  say "$code: fednode run (pid $!)"
}

wait_healthy() {
  local code="$1" home="$BASE/$1" i
  for i in $(seq 1 120); do
    if "$FEDNODE" health "$home" --timeout 2 >/dev/null 2>&1; then
      say "$code: healthy"
      return 0
    fi
    if ! running "$home"; then
      say "$code: the node exited; last lines of $home/node.log:"
      tail -n 20 "$home/node.log" >&2 || true
      return 1
    fi
    sleep 0.5
  done
  say "$code: not healthy after 60 s:"
  "$FEDNODE" health "$home" >&2 || true
  return 1
}

case "$ACTION" in
  up)
    mkdir -p "$BASE"
    for row in "${NODES[@]}"; do
      IFS='|' read -r code name level parent <<<"$row"
      enrol "$code" "$name" "$level" "$parent"
    done
    for row in "${NODES[@]}"; do
      IFS='|' read -r code _ <<<"$row"
      start "$code"
      wait_healthy "$code"
    done
    say "the tree is up in $BASE: \`$0 status $BASE\`, \`$0 down $BASE\`"
    ;;
  status)
    rc=0
    for row in "${NODES[@]}"; do
      IFS='|' read -r code _ <<<"$row"
      "$FEDNODE" health "$BASE/$code" || rc=1
      "$FEDNODE" status "$BASE/$code"
      echo
    done
    exit "$rc"
    ;;
  down)
    for ((i = ${#NODES[@]} - 1; i >= 0; i--)); do
      IFS='|' read -r code _ <<<"${NODES[$i]}"
      home="$BASE/$code"
      if running "$home"; then
        kill -TERM "$(cat "$home/fednode.pid")"
        for _ in $(seq 1 40); do running "$home" || break; sleep 0.25; done
        if running "$home"; then say "$code: still running after 10 s"; exit 1; fi
        say "$code: stopped"
      fi
      rm -f "$home/fednode.pid"
    done
    ;;
  *)
    say "usage: $0 up|status|down [BASE]"
    exit 2
    ;;
esac
