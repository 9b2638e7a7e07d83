//! SQL shared by both backends, written once in PostgreSQL's placeholder style (`$1`) and turned
//! into SQLite's (`?1`) by [`for_sqlite`]: the inventory upserts and reads, and the reads of the
//! CreateSnapshot transaction. Row locks are not part of these texts: PostgreSQL appends its
//! `FOR UPDATE` clauses; SQLite's `BEGIN IMMEDIATE` already holds the whole database.

/// The columns CreateSnapshot's engine needs about a disk `d`, with its account `a`, instance
/// `i`, progressing snapshot `p` and the caller's token binding `t` (a string literal, so that
/// PostgreSQL's batch read can share it).
macro_rules! create_state_columns {
    () => {
        "d.disk_id, d.account_id, d.category, d.disk_type, d.status, d.instance_id, d.size_gib,
       d.created_at, d.expires_at, d.ever_attached,
       d.snapshot_count, d.progressing_snapshot_id, d.progressing_since,
       a.account_id AS acct_id, a.snapshot_service_activated AS acct_snapshot_service_activated,
       a.insufficient_balance AS acct_insufficient_balance,
       i.instance_id AS inst_id, i.account_id AS inst_account_id, i.status AS inst_status,
       i.created_at AS inst_created_at, i.last_started_at AS inst_last_started_at,
       i.lock_reasons AS inst_lock_reasons,
       t.fingerprint AS token_fingerprint, t.snapshot_id AS token_snapshot_id,
       p.copy_due_at AS progressing_due_at"
    };
}
pub(crate) use create_state_columns;

/// The joins behind [`create_state_columns!`], from the disk `d`; the token is `$token`.
macro_rules! create_state_joins {
    ($token:literal) => {
        concat!(
            "
LEFT JOIN accounts a ON a.account_id = d.account_id
LEFT JOIN instances i ON i.instance_id = d.instance_id
LEFT JOIN client_tokens t ON t.account_id = d.account_id AND t.client_token = ",
            $token,
            "
LEFT JOIN snapshots p ON p.snapshot_id = d.progressing_snapshot_id"
        )
    };
}
pub(crate) use create_state_joins;

/// Everything CreateSnapshot's engine needs, for the caller's disk `$1` (caller `$2`, token
/// `$3`). PostgreSQL appends `FOR UPDATE OF d`.
pub(crate) const LOCK_AND_READ: &str = concat!(
    "SELECT ",
    create_state_columns!(),
    "
FROM disks d",
    create_state_joins!("$3"),
    "
WHERE d.disk_id = $1 AND d.account_id = $2"
);

/// The caller's (`$1`) account and binding of token `$2`, when there is no disk to lock.
pub(crate) const READ_CALLER: &str = "\
SELECT a.account_id AS acct_id, a.snapshot_service_activated AS acct_snapshot_service_activated,
       a.insufficient_balance AS acct_insufficient_balance,
       t.fingerprint AS token_fingerprint, t.snapshot_id AS token_snapshot_id
FROM (SELECT CAST($1 AS TEXT) AS account_id) caller
LEFT JOIN accounts a ON a.account_id = caller.account_id
LEFT JOIN client_tokens t ON t.account_id = caller.account_id AND t.client_token = $2";

pub(crate) const READ_TOKEN: &str = "\
SELECT fingerprint AS token_fingerprint, snapshot_id AS token_snapshot_id
FROM client_tokens WHERE account_id = $1 AND client_token = $2";

pub(crate) const UPSERT_ACCOUNT: &str = "\
INSERT INTO accounts (account_id, snapshot_service_activated, insufficient_balance)
VALUES ($1, $2, $3)
ON CONFLICT (account_id) DO UPDATE
SET snapshot_service_activated = EXCLUDED.snapshot_service_activated,
    insufficient_balance = EXCLUDED.insufficient_balance
RETURNING account_id, snapshot_service_activated, insufficient_balance";

pub(crate) const UPSERT_INSTANCE: &str = "\
INSERT INTO instances (instance_id, account_id, status, created_at, last_started_at, lock_reasons)
VALUES ($1, $2, $3, $4, $5, $6)
ON CONFLICT (instance_id) DO UPDATE
SET account_id = EXCLUDED.account_id, status = EXCLUDED.status, created_at = EXCLUDED.created_at,
    last_started_at = EXCLUDED.last_started_at, lock_reasons = EXCLUDED.lock_reasons
RETURNING instance_id, account_id, status, created_at, last_started_at, lock_reasons";

pub(crate) const UPSERT_DISK: &str = "\
INSERT INTO disks (disk_id, account_id, category, disk_type, status, instance_id, size_gib,
                   created_at, expires_at, ever_attached)
VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10)
ON CONFLICT (disk_id) DO UPDATE
SET account_id = EXCLUDED.account_id, category = EXCLUDED.category,
    disk_type = EXCLUDED.disk_type, status = EXCLUDED.status, instance_id = EXCLUDED.instance_id,
    size_gib = EXCLUDED.size_gib, created_at = EXCLUDED.created_at,
    expires_at = EXCLUDED.expires_at, ever_attached = EXCLUDED.ever_attached
RETURNING disk_id, account_id, category, disk_type, status, instance_id, size_gib, created_at,
          expires_at, ever_attached";

pub(crate) const SELECT_DISK: &str = "\
SELECT disk_id, account_id, category, disk_type, status, instance_id, size_gib, created_at,
       expires_at, ever_attached
FROM disks WHERE disk_id = $1";

/// A disk of another account than `$2` attached to instance `$1`.
pub(crate) const FOREIGN_DISK_ON_INSTANCE: &str =
    "SELECT disk_id FROM disks WHERE instance_id = $1 AND account_id <> $2 LIMIT 1";

pub(crate) const DISK_OWNER: &str =
    "SELECT account_id, snapshot_count FROM disks WHERE disk_id = $1";

pub(crate) const ANY_ACCOUNT: &str = "SELECT account_id FROM accounts LIMIT 1";

pub(crate) const ACCOUNT_EXISTS: &str = "SELECT account_id FROM accounts WHERE account_id = $1";

pub(crate) const INSTANCE_OWNER: &str = "SELECT account_id FROM instances WHERE instance_id = $1";

/// PostgreSQL's `$N` placeholders as SQLite's `?N` (same numbering, same meaning).
pub(crate) fn for_sqlite(sql: &str) -> String {
    sql.replace('$', "?")
}
