#!/usr/bin/env bash
# Installs (when missing) and starts on 127.0.0.1 what the tests need: PostgreSQL and Redis
# from Debian's packages, Java and Maven for the Apache Kafka broker and an OpenSearch node, Chromium (renders report
# pages headless) from Debian, aiosmtpd (an SMTP server), DuckDB and fastavro (readers of
# exports) and schemathesis (tests the API from its OpenAPI document) from PyPI, nginx and
# Prometheus's promtool (check the deployment files) from Debian, and kcat and GNU time for
# the benchmarks. Idempotent: a second run reuses what is there. Prints the environment to
# export.
set -euo pipefail

if [ "$(id -u)" -ne 0 ]; then SUDO=sudo; else SUDO=; fi
need=()
command -v pg_ctlcluster >/dev/null || need+=(postgresql)
command -v redis-server >/dev/null || need+=(redis-server)
java_major() { java -version 2>&1 | sed -n 's/.*version "\([0-9]*\).*/\1/p' | head -n 1; }
if ! command -v java >/dev/null || [ "$(java_major)" -lt 17 ]; then need+=(openjdk-17-jre-headless); fi
# The local OpenSearch node's launcher is compiled on first use.
command -v javac >/dev/null || need+=(openjdk-17-jdk-headless)
command -v mvn >/dev/null || need+=(maven)
# The build links the system's SQLite (see the workspace manifest).
[ -e /usr/include/sqlite3.h ] || need+=(libsqlite3-dev)
command -v pkg-config >/dev/null || need+=(pkg-config)
command -v chromium >/dev/null || need+=(chromium)
# The deployment files are checked with the real tools: `nginx -t`, `promtool`, and `nft`
# (the host firewall, loaded in a network namespace made with `ip`).
command -v nginx >/dev/null || [ -x /usr/sbin/nginx ] || need+=(nginx-light)
command -v promtool >/dev/null || need+=(prometheus)
command -v nft >/dev/null || [ -x /usr/sbin/nft ] || need+=(nftables)
command -v ip >/dev/null || [ -x /usr/sbin/ip ] || need+=(iproute2)
# The replay benchmark's ceiling: kcat reading the same topic, timed by GNU time.
command -v kcat >/dev/null || need+=(kcat)
[ -x /usr/bin/time ] || need+=(time)
if [ ${#need[@]} -gt 0 ]; then
  echo "installing: ${need[*]}" >&2
  $SUDO apt-get update -qq >&2
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq "${need[@]}" >&2
fi

# Outside readers of the replay exports: DuckDB (Parquet, CSV, JSON lines) and fastavro
# (Avro container files), from PyPI.
if ! python3 -c 'import duckdb, fastavro' 2>/dev/null; then
  echo "installing: duckdb, fastavro (pip)" >&2
  python3 -m pip install -q --disable-pip-version-check --root-user-action=ignore 'duckdb>=1.1,<2' 'fastavro>=1.9,<2' >&2
fi
# The SMTP server of the notification tests (Python's aiosmtpd), from PyPI.
if ! python3 -c 'import aiosmtpd' 2>/dev/null; then
  echo "installing: aiosmtpd (pip)" >&2
  python3 -m pip install -q --disable-pip-version-check --root-user-action=ignore 'aiosmtpd>=1.4,<2' >&2
fi

# schemathesis (PyPI) generates requests from the OpenAPI document and checks the answers
# against it. In a folder of its own under ~/.cache/herald, so its many dependencies meet no
# other package; the tests run it with PYTHONPATH set to that folder.
schemathesis_dir="$HOME/.cache/herald/schemathesis-4.32.5"
if [ ! -x "$schemathesis_dir/bin/st" ]; then
  echo "installing: schemathesis 4.32.5 (pip, into $schemathesis_dir)" >&2
  rm -rf "$schemathesis_dir"
  python3 -m pip install -q --disable-pip-version-check --root-user-action=ignore \
    --target "$schemathesis_dir" 'schemathesis==4.32.5' >&2
fi

# The Compose specification's JSON schema, to check docker-compose.yml against (no Docker
# engine here): jsonschema and PyYAML from PyPI, the schema out of the docker-compose 1.29.2
# wheel, which ships it. Kept under ~/.cache/herald.
compose_schema="$HOME/.cache/herald/compose_spec.json"
if ! python3 -c 'import jsonschema, yaml' 2>/dev/null; then
  echo "installing: jsonschema, pyyaml (pip)" >&2
  python3 -m pip install -q --disable-pip-version-check --root-user-action=ignore 'jsonschema>=4,<5' 'pyyaml>=6,<7' >&2
fi
if [ ! -s "$compose_schema" ]; then
  echo "fetching: the Compose specification schema (docker-compose 1.29.2 wheel, PyPI)" >&2
  wheel_dir=$(mktemp -d)
  python3 -m pip download -q --disable-pip-version-check --no-deps -d "$wheel_dir" 'docker-compose==1.29.2' >&2
  mkdir -p "$(dirname "$compose_schema")"
  python3 -c 'import sys, zipfile; sys.stdout.buffer.write(zipfile.ZipFile(sys.argv[1]).read("compose/config/compose_spec.json"))' \
    "$wheel_dir"/docker_compose-1.29.2-py2.py3-none-any.whl > "$compose_schema.tmp"
  mv "$compose_schema.tmp" "$compose_schema"
  rm -rf "$wheel_dir"
fi

# Kubernetes manifests are checked against the Kubernetes OpenAPI schemas (kubernetes-validate,
# PyPI) and KEDA's ScaledObject against KEDA's own CRD, out of the KEDA module on the Go module
# proxy. Kept under ~/.cache/herald.
keda_crds="$HOME/.cache/herald/keda-v2.21.0"
if ! python3 -c 'import kubernetes_validate' 2>/dev/null; then
  echo "installing: kubernetes-validate (pip)" >&2
  python3 -m pip install -q --disable-pip-version-check --root-user-action=ignore 'kubernetes-validate==1.37.0' >&2
fi
if [ ! -s "$keda_crds/keda.sh_scaledobjects.yaml" ]; then
  echo "fetching: KEDA's CRDs (github.com/kedacore/keda/v2 v2.21.0, Go module proxy)" >&2
  go_bin=$(command -v go || echo /usr/local/go/bin/go)
  module_dir=$(cd "$(mktemp -d)" && "$go_bin" mod download -json github.com/kedacore/keda/v2@v2.21.0 \
    | python3 -c 'import json, sys; print(json.load(sys.stdin)["Dir"])')
  mkdir -p "$keda_crds"
  cp "$module_dir"/config/crd/bases/*.yaml "$keda_crds/"
fi

# A real OpenID Connect provider for the sign-in tests: oidc-provider from the npm registry,
# at the version package-lock.json pins, into infra/scripts/oidc/node_modules.
oidc_dir="$(dirname "$0")/oidc"
if ! command -v node >/dev/null; then
  echo "installing: nodejs, npm (Debian)" >&2
  $SUDO apt-get update -qq >&2
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq nodejs npm >&2
fi
if [ ! -d "$oidc_dir/node_modules/oidc-provider" ]; then
  echo "installing: oidc-provider (npm)" >&2
  (cd "$oidc_dir" && npm ci --no-audit --no-fund --loglevel=error >&2)
fi

# PostgreSQL: the Debian cluster, a herald role and database (loopback only, tests only).
pg_version=$(ls /usr/lib/postgresql | sort -n | tail -n 1)
if ! pg_lsclusters -h 2>/dev/null | grep -q .; then
  pg_createcluster "$pg_version" main >&2
fi
cluster=$(pg_lsclusters -h | head -n 1 | awk '{print $1" "$2}')
if ! pg_lsclusters -h | head -n 1 | grep -q online; then
  pg_ctlcluster $cluster start >&2
fi
port=$(pg_lsclusters -h | head -n 1 | awk '{print $3}')
ready=
for _ in $(seq 1 100); do
  if su postgres -c "psql -p $port -tAc 'select 1'" >/dev/null 2>&1; then ready=1; break; fi
  sleep 0.2
done
if [ -z "$ready" ]; then
  echo "PostgreSQL cluster $cluster did not accept connections within 20 s; see /var/log/postgresql/" >&2
  exit 1
fi
su postgres -c "psql -p $port -tAc \"select 1 from pg_roles where rolname='herald'\"" | grep -q 1 \
  || su postgres -c "psql -p $port -qc \"create role herald login createdb password 'herald'\"" >&2
su postgres -c "psql -p $port -tAc \"select 1 from pg_database where datname='herald'\"" | grep -q 1 \
  || su postgres -c "psql -p $port -qc 'create database herald owner herald'" >&2
# The privacy test finds the server's files and flushes them before searching them for
# personal data (tests/privacy.rs): it reads the data directory's setting and checkpoints.
su postgres -c "psql -p $port -qc 'grant pg_read_all_settings, pg_checkpoint to herald'" >&2

# Redis on its default port, unless one answers already.
if ! (exec 3<>/dev/tcp/127.0.0.1/6379) 2>/dev/null; then
  redis-server --bind 127.0.0.1 --port 6379 --daemonize yes --save '' --appendonly no >/dev/null
fi

echo "export TEST_POSTGRES_URL=postgres://herald:herald@127.0.0.1:$port/herald"
echo "export REDIS_URL=redis://127.0.0.1:6379"
