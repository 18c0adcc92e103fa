#!/usr/bin/env bash
# Data-path benchmark: runs ../shared/bench/peers.sh (nginx, HAProxy, Caddy,
# reference Go proxies, all against one nginx backend) with Isekai in the
# same run, proxying one route "/" to the same backend.
#
# Isekai gets GOMAXPROCS=W like the Go peers (peers.sh --workers, default 1)
# and its own managed Postgres (idle during the run) under a temp dir.
# Extra arguments go to peers.sh, e.g. --duration 10 --rounds 5.
# ISEKAI_ENV adds settings for the node, e.g. ISEKAI_ENV="REQUEST_LOG_ENABLED=false".
set -euo pipefail
cd "$(dirname "$0")/.."
PEERS=${PEERS_SH:-../shared/bench/peers.sh}
[ -x "$PEERS" ] || PEERS="bash $PEERS"
./scripts/ensure-postgres.sh
make -s build
BIN=$(pwd)/bin/isekai
DATA=$(mktemp -d /tmp/isekai-peers-XXXXXX)
chmod 755 "$DATA"
trap 'rm -rf "$DATA"' EXIT
ADMIN_PORT=${ISEKAI_BENCH_ADMIN_PORT:-18081}

# The command peers.sh runs (in the foreground, in its own process group).
# It starts a node, waits for the admin API, creates the route, then waits.
GW="export ${ISEKAI_ENV:-} ISEKAI_DATA_DIR=$DATA SERVER_HOST=127.0.0.1 SERVER_PORT=\$GATEWAY_PORT ADMIN_PORT=$ADMIN_PORT LOG_LEVEL=warn;
$BIN serve & pid=\$!;
for i in \$(seq 600); do curl -s -o /dev/null http://127.0.0.1:$ADMIN_PORT/ready && break; sleep 0.1; done;
curl -s -o /dev/null -X POST http://127.0.0.1:$ADMIN_PORT/api/routes -H 'Content-Type: application/json' \
  -d '{\"path\":\"/\",\"target_url\":\"'\$BACKEND_URL'\"}';
wait \$pid"

exec $PEERS --gateway "$GW" --gateway-name isekai --gateway-wait 90 "$@"
