#!/usr/bin/env bash
# A throwaway PostgreSQL cluster on loopback, for `make server` with PostgreSQL backends and for
# `make test-integration`:
#   infra/local/postgres.sh start DIR [PORT]   # initdb DIR/data, listen on 127.0.0.1:PORT (default 5432),
#                                              # create databases `prefect` and `mlflow`
#   source DIR/env.sh                          # exports PREFECT_API_DATABASE_CONNECTION_URL, MLFLOW_BACKEND_STORE_URI
#   infra/local/postgres.sh stop DIR           # stop the server (DIR stays; rm -rf it to drop everything)
# The password is generated per cluster (or taken from $LMFORGE_PG_PASSWORD) and only written to
# DIR/env.sh (mode 600); it is never printed. As root, the server runs as the `postgres` user.
# MLflow's URL names the psycopg2 driver: SQLAlchemy 2.1 defaults `postgresql://` to psycopg (v3).
set -euo pipefail

usage() { echo "usage: $0 start DIR [PORT] | stop DIR | status DIR" >&2; exit 2; }
[[ $# -ge 2 ]] || usage
cmd=$1 dir=$2 port=${3:-5432}
user=lmforge

find_bin() {  # PATH first, then Debian's versioned folder
  command -v "$1" 2>/dev/null || ls -d /usr/lib/postgresql/*/bin/"$1" 2>/dev/null | sort -V | tail -1
}
PG_CTL=$(find_bin pg_ctl); INITDB=$(find_bin initdb); PSQL=$(find_bin psql)
[[ -n $PG_CTL && -n $INITDB && -n $PSQL ]] || { echo 'PostgreSQL binaries not found: run `make services`' >&2; exit 3; }

as_owner() {  # postgres refuses to run as root
  if [[ $(id -u) == 0 ]]; then runuser -u postgres -- "$@"; else "$@"; fi
}

case $cmd in
  start)
    mkdir -p "$dir"
    dir=$(cd "$dir" && pwd)
    [[ -e $dir/data ]] && { echo "$dir/data exists: stop and remove it first" >&2; exit 1; }
    mkdir -p "$dir/data" "$dir/run"
    [[ $(id -u) == 0 ]] && chown postgres: "$dir" "$dir/data" "$dir/run" && chmod 755 "$dir"
    password=${LMFORGE_PG_PASSWORD:-$(head -c 24 /dev/urandom | od -An -tx1 | tr -d ' \n')}
    pwfile=$(mktemp "$dir/run/pw.XXXXXX")
    printf '%s\n' "$password" >"$pwfile"
    [[ $(id -u) == 0 ]] && chown postgres: "$pwfile"
    as_owner "$INITDB" -D "$dir/data" -U "$user" --pwfile="$pwfile" --auth-host=scram-sha-256 \
      --auth-local=scram-sha-256 -E UTF8 --no-locale >"$dir/initdb.log" 2>&1 \
      || { rm -f "$pwfile"; echo "initdb failed; see $dir/initdb.log" >&2; exit 1; }
    rm -f "$pwfile"
    as_owner "$PG_CTL" -D "$dir/data" -l "$dir/run/postgres.log" -w -t 60 \
      -o "-c listen_addresses=127.0.0.1 -p $port -k $dir/run" start >/dev/null \
      || { echo "postgres did not start; see $dir/run/postgres.log" >&2; exit 1; }
    for db in prefect mlflow; do
      PGPASSWORD=$password "$PSQL" -q -h 127.0.0.1 -p "$port" -U "$user" -d postgres -v ON_ERROR_STOP=1 \
        -c "CREATE DATABASE $db" >/dev/null
    done
    umask 077
    cat >"$dir/env.sh" <<EOF
export PREFECT_API_DATABASE_CONNECTION_URL=postgresql+asyncpg://$user:$password@127.0.0.1:$port/prefect
export MLFLOW_BACKEND_STORE_URI=postgresql+psycopg2://$user:$password@127.0.0.1:$port/mlflow
EOF
    echo "PostgreSQL on 127.0.0.1:$port (data: $dir/data); connection URLs: source $dir/env.sh"
    ;;
  stop)
    dir=$(cd "$dir" && pwd)
    [[ -f $dir/data/postmaster.pid ]] || { echo "not running: $dir/data"; exit 0; }
    as_owner "$PG_CTL" -D "$dir/data" -m fast -w -t 60 stop >/dev/null
    echo "stopped PostgreSQL in $dir/data"
    ;;
  status)
    as_owner "$PG_CTL" -D "$dir/data" status
    ;;
  *) usage ;;
esac
