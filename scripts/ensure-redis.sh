#!/usr/bin/env bash
# Makes sure a Redis answers at REDIS_URL (default redis://127.0.0.1:6379): if none does, starts
# a redis-server there (installing Debian's package when the binary is missing and we are root).
# The server it starts keeps running for the tests that follow; it persists nothing.
set -euo pipefail
cd "$(dirname "$0")/.."
source scripts/redis-lib.sh

url="${REDIS_URL:-redis://127.0.0.1:6379}"
redis_ping "$url" && exit 0
ensure_redis_server
read -r host port < <(redis_host_port "$url")
echo "no Redis at $url: starting redis-server on $host:$port"
redis-server --daemonize yes --bind "$host" --port "$port" --save "" --appendonly no \
  --dir /tmp --logfile /tmp/agentfleet-redis-$port.log
for _ in $(seq 50); do redis_ping "$url" && exit 0; sleep 0.1; done
echo "redis-server did not start on $host:$port" >&2
exit 1
