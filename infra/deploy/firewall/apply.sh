#!/usr/bin/env bash
# Loads the host firewall (herald.nft): only 22, 80 and 443 are reachable from outside.
# `apply.sh --check` only checks the rules. Needs root and nftables (apt-get install nftables).
# Idempotent: a second run replaces Herald's table with the same rules. To keep the rules
# across reboots, include herald.nft from /etc/nftables.conf and enable nftables.service.
set -euo pipefail
rules="$(dirname "$0")/herald.nft"
if ! command -v nft >/dev/null; then
  echo "nft is not installed: apt-get install nftables" >&2
  exit 1
fi
nft --check --file "$rules"
if [ "${1:-}" = "--check" ]; then
  echo "herald.nft: valid"
  exit 0
fi
nft --file "$rules"
echo "firewall loaded: only 22, 80 and 443 are reachable from outside"
