#!/usr/bin/env bash
# Control-plane benchmarks with real processes on loopback:
#   propagation: K route changes on a 3-node cluster, time until every node serves each
#   churn:       proxy p50/p99 on a 10 000-route table, quiet vs. while routes churn
# Usage: scripts/bench-propagation.sh [K] [ROUTES]
set -euo pipefail
cd "$(dirname "$0")/.."
./scripts/ensure-postgres.sh
make -s build
K=${1:-200}
ROUTES=${2:-10000}
go run ./bench/cluster -mode propagation -k "$K"
go run ./bench/cluster -mode churn -routes "$ROUTES" -duration 10s
