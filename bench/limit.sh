#!/usr/bin/env bash
# Measures snapshotd beside its database's limit, in one run on one machine.
#
#   bench/limit.sh [scenario] [concurrency] [duration]      # defaults: spread 64 10s
#
# Builds the release binaries; makes a fresh PostgreSQL database; starts REPLICAS servers on it
# (default 1); drives the scenario with snapshotd-bench; then runs pgbench with the store's own
# CreateSnapshot transaction (describe: its describe statement, page by page; mixed: both, and
# their mean weighted by the mix) on the same database, at the same concurrency, for as long, and
# prints service ÷ limit. With BACKEND=sqlite it runs one server on a fresh SQLite file instead,
# and SQLite's own limit is the sqlite3 CLI running the store's statements on a copy of it.
#
# Environment: PG_ADMIN_URL (default postgres://postgres@127.0.0.1:5432/postgres), REPLICAS,
# BACKEND (postgres|sqlite), EDGE (grpc|http: the edge the scenario's calls go through; default
# grpc; `both`: gRPC then HTTP against the same servers and database, ROUNDS times, default 1,
# the pgbench limit after the last), BENCH_DATABASE (default snapshotd_bench), PORT_OFFSET
# (added to the servers' ports, 0 by default: for two benches on one machine), DISKS (default 16384), CONNECTIONS (default 4), JSON (a file for the JSON report),
# TEMPLATE (start from a copy of this database, or SQLite file, e.g. bench/bigdata.sh's),
# BENCH_ARGS (more snapshotd-bench flags, e.g. `--describe-snapshots 10000`),
# SERVER_ENV (extra `VAR=value` words for the servers), SERVER_BIN (the server binary to
# measure, default target/release/snapshotd), DESCRIBE_PAGE_SIZE (`describe`'s page, default
# 100), POOLER (`pgbouncer`: the servers reach PostgreSQL
# through a pgbouncer in transaction pooling mode that the script starts, with
# POOLER_POOL_SIZE server connections, default 16; migrations and pgbench go direct),
# CALLGRIND (a directory: the servers run under valgrind's callgrind, the bench reports their
# instructions per call, and each server's profile of the measured part is kept there as
# callgrind.PID.1, for `callgrind_annotate --inclusive=yes --tree=calling`; run at low
# concurrency: under valgrind a server is some 50 times slower).
set -euo pipefail

