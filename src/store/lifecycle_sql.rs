//! SQL of the snapshot lifecycle (listing, deleting, images, the worker's queues), written once
//! in PostgreSQL's placeholder style (`$1`) and turned into SQLite's (`?1`) by [`for_sqlite`].
//! Row locks are not part of these texts: PostgreSQL appends its `FOR UPDATE` clauses; SQLite's
//! `BEGIN IMMEDIATE` already holds the whole database.

use super::{PageCursor, SnapshotQuery};
use crate::domain::Timestamp;

/// Columns of a snapshot row, as [`super::rows::SnapshotRow`] reads them.
pub(crate) const SNAPSHOT_COLUMNS: &str = "s.snapshot_id, s.account_id, s.source_disk_id, \
    s.snapshot_name, s.description, s.source_disk_size_gib, s.source_disk_type, s.status, \
    s.created_at, s.started_at, s.copy_due_at, s.last_modified_at, s.retention_days, s.usage";

/// The caller's snapshot (the caller is `$2`).
pub(crate) fn own_snapshot() -> String {
    format!(
        "SELECT {SNAPSHOT_COLUMNS} FROM snapshots s WHERE s.snapshot_id = $1 AND s.account_id = $2"
    )
}

/// Progressing snapshots whose copy is due by `$1`, oldest due first, at most `$2`.
pub(crate) fn due_copies() -> String {
    format!(
        "SELECT {SNAPSHOT_COLUMNS} FROM snapshots s \
         WHERE s.status = 'progressing' AND s.copy_due_at <= $1 \
         ORDER BY s.copy_due_at LIMIT $2"
    )
}

/// Snapshots past their retention by `$1` that no image pins, at most `$2`.
pub(crate) fn due_releases() -> String {
    format!(
        "SELECT {SNAPSHOT_COLUMNS} FROM snapshots s \
         WHERE s.release_at <= $1 AND s.usage = 'none' \
         ORDER BY s.release_at LIMIT $2"
    )
}

pub(crate) const DELETE_SNAPSHOT: &str = "DELETE FROM snapshots WHERE snapshot_id = $1";

/// Frees one snapshot's quota on disk `$1`, and the disk itself if `$2` was its copy in progress.
/// (Every SET expression sees the row as it was, so both CASEs test the old id.)
pub(crate) const UNCOUNT_SNAPSHOT: &str = "UPDATE disks SET snapshot_count = snapshot_count - 1, \
    progressing_snapshot_id = CASE WHEN progressing_snapshot_id = $2 THEN NULL ELSE progressing_snapshot_id END, \
    progressing_since = CASE WHEN progressing_snapshot_id = $2 THEN NULL ELSE progressing_since END \
    WHERE disk_id = $1";

/// Sets the status of `count` snapshots (`$3`…) to `$1` at `$2`: one statement for a whole
/// worker step.
pub(crate) fn set_status_of(count: usize) -> String {
    format!(
        "UPDATE snapshots SET status = $1, last_modified_at = $2 WHERE snapshot_id IN ({})",
        placeholders(3, count)
    )
}

/// Frees the disks (`$1`… , `count` of them) whose copy in progress is one of the `count`
/// snapshots that follow: a snapshot belongs to one disk, so a disk is freed only by its own.
pub(crate) fn free_disks_of(count: usize) -> String {
    format!(
        "UPDATE disks SET progressing_snapshot_id = NULL, progressing_since = NULL \
         WHERE disk_id IN ({}) AND progressing_snapshot_id IN ({})",
        placeholders(1, count),
        placeholders(1 + count, count)
    )
}

/// `$first, …` for `count` placeholders.
fn placeholders(first: usize, count: usize) -> String {
    (first..first + count)
        .map(|n| format!("${n}"))
        .collect::<Vec<_>>()
        .join(", ")
}

/// Looks at snapshot `$1` again at `$2`.
pub(crate) const POSTPONE_COPY: &str =
    "UPDATE snapshots SET copy_due_at = $2 WHERE snapshot_id = $1";

pub(crate) const READ_IMAGE_TOKEN: &str = "SELECT fingerprint AS token_fingerprint, \
    image_id AS token_snapshot_id FROM image_client_tokens WHERE account_id = $1 AND client_token = $2";

pub(crate) const INSERT_IMAGE: &str = "INSERT INTO images (image_id, account_id, snapshot_id, \
    image_name, created_at) VALUES ($1, $2, $3, $4, $5)";

pub(crate) const INSERT_IMAGE_TOKEN: &str = "INSERT INTO image_client_tokens (account_id, \
    client_token, fingerprint, image_id, created_at) VALUES ($1, $2, $3, $4, $5)";

/// Marks snapshot `$1` as used by an image at `$2`.
pub(crate) const PIN_FOR_IMAGE: &str =
    "UPDATE snapshots SET usage = 'image', last_modified_at = $2 WHERE snapshot_id = $1";

