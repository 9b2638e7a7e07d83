#!/usr/bin/env bash
# A big database for "cost as the data grows" (issue #19), generated in SQL.
#
#   bench/bigdata.sh load       # make the database, migrate it, fill it, check it, time a start
#   bench/bigdata.sh explain    # EXPLAIN (ANALYZE, BUFFERS) of describe, the worker and the sweep
#   bench/bigdata.sh startup    # time a server start (migrations included) on the database
#
# PostgreSQL (default): the database TARGET (default snapshotd_big_template), DISKS (default
# 1,000,000) and SNAPSHOTS (default 10,000,000). BACKEND=sqlite: the file TARGET (default
# target/bigdata/big.db) at a tenth (100,000 disks, 1,000,000 snapshots). To measure on it
# without changing it: bench/limit.sh with TEMPLATE=TARGET (a copy per run).
#
# The rows look like the service's: valid ids; DISKS/100 accounts of 100 disks, pairs of disks on
# an instance, a quarter detached; SNAPSHOTS/DISKS snapshots per disk in time order over two
# years, mostly accomplished, 0.5 % failed, one in progress on one disk in 1,000; a fifth tagged;
# a tenth kept 3 years (release_at in the future); 1 % pinned by an image, half of those past a
# 30-day retention (they stay, and the sweep must step over them). Two large accounts for the
# describe comparison: bulk-10k holds exactly 10,000 snapshots, bulk-2k 2,000 (on disks of
# their own), interleaved in time with everybody else's. Disk counters (snapshot_count, the
# progressing snapshot) and the accounts' counts are computed from the rows; `snapshotd check`
# verifies every promise.
#
# The load drops the secondary indexes and triggers (FK checks, change notifications) and
# rebuilds the indexes from their own definitions after, so it stays right when a migration adds
# one. Other: PG_ADMIN_URL, SERVER_BIN (default target/release/snapshotd), PORT (for startup; a free one by default).
set -euo pipefail

mode=${1:-load}
backend=${BACKEND:-postgres}
admin_url=${PG_ADMIN_URL:-postgres://postgres@127.0.0.1:5432/postgres}
server=${SERVER_BIN:-target/release/snapshotd}
cd "$(dirname "$0")/.."

case "$backend" in
postgres)
    target=${TARGET:-snapshotd_big_template}
    disks=${DISKS:-1000000}
    snapshots=${SNAPSHOTS:-10000000}
    database_url="${admin_url%/*}/$target"
    ;;
sqlite)
    target=${TARGET:-target/bigdata/big.db}
    disks=${DISKS:-100000}
    snapshots=${SNAPSHOTS:-1000000}
    database_url="sqlite://$target"
    ;;
*)
    echo "BACKEND must be postgres or sqlite" >&2
    exit 2
    ;;
esac
if ((disks % 100 != 0 || snapshots < 20000 || snapshots < disks)); then
    echo "DISKS must be a multiple of 100 and SNAPSHOTS at least 20,000 and DISKS" >&2
    exit 2
fi
# Snapshot k belongs to bulk-10k when k % stride_10k = 0 (10,000 of them), to bulk-2k when
# k % stride_2k = 1 (2,000; never both, stride_2k being a multiple of stride_10k >= 2).
stride_10k=$((snapshots / 10000))
stride_2k=$((stride_10k * 5))
quiet() { "$@" >/dev/null; }
seconds_since() {
    local centis=$((($(date +%s%N) - $1) / 10000000))
    printf '%d.%02d' $((centis / 100)) $((centis % 100))
}

# The schema: `snapshotd check` migrates an empty database and checks it.
migrate() {
    quiet env DATABASE_URL="$database_url" SNAPSHOTD_DEMO=false RUST_LOG=warn "$server" check
}

