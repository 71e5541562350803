#!/usr/bin/env bash
# make demo: the whole pipeline on a local Redis with the mock provider (no API key).
# Uses REDIS_URL when a Redis answers there; otherwise starts a private redis-server (AOF on)
# on a free loopback port in a temp dir. Stops everything it started, also on Ctrl-C.
set -euo pipefail
cd "$(dirname "$0")/.."
source scripts/redis-lib.sh

BIN=target/release
pids=()
tmp=$(mktemp -d)
namespace="demo-$$"
redis_pid=""

cleanup() {
  trap - EXIT INT TERM
  for pid in "${pids[@]}"; do kill -TERM "$pid" 2>/dev/null || true; done
  for pid in "${pids[@]}"; do wait "$pid" 2>/dev/null || true; done
  if [[ -n $redis_pid ]]; then
    kill -TERM "$redis_pid" 2>/dev/null || true
    wait "$redis_pid" 2>/dev/null || true
  elif [[ -n ${REDIS_URL:-} ]]; then
    # Shared Redis: remove what the demo wrote (the CLI knows the key names).
    AGENTFLEET_NAMESPACE=$namespace "$BIN/agentfleet" delete-namespace --yes >/dev/null 2>&1 || true
  fi
  rm -rf "$tmp"
}
trap cleanup EXIT INT TERM

echo "==> building (release)"
cargo build --release --bins --quiet

if [[ -n ${REDIS_URL:-} ]] && redis_ping "$REDIS_URL"; then
  echo "==> using the Redis at $REDIS_URL (namespace $namespace)"
elif redis_ping "redis://127.0.0.1:6379" && [[ -z ${REDIS_URL:-} ]]; then
  export REDIS_URL="redis://127.0.0.1:6379"
  echo "==> using the Redis at $REDIS_URL (namespace $namespace)"
else
  ensure_redis_server
  port=$(free_port)
  export REDIS_URL="redis://127.0.0.1:$port"
  echo "==> starting a private redis-server on 127.0.0.1:$port (AOF on, data in $tmp)"
  redis-server --port "$port" --bind 127.0.0.1 --appendonly yes --appendfsync everysec \
    --save "" --dir "$tmp" --logfile "$tmp/redis.log" &
  redis_pid=$!
  for _ in $(seq 50); do redis_ping "$REDIS_URL" && break; sleep 0.1; done
fi
export AGENTFLEET_NAMESPACE=$namespace

echo "==> starting one reasoning worker and one synthesis worker (mock provider)"
"$BIN/reasoning-worker" --provider mock --concurrency 200 --metrics-addr 127.0.0.1:0 2>"$tmp/reasoning.log" &
pids+=($!)
"$BIN/synthesis-worker" --provider mock --concurrency 200 --metrics-addr 127.0.0.1:0 2>"$tmp/synthesis.log" &
pids+=($!)

prompts=(
  "Why do distributed queues need visibility timeouts?"
  "What makes a retry policy safe for non-idempotent side effects?"
  "How should a worker fleet behave during a rolling update?"
  "When is at-least-once delivery better than at-most-once?"
  "What does a dead-letter queue tell an operator?"
)
ids=()
for p in "${prompts[@]}"; do
  ids+=("$("$BIN/agentfleet" enqueue "$p")")
done
echo "==> enqueued ${#ids[@]} tasks; waiting for answers"
"$BIN/agentfleet" wait "${ids[@]}" --timeout 60 >/dev/null
for i in "${!ids[@]}"; do
  echo
  echo "task ${ids[$i]}: ${prompts[$i]}"
  "$BIN/agentfleet" status "${ids[$i]}" | sed -n '/^answer:/,$p' | tail -n +2
done

echo
echo "==> throughput: 5000 tasks through both roles"
start=$(date +%s.%N)
"$BIN/agentfleet" enqueue --count 5000 --prompt "load test" 2>/dev/null
while :; do
  done_count=$("$BIN/agentfleet" queues --json | python3 -c 'import json,sys; print(json.load(sys.stdin)[1]["done"])')
  [[ $done_count -ge 5005 ]] && break
  sleep 0.2
done
end=$(date +%s.%N)
python3 -c "import sys; s=float(sys.argv[2])-float(sys.argv[1]); print(f'5000 tasks (10000 jobs) enqueued and finished in {s:.2f}s: {5000/s:.0f} tasks/s end to end')" "$start" "$end"
"$BIN/agentfleet" queues
