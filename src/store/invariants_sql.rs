//! The invariant checks, as queries that return the rows breaking a promise (none when all is
//! well). Written in PostgreSQL's placeholder style; SQLite runs them through `for_sqlite`.

/// One check: what it promises, and the query returning `(subject, detail)` for each breach.
pub(crate) struct Check {
    pub promise: &'static str,
    pub sql: &'static str,
    /// Binds the quota as `$1`.
    pub takes_quota: bool,
}

pub(crate) const CHECKS: &[Check] = &[
    Check {
        promise: "a disk holds at most its quota of snapshots",
        sql: "SELECT source_disk_id, CAST(COUNT(*) AS TEXT) FROM snapshots \
              GROUP BY source_disk_id HAVING COUNT(*) > $1",
        takes_quota: true,
    },
    Check {
        promise: "a disk has at most one snapshot in progress",
        sql: "SELECT source_disk_id, CAST(COUNT(*) AS TEXT) FROM snapshots \
              WHERE status = 'progressing' GROUP BY source_disk_id HAVING COUNT(*) > 1",
        takes_quota: false,
    },
    Check {
        promise: "a client token names a snapshot of its own account",
        sql: "SELECT t.account_id || '/' || t.client_token, s.account_id FROM client_tokens t \
              JOIN snapshots s ON s.snapshot_id = t.snapshot_id \
              WHERE s.account_id <> t.account_id",
        takes_quota: false,
    },
    Check {
        promise: "every snapshot's disk and account exist",
        sql: "SELECT s.snapshot_id, s.source_disk_id FROM snapshots s \
              LEFT JOIN disks d ON d.disk_id = s.source_disk_id \
              LEFT JOIN accounts a ON a.account_id = s.account_id \
              WHERE (d.disk_id IS NULL OR a.account_id IS NULL)",
        takes_quota: false,
    },
    Check {
        promise: "a snapshot belongs to its disk's account",
        sql: "SELECT s.snapshot_id, s.account_id || ' <> ' || d.account_id FROM snapshots s \
              JOIN disks d ON d.disk_id = s.source_disk_id \
              WHERE d.account_id <> s.account_id",
        takes_quota: false,
    },
    Check {
        promise: "a disk's snapshot count is the number of its snapshots",
        sql: "SELECT d.disk_id, CAST(d.snapshot_count AS TEXT) || ' <> ' || CAST(COUNT(s.snapshot_id) AS TEXT) \
              FROM disks d LEFT JOIN snapshots s ON s.source_disk_id = d.disk_id \
              GROUP BY d.disk_id, d.snapshot_count \
              HAVING d.snapshot_count <> COUNT(s.snapshot_id)",
        takes_quota: false,
    },
    Check {
        promise: "a disk's copy in progress is its progressing snapshot",
        sql: "SELECT d.disk_id, COALESCE(d.progressing_snapshot_id, '(none)') FROM disks d \
              LEFT JOIN snapshots s ON s.source_disk_id = d.disk_id AND s.status = 'progressing' \
              WHERE (d.progressing_snapshot_id IS NULL) <> (s.snapshot_id IS NULL) \
                 OR d.progressing_snapshot_id <> s.snapshot_id",
        takes_quota: false,
    },
];
