#!/usr/bin/env bash
# A local Redis Cluster for trying TTG on one: N primaries (3..=16, default 3), each
# with one replica, as redis-server processes on loopback, data and logs in
# DIR (default target/redis-cluster).
#
#   scripts/redis-cluster.sh start [N]   # prints the --redis-cluster seed list
#   scripts/redis-cluster.sh stop
#
# Ports: 7000 + i for clients, 17000 + i for the cluster bus (set
# TTG_CLUSTER_PORT to move the base). A killed primary's replica takes over
# after the 1 s node timeout. Then:
#
#   ttg-server --redis-cluster "$(scripts/redis-cluster.sh seeds)" …
#   ttg-agent  --redis-cluster "$(scripts/redis-cluster.sh seeds)" …
set -euo pipefail
cd "$(dirname "$0")/.."

DIR=$(realpath -m "${TTG_CLUSTER_DIR:-target/redis-cluster}")
BASE=${TTG_CLUSTER_PORT:-7000}

usage() {
  echo "usage: $0 start [primaries (3..=16)] | stop | seeds" >&2
  exit 2
}

nodes() { cat "$DIR/ports" 2>/dev/null || true; }

seeds() {
  local out=()
  for p in $(nodes); do out+=("redis://127.0.0.1:$p"); done
  (IFS=,; echo "${out[*]}")
}

stop() {
  local pids=()
  for p in $(nodes); do
    if [ -f "$DIR/$p/pid" ]; then pids+=("$(cat "$DIR/$p/pid")"); fi
  done
  for pid in "${pids[@]}"; do kill "$pid" 2>/dev/null || true; done
  for pid in "${pids[@]}"; do
    for _ in $(seq 100); do kill -0 "$pid" 2>/dev/null || break; sleep 0.05; done
  done
  rm -rf "$DIR"
}

start() {
  local n=${1:-3}
  case "$n" in ''|*[!0-9]*) usage ;; esac
  if [ "$n" -lt 3 ] || [ "$n" -gt 16 ]; then usage; fi  # Redis Cluster needs 3 primaries
  command -v redis-server >/dev/null && command -v redis-cli >/dev/null || {
    echo "redis-cluster: redis-server and redis-cli are needed: run scripts/setup.sh" >&2
    exit 1
  }
  if [ -s "$DIR/ports" ]; then
    echo "redis-cluster: one runs already in $DIR ($0 stop first)" >&2
    exit 1
  fi
  mkdir -p "$DIR"
  local addrs=()
  for i in $(seq 0 $((2 * n - 1))); do
    local p=$((BASE + i))
    if redis-cli -p "$p" ping >/dev/null 2>&1; then
      echo "redis-cluster: port $p is taken (set TTG_CLUSTER_PORT)" >&2
      stop
      exit 1
    fi
    mkdir -p "$DIR/$p"
    echo "$p" >>"$DIR/ports"
    redis-server --port "$p" --cluster-port $((p + 10000)) --bind 127.0.0.1 \
      --cluster-enabled yes --cluster-config-file nodes.conf --cluster-node-timeout 1000 \
      --repl-diskless-sync-delay 0 \
      --appendonly yes --save "" --dir "$DIR/$p" --logfile "$DIR/$p/redis.log" \
      --daemonize yes --pidfile "$DIR/$p/pid"
    addrs+=("127.0.0.1:$p")
  done
  for p in $(nodes); do
    for _ in $(seq 100); do redis-cli -p "$p" ping >/dev/null 2>&1 && break; sleep 0.05; done
  done
  if ! redis-cli --cluster create "${addrs[@]}" --cluster-replicas 1 --cluster-yes >"$DIR/create.log" 2>&1; then
    cat "$DIR/create.log" >&2
    stop
    exit 1
  fi
  for _ in $(seq 200); do
    redis-cli -p "$BASE" cluster info | grep -q cluster_state:ok && break
    sleep 0.1
  done
  # A replica is a copy only once its first sync is done.
  for p in $(nodes); do
    for _ in $(seq 200); do
      info=$(redis-cli -p "$p" info replication)
      if grep -q role:master <<<"$info" || { grep -q master_link_status:up <<<"$info" &&
        grep -q master_sync_in_progress:0 <<<"$info"; }; then break; fi
      sleep 0.1
    done
  done
  seeds
}

case "${1:-}" in
  start) start "${2:-3}" ;;
  stop) stop ;;
  seeds) seeds ;;
  *) usage ;;
esac
