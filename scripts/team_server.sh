#!/usr/bin/env bash
# The services a team shares, on one machine: PostgreSQL (Debian's `postgresql`), an MLflow
# tracking server whose backend store is that PostgreSQL and whose artifacts it proxies from a
# directory, and the Optuna database.
#
#   bash scripts/team_server.sh start [mlflow server options]   # set up on first use, start,
#                                                               # print what to export
#   bash scripts/team_server.sh stop
#
# Settings (environment):
#   TEAM_DIR           where everything lives (default: ./team, git-ignored)
#   TEAM_HOST          the address both servers bind (default 127.0.0.1: this machine only)
#   TEAM_PG_PORT       PostgreSQL's port (default 5433)
#   TEAM_MLFLOW_PORT   the MLflow server's port (default 5000)
#   TEAM_ALLOWED_HOSTS the names the MLflow server answers to, when TEAM_HOST is not loopback
#   TEAM_ARTIFACTS     where artifacts go (default $TEAM_DIR/artifacts; or s3://bucket/path)
#
# Passwords are generated once and written only to $TEAM_DIR/pgpass (mode 600), the file
# PostgreSQL's clients read through PGPASSFILE or as ~/.pgpass; nothing prints them.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."

TEAM_DIR="$(realpath -m "${TEAM_DIR:-team}")"
TEAM_HOST="${TEAM_HOST:-127.0.0.1}"
TEAM_PG_PORT="${TEAM_PG_PORT:-5433}"
TEAM_MLFLOW_PORT="${TEAM_MLFLOW_PORT:-5000}"
TEAM_ARTIFACTS="${TEAM_ARTIFACTS:-$TEAM_DIR/artifacts}"
PG_DATA="$TEAM_DIR/postgres/data"
PG_SOCKETS="$TEAM_DIR/postgres/run"
PGPASS="$TEAM_DIR/pgpass"
MLFLOW_PID="$TEAM_DIR/mlflow.pid"
PYTHON="${PYTHON:-$PWD/.venv/bin/python}"

pg_bin="$(ls -d /usr/lib/postgresql/*/bin 2>/dev/null | sort -V | tail -n 1)"
if [ -z "$pg_bin" ]; then
  echo "team_server: PostgreSQL is not installed: apt-get install postgresql" >&2
  exit 2
fi
as_owner=()
if [ "$(id -u)" = 0 ]; then  # PostgreSQL refuses to run as root
  as_owner=(runuser -u postgres --)
fi
pg() { "${as_owner[@]}" "$pg_bin/$1" "${@:2}"; }
psql_admin() { pg psql -h "$PG_SOCKETS" -p "$TEAM_PG_PORT" -U postgres -v ON_ERROR_STOP=1 -q "$@"; }

init_postgres() {
  mkdir -p "$PG_SOCKETS" && chmod 711 "$TEAM_DIR"  # others may pass through, not look in
  if [ "$(id -u)" = 0 ]; then
    chown -R postgres "$TEAM_DIR/postgres"
    if ! runuser -u postgres -- test -x "$TEAM_DIR/postgres"; then
      echo "team_server: user postgres cannot reach $TEAM_DIR; choose a TEAM_DIR whose parents it can enter" >&2
      exit 2
    fi
  fi
  # Local socket (in the private TEAM_DIR): trust, for this script; TCP: passwords only.
  pg initdb -D "$PG_DATA" -U postgres --auth-local=trust --auth-host=scram-sha-256 >/dev/null
  echo "host all all 0.0.0.0/0 scram-sha-256" >> "$PG_DATA/pg_hba.conf"
  echo "host all all ::/0 scram-sha-256" >> "$PG_DATA/pg_hba.conf"
}

create_databases() {
  umask 077
  : > "$PGPASS"
  for name in mlflow optuna; do
    password="$("$PYTHON" -c 'import secrets; print(secrets.token_urlsafe(24))')"
    psql_admin -c "CREATE ROLE $name LOGIN PASSWORD '$password'"
    psql_admin -c "CREATE DATABASE $name OWNER $name"
    echo "*:$TEAM_PG_PORT:$name:$name:$password" >> "$PGPASS"
  done
}

