#!/usr/bin/env bash
# Rolling-restart drill: three snapshotd replicas on one PostgreSQL behind nginx (grpc_pass,
# deploy/mesh/nginx.conf), steady create + describe load with client tokens through nginx, and
# the replicas restarted one at a time: SIGTERM, wait for the drain to finish and the process to
# exit, start it again, wait until it is ready. Then a check through the service that nothing
# acknowledged was lost or doubled. The last line is
#
#   calls N, failed F, lost L, duplicated D
#
# (F: attempts answered other than OK, each one a call a client without retries would have seen
# fail; the drill retries them with the same token). The exit status is 0 when L = D = 0 and no
# call was abandoned.
#
# Environment: DATABASE_HOST (127.0.0.1), DATABASE_PORT (5432), DATABASE_USER (postgres): the
# PostgreSQL the replicas share (a fresh database is made on it); CONCURRENCY (16), RATE (300
# calls/s; 0: as fast as they go), DESCRIBE_PERCENT (50), WARMUP (5 s before the first
# restart), PAUSE (3 s between restarts), ROUNDS (1: each replica restarted once), SHUTDOWN_GRACE (20s), SNAPSHOTD_BIN, DRILL_BIN (default: the release builds of
# this checkout, built if needed), NGINX (nginx), NGINX_CONF, SERVER_ARGS (extra server flags),
# SNAPSHOTD_MESH_DIR (state and logs; default: a new directory under the system temp dir),
# KEEP_DB=1 to keep the database (dropped at the end otherwise).
set -euo pipefail

HERE=$(cd "$(dirname "$0")" && pwd)
ROOT=$(cd "$HERE/../.." && pwd)
DATABASE_HOST=${DATABASE_HOST:-127.0.0.1}
DATABASE_PORT=${DATABASE_PORT:-5432}
DATABASE_USER=${DATABASE_USER:-postgres}
CONCURRENCY=${CONCURRENCY:-16}
RATE=${RATE:-300}
DESCRIBE_PERCENT=${DESCRIBE_PERCENT:-50}
WARMUP=${WARMUP:-5}
PAUSE=${PAUSE:-3}
ROUNDS=${ROUNDS:-1}
# KILL: SIGKILL instead of SIGTERM (a crash, not a drain: calls in flight on it are cut).
SIGNAL=${SIGNAL:-TERM}
SHUTDOWN_GRACE=${SHUTDOWN_GRACE:-20s}
# Three replicas share the database's max_connections (100 by default) with whatever else uses it.
DB_MAX_CONNECTIONS=${DB_MAX_CONNECTIONS:-16}
SNAPSHOTD_BIN=${SNAPSHOTD_BIN:-$ROOT/target/release/snapshotd}
DRILL_BIN=${DRILL_BIN:-$ROOT/target/release/drill}
NGINX=${NGINX:-$(command -v nginx || echo /usr/sbin/nginx)}
# Another nginx configuration to try (same ports and relative paths as deploy/mesh/nginx.conf).
NGINX_CONF=$(realpath "${NGINX_CONF:-$HERE/nginx.conf}")
PSQL=${PSQL:-$(command -v psql || echo /usr/lib/postgresql/15/bin/psql)}
ADMIN_TOKEN=drill-admin-token
# The ports of deploy/mesh/nginx.conf.
FRONT=127.0.0.1:20080
REPLICA_PORTS=(20081 20082 20083)

say() { printf 'rolling-restart-drill: %s\n' "$*" >&2; }
now() { date +%s.%N; }
since() { awk -v a="$1" -v b="$(now)" 'BEGIN { printf "%.1f", b - a }'; }

[ -x "$NGINX" ] || { say "nginx is missing: apt-get install -y nginx"; exit 1; }
if [ "$SNAPSHOTD_BIN" = "$ROOT/target/release/snapshotd" ] || [ "$DRILL_BIN" = "$ROOT/target/release/drill" ]; then
  say "building the release server and the drill (cargo build --release)"
  (cd "$ROOT" && cargo build --release -q -p snapshotd -p snapshotd-bench)
fi

STATE=${SNAPSHOTD_MESH_DIR:-$(mktemp -d "${TMPDIR:-/tmp}/snapshotd-mesh-drill.XXXXXX")}
mkdir -p "$STATE/logs" "$STATE/tmp"
# nginx's worker (nobody) must reach its temp directories under the prefix.
chmod 755 "$STATE"
DB="mesh_$(date +%s)_$$"
URL="postgres://$DATABASE_USER@$DATABASE_HOST:$DATABASE_PORT/$DB"
declare -a pids=()
nginx_started=0
db_created=0
cleanup() {
  for pid in "${pids[@]}"; do
    if [ -n "$pid" ] && kill -0 "$pid" 2>/dev/null; then
      kill -TERM "$pid" 2>/dev/null || true
    fi
  done
  for pid in "${pids[@]}"; do
    if [ -n "$pid" ]; then wait "$pid" 2>/dev/null || true; fi
  done
  if [ "$nginx_started" = 1 ]; then
    "$NGINX" -p "$STATE" -e stderr -c "$NGINX_CONF" -s quit 2>/dev/null || true
  fi
  if [ "$db_created" = 1 ] && [ -z "${KEEP_DB:-}" ]; then
    "$PSQL" -X -q -h "$DATABASE_HOST" -p "$DATABASE_PORT" -U "$DATABASE_USER" -d postgres \
      -c "DROP DATABASE IF EXISTS $DB WITH (FORCE)" >/dev/null 2>&1 || true
  fi
}
trap cleanup EXIT

