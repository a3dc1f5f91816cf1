#!/usr/bin/env bash
# A PostgreSQL for the tracking server on this machine, listening on loopback only.
#
#   sudo PG_PASSWORD=... deploy/postgres/start-local.sh     # Debian/Ubuntu, as root
#
# Installs Debian's `postgresql` package if it is missing, starts its cluster, and creates (or
# updates) a login role that may create databases, and a database. Prints the SQLAlchemy URI with
# the password masked; the password itself is only ever taken from PG_PASSWORD.
# Settings: PG_USER (mlflow), PG_DB (mlflow), PG_PORT (5432).
set -euo pipefail

: "${PG_PASSWORD:?set PG_PASSWORD to the password the role should have}"
PG_USER=${PG_USER:-mlflow}
PG_DB=${PG_DB:-mlflow}
PG_PORT=${PG_PORT:-5432}

if [ "$(id -u)" != 0 ]; then
  echo "start-local.sh: run as root (it installs packages and starts the cluster as user postgres)" >&2
  exit 2
fi
if ! command -v pg_ctlcluster >/dev/null; then
  apt-get update -qq
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq postgresql >/dev/null
fi
version=$(ls /usr/lib/postgresql | sort -V | tail -n 1)
if ! pg_lsclusters --no-header | awk '{print $1, $2}' | grep -qx "$version main"; then
  pg_createcluster --port "$PG_PORT" "$version" main >/dev/null
fi
# loopback only, whatever the cluster was created with
pg_conftool "$version" main set listen_addresses localhost
pg_conftool "$version" main set port "$PG_PORT"
if pg_lsclusters --no-header | awk -v v="$version" '$1 == v && $2 == "main" {print $4}' | grep -q online; then
  pg_ctlcluster "$version" main restart
else
  pg_ctlcluster "$version" main start
fi
for _ in $(seq 30); do
  pg_isready -q -h 127.0.0.1 -p "$PG_PORT" && break
  sleep 1
done

# the password goes in as a psql variable, which psql quotes (no SQL built by hand)
su postgres -c "psql -q -v ON_ERROR_STOP=1 -p $PG_PORT -v user=$PG_USER -v db=$PG_DB -v pass=\"\$PG_PASSWORD\"" <<'SQL'
SELECT format('CREATE ROLE %I LOGIN CREATEDB', :'user')
  WHERE NOT EXISTS (SELECT FROM pg_roles WHERE rolname = :'user') \gexec
ALTER ROLE :"user" WITH LOGIN CREATEDB PASSWORD :'pass';
SELECT format('CREATE DATABASE %I OWNER %I', :'db', :'user')
  WHERE NOT EXISTS (SELECT FROM pg_database WHERE datname = :'db') \gexec
SQL
echo "postgresql://$PG_USER:***@127.0.0.1:$PG_PORT/$PG_DB"
