#!/usr/bin/env bash
# Every benchmark, one after the other, against one fresh broker (its own data folder, so no
# topic left by the tests slows it), PostgreSQL and Redis from services.sh. Each benchmark's
# output goes to target/bench/<name>.txt; BENCHMARKS.md holds one run of them all.
#
#   infra/scripts/bench.sh                 # all of them, about 20 minutes
#   infra/scripts/bench.sh ingress e2e     # some of them
set -euo pipefail
cd "$(dirname "$0")/../.."

services_env=$(infra/scripts/services.sh)
eval "$services_env"

benches=("$@")
if [ ${#benches[@]} -eq 0 ]; then
  benches=(ingress telemetry auth audit notifications live search reports replay e2e privacy streams)
fi

cargo build -q --release --bin herald
cargo bench --no-run -q
herald="${CARGO_TARGET_DIR:-target}/release/herald"
dir=target/herald-bench
rm -rf "$dir"
trap '"$herald" broker stop --data-dir "$dir" >/dev/null || true' EXIT
KAFKA_BROKERS=$("$herald" broker start --data-dir "$dir" --port 0)
export KAFKA_BROKERS

mkdir -p target/bench
{
  echo "date: $(date -u +%Y-%m-%dT%H:%MZ)"
  echo "machine: $(nproc) cores, $(free -g | awk '/^Mem/ {print $2}') GiB, $(uname -sr)"
  echo "rustc: $(rustc --version)"
  echo "broker: Apache Kafka $(sed -n 's:.*<kafka.version>\(.*\)</kafka.version>.*:\1:p' infra/broker/pom.xml)"
  echo "postgres: $(psql --version 2>/dev/null || echo unknown)"
} | tee target/bench/machine.txt
for bench in "${benches[@]}"; do
  echo "== $bench"
  if [ "$bench" = replay ]; then
    # A million events: with fewer, each read lasts well under a second and measures start-up.
    BENCH_EVENTS=${BENCH_EVENTS:-1000000} cargo bench -q --bench replay 2>&1 |
      grep -v '^{' | tee target/bench/replay.txt
    continue
  fi
  cargo bench -q --bench "$bench" 2>&1 | grep -v '^{' | tee "target/bench/$bench.txt"
done
