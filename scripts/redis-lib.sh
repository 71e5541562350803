# Shared shell helpers for the demo and CI: talk to Redis without redis-cli, and start a
# redis-server when none answers. Sourced, not run.

# redis_host_port URL -> "host port" (redis://[user:pass@]host:port[/db])
redis_host_port() {
  local rest=${1#*://}
  rest=${rest##*@}
  rest=${rest%%/*}
  local host=${rest%%:*} port=6379
  [[ $rest == *:* ]] && port=${rest##*:}
  echo "$host $port"
}

# redis_ping URL: true when a Redis answers PONG there.
redis_ping() {
  local host port reply
  read -r host port < <(redis_host_port "$1")
  { exec 3<>"/dev/tcp/$host/$port"; } 2>/dev/null || return 1
  printf 'PING\r\n' >&3
  IFS= read -r -t 2 reply <&3 || true
  exec 3<&- 3>&-
  [[ $reply == +PONG* ]]
}

# ensure_redis_server: install Debian's redis-server when the binary is missing.
ensure_redis_server() {
  command -v redis-server >/dev/null 2>&1 && return 0
  if [[ $(id -u) -eq 0 ]] && command -v apt-get >/dev/null 2>&1; then
    echo "redis-server not found: installing Debian's redis-server package" >&2
    apt-get update -qq >/dev/null && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq redis-server >/dev/null
  else
    echo "redis-server not found: install Redis (e.g. apt-get install redis-server) or set REDIS_URL" >&2
    return 1
  fi
}

# free_port: a free loopback TCP port.
free_port() {
  python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'
}