load_postgres() {
    psql "$admin_url" -q -v ON_ERROR_STOP=1 \
        -c "DROP DATABASE IF EXISTS $target WITH (FORCE)" -c "CREATE DATABASE $target"
    migrate
    psql "$database_url" -q -v ON_ERROR_STOP=1 \
        -v disks="$disks" -v snapshots="$snapshots" \
        -v s10k="$stride_10k" -v s2k="$stride_2k" <<'SQL'
-- Bulk settings for this session only.
SET synchronous_commit = off;
SET maintenance_work_mem = '1GB';
SET work_mem = '256MB';
-- No per-row triggers: the foreign-key checks (`snapshotd check` verifies the same promises
-- after) and the change notifications nobody listens to.
SET session_replication_role = replica;

CREATE TEMP TABLE bulk_indexes AS
    SELECT i.indexrelid::regclass::text AS name, pg_get_indexdef(i.indexrelid) AS definition
    FROM pg_index i JOIN pg_class t ON t.oid = i.indrelid
    WHERE t.relname IN ('snapshots', 'snapshot_tags', 'disks', 'instances', 'images', 'client_tokens')
      AND NOT EXISTS (SELECT 1 FROM pg_constraint c WHERE c.conindid = i.indexrelid);
SELECT format('DROP INDEX %s', name) FROM bulk_indexes \gexec

-- Disk m: 0 .. disks-1 ordinary (100 per account), then 200 of bulk-10k and 40 of bulk-2k.
CREATE FUNCTION pg_temp.disk_of(k bigint, disks bigint, s10k bigint, s2k bigint) RETURNS bigint
    IMMUTABLE LANGUAGE sql AS $$
    SELECT CASE WHEN k % s10k = 0 AND k / s10k < 10000 THEN disks + (k / s10k) % 200
                WHEN k % s2k = 1 AND k / s2k < 2000 THEN disks + 200 + (k / s2k) % 40
                ELSE k % disks END $$;
CREATE FUNCTION pg_temp.account_of(m bigint, disks bigint) RETURNS text
    IMMUTABLE LANGUAGE sql AS $$
    SELECT CASE WHEN m < disks THEN 'bulk-a' || (m / 100)
                WHEN m < disks + 200 THEN 'bulk-10k' ELSE 'bulk-2k' END $$;
-- 's-' + 20 of [0-9a-f]: a scrambled prefix (a bijection of k's low 32 bits), then k itself.
CREATE FUNCTION pg_temp.snapshot_id(k bigint) RETURNS text IMMUTABLE LANGUAGE sql AS $$
    SELECT 's-' || lpad(to_hex((k * 2654435761) % 4294967296), 8, '0') || lpad(to_hex(k), 12, '0') $$;

INSERT INTO accounts (account_id, snapshot_service_activated, insufficient_balance)
SELECT pg_temp.account_of(m, :disks), true, false
FROM generate_series(0, :disks - 1, 100) m
UNION ALL SELECT 'bulk-10k', true, false
UNION ALL SELECT 'bulk-2k', true, false;

-- Instance i holds disks 2i and 2i+1 (of one account: 100, 200 and 40 are even).
INSERT INTO instances (instance_id, account_id, status, created_at, last_started_at)
SELECT 'i-bulk' || i, pg_temp.account_of(2 * i, :disks),
       CASE WHEN i % 10 = 9 THEN 'Stopped' ELSE 'Running' END,
       now() - interval '800 days', now() - interval '30 days'
FROM generate_series(0, (:disks + 240) / 2 - 1) i;

-- Two years of snapshots in time order (so the heap mixes every account, as real traffic does).
INSERT INTO snapshots (snapshot_id, account_id, source_disk_id, snapshot_name, description,
                       source_disk_size_gib, source_disk_type, status, created_at, started_at,
                       copy_due_at, last_modified_at, retention_days, release_at, usage)
SELECT pg_temp.snapshot_id(k), pg_temp.account_of(m, :disks), 'd-bulk' || m,
       CASE WHEN k % 3 = 0 THEN 'daily-' || k END, 'generated by bench/bigdata.sh',
       20 * (1 + m % 5), CASE WHEN m % 4 = 0 THEN 'system' ELSE 'data' END,
       state, at, at,
       CASE WHEN state = 'progressing' THEN now() + interval '30 days' ELSE at + copy END,
       at + copy,
       CASE WHEN pinned AND (k / 100) % 2 = 0 THEN 30 WHEN k % 10 = 1 THEN 1095 ELSE 0 END,
       CASE WHEN pinned AND (k / 100) % 2 = 0 THEN at + interval '30 days'
            WHEN k % 10 = 1 THEN at + interval '1095 days' END,
       CASE WHEN pinned THEN 'image' ELSE 'none' END
FROM generate_series(0, :snapshots - 1) k
CROSS JOIN LATERAL (SELECT pg_temp.disk_of(k, :disks, :s10k, :s2k) AS m,
                           now() - interval '731 days' + (interval '730 days' / :snapshots) * k AS at) placed
CROSS JOIN LATERAL (SELECT (20 * (1 + m % 5)) * interval '4 seconds' AS copy,
                           -- the newest snapshot of one ordinary disk in 1,000 is in progress
                           CASE WHEN k >= :snapshots - :disks AND m < :disks AND m % 1000 = 7
                                     AND m = k % :disks THEN 'progressing'
                                WHEN k % 200 = 17 THEN 'failed'
                                ELSE 'accomplished' END AS state) copied
CROSS JOIN LATERAL (SELECT k % 100 = 3 AND state = 'accomplished' AS pinned) used;

INSERT INTO snapshot_tags (snapshot_id, key, value)
SELECT pg_temp.snapshot_id(k), 'env', CASE WHEN k % 2 = 0 THEN 'prod' ELSE 'dev' END
FROM generate_series(0, :snapshots - 1, 5) k
UNION ALL
SELECT pg_temp.snapshot_id(k), 'team', 'team-' || (k % 50)
FROM generate_series(0, :snapshots - 1, 10) k;

INSERT INTO images (image_id, account_id, snapshot_id, image_name, created_at)
SELECT 'm-' || substr(snapshot_id, 3), account_id, snapshot_id, 'image-' || substr(snapshot_id, 3),
       created_at + interval '1 hour'
FROM snapshots WHERE usage = 'image';

INSERT INTO client_tokens (account_id, client_token, fingerprint, snapshot_id, created_at)
SELECT account_id, 'token-' || substr(snapshot_id, 3), md5(snapshot_id), snapshot_id, created_at
FROM snapshots WHERE right(snapshot_id, 1) IN ('2', 'a');

-- The disks last, with the store's counters computed from the snapshots just written.
INSERT INTO disks (disk_id, account_id, category, disk_type, status, instance_id, size_gib,
                   created_at, expires_at, ever_attached, snapshot_count,
                   progressing_snapshot_id, progressing_since)
SELECT 'd-bulk' || m, pg_temp.account_of(m, :disks), 'cloud_essd',
       CASE WHEN m % 4 = 0 THEN 'system' ELSE 'data' END,
       CASE WHEN m % 4 = 3 THEN 'Available' ELSE 'In_use' END,
       CASE WHEN m % 4 = 3 THEN NULL ELSE 'i-bulk' || (m / 2) END,
       20 * (1 + m % 5), now() - interval '800 days', NULL, true,
       COALESCE(c.snapshot_count, 0), c.progressing_snapshot_id, c.progressing_since
FROM generate_series(0, :disks + 239) m
LEFT JOIN (SELECT source_disk_id, count(*) AS snapshot_count,
                  max(snapshot_id) FILTER (WHERE status = 'progressing') AS progressing_snapshot_id,
                  max(started_at) FILTER (WHERE status = 'progressing') AS progressing_since
           FROM snapshots GROUP BY source_disk_id) c ON c.source_disk_id = 'd-bulk' || m;

-- The accounts' counts (migration 0011), computed from the snapshots too.
INSERT INTO account_snapshot_counts (account_id, slot, snapshot_count)
SELECT account_id, 0, count(*) FROM snapshots GROUP BY account_id;

SELECT definition FROM bulk_indexes \gexec
SQL
    psql "$database_url" -q -v ON_ERROR_STOP=1 -c "VACUUM (ANALYZE)"
}

load_sqlite() {
    mkdir -p "$(dirname "$target")"
    rm -f "$target" "$target-wal" "$target-shm"
    migrate
    # The definitions of what the load drops (indexes other than the keys', the triggers).
    local rebuilt
    rebuilt=$(sqlite3 "$target" "SELECT sql || ';' FROM sqlite_master
        WHERE type IN ('index', 'trigger') AND sql IS NOT NULL
          AND tbl_name IN ('snapshots', 'snapshot_tags', 'disks', 'instances', 'images', 'client_tokens')")
    local dropped
    dropped=$(sqlite3 "$target" "SELECT 'DROP ' || upper(type) || ' ' || name || ';' FROM sqlite_master
        WHERE type IN ('index', 'trigger') AND sql IS NOT NULL
          AND tbl_name IN ('snapshots', 'snapshot_tags', 'disks', 'instances', 'images', 'client_tokens')")
    # Times as the store writes them (RFC 3339, +00:00): ts(seconds since the epoch).
    sqlite3 "$target" <<SQL
.bail on
PRAGMA synchronous = OFF;
PRAGMA cache_size = -1000000;
PRAGMA temp_store = MEMORY;
BEGIN;
$dropped
CREATE TEMP TABLE knobs AS
    SELECT $disks AS disks, $snapshots AS snapshots, $stride_10k AS s10k, $stride_2k AS s2k,
           CAST(strftime('%s', 'now') AS INTEGER) AS now_s;
CREATE TEMP VIEW series AS
    WITH RECURSIVE n(k) AS (SELECT 0 UNION ALL SELECT k + 1 FROM n, knobs WHERE k + 1 < snapshots)
    SELECT k FROM n;

INSERT INTO accounts (account_id, snapshot_service_activated, insufficient_balance)
WITH RECURSIVE a(i) AS (SELECT 0 UNION ALL SELECT i + 1 FROM a, knobs WHERE i + 1 < disks / 100)
SELECT 'bulk-a' || i, 1, 0 FROM a
UNION ALL SELECT 'bulk-10k', 1, 0
UNION ALL SELECT 'bulk-2k', 1, 0;

CREATE TEMP VIEW disk_numbers AS
    WITH RECURSIVE d(m) AS (SELECT 0 UNION ALL SELECT m + 1 FROM d, knobs WHERE m + 1 < disks + 240)
    SELECT m, CASE WHEN m < disks THEN 'bulk-a' || (m / 100)
                   WHEN m < disks + 200 THEN 'bulk-10k' ELSE 'bulk-2k' END AS account_id
    FROM d, knobs;

INSERT INTO instances (instance_id, account_id, status, created_at, last_started_at)
SELECT 'i-bulk' || (m / 2), account_id, CASE WHEN (m / 2) % 10 = 9 THEN 'Stopped' ELSE 'Running' END,
       strftime('%Y-%m-%dT%H:%M:%S+00:00', now_s - 800 * 86400, 'unixepoch'),
       strftime('%Y-%m-%dT%H:%M:%S+00:00', now_s - 30 * 86400, 'unixepoch')
FROM disk_numbers, knobs WHERE m % 2 = 0;

INSERT INTO snapshots (snapshot_id, account_id, source_disk_id, snapshot_name, description,
                       source_disk_size_gib, source_disk_type, status, created_at, started_at,
                       copy_due_at, last_modified_at, retention_days, release_at, usage)
SELECT snapshot_id, account_id, 'd-bulk' || m, CASE WHEN k % 3 = 0 THEN 'daily-' || k END,
       'generated by bench/bigdata.sh', 20 * (1 + m % 5),
       CASE WHEN m % 4 = 0 THEN 'system' ELSE 'data' END, state,
       strftime('%Y-%m-%dT%H:%M:%S+00:00', at, 'unixepoch'),
       strftime('%Y-%m-%dT%H:%M:%S+00:00', at, 'unixepoch'),
       strftime('%Y-%m-%dT%H:%M:%S+00:00',
                CASE WHEN state = 'progressing' THEN now_s + 30 * 86400 ELSE at + copy END, 'unixepoch'),
       strftime('%Y-%m-%dT%H:%M:%S+00:00', at + copy, 'unixepoch'),
       CASE WHEN pinned AND (k / 100) % 2 = 0 THEN 30 WHEN k % 10 = 1 THEN 1095 ELSE 0 END,
       CASE WHEN pinned AND (k / 100) % 2 = 0 THEN strftime('%Y-%m-%dT%H:%M:%S+00:00', at + 30 * 86400, 'unixepoch')
            WHEN k % 10 = 1 THEN strftime('%Y-%m-%dT%H:%M:%S+00:00', at + 1095 * 86400, 'unixepoch') END,
       CASE WHEN pinned THEN 'image' ELSE 'none' END
FROM (SELECT *, k % 100 = 3 AND state = 'accomplished' AS pinned FROM (
      SELECT k, m, now_s, 's-' || printf('%08x%012x', (k * 2654435761) % 4294967296, k) AS snapshot_id,
             CASE WHEN m < disks THEN 'bulk-a' || (m / 100)
                  WHEN m < disks + 200 THEN 'bulk-10k' ELSE 'bulk-2k' END AS account_id,
             now_s - 731 * 86400 + (730 * 86400 * k) / snapshots AS at,
             (20 * (1 + m % 5)) * 4 AS copy,
             CASE WHEN k >= snapshots - disks AND m < disks AND m % 1000 = 7 AND m = k % disks
                      THEN 'progressing'
                  WHEN k % 200 = 17 THEN 'failed' ELSE 'accomplished' END AS state
      FROM (SELECT k, knobs.*,
                   CASE WHEN k % s10k = 0 AND k / s10k < 10000 THEN disks + (k / s10k) % 200
                        WHEN k % s2k = 1 AND k / s2k < 2000 THEN disks + 200 + (k / s2k) % 40
                        ELSE k % disks END AS m
            FROM series, knobs)));

INSERT INTO snapshot_tags (snapshot_id, key, value)
SELECT 's-' || printf('%08x%012x', (k * 2654435761) % 4294967296, k), 'env',
       CASE WHEN k % 2 = 0 THEN 'prod' ELSE 'dev' END
FROM series WHERE k % 5 = 0
UNION ALL
SELECT 's-' || printf('%08x%012x', (k * 2654435761) % 4294967296, k), 'team', 'team-' || (k % 50)
FROM series WHERE k % 10 = 0;

INSERT INTO images (image_id, account_id, snapshot_id, image_name, created_at)
SELECT 'm-' || substr(snapshot_id, 3), account_id, snapshot_id, 'image-' || substr(snapshot_id, 3),
       strftime('%Y-%m-%dT%H:%M:%S+00:00', unixepoch(created_at) + 3600, 'unixepoch')
FROM snapshots WHERE usage = 'image';

INSERT INTO client_tokens (account_id, client_token, fingerprint, snapshot_id, created_at)
SELECT account_id, 'token-' || substr(snapshot_id, 3), 'fp-' || substr(snapshot_id, 3), snapshot_id, created_at
FROM snapshots WHERE substr(snapshot_id, -1) IN ('2', 'a');

INSERT INTO disks (disk_id, account_id, category, disk_type, status, instance_id, size_gib,
                   created_at, expires_at, ever_attached, snapshot_count,
                   progressing_snapshot_id, progressing_since)
SELECT 'd-bulk' || m, account_id, 'cloud_essd', CASE WHEN m % 4 = 0 THEN 'system' ELSE 'data' END,
       CASE WHEN m % 4 = 3 THEN 'Available' ELSE 'In_use' END,
       CASE WHEN m % 4 = 3 THEN NULL ELSE 'i-bulk' || (m / 2) END,
       20 * (1 + m % 5), strftime('%Y-%m-%dT%H:%M:%S+00:00', now_s - 800 * 86400, 'unixepoch'),
       NULL, 1, COALESCE(c.snapshot_count, 0), c.progressing_snapshot_id, c.progressing_since
FROM disk_numbers, knobs
LEFT JOIN (SELECT source_disk_id, count(*) AS snapshot_count,
                  max(CASE WHEN status = 'progressing' THEN snapshot_id END) AS progressing_snapshot_id,
                  max(CASE WHEN status = 'progressing' THEN started_at END) AS progressing_since
           FROM snapshots GROUP BY source_disk_id) c ON c.source_disk_id = 'd-bulk' || m;

INSERT INTO account_snapshot_counts (account_id, slot, snapshot_count)
SELECT account_id, 0, count(*) FROM snapshots GROUP BY account_id;

$rebuilt
COMMIT;
ANALYZE;
SQL
}

# The store's statements as it sends them (src/store/shared.rs; placeholders as literals), each
# under EXPLAIN (ANALYZE, BUFFERS): describe (today's three statements: the page, its tags, the
# count) for bulk-10k and bulk-2k, first page and a token page 90 % deep (and that page with the
# keyset written as a row comparison, which PostgreSQL bounds the index scan with); the worker's step with
# 256 copies due and the retention sweep with 256 snapshots due and with none, each in a
# transaction rolled back.
explain_postgres() {
    local columns="s.snapshot_id, s.account_id, s.source_disk_id, s.snapshot_name, s.description,
        s.source_disk_size_gib, s.source_disk_type, s.status, s.created_at, s.started_at,
        s.copy_due_at, s.last_modified_at, s.retention_days, s.usage"
    local account depth
    for account in bulk-10k:9000 bulk-2k:1800; do
        depth=${account#*:}
        account=${account%:*}
        psql "$database_url" -X -q -v ON_ERROR_STOP=1 -v account="$account" -v depth="$depth" <<SQL
\pset pager off
SELECT created_at AS deep_at, snapshot_id AS deep_id FROM snapshots WHERE account_id = :'account'
ORDER BY created_at DESC, snapshot_id DESC OFFSET :depth LIMIT 1 \gset
SELECT string_agg(quote_literal(snapshot_id), ', ') AS page_ids FROM (
    SELECT snapshot_id FROM snapshots WHERE account_id = :'account'
    ORDER BY created_at DESC, snapshot_id DESC LIMIT 100) page \gset
\echo == describe :account, first page of 100: the page
EXPLAIN (ANALYZE, BUFFERS, COSTS OFF) SELECT $columns FROM snapshots s WHERE s.account_id = :'account'
ORDER BY s.created_at DESC, s.snapshot_id DESC LIMIT 101;
\echo == describe :account, a token page :depth deep: the page
EXPLAIN (ANALYZE, BUFFERS, COSTS OFF) SELECT $columns FROM snapshots s WHERE s.account_id = :'account'
AND (s.created_at < :'deep_at' OR (s.created_at = :'deep_at' AND s.snapshot_id < :'deep_id'))
ORDER BY s.created_at DESC, s.snapshot_id DESC LIMIT 101;
\echo == describe :account, the same token page with the keyset as a row comparison
EXPLAIN (ANALYZE, BUFFERS, COSTS OFF) SELECT $columns FROM snapshots s WHERE s.account_id = :'account'
AND (s.created_at, s.snapshot_id) < (CAST(:'deep_at' AS timestamptz), :'deep_id')
ORDER BY s.created_at DESC, s.snapshot_id DESC LIMIT 101;
\echo == describe :account: the tags of the page
EXPLAIN (ANALYZE, BUFFERS, COSTS OFF) SELECT snapshot_id, key, value FROM snapshot_tags
WHERE snapshot_id IN (:page_ids) ORDER BY snapshot_id, key;
\echo == describe :account: the count (every page but a lone first one)
EXPLAIN (ANALYZE, BUFFERS, COSTS OFF) SELECT count(*) FROM snapshots s WHERE s.account_id = :'account';
SQL
    done
    psql "$database_url" -X -q -v ON_ERROR_STOP=1 <<SQL
\pset pager off
BEGIN;
UPDATE snapshots SET copy_due_at = now() - interval '1 second' WHERE snapshot_id IN (
    SELECT snapshot_id FROM snapshots WHERE status = 'progressing' ORDER BY snapshot_id LIMIT 256);
\echo == worker: claim the copies due (256 due)
EXPLAIN (ANALYZE, BUFFERS, COSTS OFF) SELECT $columns FROM snapshots s
WHERE s.status = 'progressing' AND s.copy_due_at <= now() ORDER BY s.copy_due_at LIMIT 256
FOR UPDATE SKIP LOCKED;
SELECT string_agg(quote_literal(snapshot_id), ', ') AS ids,
       string_agg(quote_literal(source_disk_id), ', ') AS disk_ids FROM (
    SELECT snapshot_id, source_disk_id FROM snapshots
    WHERE status = 'progressing' AND copy_due_at <= now() ORDER BY source_disk_id LIMIT 256) due \gset
\echo == worker: finish them (snapshots)
EXPLAIN (ANALYZE, BUFFERS, COSTS OFF) UPDATE snapshots SET status = 'accomplished', last_modified_at = now()
WHERE snapshot_id IN (:ids);
\echo == worker: finish them (disks)
EXPLAIN (ANALYZE, BUFFERS, COSTS OFF) UPDATE disks SET progressing_snapshot_id = NULL, progressing_since = NULL
WHERE disk_id IN (:disk_ids) AND progressing_snapshot_id IN (:ids);
ROLLBACK;
\echo == retention sweep: claim the releases due (none unpinned due)
EXPLAIN (ANALYZE, BUFFERS, COSTS OFF) SELECT $columns FROM snapshots s
WHERE s.release_at <= now() AND s.usage = 'none' ORDER BY s.release_at LIMIT 256 FOR UPDATE SKIP LOCKED;
BEGIN;
UPDATE snapshots SET release_at = now() - interval '1 hour' WHERE snapshot_id IN (
    SELECT snapshot_id FROM snapshots WHERE retention_days = 1095 LIMIT 256);
\echo == retention sweep: claim the releases due (256 due)
EXPLAIN (ANALYZE, BUFFERS, COSTS OFF) SELECT $columns FROM snapshots s
WHERE s.release_at <= now() AND s.usage = 'none' ORDER BY s.release_at LIMIT 256 FOR UPDATE SKIP LOCKED;
SELECT snapshot_id AS one_id, source_disk_id AS one_disk FROM snapshots
WHERE release_at <= now() AND usage = 'none' LIMIT 1 \gset
\echo == retention sweep: delete one (per released snapshot)
EXPLAIN (ANALYZE, BUFFERS, COSTS OFF) DELETE FROM snapshots WHERE snapshot_id = :'one_id';
\echo == retention sweep: uncount it (per released snapshot)
EXPLAIN (ANALYZE, BUFFERS, COSTS OFF) UPDATE disks SET snapshot_count = snapshot_count - 1,
    progressing_snapshot_id = CASE WHEN progressing_snapshot_id = :'one_id' THEN NULL
                                   ELSE progressing_snapshot_id END,
    progressing_since = CASE WHEN progressing_snapshot_id = :'one_id' THEN NULL
                             ELSE progressing_since END
WHERE disk_id = :'one_disk';
ROLLBACK;
SQL
}

# SQLite: the plan (EXPLAIN QUERY PLAN) and the time of each statement, wrapped in a count so
# that the rows are not printed.
explain_sqlite() {
    local columns="s.snapshot_id, s.account_id, s.source_disk_id, s.snapshot_name, s.description,
        s.source_disk_size_gib, s.source_disk_type, s.status, s.created_at, s.started_at,
        s.copy_due_at, s.last_modified_at, s.retention_days, s.usage"
    local now
    now=$(date -u +%Y-%m-%dT%H:%M:%S+00:00)
    show() {
        echo "== $1"
        sqlite3 "$target" "EXPLAIN QUERY PLAN $2" | sed 's/^/    /'
        # Three runs: the last, with the pages in the cache, is shown.
        printf 'SELECT %s;\nSELECT %s;\n.timer on\nSELECT %s;\n' "count(*) FROM ($2)" \
            "count(*) FROM ($2)" "'rows: ' || count(*) FROM ($2)" | sqlite3 "$target" |
            sed -n 's/^/    /; /rows: \|Run Time/p'
    }
    local account depth deep_at deep_id page_ids
    for account in bulk-10k:9000 bulk-2k:1800; do
        depth=${account#*:}
        account=${account%:*}
        IFS='|' read -r deep_at deep_id < <(sqlite3 "$target" "SELECT created_at, snapshot_id FROM snapshots
            WHERE account_id = '$account' ORDER BY created_at DESC, snapshot_id DESC LIMIT 1 OFFSET $depth")
        page_ids=$(sqlite3 "$target" "SELECT group_concat(quote(snapshot_id), ', ') FROM (SELECT snapshot_id
            FROM snapshots WHERE account_id = '$account' ORDER BY created_at DESC, snapshot_id DESC LIMIT 100)")
        show "describe $account, first page of 100: the page" \
            "SELECT $columns FROM snapshots s WHERE s.account_id = '$account'
             ORDER BY s.created_at DESC, s.snapshot_id DESC LIMIT 101"
        show "describe $account, a token page $depth deep: the page" \
            "SELECT $columns FROM snapshots s WHERE s.account_id = '$account'
             AND (s.created_at < '$deep_at' OR (s.created_at = '$deep_at' AND s.snapshot_id < '$deep_id'))
             ORDER BY s.created_at DESC, s.snapshot_id DESC LIMIT 101"
        show "describe $account, the same token page with the keyset as a row comparison" \
            "SELECT $columns FROM snapshots s WHERE s.account_id = '$account'
             AND (s.created_at, s.snapshot_id) < ('$deep_at', '$deep_id')
             ORDER BY s.created_at DESC, s.snapshot_id DESC LIMIT 101"
        show "describe $account: the tags of the page" \
            "SELECT snapshot_id, key, value FROM snapshot_tags WHERE snapshot_id IN ($page_ids)
             ORDER BY snapshot_id, key"
        show "describe $account: the count" \
            "SELECT count(*) FROM snapshots s WHERE s.account_id = '$account'"
    done
    show "worker: claim the copies due" \
        "SELECT $columns FROM snapshots s WHERE s.status = 'progressing' AND s.copy_due_at <= '$now'
         ORDER BY s.copy_due_at LIMIT 256"
    show "retention sweep: claim the releases due" \
        "SELECT $columns FROM snapshots s WHERE s.release_at <= '$now' AND s.usage = 'none'
         ORDER BY s.release_at LIMIT 256"
}

# Seconds from exec to SERVING: connect, migrations (none left to run, or the new ones), the
# worker and the listeners.
startup() {
    local port=${PORT:-} log pid started
    # A free port by default: a fixed one in the ephemeral range (32768–60999) can be held by
    # any client socket on the machine (CI once found 50590 taken).
    [ -n "$port" ] || port=$(python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')
    log=$(mktemp)
    started=$(date +%s%N)
    env DATABASE_URL="$database_url" SNAPSHOTD_LISTEN="127.0.0.1:$port" SNAPSHOTD_DEMO=false \
        SNAPSHOTD_METRICS_LISTEN=off SNAPSHOTD_ECS_LISTEN=off SNAPSHOTD_LOG_FORMAT=json RUST_LOG=warn \
        "$server" >"$log" 2>&1 &
    pid=$!
    for _ in $(seq 1 600); do
        "$server" health --listen "127.0.0.1:$port" >/dev/null 2>&1 && break
        kill -0 "$pid" 2>/dev/null || break
        sleep 0.05
    done
    local took
    took=$(seconds_since "$started")
    if ! "$server" health --listen "127.0.0.1:$port" >/dev/null 2>&1; then
        kill "$pid" 2>/dev/null || true
        cat "$log" >&2
        rm -f "$log"
        return 1
    fi
    kill "$pid"
    wait "$pid" 2>/dev/null || true
    rm -f "$log"
    echo "startup to SERVING: ${took} s"
}

size_report() {
    if [ "$backend" = postgres ]; then
        psql "$database_url" -Atc "SELECT 'database ' || pg_size_pretty(pg_database_size(current_database()))
            || ', snapshots ' || (SELECT count(*) FROM snapshots) || ', disks ' || (SELECT count(*) FROM disks)
            || ', bulk-10k ' || (SELECT count(*) FROM snapshots WHERE account_id = 'bulk-10k')
            || ', bulk-2k ' || (SELECT count(*) FROM snapshots WHERE account_id = 'bulk-2k')"
    else
        echo "file $(du -h "$target" | cut -f1), $(sqlite3 "$target" "SELECT 'snapshots ' || (SELECT count(*) FROM snapshots)
            || ', disks ' || (SELECT count(*) FROM disks)
            || ', bulk-10k ' || (SELECT count(*) FROM snapshots WHERE account_id = 'bulk-10k')
            || ', bulk-2k ' || (SELECT count(*) FROM snapshots WHERE account_id = 'bulk-2k')")"
    fi
}

main() {
    case "$mode" in
    load)
        started=$(date +%s%N)
        "load_$backend"
        echo "loaded $disks disks, $snapshots snapshots into $target ($backend) in $(seconds_since "$started") s"
        size_report
        started=$(date +%s%N)
        env DATABASE_URL="$database_url" SNAPSHOTD_DEMO=false RUST_LOG=warn "$server" check
        echo "checked in $(seconds_since "$started") s"
        startup
        ;;
    startup)
        startup
        ;;
    explain)
        explain_"$backend"
        ;;
    *)
        echo "usage: bench/bigdata.sh load|explain|startup" >&2
        exit 2
        ;;
    esac
}
# Bash reads a script as it runs it: with `exit` on the line that runs it all, an edit of this
# file during a run (a long load) cannot change what the run does next.
main; exit $?
