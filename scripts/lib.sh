# Shared settings and helpers for SynapseDB's scripts. Sourced, never run.
# shellcheck shell=bash

SYNAPSE_ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
export SYNAPSE_ROOT
PG_MAJOR=15
PG_BIN=/usr/lib/postgresql/$PG_MAJOR/bin
PG_CONFIG=$PG_BIN/pg_config
PGRX_VERSION=0.18.1
# Builds go to a target directory outside the clone, so fresh clones (CI) reuse earlier work.
export CARGO_TARGET_DIR=${CARGO_TARGET_DIR:-$HOME/.cache/synapse/target}
PGXS_TEST=/usr/lib/postgresql/$PG_MAJOR/lib/pgxs/src/test

die() {
  echo "error: $*" >&2
  exit 1
}

info() {
  echo "==> $*" >&2
}

# Runs a command as root: directly when we are root, through sudo otherwise.
as_root() {
  if [ "$(id -u)" -eq 0 ]; then "$@"; else sudo "$@"; fi
}

# Runs a command as the postgres OS user (PostgreSQL servers refuse to run as root).
as_postgres() {
  if [ "$(id -un)" = postgres ]; then "$@"; else as_root runuser -u postgres -- "$@"; fi
}