# Whether the server in $MLFLOW_PID is still running: a killed one can linger as a zombie (where
# no init reaps orphans), which `kill -0` would call alive.
mlflow_alive() {
  [ -f "$MLFLOW_PID" ] && [[ "$(ps -o stat= -p "$(cat "$MLFLOW_PID")" 2>/dev/null)" =~ ^[^Z] ]]
}

start() {
  local first=false
  if [ ! -f "$PG_DATA/PG_VERSION" ]; then
    init_postgres
    first=true
  fi
  if ! pg pg_ctl -D "$PG_DATA" status >/dev/null 2>&1; then
    pg pg_ctl -D "$PG_DATA" -w -l "$TEAM_DIR/postgres/log" start \
      -o "-p $TEAM_PG_PORT -k $PG_SOCKETS -c listen_addresses=$TEAM_HOST" >/dev/null
  fi
  $first && create_databases

  local tracking="http://$TEAM_HOST:$TEAM_MLFLOW_PORT"
  if ! mlflow_alive; then
    local allowed=()
    [ -n "${TEAM_ALLOWED_HOSTS:-}" ] && allowed=(--allowed-hosts "$TEAM_ALLOWED_HOSTS")
    # The pipeline runs no MLflow server jobs: without this, the server starts a job runner of
    # seven consumer processes that take CPU from training.
    MLFLOW_SERVER_ENABLE_JOB_EXECUTION="${MLFLOW_SERVER_ENABLE_JOB_EXECUTION:-false}" \
    PGPASSFILE="$PGPASS" setsid "$PWD/.venv/bin/mlflow" server \
      --backend-store-uri "postgresql+psycopg2://mlflow@$TEAM_HOST:$TEAM_PG_PORT/mlflow" \
      --artifacts-destination "$TEAM_ARTIFACTS" \
      --host "$TEAM_HOST" --port "$TEAM_MLFLOW_PORT" "${allowed[@]}" "$@" \
      > "$TEAM_DIR/mlflow.log" 2>&1 < /dev/null &
    echo $! > "$MLFLOW_PID"
    local answered=false
    for _ in $(seq 120); do
      "$PYTHON" -c "import urllib.request as r; r.urlopen('$tracking/health', timeout=2)" 2>/dev/null \
        && answered=true && break
      mlflow_alive || break
      sleep 1
    done
    if ! $answered; then
      cat "$TEAM_DIR/mlflow.log" >&2
      echo "team_server: the MLflow server on $tracking did not answer; its log is above" >&2
      exit 1
    fi
  fi

  cat <<EOF
team_server: PostgreSQL on $TEAM_HOST:$TEAM_PG_PORT, MLflow on $tracking (artifacts in $TEAM_ARTIFACTS)
On every machine of the team (the passwords are in $PGPASS; copy it there too, or append it
to ~/.pgpass, mode 600):
export MLFLOW_TRACKING_URI=$tracking
export PGPASSFILE=$PGPASS
export OPTUNA_STORAGE=postgresql+psycopg2://optuna@$TEAM_HOST:$TEAM_PG_PORT/optuna
EOF
}

stop() {
  if [ -f "$MLFLOW_PID" ]; then
    kill -- "-$(cat "$MLFLOW_PID")" 2>/dev/null || true  # the server and its workers
    rm -f "$MLFLOW_PID"
  fi
  if [ -f "$PG_DATA/PG_VERSION" ]; then
    pg pg_ctl -D "$PG_DATA" -m fast -w stop >/dev/null 2>&1 || true
  fi
  echo "team_server: stopped"
}

case "${1:-}" in
  start) start "${@:2}" ;;
  stop) stop ;;
  *) echo "usage: bash scripts/team_server.sh start|stop" >&2; exit 2 ;;
esac
