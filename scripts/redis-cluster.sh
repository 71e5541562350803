#!/usr/bin/env bash
# A local Redis Cluster for the tests, the bench and the docs: three masters with one replica
# each, on loopback ports BASE..BASE+5 (BASE from AGENTFLEET_CLUSTER_PORT, default 7000).
#
#   scripts/redis-cluster.sh start    # idempotent: exits 0 at once when the cluster is up
#   scripts/redis-cluster.sh stop     # stops the six servers this script started
#   scripts/redis-cluster.sh seeds    # prints the seed list for --redis-url
#
# Nothing is kept on disk beyond nodes-PORT.conf under the run directory, which `stop`
# removes. Servers run with `--enable-debug-command local` (tests use DEBUG SLEEP) and a
# short node timeout (2 s) so that a failover takes seconds; a replica may always take over
# (validity factor 0: a quiet test cluster would otherwise judge its replicas too stale).
#
# With AGENTFLEET_CLUSTER_TLS_DIR (a directory holding ca.crt, server.crt/.key and
# client.crt/.key) the nodes speak TLS only: to clients, to each other (cluster bus) and to
# their replicas, presenting client.crt to each other; a client certificate is checked when
# one is given (tls-auth-clients optional). `seeds` then prints rediss:// URLs.
set -euo pipefail
cd "$(dirname "$0")/.."
source scripts/redis-lib.sh

base="${AGENTFLEET_CLUSTER_PORT:-7000}"
dir="${AGENTFLEET_CLUSTER_DIR:-/tmp/agentfleet-cluster-$base}"
tls="${AGENTFLEET_CLUSTER_TLS_DIR:-}"
ports=()
for i in 0 1 2 3 4 5; do ports+=($((base + i))); done

cli() {
  if [[ -n $tls ]]; then
    redis-cli --tls --cacert "$tls/ca.crt" --cert "$tls/client.crt" --key "$tls/client.key" "$@"
  else
    redis-cli "$@"
  fi
}

# The arguments that make a node listen on PORT (TLS only when asked).
listen_args() {
  if [[ -n $tls ]]; then
    echo --port 0 --tls-port "$1" --tls-cert-file "$tls/server.crt" --tls-key-file "$tls/server.key" \
      --tls-ca-cert-file "$tls/ca.crt" --tls-client-cert-file "$tls/client.crt" \
      --tls-client-key-file "$tls/client.key" --tls-auth-clients optional \
      --tls-cluster yes --tls-replication yes
  else
    echo --port "$1"
  fi
}

node_ping() {
  [[ $(cli -p "$1" ping 2>/dev/null) == PONG ]]
}

seeds() {
  local out=() p scheme=redis
  [[ -n $tls ]] && scheme=rediss
  for p in "${ports[@]:0:3}"; do out+=("$scheme://127.0.0.1:$p"); done
  (IFS=,; echo "${out[*]}")
}

cluster_ok() {
  command -v redis-cli >/dev/null 2>&1 || return 1
  local info
  info=$(cli -p "$base" cluster info 2>/dev/null) || return 1
  [[ $info == *"cluster_state:ok"* ]] || return 1
  # Three masters, each with a replica.
  [[ $(cli -p "$base" cluster nodes 2>/dev/null | grep -c slave) -ge 3 ]]
}

start() {
  if cluster_ok; then
    echo "redis cluster already up on 127.0.0.1:${ports[0]}-${ports[5]}"
    return 0
  fi
  ensure_redis_server
  command -v redis-cli >/dev/null 2>&1 || {
    echo "redis-cli not found (Debian package redis-tools)" >&2
    return 1
  }
  mkdir -p "$dir"
  local p
  for p in "${ports[@]}"; do
    if node_ping "$p"; then
      # A node left from an earlier start that did not form a cluster: start it afresh.
      cli -p "$p" shutdown nosave >/dev/null 2>&1 || true
    fi
    rm -f "$dir/nodes-$p.conf"
    # shellcheck disable=SC2046 # listen_args is a word list by design
    redis-server --daemonize yes --bind 127.0.0.1 $(listen_args "$p") --save "" --appendonly no \
      --cluster-enabled yes --cluster-config-file "nodes-$p.conf" --cluster-node-timeout 2000 \
      --cluster-replica-validity-factor 0 --repl-diskless-sync-delay 0 \
      --enable-debug-command local --dir "$dir" --logfile "$dir/redis-$p.log" \
      --pidfile "$dir/redis-$p.pid"
  done
  for p in "${ports[@]}"; do
    for _ in $(seq 50); do node_ping "$p" && break; sleep 0.1; done
    node_ping "$p" || { echo "redis-server did not start on $p" >&2; return 1; }
  done
  local nodes=()
  for p in "${ports[@]}"; do nodes+=("127.0.0.1:$p"); done
  cli --cluster create "${nodes[@]}" --cluster-replicas 1 --cluster-yes >"$dir/create.log" 2>&1 || {
    cat "$dir/create.log" >&2
    return 1
  }
  for _ in $(seq 100); do cluster_ok && break; sleep 0.1; done
  cluster_ok || { echo "the cluster did not come up (see $dir)" >&2; return 1; }
  # Every node must agree on the slots before clients use it.
  for _ in $(seq 100); do
    cli --cluster check "127.0.0.1:$base" >/dev/null 2>&1 && break
    sleep 0.1
  done
  # A replica promoted before its first sync would take over with an empty dataset.
  for p in "${ports[@]}"; do
    for _ in $(seq 100); do
      local info
      info=$(cli -p "$p" info replication 2>/dev/null)
      [[ $info == *"role:master"* || $info == *"master_link_status:up"* ]] && break
      sleep 0.1
    done
    [[ $(cli -p "$p" info replication) == *"role:master"* || \
       $(cli -p "$p" info replication) == *"master_link_status:up"* ]] || {
      echo "replica on $p did not sync with its master (see $dir)" >&2
      return 1
    }
  done
  echo "redis cluster up: $(seeds)"
}

stop() {
  local p
  for p in "${ports[@]}"; do
    if [[ -f "$dir/redis-$p.pid" ]]; then
      kill "$(cat "$dir/redis-$p.pid")" 2>/dev/null || true
    fi
  done
  rm -rf "$dir"
}

case "${1:-}" in
  start) start ;;
  stop) stop ;;
  seeds) seeds ;;
  *) echo "usage: $0 start|stop|seeds" >&2; exit 64 ;;
esac
