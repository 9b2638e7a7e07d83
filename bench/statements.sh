#!/usr/bin/env bash
# Profiles the database side of a run: where PostgreSQL spends its time, statement by statement.
#
#   bench/statements.sh [scenario] [concurrency] [duration]    # defaults: spread 64 10s
#
# pg_stat_statements must be preloaded, which needs a server restart; rather than restart the
# machine's PostgreSQL, this makes a throwaway cluster with it (initdb, on PORT, default 5433),
# runs bench/limit.sh against that cluster, prints the statements by total time (the service's
# and pgbench's side by side: pgbench's have its literals, `ARRAY[($4 || $1)]`), and removes the
# cluster. Run as root (the cluster runs as the `postgres` user) or as a user that may run initdb.
set -euo pipefail

port=${PORT:-5433}
cd "$(dirname "$0")/.."
bin=$(ls -d /usr/lib/postgresql/*/bin 2>/dev/null | sort -V | tail -1)
[ -x "$bin/initdb" ] || { echo "initdb not found (Debian: apt-get install postgresql)" >&2; exit 1; }
dir=$(mktemp -d)
as_owner() {
    if [ "$(id -u)" = 0 ]; then su postgres -c "$*"; else bash -c "$*"; fi
}
[ "$(id -u)" = 0 ] && chown postgres "$dir"
cleanup() {
    as_owner "$bin/pg_ctl -D $dir/data stop -m fast" >/dev/null 2>&1 || true
    rm -rf "$dir"
}
trap cleanup EXIT

as_owner "$bin/initdb -D $dir/data -A trust -U postgres" >"$dir/initdb.log"
as_owner "$bin/pg_ctl -D $dir/data -l $dir/log -w start \
    -o '-p $port -k $dir -c shared_preload_libraries=pg_stat_statements -c pg_stat_statements.track=all'" >/dev/null
admin_url="postgres://postgres@127.0.0.1:$port/postgres"
psql "$admin_url" -q -c "CREATE EXTENSION pg_stat_statements"

PG_ADMIN_URL="$admin_url" bench/limit.sh "$@"

echo
echo "statements by total time (calls, total ms, mean ms, rows per call, statement):"
psql "$admin_url" -At -F '  ' -c "
SELECT calls, round(total_exec_time::numeric), round(mean_exec_time::numeric, 3),
       round(rows::numeric / greatest(calls, 1), 1),
       left(regexp_replace(query, '\s+', ' ', 'g'), 110)
FROM pg_stat_statements s JOIN pg_database d ON d.oid = s.dbid
WHERE d.datname = '${BENCH_DATABASE:-snapshotd_bench}'
ORDER BY total_exec_time DESC LIMIT 15"
