#!/usr/bin/env bash
# Starts (or reuses) a private tansu broker (a Kafka-protocol broker) for
# dcb-kafka's end-to-end tests.
#
#   scripts/tansu.sh start   # installs tansu 0.6.0 if missing, starts it, prints the bootstrap address
#   scripts/tansu.sh stop
#   scripts/tansu.sh url     # prints the bootstrap address (KAFKA_BROKERS)
#
# The broker listens on 127.0.0.1:${DCB_TANSU_PORT:-19092} with memory
# storage (everything is lost when it stops). Its pid and log live in
# .dcb/tansu under the repository. Use: export KAFKA_BROKERS="$(scripts/tansu.sh start)"
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
PORT="${DCB_TANSU_PORT:-19092}"
HOST=127.0.0.1
DIR="${DCB_TANSU_DIR:-$ROOT/.dcb/tansu}"
PIDFILE="$DIR/tansu.pid"
LOGFILE="$DIR/tansu.log"
VERSION=0.6.0
CARGO_BIN="${CARGO_HOME:-$HOME/.cargo}/bin"
BIN="$CARGO_BIN/tansu"
ADDRESS="$HOST:$PORT"

log() { echo "[tansu.sh] $*" >&2; }

installed_version() {
  [ -x "$BIN" ] || return 1
  "$BIN" --version 2>/dev/null | awk '{print $2}'
}

install_tansu() {
  if [ "$(installed_version || true)" = "$VERSION" ]; then return 0; fi
  log "installing tansu $VERSION into $CARGO_BIN (takes 15-20 minutes on 2 cores)"
  cargo install tansu --version "$VERSION" --locked --features dynostore >&2
}

port_open() { (exec 3<>"/dev/tcp/$HOST/$PORT") 2>/dev/null; }

running() {
  [ -f "$PIDFILE" ] && kill -0 "$(cat "$PIDFILE")" 2>/dev/null
}

start() {
  install_tansu
  mkdir -p "$DIR"
  if running && port_open; then
    echo "$ADDRESS"
    return 0
  fi
  if port_open; then
    log "port $PORT is taken by another process; set DCB_TANSU_PORT"
    exit 1
  fi
  log "starting tansu on $ADDRESS (memory storage; log: $LOGFILE)"
  nohup "$BIN" broker \
    --listener-url "tcp://$ADDRESS" \
    --advertised-listener-url "tcp://$ADDRESS" \
    --storage-engine "memory://tansu/" \
    >"$LOGFILE" 2>&1 </dev/null &
  echo $! >"$PIDFILE"
  for _ in $(seq 1 100); do
    if port_open; then
      echo "$ADDRESS"
      return 0
    fi
    if ! running; then
      log "tansu exited; its log:"
      tail -n 30 "$LOGFILE" >&2 || true
      exit 1
    fi
    sleep 0.1
  done
  log "tansu did not open port $PORT within 10 s; its log:"
  tail -n 30 "$LOGFILE" >&2 || true
  exit 1
}

stop() {
  if running; then
    local pid
    pid="$(cat "$PIDFILE")"
    kill "$pid"
    for _ in $(seq 1 50); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
    kill -9 "$pid" 2>/dev/null || true
    log "stopped"
  fi
  rm -f "$PIDFILE"
}

case "${1:-}" in
  start) start ;;
  stop) stop ;;
  url) echo "$ADDRESS" ;;
  *) echo "usage: $0 start|stop|url" >&2; exit 2 ;;
esac