scenario=${1:-spread}
concurrency=${2:-64}
duration=${3:-10s}
backend=${BACKEND:-postgres}
edge=${EDGE:-grpc}
replicas=${REPLICAS:-1}
admin_url=${PG_ADMIN_URL:-postgres://postgres@127.0.0.1:5432/postgres}
token=bench-token

cd "$(dirname "$0")/.."
# BUILD=0: measure the binaries as they are (while another cargo holds target/).
[ "${BUILD:-1}" = 0 ] || cargo build --release --locked --workspace --bins -q
work=$(mktemp -d)
pids=()
cleanup() {
    for pid in "${pids[@]}"; do kill "$pid" 2>/dev/null || true; done
    wait 2>/dev/null || true
    rm -rf "$work"
}
trap cleanup EXIT

server_url=""
case "$backend" in
postgres)
    database=${BENCH_DATABASE:-snapshotd_bench}
    # TEMPLATE: a copy of a prepared database (bench/bigdata.sh) instead of an empty one.
    psql "$admin_url" -q -v ON_ERROR_STOP=1 \
        -c "DROP DATABASE IF EXISTS $database WITH (FORCE)" \
        -c "CREATE DATABASE $database${TEMPLATE:+ TEMPLATE $TEMPLATE STRATEGY FILE_COPY}"
    database_url="${admin_url%/*}/$database"
    if [ "${POOLER:-}" = pgbouncer ]; then
        # host:port and user of the direct URL (postgres://USER@HOST:PORT/DB).
        authority=${database_url#*://}
        authority=${authority%%/*}
        pg_user=${authority%%@*}
        pg_user=${pg_user%%:*}
        pg_hostport=${authority##*@}
        pooler_port=${POOLER_PORT:-6543}
        chmod 755 "$work"
        printf '"%s" ""\n' "$pg_user" >"$work/userlist.txt"
        cat >"$work/pgbouncer.ini" <<INI
[databases]
$database = host=${pg_hostport%:*} port=${pg_hostport##*:} dbname=$database
[pgbouncer]
listen_addr = 127.0.0.1
listen_port = $pooler_port
unix_socket_dir =
auth_type = trust
auth_file = $work/userlist.txt
pool_mode = transaction
default_pool_size = ${POOLER_POOL_SIZE:-16}
max_client_conn = 2000
INI
        chmod 644 "$work/pgbouncer.ini" "$work/userlist.txt"
        # pgbouncer will not run as root: it drops to the postgres user.
        user_args=()
        [ "$(id -u)" = 0 ] && user_args=(-u postgres)
        pgbouncer "${user_args[@]}" "$work/pgbouncer.ini" >"$work/pgbouncer.log" 2>&1 &
        pids+=("$!")
        for _ in $(seq 1 50); do
            psql "postgres://$pg_user@127.0.0.1:$pooler_port/$database" -qAtc 'SELECT 1' \
                >/dev/null 2>&1 && break
            sleep 0.1
        done
        server_url="postgres://$pg_user@127.0.0.1:$pooler_port/$database"
        export SNAPSHOTD_DATABASE_TRANSACTION_POOLER=true
        export SNAPSHOTD_MIGRATION_DATABASE_URL="$database_url"
    fi
    ;;
sqlite)
    database_url="sqlite://$work/bench.db"
    [ -z "${TEMPLATE:-}" ] || cp "$TEMPLATE" "$work/bench.db"
    replicas=1
    ;;
*)
    echo "BACKEND must be postgres or sqlite" >&2
    exit 2
    ;;
esac

targets=()
ecs_targets=()
pid_args=()
valgrind=()
health_tries=100
if [ -n "${CALLGRIND:-}" ]; then
    command -v valgrind >/dev/null || { echo "CALLGRIND needs valgrind (apt-get install valgrind)" >&2; exit 1; }
    mkdir -p "$CALLGRIND"
    valgrind=(valgrind --tool=callgrind "--callgrind-out-file=$(cd "$CALLGRIND" && pwd)/callgrind.%p")
    health_tries=600
    BENCH_ARGS="${BENCH_ARGS:-} --callgrind"
fi
for replica in $(seq 1 "$replicas"); do
    # Below the ephemeral range (32768-60999), where a client socket may already hold a port.
    port=$((20150 + ${PORT_OFFSET:-0} + replica))
    # Each replica its own ECS port too (the default, 8080, would collide between replicas).
    ecs_port=$((8150 + ${PORT_OFFSET:-0} + replica))
    # Copies finish at once and the worker looks often, so `spread` can revisit disks quickly.
    env DATABASE_URL="${server_url:-$database_url}" SNAPSHOTD_ADMIN_TOKEN="$token" \
        SNAPSHOTD_LISTEN="127.0.0.1:$port" SNAPSHOTD_METRICS_LISTEN=off \
        SNAPSHOTD_ECS_LISTEN="127.0.0.1:$ecs_port" \
        SNAPSHOTD_COPY_RATE_MIBPS=1000000 SNAPSHOTD_WORKER_INTERVAL=100ms \
        SNAPSHOTD_DEMO=false SNAPSHOTD_LOG_FORMAT=json RUST_LOG=warn ${SERVER_ENV:-} \
        "${valgrind[@]}" "${SERVER_BIN:-target/release/snapshotd}" >"$work/server-$replica.log" 2>&1 &
    pids+=("$!")
    pid_args+=(--server-pid "$!")
    targets+=(--target "http://127.0.0.1:$port")
    ecs_targets+=(--ecs-target "http://127.0.0.1:$ecs_port")
    for _ in $(seq 1 "$health_tries"); do
        target/release/snapshotd health --listen "127.0.0.1:$port" >/dev/null 2>&1 && break
        sleep 0.1
    done
    target/release/snapshotd health --listen "127.0.0.1:$port" >/dev/null ||
        { cat "$work/server-$replica.log" >&2; exit 1; }
done

limit_args=()
# pgbench runs after the servers are stopped (the bench does it), so the pools free their connections.
if [ "$backend" = postgres ]; then
    limit_args=(--limit-database-url "$database_url")
else
    limit_args=(--limit-sqlite-file "$database_url")
    # The limit runs with the servers' `synchronous`.
    for word in ${SERVER_ENV:-}; do
        case "$word" in
        SNAPSHOTD_SQLITE_SYNCHRONOUS=*) limit_args+=(--limit-sqlite-synchronous "${word#*=}") ;;
        esac
    done
fi
json_args=()
if [ -n "${JSON:-}" ]; then
    json_args=(--json "$JSON")
fi

edges=("$edge")
if [ "$edge" = both ]; then
    edges=()
    for _ in $(seq 1 "${ROUNDS:-1}"); do edges+=(grpc http); done
fi
for run in "${!edges[@]}"; do
    edge=${edges[$run]}
    # pgbench stops the servers (the bench does it): only after the last run.
    last_args=()
    [ "$run" = $((${#edges[@]} - 1)) ] && last_args=("${limit_args[@]}" "${json_args[@]}")
    echo "snapshotd ($backend${POOLER:+ through $POOLER}, $replicas replica(s), $edge edge) · $(nproc) cores · $(date -u +%Y-%m-%dT%H:%MZ)"
    target/release/snapshotd-bench "${targets[@]}" "${ecs_targets[@]}" --edge "$edge" --admin-token "$token" \
        --scenario "$scenario" --concurrency "$concurrency" --duration "$duration" \
        --connections "${CONNECTIONS:-4}" --disks "${DISKS:-16384}" \
        ${DESCRIBE_PAGE_SIZE:+--describe-page-size "$DESCRIBE_PAGE_SIZE"} \
        "${pid_args[@]}" "${last_args[@]}" ${BENCH_ARGS:-}
done
