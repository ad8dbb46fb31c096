#!/usr/bin/env bash
# Runs every check and test of the workspace, starting what they need.
#
#   scripts/test.sh
#
# On a fresh machine it installs PostgreSQL (Debian's package) when missing and
# starts a private server (see scripts/postgres.sh); the standby and failover
# tests start primaries and standbys of their own from the same package's
# binaries (initdb, pg_ctl, pg_basebackup), on free ports of 127.0.0.1, and
# remove them when done. It installs and starts
# tansu, a Kafka-protocol broker, for the Kafka end-to-end tests (see
# scripts/tansu.sh; its first build takes 15-20 minutes). Set DATABASE_URL or
# KAFKA_BROKERS to use servers of your own instead.
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"

step() { echo; echo "==> $*"; }

if [ -z "${DATABASE_URL:-}" ]; then
  step "starting PostgreSQL"
  DATABASE_URL="$(scripts/postgres.sh start)"
  export DATABASE_URL
fi
echo "DATABASE_URL=$DATABASE_URL"

step "PostgreSQL server binaries (for the replica tests)"
PG_BINDIR="$(scripts/postgres.sh binaries)"
# The tests look for them with pg_config --bindir, then under
# /usr/lib/postgresql, then on PATH.
export PATH="$PG_BINDIR:$PATH"
echo "$PG_BINDIR"

if [ -z "${KAFKA_BROKERS:-}" ]; then
  step "starting tansu (Kafka-protocol broker)"
  KAFKA_BROKERS="$(scripts/tansu.sh start)"
  export KAFKA_BROKERS
fi
echo "KAFKA_BROKERS=$KAFKA_BROKERS"

step "cargo fmt --check"
cargo fmt --all -- --check

step "cargo clippy"
cargo clippy --workspace --all-targets -- -D warnings

step "cargo test"
# Two test binaries at a time on two cores: the concurrency tests start
# many tasks and connections of their own.
cargo test --workspace --no-fail-fast -- --test-threads 4