/// A value bound to a generated statement.
#[derive(Debug, Clone)]
pub(crate) enum Param {
    Text(String),
    Time(Timestamp),
    Int(i64),
}

/// A statement and its parameters, in placeholder order.
struct Builder {
    sql: String,
    params: Vec<Param>,
}

impl Builder {
    fn bind(&mut self, param: Param) -> String {
        self.params.push(param);
        format!("${}", self.params.len())
    }
}

/// One page of DescribeSnapshots: newest first, keyed on `(created_at, snapshot_id)` so pages
/// neither repeat nor skip rows. Fetches one row more than the page to know if another follows.
pub(crate) fn describe(query: &SnapshotQuery) -> (String, Vec<Param>) {
    let mut b = Builder {
        sql: format!("SELECT {SNAPSHOT_COLUMNS} FROM snapshots s WHERE s.account_id = "),
        params: Vec::new(),
    };
    let p = b.bind(Param::Text(query.account_id.clone()));
    b.sql.push_str(&p);
    if let Some(disk_id) = &query.disk_id {
        let p = b.bind(Param::Text(disk_id.clone()));
        b.sql.push_str(&format!(" AND s.source_disk_id = {p}"));
    }
    if !query.snapshot_ids.is_empty() {
        let list: Vec<String> = query
            .snapshot_ids
            .iter()
            .map(|id| b.bind(Param::Text(id.clone())))
            .collect();
        b.sql
            .push_str(&format!(" AND s.snapshot_id IN ({})", list.join(", ")));
    }
    if let Some(status) = query.status {
        let p = b.bind(Param::Text(status.as_str().to_owned()));
        b.sql.push_str(&format!(" AND s.status = {p}"));
    }
    if let Some(name) = &query.snapshot_name {
        let p = b.bind(Param::Text(name.clone()));
        b.sql.push_str(&format!(" AND s.snapshot_name = {p}"));
    }
    for tag in &query.tags {
        let key = b.bind(Param::Text(tag.key.clone()));
        b.sql.push_str(&format!(
            " AND EXISTS (SELECT 1 FROM snapshot_tags t WHERE t.snapshot_id = s.snapshot_id AND t.key = {key}"
        ));
        if !tag.value.is_empty() {
            let value = b.bind(Param::Text(tag.value.clone()));
            b.sql.push_str(&format!(" AND t.value = {value}"));
        }
        b.sql.push(')');
    }
    if let Some(PageCursor {
        created_at,
        snapshot_id,
    }) = &query.after
    {
        let at = b.bind(Param::Time(*created_at));
        let id = b.bind(Param::Text(snapshot_id.clone()));
        b.sql.push_str(&format!(
            " AND (s.created_at < {at} OR (s.created_at = {at} AND s.snapshot_id < {id}))"
        ));
    }
    let limit = b.bind(Param::Int(i64::from(query.limit) + 1));
    b.sql.push_str(&format!(
        " ORDER BY s.created_at DESC, s.snapshot_id DESC LIMIT {limit}"
    ));
    (b.sql, b.params)
}

/// The tags of the snapshots `ids`.
pub(crate) fn tags_of(ids: &[String]) -> (String, Vec<Param>) {
    let mut b = Builder {
        sql: String::new(),
        params: Vec::new(),
    };
    let list: Vec<String> = ids
        .iter()
        .map(|id| b.bind(Param::Text(id.clone())))
        .collect();
    b.sql = format!(
        "SELECT snapshot_id, key, value FROM snapshot_tags WHERE snapshot_id IN ({}) \
         ORDER BY snapshot_id, key",
        list.join(", ")
    );
    (b.sql, b.params)
}

pub(crate) use super::shared_sql::for_sqlite;

#[cfg(test)]
mod tests {
    use super::*;
    use crate::domain::{SnapshotStatus, Tag};

    #[test]
    fn a_describe_statement_binds_every_filter_in_placeholder_order() {
        let query = SnapshotQuery {
            account_id: "acct".into(),
            disk_id: Some("d-1".into()),
            snapshot_ids: vec!["s-a".into(), "s-b".into()],
            status: Some(SnapshotStatus::Accomplished),
            snapshot_name: Some("n".into()),
            tags: vec![
                Tag {
                    key: "k".into(),
                    value: String::new(),
                },
                Tag {
                    key: "k2".into(),
                    value: "v".into(),
                },
            ],
            after: None,
            limit: 10,
        };
        let (sql, params) = describe(&query);
        assert_eq!(params.len(), 10);
        for n in 1..=10 {
            assert!(sql.contains(&format!("${n}")), "${n} in {sql}");
        }
        assert!(!sql.contains("$11"));
        assert!(matches!(params.last(), Some(Param::Int(11))));
        assert!(!for_sqlite(&sql).contains('$'));
    }
}
