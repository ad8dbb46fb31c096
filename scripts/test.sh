#!/usr/bin/env bash
# Runs every check and test of the workspace, starting what they need.
#
#   scripts/test.sh
#
# On a fresh machine it installs PostgreSQL (Debian's package) when missing and
# starts a private server (see scripts/postgres.sh). Set DATABASE_URL to use a
# server of your own instead.
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

step "cargo fmt --check"
cargo fmt --all -- --check

step "cargo clippy"
cargo clippy --workspace --all-targets --locked -- -D warnings

step "cargo test"
# Two test binaries at a time on two cores: the concurrency tests start
# many tasks and connections of their own.
cargo test --workspace --locked -- --test-threads 4
