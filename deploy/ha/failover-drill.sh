#!/usr/bin/env bash
# Failover drill: snapshotd on the HA stack of deploy/ha/ha.sh (through HAProxy), create load
# with client tokens, the primary killed mid-load, then a check that nothing acknowledged was
# lost or doubled.
#
#   deploy/ha/failover-drill.sh              # SIGKILL of the leader's postmaster (Patroni
#                                            # restarts it in place, or the standby takes over)
#   deploy/ha/failover-drill.sh node         # SIGKILL of the leader's Patroni and postmaster:
#                                            # the node is lost, the standby is promoted after ttl
#
# It starts the HA stack if it is not running (and stops it at the end; KEEP_HA=1 keeps it),
# makes a fresh database through HAProxy, starts the release server on it, runs the `drill`
# (bench/src/bin/drill.rs: N in flight, a few hundred calls/s, every failed call retried with
# its token), kills the leader KILL_AFTER seconds into the load, keeps the load on until the
# service answers again, then verifies through the service (every acknowledged snapshot there,
# every token replays its own id, no snapshot nobody was told about) and runs `snapshotd check`
# on the new primary. The last line is
#
#   acknowledged N, lost L, duplicated D, unavailable S s
#
# (S: the longest stretch with no acknowledged create). The exit status is 0 when L = D = 0,
# no call was abandoned, the check is clean, and the server recovered without a restart.
#
# Environment: CONCURRENCY (16), RATE (300 calls/s), DURATION (30s of load at least),
# KILL_AFTER (8 s), DESCRIBE_PERCENT (0), DRILL_PORT (20071; metrics on 9471), SNAPSHOTD_BIN,
# DRILL_BIN (default: the release builds of this checkout, built if needed), SERVER_ARGS (extra
# server flags), and ha.sh's own (SNAPSHOTD_HA_DIR, HA_PORT, …).
set -euo pipefail

MODE=${1:-postmaster}
case "$MODE" in
  postmaster | node) ;;
  *)
    echo "usage: $0 [postmaster|node]" >&2
    exit 2
    ;;
esac

HERE=$(cd "$(dirname "$0")" && pwd)
ROOT=$(cd "$HERE/../.." && pwd)
HA="$HERE/ha.sh"
STATE=${SNAPSHOTD_HA_DIR:-${TMPDIR:-/tmp}/snapshotd-ha}
HA_PORT=${HA_PORT:-5440}
PG_BIN=${PG_BIN:-$(ls -d /usr/lib/postgresql/15/bin 2>/dev/null || dirname "$(command -v psql)")}
CONCURRENCY=${CONCURRENCY:-16}
RATE=${RATE:-300}
DURATION=${DURATION:-30s}
KILL_AFTER=${KILL_AFTER:-8}
DESCRIBE_PERCENT=${DESCRIBE_PERCENT:-0}
DRILL_PORT=${DRILL_PORT:-20071}
METRICS_PORT=${METRICS_PORT:-$((DRILL_PORT - 20071 + 9471))}
SNAPSHOTD_BIN=${SNAPSHOTD_BIN:-$ROOT/target/release/snapshotd}
DRILL_BIN=${DRILL_BIN:-$ROOT/target/release/drill}
ADMIN_TOKEN=drill-admin-token

say() { printf 'failover-drill: %s\n' "$*" >&2; }
now() { date +%s.%N; }
since() { awk -v a="$1" -v b="$(now)" 'BEGIN { printf "%.1f", b - a }'; }

if [ "$SNAPSHOTD_BIN" = "$ROOT/target/release/snapshotd" ] || [ "$DRILL_BIN" = "$ROOT/target/release/drill" ]; then
  say "building the release server and the drill (cargo build --release)"
  (cd "$ROOT" && cargo build --release -q -p snapshotd -p snapshotd-bench)
fi

started_ha=0
if ! "$HA" leader >/dev/null 2>&1; then
  "$HA" start
  started_ha=1
fi

RUN_DIR=$(mktemp -d "${TMPDIR:-/tmp}/snapshotd-failover-drill.XXXXXX")
DB="drill_$(date +%s)_$$"
URL="postgres://postgres:postgres@127.0.0.1:$HA_PORT/$DB"
server_pid=""
watch_pid=""
cleanup() {
  if [ -n "$watch_pid" ]; then kill "$watch_pid" 2>/dev/null || true; fi
  if [ -n "$server_pid" ] && kill -0 "$server_pid" 2>/dev/null; then
    kill -TERM "$server_pid" 2>/dev/null || true
    wait "$server_pid" 2>/dev/null || true
  fi
  if [ "$started_ha" = 1 ] && [ -z "${KEEP_HA:-}" ]; then
    "$HA" stop >/dev/null 2>&1 || true
  fi
}
trap cleanup EXIT

"$PG_BIN/psql" -X -q -h 127.0.0.1 -p "$HA_PORT" -U postgres -d postgres -c "CREATE DATABASE $DB"
say "database $DB through HAProxy (127.0.0.1:$HA_PORT); logs in $RUN_DIR"

