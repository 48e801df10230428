#!/usr/bin/env bash
# Runs every check and test of Herald on this machine: installs and starts what the tests
# need (PostgreSQL, Redis, the Apache Kafka broker), then fmt, clippy and the whole test suite.
set -euo pipefail
cd "$(dirname "$0")/../.."

if ! command -v cargo >/dev/null; then
  echo "cargo not found: install Rust (https://rustup.rs) first" >&2
  exit 1
fi

# (assigned first: a failure inside $(...) must stop the run, which eval alone would hide)
services_env=$(infra/scripts/services.sh)
eval "$services_env"

cargo fmt --all -- --check
cargo clippy --workspace --all-targets -- -D warnings

# One broker and one OpenSearch node for the whole run, in target/herald-test; stopped at
# the end.
cargo build -q --bin herald
herald="${CARGO_TARGET_DIR:-target}/debug/herald"
trap '"$herald" broker stop --data-dir target/herald-test >/dev/null || true; "$herald" search-node stop --data-dir target/herald-test >/dev/null || true' EXIT
KAFKA_BROKERS=$("$herald" broker start --data-dir target/herald-test --port 0)
export KAFKA_BROKERS
echo "test broker: $KAFKA_BROKERS"
TEST_OPENSEARCH_URL=$("$herald" search-node start --data-dir target/herald-test)
export TEST_OPENSEARCH_URL
echo "test search node: $TEST_OPENSEARCH_URL"

cargo test --workspace --no-fail-fast
