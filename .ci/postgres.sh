#!/usr/bin/env bash
# Starts a throw-away PostgreSQL server for the duet-policy store tests and exports its DSN
# as DUET_TEST_POSTGRES. Source it (`source .ci/postgres.sh`) so the export reaches the
# test step. Installs Debian's `postgresql` package if the server binaries are missing.
# The server listens on 127.0.0.1 only, runs as the `postgres` user from a temp directory,
# and is stopped when the shell that sourced this exits.
set -euo pipefail

pg_bin() { ls -d /usr/lib/postgresql/*/bin 2>/dev/null | sort -V | tail -1; }

if [ -z "$(pg_bin)" ]; then
  apt-get update -qq
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq postgresql >/dev/null
fi
PGBIN="$(pg_bin)"
if [ -z "$PGBIN" ]; then
  echo "postgres.sh: no PostgreSQL server binaries after installing" >&2
  return 1 2>/dev/null || exit 1
fi

DUET_PG_DIR="$(mktemp -d /tmp/duet-pg.XXXXXX)"
chown postgres:postgres "$DUET_PG_DIR"
DUET_PG_PORT="${DUET_PG_PORT:-55432}"
# Skip ports something already listens on (another run, a developer's server).
for _ in $(seq 1 20); do
  if (exec 3<>"/dev/tcp/127.0.0.1/$DUET_PG_PORT") 2>/dev/null; then
    DUET_PG_PORT=$((DUET_PG_PORT + 1))
  else
    break
  fi
done
as_pg() { if [ "$(id -u)" = 0 ]; then runuser -u postgres -- "$@"; else "$@"; fi; }
as_pg "$PGBIN/initdb" -D "$DUET_PG_DIR/data" -U postgres --auth=trust -E UTF8 >/dev/null
as_pg "$PGBIN/pg_ctl" -D "$DUET_PG_DIR/data" -l "$DUET_PG_DIR/log" -w \
  -o "-c listen_addresses=127.0.0.1 -p $DUET_PG_PORT -k $DUET_PG_DIR -c fsync=on" start >/dev/null
export DUET_TEST_POSTGRES="postgres://postgres@127.0.0.1:$DUET_PG_PORT/postgres"
export DUET_PG_DIR PGBIN
# Stop the server when the sourcing shell exits (CI runs end; local shells close).
trap 'runuser -u postgres -- "$PGBIN/pg_ctl" -D "$DUET_PG_DIR/data" -m fast stop >/dev/null 2>&1 || true; rm -rf "$DUET_PG_DIR"' EXIT
echo "postgres.sh: PostgreSQL ($("$PGBIN/postgres" --version)) on 127.0.0.1:$DUET_PG_PORT; DUET_TEST_POSTGRES=$DUET_TEST_POSTGRES"
