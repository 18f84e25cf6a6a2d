#!/usr/bin/env bash
# Start a local Prefect server and MLflow server on loopback; Ctrl-C stops both.
# Backends: SQLite under $STATE_DIR by default; PostgreSQL when the URLs below are set:
#   PREFECT_API_DATABASE_CONNECTION_URL=postgresql+asyncpg://user:pass@127.0.0.1:5432/prefect
#   MLFLOW_BACKEND_STORE_URI=postgresql+psycopg2://user:pass@127.0.0.1:5432/mlflow
set -euo pipefail
BIN=${BIN:-.venv/bin}
HOST=${HOST:-127.0.0.1}
PREFECT_PORT=${PREFECT_PORT:-4200}
MLFLOW_PORT=${MLFLOW_PORT:-5000}
STATE_DIR=${STATE_DIR:-artifacts/servers}
mkdir -p "$STATE_DIR"
STATE_DIR=$(cd "$STATE_DIR" && pwd)

export PREFECT_SERVER_ANALYTICS_ENABLED=false
export PREFECT_HOME=${PREFECT_HOME:-$STATE_DIR/prefect-home}
# Connection URLs (passwords in them) reach the servers through the environment only, never their
# command lines (which `ps` shows to every user): Prefect reads PREFECT_API_DATABASE_CONNECTION_URL, and
# `mlflow server` reads MLFLOW_BACKEND_STORE_URI when --backend-store-uri is not given.
export MLFLOW_BACKEND_STORE_URI=${MLFLOW_BACKEND_STORE_URI:-sqlite:///$STATE_DIR/mlflow.db}
MLFLOW_ARTIFACTS=${MLFLOW_ARTIFACTS_DESTINATION:-$STATE_DIR/mlflow-artifacts}

pids=()
cleanup() { kill "${pids[@]}" 2>/dev/null || true; wait || true; }
trap cleanup EXIT INT TERM

"$BIN/prefect" server start --host "$HOST" --port "$PREFECT_PORT" >"$STATE_DIR/prefect.log" 2>&1 &
pids+=($!)
"$BIN/mlflow" server --artifacts-destination "$MLFLOW_ARTIFACTS" \
  --host "$HOST" --port "$MLFLOW_PORT" >"$STATE_DIR/mlflow.log" 2>&1 &
pids+=($!)

for _ in $(seq 1 120); do
  if curl -fsS "http://$HOST:$PREFECT_PORT/api/health" >/dev/null 2>&1 && curl -fsS "http://$HOST:$MLFLOW_PORT/health" >/dev/null 2>&1; then
    echo "Prefect UI: http://$HOST:$PREFECT_PORT   (export PREFECT_API_URL=http://$HOST:$PREFECT_PORT/api)"
    echo "MLflow UI:  http://$HOST:$MLFLOW_PORT   (export MLFLOW_TRACKING_URI=http://$HOST:$MLFLOW_PORT)"
    echo "logs: $STATE_DIR/{prefect,mlflow}.log; Ctrl-C stops both"
    wait -n "${pids[@]}"
    echo "a server exited; see the logs in $STATE_DIR" >&2
    exit 1
  fi
  sleep 1
done
echo "servers did not become healthy within 120 s; see $STATE_DIR/*.log" >&2
exit 1
