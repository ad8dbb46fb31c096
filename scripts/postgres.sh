#!/usr/bin/env bash
# Starts (or reuses) a private PostgreSQL for dcb's tests and the cart example.
#
#   scripts/postgres.sh start     # installs PostgreSQL if missing, starts it, prints DATABASE_URL
#   scripts/postgres.sh stop
#   scripts/postgres.sh url
#   scripts/postgres.sh binaries  # installs PostgreSQL if missing, prints its bin directory
#                                 # (the standby and failover tests start servers from it)
#
# Data lives in .dcb/postgres under the repository (kept across runs). The
# server listens on 127.0.0.1:${DCB_PG_PORT:-54329} with trust auth for local
# connections only. PostgreSQL refuses to run as root, so as root the server
# runs as the unprivileged `postgres` user.
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
PORT="${DCB_PG_PORT:-54329}"
DATA="${DCB_PG_DATA:-$ROOT/.dcb/postgres}"
URL="postgres://postgres@127.0.0.1:${PORT}/postgres"

log() { echo "[postgres.sh] $*" >&2; }

find_bindir() {
  if command -v pg_config >/dev/null 2>&1; then
    local dir
    dir="$(pg_config --bindir)"
    if [ -x "$dir/initdb" ] && [ -x "$dir/pg_ctl" ]; then echo "$dir"; return 0; fi
  fi
  for dir in /usr/lib/postgresql/*/bin; do
    if [ -x "$dir/initdb" ] && [ -x "$dir/pg_ctl" ]; then echo "$dir"; return 0; fi
  done
  return 1
}

install_postgres() {
  if [ "$(id -u)" != 0 ]; then
    log "PostgreSQL is not installed and this user cannot install it; run: sudo apt-get install -y postgresql"
    exit 1
  fi
  log "installing PostgreSQL from Debian's packages"
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq >&2
  apt-get install -y -qq postgresql >&2
}

# Runs a command as the user that owns the data directory.
as_owner() {
  if [ "$(id -u)" = 0 ]; then
    runuser -u postgres -- "$@"
  else
    "$@"
  fi
}

start() {
  local bindir
  bindir="$(find_bindir)" || { install_postgres; bindir="$(find_bindir)"; }
  mkdir -p "$DATA"
  if [ "$(id -u)" = 0 ] && ! runuser -u postgres -- test -x "$DATA/.."; then
    # The postgres user cannot reach a folder under this checkout (e.g. it
    # lives in root's home): keep the cluster in a world-reachable place.
    rmdir "$DATA" 2>/dev/null || true
    DATA="/var/tmp/dcb-postgres-$PORT"
    mkdir -p "$DATA"
  fi
  if [ "$(id -u)" = 0 ]; then
    id postgres >/dev/null 2>&1 || { log "no postgres user; install the postgresql package"; exit 1; }
    chown postgres: "$DATA"
    chmod 700 "$DATA"
  fi
  if [ ! -f "$DATA/PG_VERSION" ]; then
    log "initialising a database cluster in $DATA"
    as_owner "$bindir/initdb" -D "$DATA" -U postgres --auth=trust --encoding=UTF8 --locale=C.UTF-8 >/dev/null
    cat >> "$DATA/postgresql.conf" <<CONF
# dcb test server
listen_addresses = '127.0.0.1'
port = $PORT
unix_socket_directories = '$DATA'
max_connections = 400
shared_buffers = 256MB
CONF
  fi
  if as_owner "$bindir/pg_ctl" -D "$DATA" status >/dev/null 2>&1; then
    # The cluster may have been started for another DCB_PG_PORT: its real
    # port is the fourth line of postmaster.pid.
    local running
    running="$(sed -n 4p "$DATA/postmaster.pid" 2>/dev/null)"
    if [ -n "$running" ] && [ "$running" != "$PORT" ]; then
      log "the PostgreSQL in $DATA already runs on port $running, not $PORT:"
      log "use DCB_PG_PORT=$running, or stop it first (DCB_PG_PORT=$running $0 stop)"
      exit 1
    fi
    log "already running on port $PORT"
  else
    log "starting PostgreSQL on 127.0.0.1:$PORT"
    # The port is given at every start (not only in the config written at
    # initdb), so a cluster made for another DCB_PG_PORT follows this one.
    as_owner "$bindir/pg_ctl" -D "$DATA" -l "$DATA/server.log" -o "-p $PORT" -w -t 60 start >/dev/null \
      || { log "PostgreSQL failed to start; see $DATA/server.log"; tail -20 "$DATA/server.log" >&2; exit 1; }
  fi
  echo "$URL"
}

stop() {
  local bindir
  bindir="$(find_bindir)" || exit 0
  [ -f "$DATA/PG_VERSION" ] || DATA="/var/tmp/dcb-postgres-$PORT"
  if [ -f "$DATA/PG_VERSION" ]; then
    as_owner "$bindir/pg_ctl" -D "$DATA" -m fast stop >/dev/null 2>&1 || true
  fi
}

binaries() {
  local bindir
  bindir="$(find_bindir)" || { install_postgres; bindir="$(find_bindir)"; }
  [ -x "$bindir/pg_basebackup" ] || { log "no pg_basebackup in $bindir"; exit 1; }
  if [ "$(id -u)" = 0 ]; then
    # As root the test servers run as the postgres user, through runuser.
    id postgres >/dev/null 2>&1 || { log "no postgres user; install the postgresql package"; exit 1; }
    command -v runuser >/dev/null 2>&1 || { log "runuser is missing (util-linux)"; exit 1; }
  fi
  echo "$bindir"
}

case "${1:-start}" in
  start) start ;;
  stop) stop ;;
  url) echo "$URL" ;;
  binaries) binaries ;;
  *) echo "usage: $0 start|stop|url|binaries" >&2; exit 2 ;;
esac
