#!/usr/bin/env bash
# The whole curve in one sitting, each point beside its database limit, as one table.
#
#   bench/curve.sh
#
# Builds once, then runs bench/limit.sh (BUILD=0, one JSON report a point) for each backend:
# spread at each of SPREAD_LEVELS, describe at each of DESCRIBE_LEVELS, mixed at MIXED_LEVEL, and
# spread at RSS_LEVEL for the peak RSS; each point's limit is measured right after it, on the
# same database (pgbench for PostgreSQL, the sqlite3 CLI for SQLite). Then prints one Markdown
# table: backend, scenario, in flight, calls/s, p50, p99, limit, ratio (successful calls ÷
# limit), CPU per call and peak RSS of the server.
#
# Environment: BACKENDS (default "postgres sqlite"), DURATION (each point's run, and its limit's;
# default 5s), SPREAD_LEVELS (default "1 8 16 64"), DESCRIBE_LEVELS (default "1 8 16 64"),
# MIXED_LEVEL (default 64), RSS_LEVEL (default 256), DESCRIBE_PAGE_SIZE (`describe`'s pages,
# default 100; bench/limit.sh passes it on), REPORTS (a directory to keep the
# JSON reports and logs in; a temp dir otherwise), BUILD (0: use the binaries as they are), and
# what bench/limit.sh reads (BENCH_DATABASE, PORT_OFFSET, SERVER_BIN, SERVER_ENV, …).
#
# The mixed point's limit is the weighted harmonic mean of its parts' limits measured in this
# sitting at the same concurrency (70 % describe, 30 % create: deletes weigh as creates, one
# write transaction each), when the describe limit is for mixed's pages of 20.
set -euo pipefail

cd "$(dirname "$0")/.."
backends=${BACKENDS:-postgres sqlite}
duration=${DURATION:-5s}
spread_levels=${SPREAD_LEVELS:-1 8 16 64}
describe_levels=${DESCRIBE_LEVELS:-1 8 16 64}
mixed_level=${MIXED_LEVEL:-64}
rss_level=${RSS_LEVEL:-256}
[ "${BUILD:-1}" = 0 ] || cargo build --release --locked --workspace --bins -q
if [ -n "${REPORTS:-}" ]; then
    reports=$REPORTS
    mkdir -p "$reports"
else
    reports=$(mktemp -d)
    trap 'rm -rf "$reports"' EXIT
fi
bench_args=${BENCH_ARGS:-}

# One point: BACKEND SCENARIO IN_FLIGHT LABEL (one word). A failed point is a row that says so.
point() {
    local name="$1-$4-$3"
    echo "$(date -u +%H:%M:%S) $1 $4 at $3 in flight…" >&2
    rm -f "$reports/$name.json"
    local code=0
    # limit.sh's 16,384 disks, each revisited 2 s after its create, cap spread at 8,192 calls/s:
    # spread at 64 in flight and up gets 65,536 (unless DISKS says otherwise).
    local disks=${DISKS:-16384}
    if [ -z "${DISKS:-}" ] && [ "$2" = spread ] && [ "$3" -ge 64 ]; then disks=65536; fi
    BACKEND=$1 BUILD=0 DISKS=$disks JSON="$reports/$name.json" BENCH_ARGS="$bench_args" \
        bench/limit.sh "$2" "$3" "$duration" >"$reports/$name.log" 2>&1 || code=$?
    if [ "$code" != 0 ]; then
        # 2: calls were answered otherwise than the scenario expects (the report says how).
        echo "  exit $code: see $reports/$name.log" >&2
        tail -n 5 "$reports/$name.log" >&2
    fi
    echo "$1 $4 $3 $reports/$name.json" >>"$reports/points"
}

: >"$reports/points"
started=$(date -u +%Y-%m-%dT%H:%MZ)
for backend in $backends; do
    for level in $spread_levels; do point "$backend" spread "$level" spread; done
    for level in $describe_levels; do point "$backend" describe "$level" describe; done
    point "$backend" mixed "$mixed_level" mixed
    point "$backend" spread "$rss_level" spread-rss
done

echo
echo "snapshotd curve · $(nproc) cores · $started · $duration a point · page ${DESCRIBE_PAGE_SIZE:-100}"
python3 - "$reports/points" "${DESCRIBE_PAGE_SIZE:-100}" <<'PY'
import json, os, sys

points_file, describe_page = sys.argv[1], int(sys.argv[2])
rows = []
for line in open(points_file):
    backend, label, level, path = line.rstrip("\n").split(" ", 3)
    report = None
    if os.path.exists(path):
        with open(path) as f:
            report = json.load(f)
    rows.append((backend, label, int(level), report))


def limit_of(label, report):
    """The limit that measured this point's own statements, with its p50, or None."""
    if report is None:
        return None
    sqlite = report.get("sqlite_limit")
    if sqlite:
        return sqlite["tps"], sqlite["latency_p50_ms"]
    pg = report.get("limit")
    if not pg:
        return None
    # pgbench ran create's transaction, describe's statement, or both for mixed.
    ran = pg.get("workload", "create")
    wanted = "create" if label.startswith("spread") else label
    if ran != wanted:
        return None
    return pg["pgbench_tps"], pg["latency_p50_ms"]


limits = {(b, l, n): limit_of(l, r) for b, l, n, r in rows}


def mixed_limit(backend, level):
    """70 % describe of 20, 30 % writes: the weighted harmonic mean of the parts' limits."""
    create = limits.get((backend, "spread", level))
    describe = limits.get((backend, "describe", level))
    if describe_page != 20 or not create or not describe:
        return None
    return 1 / (0.70 / describe[0] + 0.30 / create[0]), None


def shown(label):
    return {"spread-rss": "spread (RSS)", "describe": f"describe ({describe_page})"}.get(label, label)


def fmt(value, spec, none="–"):
    return none if value is None else format(value, spec)


print("| backend | scenario | in flight | calls/s | p50 ms | p99 ms | limit /s | limit p50 ms | ratio | CPU µs/call | peak RSS MiB |")
print("|---|---|---|---|---|---|---|---|---|---|---|")
for backend, label, level, report in rows:
    if report is None:
        print(f"| {backend} | {shown(label)} | {level} | failed | | | | | | | |")
        continue
    limit = limits[(backend, label, level)]
    if label == "mixed" and limit is None:
        limit = mixed_limit(backend, level)
    server = report.get("server") or {}
    ok = report["ok_per_second"]
    print(
        f"| {backend} | {shown(label)} | {level} | {report['calls_per_second']:,.0f} "
        f"| {report['latency']['p50_ms']:.2f} | {report['latency']['p99_ms']:.2f} "
        f"| {fmt(limit and limit[0], ',.0f')} | {fmt(limit and limit[1], '.2f')} "
        f"| {fmt(limit and ok / limit[0], '.2f')} "
        f"| {fmt(server.get('cpu_us_per_call'), '.0f')} "
        f"| {fmt(server.get('peak_rss_kib') and server['peak_rss_kib'] / 1024, '.1f')} |"
    )
PY
