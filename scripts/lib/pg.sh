# Throwaway PostgreSQL 15 cluster for tests, the demo and the benchmark. Source this file, then:
#   pg_start [extra postgres -c settings...]   sets PG_DIR, PG_PORT, DEDUP_TEST_DB
#   pg_stop                                    stops the cluster and removes its directory
# The cluster lives in a temp dir, listens on 127.0.0.1 on a free port, trusts local connections,
# and runs as the `postgres` user when we are root (initdb refuses to run as root).

PG_BIN=${PG_BIN:-/usr/lib/postgresql/15/bin}

_pg_as_owner() {
  if [[ $(id -u) -eq 0 ]]; then runuser -u postgres -- "$@"; else "$@"; fi
}

_pg_free_port() {
  local port
  for _ in $(seq 1 50); do
    port=$((20000 + RANDOM % 20000))
    if ! (exec 3<>"/dev/tcp/127.0.0.1/$port") 2>/dev/null; then echo "$port"; return 0; fi
  done
  echo "pg.sh: no free port found" >&2; return 1
}

pg_start() {
  [[ -x "$PG_BIN/initdb" ]] || { echo "pg.sh: $PG_BIN/initdb missing: run scripts/setup" >&2; return 1; }
  PG_DIR=$(mktemp -d /tmp/dedup-pg.XXXXXX)
  chmod 755 "$PG_DIR"
  if [[ $(id -u) -eq 0 ]]; then chown postgres:postgres "$PG_DIR"; fi
  PG_PORT=$(_pg_free_port) || return 1
  _pg_as_owner "$PG_BIN/initdb" -D "$PG_DIR/data" -U postgres -A trust -E UTF8 --locale=C.UTF-8 \
    >"$PG_DIR/initdb.log" 2>&1 || { cat "$PG_DIR/initdb.log" >&2; return 1; }
  local opts="-c listen_addresses=127.0.0.1 -c port=$PG_PORT -c unix_socket_directories=$PG_DIR"
  opts+=" -c max_connections=200 -c shared_buffers=256MB"
  for setting in "$@"; do opts+=" -c $setting"; done
  _pg_as_owner "$PG_BIN/pg_ctl" -D "$PG_DIR/data" -l "$PG_DIR/server.log" -o "$opts" -w -t 60 start \
    >/dev/null || { cat "$PG_DIR/server.log" >&2; return 1; }
  export PG_DIR PG_PORT
  export DEDUP_TEST_DB="host=127.0.0.1 port=$PG_PORT user=postgres dbname=postgres"
  # For tests that stop and restart the server (Postgres restart during load).
  export DEDUP_TEST_PG_CTL="$PG_BIN/pg_ctl"
  export DEDUP_TEST_PG_DATA="$PG_DIR/data"
  export DEDUP_TEST_PG_LOG="$PG_DIR/server.log"
  export DEDUP_TEST_PG_OPTS="$opts"
}

pg_stop() {
  [[ -n "${PG_DIR:-}" && -d "$PG_DIR" ]] || return 0
  _pg_as_owner "$PG_BIN/pg_ctl" -D "$PG_DIR/data" -m immediate -w stop >/dev/null 2>&1 || true
  rm -rf "$PG_DIR"
  unset PG_DIR
}
