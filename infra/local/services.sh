#!/usr/bin/env bash
# `make services`: the system binaries the tests use, from Debian packages: redis-server (dedup's Redis
# LSH storage, the Dask engine tests), PostgreSQL's initdb/pg_ctl/psql (`make test-integration`) and
# chromium (the serve playground's browser test, driven by Playwright).
#   infra/local/services.sh           # present: say so (quick, idempotent); missing: apt-get install
#                                     # them as root, else print the command to run (exit 0)
#   infra/local/services.sh --check   # only report; exit 1 when something is missing
# Tests never install anything: a test whose binaries are missing is skipped, naming `make services`.
# The lookup matches tests/services.py: PATH, Debian's /usr/lib/postgresql/*/bin, /usr/sbin, /sbin.
set -euo pipefail

have() {
  command -v "$1" >/dev/null 2>&1 && return 0
  local p
  for p in /usr/lib/postgresql/*/bin/"$1" /usr/sbin/"$1" /sbin/"$1"; do
    [[ -x $p ]] && return 0
  done
  return 1
}

missing_packages() {  # Debian packages whose binaries are not found, one per line
  have redis-server || echo redis-server
  have chromium || echo chromium
  local tool
  for tool in initdb pg_ctl psql; do
    have "$tool" || { echo postgresql; break; }
  done
}

mapfile -t missing < <(missing_packages)
if [[ ${#missing[@]} -eq 0 ]]; then
  echo "services: redis-server, PostgreSQL (initdb, pg_ctl, psql) and chromium are installed"
  exit 0
fi
command="apt-get install -y -q ${missing[*]}"
if [[ ${1:-} == --check ]]; then
  echo "services: missing ${missing[*]}; run \`make services\` (or: sudo $command)" >&2
  exit 1
fi
if [[ $(id -u) != 0 ]] || ! command -v apt-get >/dev/null 2>&1; then
  echo "services: missing ${missing[*]}; install them with: sudo apt-get update && sudo $command"
  echo "services: until then the tests that need them are skipped"
  exit 0
fi
echo "services: installing ${missing[*]} with apt-get"
export DEBIAN_FRONTEND=noninteractive
apt-get update -q
apt-get install -y -q "${missing[@]}"
mapfile -t still < <(missing_packages)
if [[ ${#still[@]} -gt 0 ]]; then
  echo "services: apt-get ran but ${still[*]} still not found" >&2
  exit 1
fi
echo "services: installed ${missing[*]}"