# The copies take about a millisecond, and the worker looks every 100 ms, so a disk is free
# again long before the drill comes back to it.
# shellcheck disable=SC2086 # SERVER_ARGS is a list of flags
DATABASE_URL=$URL SNAPSHOTD_ADMIN_TOKEN=$ADMIN_TOKEN RUST_LOG=${RUST_LOG:-info} \
  "$SNAPSHOTD_BIN" --listen "127.0.0.1:$DRILL_PORT" --metrics-listen "127.0.0.1:$METRICS_PORT" \
  --ecs-listen off --log-format json --copy-rate-mibps 1000000 --worker-interval 100ms \
  ${SERVER_ARGS:-} >"$RUN_DIR/snapshotd.log" 2>&1 &
server_pid=$!
for _ in $(seq 1 100); do
  SNAPSHOTD_LISTEN=127.0.0.1:$DRILL_PORT "$SNAPSHOTD_BIN" health >/dev/null 2>&1 && break
  kill -0 "$server_pid" 2>/dev/null || { tail -5 "$RUN_DIR/snapshotd.log" >&2; exit 1; }
  sleep 0.2
done
SNAPSHOTD_LISTEN=127.0.0.1:$DRILL_PORT "$SNAPSHOTD_BIN" health >/dev/null || { say "the server never got ready"; exit 1; }


say "load: $CONCURRENCY in flight, $RATE calls/s, $DURATION at least; killing the leader ($MODE) after ${KILL_AFTER} s"
"$DRILL_BIN" --target "http://127.0.0.1:$DRILL_PORT" --admin-token "$ADMIN_TOKEN" \
  --concurrency "$CONCURRENCY" --rate "$RATE" --describe-percent "$DESCRIBE_PERCENT" \
  --duration "$DURATION" --settle 3s --timeline --last-line failover >"$RUN_DIR/drill.out" 2>"$RUN_DIR/drill.err" &
drill_pid=$!
# The drill sets up its inventory first: count from when its load starts.
for _ in $(seq 1 600); do
  grep -q 'load started' "$RUN_DIR/drill.err" 2>/dev/null && break
  kill -0 "$drill_pid" 2>/dev/null || break
  sleep 0.1
done
if ! grep -q 'load started' "$RUN_DIR/drill.err" 2>/dev/null; then
  say "the drill did not start its load:"
  tail -5 "$RUN_DIR/drill.err" >&2
  exit 1
fi
t0=$(now)
# Readiness, sampled every 250 ms: its changes, with the time since the load started.
(
  last=""
  while :; do
    code=$(curl -s -o /dev/null -m 1 -w '%{http_code}' "http://127.0.0.1:$METRICS_PORT/readyz" || true)
    if [ "$code" != "$last" ]; then
      printf '%s %s\n' "$(since "$t0")" "$code" >>"$RUN_DIR/readiness"
      last=$code
    fi
    sleep 0.25
  done
) &
watch_pid=$!
sleep "$KILL_AFTER"

old=$("$HA" leader) || { say "no leader to kill"; exit 1; }
postmaster=$(head -1 "$STATE/$old/data/postmaster.pid")
if [ "$MODE" = node ]; then
  patroni=$(cat "$STATE/$old/patroni.pid")
  say "$(since "$t0") s: SIGKILL to $old's Patroni ($patroni) and postmaster ($postmaster)"
  kill -KILL "$patroni" "$postmaster"
else
  say "$(since "$t0") s: SIGKILL to $old's postmaster ($postmaster)"
  kill -KILL "$postmaster"
fi
killed_at=$(now)

# A leader again: the standby promoted, or (postmaster only) the same node restarted.
new=""
for _ in $(seq 1 600); do
  if new=$("$HA" leader 2>/dev/null) &&
    "$PG_BIN/psql" -X -q -h 127.0.0.1 -p "$HA_PORT" -U postgres -d "$DB" -tAc 'select not pg_is_in_recovery()' 2>/dev/null | grep -q t; then
    break
  fi
  new=""
  sleep 0.1
done
[ -n "$new" ] || { say "no primary within 60 s of the kill"; exit 1; }
say "$(since "$killed_at") s after the kill: $new is the primary and answers through HAProxy"

wait "$drill_pid" && drill_status=0 || drill_status=$?
kill "$watch_pid" 2>/dev/null || true
watch_pid=""
cat "$RUN_DIR/drill.out"
if [ "$drill_status" = 1 ]; then
  tail -5 "$RUN_DIR/drill.err" >&2
  exit 1
fi

recovered=yes
kill -0 "$server_pid" 2>/dev/null || recovered="no: the server exited"
echo "readiness (s into the load → /readyz): $(tr '\n' ' ' <"$RUN_DIR/readiness")"
echo "server restarts: none ($recovered)"
echo "server log lines at ERROR, by message:"
grep '"level":"ERROR"' "$RUN_DIR/snapshotd.log" | grep -o '"message":"[^"]*"' | sort | uniq -c | sort -rn | head -5 || true

check_status=0
DATABASE_URL=$URL "$SNAPSHOTD_BIN" check >"$RUN_DIR/check.out" 2>&1 || check_status=$?
echo "snapshotd check on the primary ($new): $([ "$check_status" = 0 ] && echo clean || echo "FAILED (exit $check_status)")"
[ "$check_status" = 0 ] || head -20 "$RUN_DIR/check.out"

if [ "$MODE" = node ]; then
  say "bringing $old back (it rejoins as the standby)"
  "$HA" start >/dev/null 2>&1 || say "$old did not rejoin: see $STATE/$old/patroni.log"
fi

tail -1 "$RUN_DIR/drill.out"
[ "$drill_status" = 0 ] && [ "$check_status" = 0 ] && [ "$recovered" = yes ]
