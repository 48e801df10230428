#!/usr/bin/env bash
# The whole fault suite, long variant: more broker kills, the broker paused for a minute,
# PostgreSQL down and the disk full for 30 s, three rounds of consumer kills; then the two
# report schedulers with skewed clocks. Needs root (a tmpfs is mounted for the full disk).
# Each scenario prints a "fault <name>: ..." line; they are gathered in target/faults.txt.
# The test command runs the short variant of the same scenarios.
set -euo pipefail
cd "$(dirname "$0")/../.."

services_env=$(infra/scripts/services.sh)
eval "$services_env"

cargo build -q --bin herald
herald="${CARGO_TARGET_DIR:-target}/debug/herald"
# A broker of its own for the scenarios that share one (the others start their own).
trap '"$herald" broker stop --data-dir target/herald-faults >/dev/null || true' EXIT
KAFKA_BROKERS=$("$herald" broker start --data-dir target/herald-faults --port 0)
export KAFKA_BROKERS

export HERALD_FAULTS=full
mkdir -p target
# A failing scenario must still leave its figures and the log behind.
set +e
cargo test --test faults --test reports -- --test-threads 1 --nocapture 2>&1 |
  tee target/faults.log | grep --line-buffered -E '^(fault |test |test result)'
status=${PIPESTATUS[0]}
set -e
grep -E '^fault ' target/faults.log > target/faults.txt || true
echo "figures: target/faults.txt; everything: target/faults.log"
exit "$status"