"$PSQL" -X -q -h "$DATABASE_HOST" -p "$DATABASE_PORT" -U "$DATABASE_USER" -d postgres -c "CREATE DATABASE $DB"
db_created=1
say "database $DB on $DATABASE_HOST:$DATABASE_PORT; state and logs in $STATE"

# Replica i: gRPC on REPLICA_PORTS[i], metrics on 948(i+1).
start_replica() {
  local index=$1 port=${REPLICA_PORTS[$1]}
  # shellcheck disable=SC2086 # SERVER_ARGS is a list of flags
  DATABASE_URL=$URL SNAPSHOTD_ADMIN_TOKEN=$ADMIN_TOKEN RUST_LOG=${RUST_LOG:-info} \
    "$SNAPSHOTD_BIN" --listen "127.0.0.1:$port" --metrics-listen "127.0.0.1:$((9481 + index))" \
    --ecs-listen off --log-format json --copy-rate-mibps 1000000 --worker-interval 100ms \
    --max-concurrent-requests 1024 --max-concurrent-requests-per-peer 1024 \
    --shutdown-grace "$SHUTDOWN_GRACE" --db-max-connections "$DB_MAX_CONNECTIONS" ${SERVER_ARGS:-} >>"$STATE/replica$index.log" 2>&1 &
  pids[index]=$!
}

wait_ready() {
  local index=$1
  for _ in $(seq 1 150); do
    SNAPSHOTD_LISTEN=127.0.0.1:${REPLICA_PORTS[$index]} "$SNAPSHOTD_BIN" health >/dev/null 2>&1 && return 0
    kill -0 "${pids[$index]}" 2>/dev/null || { tail -3 "$STATE/replica$index.log" >&2; return 1; }
    sleep 0.1
  done
  return 1
}

# The first replica migrates the database; the others then start on it.
start_replica 0
wait_ready 0 || { say "replica 0 never got ready"; exit 1; }
start_replica 1
start_replica 2
for index in 1 2; do
  wait_ready "$index" || { say "replica $index never got ready"; exit 1; }
done

"$NGINX" -p "$STATE" -e stderr -c "$NGINX_CONF" -t -q
"$NGINX" -p "$STATE" -e stderr -c "$NGINX_CONF"
nginx_started=1
say "nginx on $FRONT in front of 127.0.0.1:${REPLICA_PORTS[0]}-${REPLICA_PORTS[2]}"

# The load lasts until every replica was restarted; give it the time that takes, and the drill
# goes on past it until nothing failed for 3 s.
say "load: $CONCURRENCY in flight, $RATE calls/s, $DESCRIBE_PERCENT % describe, through nginx"
"$DRILL_BIN" --target "http://$FRONT" --admin-token "$ADMIN_TOKEN" \
  --concurrency "$CONCURRENCY" --rate "$RATE" --describe-percent "$DESCRIBE_PERCENT" \
  --duration 600s --stop-file "$STATE/stop" --settle 3s --max-duration 900s --timeline \
  --last-line rolling \
  >"$STATE/drill.out" 2>"$STATE/drill.err" &
drill_pid=$!
for _ in $(seq 1 600); do
  grep -q 'load started' "$STATE/drill.err" 2>/dev/null && break
  kill -0 "$drill_pid" 2>/dev/null || break
  sleep 0.1
done
if ! grep -q 'load started' "$STATE/drill.err" 2>/dev/null; then
  say "the drill did not start its load:"
  tail -5 "$STATE/drill.err" >&2
  exit 1
fi
t0=$(now)
sleep "$WARMUP"

for index in $(for _ in $(seq 1 "$ROUNDS"); do echo 0 1 2; done); do
  pid=${pids[$index]}
  stopping=$(now)
  say "$(since "$t0") s: SIG$SIGNAL to replica $index (pid $pid, port ${REPLICA_PORTS[$index]})"
  kill "-$SIGNAL" "$pid"
  status=0
  wait "$pid" || status=$?
  drained=$(since "$stopping")
  start_replica "$index"
  wait_ready "$index" || { say "replica $index never got ready again"; exit 1; }
  say "$(since "$t0") s: replica $index drained and exited (status $status) in $drained s, restarted and ready after $(since "$stopping") s"
  echo "replica $index: drained and exited (status $status) in $drained s, ready again after $(since "$stopping") s" >>"$STATE/restarts"
  sleep "$PAUSE"
done

# Every replica was restarted: end the load (the drill stops once nothing failed for 3 s).
touch "$STATE/stop"
wait "$drill_pid" && drill_status=0 || drill_status=$?
cat "$STATE/restarts"
cat "$STATE/drill.out"
if [ "$drill_status" = 1 ]; then
  tail -5 "$STATE/drill.err" >&2
  exit 1
fi
log=$STATE/logs/access.log
echo "nginx: calls sent on to another replica $(grep -c 'upstream_status=[^ ]*, ' "$log" || true), calls no replica answered $(grep -vc 'upstream_status=\([0-9]*, \)*200 ' "$log" || true), error log lines $(wc -l <"$STATE/logs/error.log")"
tail -1 "$STATE/drill.out"
[ "$drill_status" = 0 ]
