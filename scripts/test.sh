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
# scripts/tansu.sh; its first build takes 15-20 minutes), and installs Chromium
# and chromedriver (Debian's packages) for the console's browser test. Set
# DATABASE_URL or KAFKA_BROKERS to use servers of your own instead.
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

step "mdbook build docs (the user guide)"
# The guide's code is tested as doctests of docs/guide (cargo test below);
# this checks that the book itself builds. mdbook is installed once (about
# 3-5 minutes of compiling on two cores), then reused.
if ! command -v mdbook >/dev/null 2>&1; then
  cargo install mdbook --version 0.5.4 --locked
fi
mdbook build docs

step "cargo package (the library crates)"
# Packaged together, so each verifies against the others' packaged sources
# before any is on crates.io (see docs/src/publishing.md).
# Cargo unpacks those packaged sources under $CARGO_HOME/registry/src/-<hash of
# this checkout's path>/ and reuses an unpacked crate of the same name and
# version without comparing it: a checkout at this path that packaged an older
# 0.1.0 before would verify against that old source. Remove ours first.
cargo_home="${CARGO_HOME:-$HOME/.cargo}"
for krate in dcb-core dcb-macros dcb-postgres dcb-kafka; do
  rm -rf "$cargo_home"/registry/src/-*/"$krate"-[0-9]*
done
cargo package -p dcb-core -p dcb-macros -p dcb-postgres -p dcb-kafka --allow-dirty --quiet

if [ ! -x /usr/bin/chromium ] || [ ! -x /usr/bin/chromedriver ]; then
  step "installing Chromium and chromedriver (the console's browser test)"
  if [ "$(id -u)" != 0 ]; then
    echo "this user cannot install them; run: sudo apt-get install -y chromium chromium-driver" >&2
    exit 1
  fi
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq
  apt-get install -y -qq chromium chromium-driver
fi

step "cargo fmt --check"
cargo fmt --all -- --check

step "cargo clippy"
cargo clippy --workspace --all-targets -- -D warnings

step "cargo test"
# Two test binaries at a time on two cores: the concurrency tests start
# many tasks and connections of their own.
cargo test --workspace --no-fail-fast -- --test-threads 4
