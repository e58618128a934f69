#!/usr/bin/env bash
# Starts the real servers the tests talk to, on loopback only:
#   PostgreSQL   127.0.0.1:5432  (database `test`, user postgres/postgres)
#   S3 (moto)    127.0.0.1:5000
#   BigQuery     127.0.0.1:9050  (bqemulator REST; project `test-project`)
# Idempotent: a second run while everything is up does nothing. Fails loudly
# when a server cannot start. The HubSpot tests need none of these: they use
# the testkit fakes, started in-process by each test.
#
# Python servers live in a virtualenv under $HEADWATER_SERVICES_DIR
# (default ~/.cache/headwater-services), installed on first use.
set -euo pipefail

dir="${HEADWATER_SERVICES_DIR:-$HOME/.cache/headwater-services}"
mkdir -p "$dir/logs"
venv="$dir/venv"

die() { echo "test-services: $*" >&2; exit 1; }

wait_for() { # name, seconds, command...
  local name=$1 secs=$2; shift 2
  for _ in $(seq 1 $((secs * 10))); do
    if "$@" >/dev/null 2>&1; then echo "test-services: $name is up"; return 0; fi
    sleep 0.1
  done
  return 1
}

# --- PostgreSQL -------------------------------------------------------------
postgres() {
  if ! command -v pg_isready >/dev/null; then
    apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq postgresql >/dev/null \
      || die "PostgreSQL is not installed and could not be installed"
  fi
  if ! pg_isready -q -h 127.0.0.1 -p 5432; then
    ver=$(ls /etc/postgresql | sort -V | tail -1)
    [ -n "$ver" ] || die "no PostgreSQL cluster in /etc/postgresql"
    pg_ctlcluster --skip-systemctl-redirect "$ver" main start || [ $? -eq 2 ]
    wait_for PostgreSQL 30 pg_isready -q -h 127.0.0.1 -p 5432 || die "PostgreSQL did not start"
  fi
  # One URL for trust and scram machines alike.
  (cd / && runuser -u postgres -- psql -qtAc "ALTER ROLE postgres PASSWORD 'postgres'" >/dev/null) \
    || die "cannot set the postgres password"
  if ! (cd / && runuser -u postgres -- psql -qtAc "SELECT 1 FROM pg_database WHERE datname='test'" | grep -q 1); then
    (cd / && runuser -u postgres -- createdb test) || die "cannot create database test"
  fi
  # TLS with Debian's self-signed snakeoil certificate (CN localhost), for
  # the sink's sslmode tests; Debian's cluster usually has it on already.
  if [ "$(cd / && runuser -u postgres -- psql -qtAc 'SHOW ssl')" != "on" ]; then
    if [ ! -f /etc/ssl/private/ssl-cert-snakeoil.key ]; then
      command -v make-ssl-cert >/dev/null || { apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq ssl-cert >/dev/null; } \
        || die "cannot install ssl-cert for a TLS certificate"
      make-ssl-cert generate-default-snakeoil || die "cannot make the snakeoil certificate"
    fi
    usermod -a -G ssl-cert postgres 2>/dev/null || true
    (cd / && runuser -u postgres -- psql -qtAc "ALTER SYSTEM SET ssl_cert_file = '/etc/ssl/certs/ssl-cert-snakeoil.pem'" \
      && runuser -u postgres -- psql -qtAc "ALTER SYSTEM SET ssl_key_file = '/etc/ssl/private/ssl-cert-snakeoil.key'" \
      && runuser -u postgres -- psql -qtAc "ALTER SYSTEM SET ssl = on" \
      && runuser -u postgres -- psql -qtAc "SELECT pg_reload_conf()") >/dev/null || die "cannot turn TLS on"
    sleep 1
    if [ "$(cd / && runuser -u postgres -- psql -qtAc 'SHOW ssl')" != "on" ]; then
      # A new group membership (ssl-cert, to read the key) needs a restart.
      ver=$(ls /etc/postgresql | sort -V | tail -1)
      pg_ctlcluster --skip-systemctl-redirect "$ver" main restart || die "cannot restart PostgreSQL"
      wait_for PostgreSQL 30 pg_isready -q -h 127.0.0.1 -p 5432 || die "PostgreSQL did not restart"
    fi
    [ "$(cd / && runuser -u postgres -- psql -qtAc 'SHOW ssl')" = "on" ] || die "PostgreSQL did not turn TLS on"
  fi
  echo "test-services: PostgreSQL ready at postgres://postgres:postgres@127.0.0.1:5432/test (TLS on)"
}

# --- Python servers -----------------------------------------------------------
venv() {
  if [ ! -x "$venv/bin/python" ] || ! "$venv/bin/python" -c 'import moto, bqemulator, duckdb' 2>/dev/null; then
    echo "test-services: installing moto and bqemulator into $venv (first run only)"
    python3 -m venv "$venv" || die "cannot create a virtualenv (python3-venv missing?)"
    "$venv/bin/pip" install -q --disable-pip-version-check \
      'moto[server]==5.2.5' 'bqemulator==1.4.0' 'duckdb==1.5.6' numpy \
      || die "pip install of moto/bqemulator failed"
  fi
}

http_ok() { python3 - "$1" <<'PY'
import sys, urllib.request
try:
    with urllib.request.urlopen(sys.argv[1], timeout=1) as r:
        sys.exit(0 if r.status == 200 else 1)
except Exception:
    sys.exit(1)
PY
}

s3() {
  if http_ok http://127.0.0.1:5000/moto-api/; then echo "test-services: S3 (moto) already up"; return; fi
  nohup "$venv/bin/moto_server" -H 127.0.0.1 -p 5000 >"$dir/logs/moto.log" 2>&1 &
  wait_for "S3 (moto) on 127.0.0.1:5000" 30 http_ok http://127.0.0.1:5000/moto-api/ \
    || { tail -20 "$dir/logs/moto.log" >&2; die "moto_server did not start"; }
}

bigquery() {
  local ready=http://127.0.0.1:9050/bigquery/v2/projects/test-project/datasets
  if http_ok "$ready"; then echo "test-services: BigQuery emulator already up"; return; fi
  cat >"$dir/bqemu.py" <<'PY'
# bqemulator tries to download a DuckDB extension at start; there is no
# network here, so that step is disabled before its CLI runs.
import sys
import bqemulator.storage.engine as e
e.DuckDBEngine._load_spatial = lambda self: None
from bqemulator.cli import main
sys.exit(main())
PY
  BQEMU_ENABLE_FORMAT_EXTENSIONS=false nohup "$venv/bin/python" "$dir/bqemu.py" start \
    --rest-host 127.0.0.1 --rest-port 9050 --grpc-host 127.0.0.1 --grpc-port 9060 \
    --project test-project >"$dir/logs/bqemulator.log" 2>&1 &
  wait_for "BigQuery emulator on 127.0.0.1:9050" 60 http_ok "$ready" \
    || { tail -20 "$dir/logs/bqemulator.log" >&2; die "the BigQuery emulator did not start"; }
}

postgres
venv
s3
bigquery
