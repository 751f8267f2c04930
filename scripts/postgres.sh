#!/usr/bin/env bash
# A throwaway PostgreSQL server for the scale-out tests (issue #7 item 6).
#
# Installs Debian's postgresql when missing (as root), runs a private cluster on
# 127.0.0.1 (initdb in .pgdata/, owned by the postgres user: no systemd needed, and
# the machine's own clusters are left alone), creates the role and database, and
# writes `export SWITCHMAN_TEST_PG_URL=...` to .pg.env, which `make test` sources.
# Idempotent: a running server is reused, so a re-run takes well under a second.
set -euo pipefail
cd "$(dirname "$0")/.."
PORT="${SWITCHMAN_PG_PORT:-55432}"
DATA="${SWITCHMAN_PG_DATA:-$PWD/.pgdata}"
ENV_FILE="$PWD/.pg.env"
DB=switchman_test
ROLE=switchman
PASS=switchman

if ! command -v dpkg-query >/dev/null 2>&1; then
  echo "postgres.sh: not a Debian system; set SWITCHMAN_TEST_PG_URL yourself" >&2; exit 0
fi
bindir=$(ls -d /usr/lib/postgresql/*/bin 2>/dev/null | sort -V | tail -1 || true)
if [ -z "$bindir" ]; then
  if [ "$(id -u)" != "0" ]; then
    echo "postgres.sh: postgresql is not installed (sudo apt-get install postgresql)" >&2; exit 0
  fi
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq >/dev/null
  apt-get install -y -qq --no-install-recommends postgresql >/dev/null
  bindir=$(ls -d /usr/lib/postgresql/*/bin | sort -V | tail -1)
fi

# The server refuses to run as root: run it as the postgres user (or ourselves).
if [ "$(id -u)" = "0" ]; then
  RUN=(runuser -u postgres --); OWNER=postgres
else
  RUN=(); OWNER=$(id -un)
fi
mkdir -p "$DATA"
chown "$OWNER" "$DATA"
chmod 700 "$DATA"
if [ ! -f "$DATA/PG_VERSION" ]; then
  "${RUN[@]}" "$bindir/initdb" -D "$DATA" -U postgres -A trust --no-sync -E UTF8 >/dev/null
  # test-only server: durability traded for speed, loopback only
  cat >>"$DATA/postgresql.conf" <<CONF
listen_addresses = '127.0.0.1'
port = $PORT
unix_socket_directories = '$DATA'
fsync = off
synchronous_commit = off
full_page_writes = off
max_connections = 200
CONF
fi
if ! "${RUN[@]}" "$bindir/pg_ctl" -D "$DATA" status >/dev/null 2>&1; then
  "${RUN[@]}" "$bindir/pg_ctl" -D "$DATA" -l "$DATA/server.log" -w -t 30 start >/dev/null
fi
psql=("${RUN[@]}" "$bindir/psql" -h 127.0.0.1 -p "$PORT" -U postgres -qAt -v ON_ERROR_STOP=1)
"${psql[@]}" -d postgres -c "SELECT 1 FROM pg_roles WHERE rolname='$ROLE'" | grep -q 1 ||
  "${psql[@]}" -d postgres -c "CREATE ROLE $ROLE LOGIN PASSWORD '$PASS' CREATEDB"
"${psql[@]}" -d postgres -c "SELECT 1 FROM pg_database WHERE datname='$DB'" | grep -q 1 ||
  "${psql[@]}" -d postgres -c "CREATE DATABASE $DB OWNER $ROLE"

URL="postgresql+psycopg://$ROLE:$PASS@127.0.0.1:$PORT/$DB"
echo "export SWITCHMAN_TEST_PG_URL=$URL" >"$ENV_FILE"
echo "SWITCHMAN_TEST_PG_URL=$URL"
