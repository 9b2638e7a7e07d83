//! Row shapes shared by both backends, and their conversion into domain values.
//!
//! Enums are stored as their seed spellings (`In_use`, `Running`, `cloud_essd`); a value the
//! domain does not know is a [`StoreError::Corrupt`], never a panic.

use sqlx::{Column, ColumnIndex, Decode, FromRow, Row, Type};

use super::StoreError;
use super::stored_time::StoredTime;
use crate::domain::{
    AccessKey, Account, Checkpoint, Disk, DiskCategory, DiskStatus, DiskSteering, DiskType, Image,
    ImageCursor, InProgressSnapshot, Instance, InstanceStatus, PageCursor, RetentionDays, Snapshot,
    SnapshotPage, SnapshotStatus, SnapshotUsage, SteeredRate, Tag, Timestamp,
};
use crate::engine::{CreateState, TokenBinding};

fn corrupt(what: &str, value: &str) -> StoreError {
    StoreError::Corrupt(format!("unknown {what} {value:?}"))
}

pub(crate) fn join_lock_reasons(reasons: &[String]) -> String {
    reasons.join(",")
}

fn split_lock_reasons(joined: &str) -> Vec<String> {
    joined
        .split(',')
        .filter(|r| !r.is_empty())
        .map(str::to_owned)
        .collect()
}

#[derive(Debug, FromRow)]
pub(crate) struct AccountRow {
    pub account_id: String,
    pub snapshot_service_activated: bool,
    pub insufficient_balance: bool,
}

impl From<AccountRow> for Account {
    fn from(row: AccountRow) -> Self {
        Self {
            account_id: row.account_id,
            snapshot_service_activated: row.snapshot_service_activated,
            insufficient_balance: row.insufficient_balance,
        }
    }
}

/// No `Debug`: the row holds a secret.
#[derive(FromRow)]
pub(crate) struct AccessKeyRow {
    pub access_key_id: String,
    pub access_key_secret: String,
    pub account_id: String,
}

impl From<AccessKeyRow> for AccessKey {
    fn from(row: AccessKeyRow) -> Self {
        Self {
            access_key_id: row.access_key_id,
            access_key_secret: row.access_key_secret,
            account_id: row.account_id,
        }
    }
}

#[derive(Debug, FromRow)]
pub(crate) struct InstanceRow {
    pub instance_id: String,
    pub account_id: String,
    pub status: String,
    pub created_at: Timestamp,
    pub last_started_at: Option<Timestamp>,
    pub lock_reasons: String,
}

impl TryFrom<InstanceRow> for Instance {
    type Error = StoreError;

    fn try_from(row: InstanceRow) -> Result<Self, StoreError> {
        Ok(Self {
            status: InstanceStatus::parse(&row.status)
                .ok_or_else(|| corrupt("instance status", &row.status))?,
            lock_reasons: split_lock_reasons(&row.lock_reasons),
            instance_id: row.instance_id,
            account_id: row.account_id,
            created_at: row.created_at,
            last_started_at: row.last_started_at,
        })
    }
}

#[derive(Debug, FromRow)]
pub(crate) struct DiskRow {
    pub disk_id: String,
    pub account_id: String,
    pub category: String,
    pub disk_type: String,
    pub status: String,
    pub instance_id: Option<String>,
    pub size_gib: i32,
    pub created_at: Timestamp,
    pub expires_at: Option<Timestamp>,
    pub ever_attached: bool,
}

impl TryFrom<DiskRow> for Disk {
    type Error = StoreError;

    fn try_from(row: DiskRow) -> Result<Self, StoreError> {
        Ok(Self {
            category: DiskCategory::parse(&row.category)
                .ok_or_else(|| corrupt("disk category", &row.category))?,
            disk_type: DiskType::parse(&row.disk_type)
                .ok_or_else(|| corrupt("disk type", &row.disk_type))?,
            status: DiskStatus::parse(&row.status)
                .ok_or_else(|| corrupt("disk status", &row.status))?,
            disk_id: row.disk_id,
            account_id: row.account_id,
            instance_id: row.instance_id,
            size_gib: row.size_gib,
            created_at: row.created_at,
            expires_at: row.expires_at,
            ever_attached: row.ever_attached,
        })
    }
}

/// An image with its snapshot's disk size and type (DescribeImages).
#[derive(Debug, FromRow)]
pub(crate) struct ImageRow {
    pub image_id: String,
    pub account_id: String,
    pub snapshot_id: String,
    pub image_name: Option<String>,
    pub created_at: Timestamp,
    pub size_gib: i32,
    pub disk_type: String,
}

impl TryFrom<ImageRow> for Image {
    type Error = StoreError;

    fn try_from(row: ImageRow) -> Result<Self, StoreError> {
        Ok(Self {
            disk_type: DiskType::parse(&row.disk_type)
                .ok_or_else(|| corrupt("disk type", &row.disk_type))?,
            image_id: row.image_id,
            account_id: row.account_id,
            snapshot_id: row.snapshot_id,
            image_name: row.image_name,
            created_at: row.created_at,
            size_gib: row.size_gib,
        })
    }
}

/// A page of images from rows fetched one beyond `limit`, and where the next page starts.
pub(crate) fn into_image_page(
    rows: Vec<ImageRow>,
    limit: u32,
) -> Result<(Vec<Image>, Option<ImageCursor>), StoreError> {
    let limit = usize::try_from(limit).unwrap_or(usize::MAX);
    let more = rows.len() > limit;
    let images = rows
        .into_iter()
        .take(limit)
        .map(Image::try_from)
        .collect::<Result<Vec<_>, _>>()?;
    let next = more.then(|| {
        let last = images.last().expect("a full page");
        ImageCursor {
            created_at: last.created_at,
            image_id: last.image_id.clone(),
            // The store writes the listing's total in.
            total: None,
        }
    });
    Ok((images, next))
}

/// The caller's account and token binding, read when the disk is not there to lock.
#[derive(Debug, FromRow)]
pub(crate) struct CallerRow {
    #[sqlx(flatten)]
    pub account: OptionalAccountColumns,
    #[sqlx(flatten)]
    pub token: OptionalTokenColumns,
}

#[derive(Debug, FromRow)]
pub(crate) struct OptionalAccountColumns {
    pub acct_id: Option<String>,
    pub acct_snapshot_service_activated: Option<bool>,
    pub acct_insufficient_balance: Option<bool>,
}

impl OptionalAccountColumns {
    fn into_account(self) -> Option<Account> {
        Some(Account {
            account_id: self.acct_id?,
            snapshot_service_activated: self.acct_snapshot_service_activated?,
            insufficient_balance: self.acct_insufficient_balance?,
        })
    }
}

#[derive(Debug, FromRow)]
pub(crate) struct OptionalTokenColumns {
    pub token_fingerprint: Option<String>,
    pub token_snapshot_id: Option<String>,
}

impl OptionalTokenColumns {
    pub fn into_binding(self) -> Option<TokenBinding> {
        Some(TokenBinding {
            fingerprint: self.token_fingerprint?,
            snapshot_id: self.token_snapshot_id?,
        })
    }
}

/// The one row CreateSnapshot reads under the disk lock: the disk with its bookkeeping, its
/// account, its instance and the caller's token binding.
#[derive(Debug)]
pub(crate) struct LockedDiskRow {
    pub disk: DiskRow,
    pub snapshot_count: i32,
    pub progressing_snapshot_id: Option<String>,
    pub progressing_since: Option<Timestamp>,
    /// The progressing snapshot's expected end. Read in the locking statement, so on PostgreSQL
    /// it can be missing when that snapshot committed while the statement waited for the lock.
    pub progressing_due_at: Option<Timestamp>,
    pub account: OptionalAccountColumns,
    pub inst_id: Option<String>,
    pub inst_account_id: Option<String>,
    pub inst_status: Option<String>,
    pub inst_created_at: Option<Timestamp>,
    pub inst_last_started_at: Option<Timestamp>,
    pub inst_lock_reasons: Option<String>,
    pub token: OptionalTokenColumns,
}

/// `shared::CREATE_STATE_COLUMNS`' names, in order: [`LockedDiskRow`] reads them by position
/// (as [`DescribedRow`] does), checked against the statement's in debug builds.
pub(crate) const CREATE_STATE_COLUMN_NAMES: [&str; 25] = [
    "disk_id",
    "account_id",
    "category",
    "disk_type",
    "status",
    "instance_id",
    "size_gib",
    "created_at",
    "expires_at",
    "ever_attached",
    "snapshot_count",
    "progressing_snapshot_id",
    "progressing_since",
    "acct_id",
    "acct_snapshot_service_activated",
    "acct_insufficient_balance",
    "inst_id",
    "inst_account_id",
    "inst_status",
    "inst_created_at",
    "inst_last_started_at",
    "inst_lock_reasons",
    "token_fingerprint",
    "token_snapshot_id",
    "progressing_due_at",
];

impl<'r, R> FromRow<'r, R> for LockedDiskRow
where
    R: Row,
    usize: ColumnIndex<R>,
    String: Decode<'r, R::Database> + Type<R::Database>,
    i32: Decode<'r, R::Database> + Type<R::Database>,
    bool: Decode<'r, R::Database> + Type<R::Database>,
    StoredTime: Decode<'r, R::Database> + Type<R::Database>,
{
    fn from_row(row: &'r R) -> Result<Self, sqlx::Error> {
        Self::from_columns(row, 0)
    }
}

impl LockedDiskRow {
    /// By position: the columns of [`CREATE_STATE_COLUMN_NAMES`] from the row's column `first`
    /// on (a batch's read has its own columns before them).
    pub fn from_columns<'r, R>(row: &'r R, first: usize) -> Result<Self, sqlx::Error>
    where
        R: Row,
        usize: ColumnIndex<R>,
        String: Decode<'r, R::Database> + Type<R::Database>,
        i32: Decode<'r, R::Database> + Type<R::Database>,
        bool: Decode<'r, R::Database> + Type<R::Database>,
        StoredTime: Decode<'r, R::Database> + Type<R::Database>,
    {
        debug_assert!(
            row.columns()
                .iter()
                .skip(first)
                .take(CREATE_STATE_COLUMN_NAMES.len())
                .map(Column::name)
                .eq(CREATE_STATE_COLUMN_NAMES),
            "the create read selects CREATE_STATE_COLUMNS from column {first}, in order"
        );
        let at = |offset: usize| first + offset;
        Ok(Self {
            disk: DiskRow {
                disk_id: column(row, at(0))?,
                account_id: column(row, at(1))?,
                category: column(row, at(2))?,
                disk_type: column(row, at(3))?,
                status: column(row, at(4))?,
                instance_id: column(row, at(5))?,
                size_gib: column(row, at(6))?,
                created_at: time(row, at(7))?,
                expires_at: optional_time(row, at(8))?,
                ever_attached: column(row, at(9))?,
            },
            snapshot_count: column(row, at(10))?,
            progressing_snapshot_id: column(row, at(11))?,
            progressing_since: optional_time(row, at(12))?,
            account: OptionalAccountColumns {
                acct_id: column(row, at(13))?,
                acct_snapshot_service_activated: column(row, at(14))?,
                acct_insufficient_balance: column(row, at(15))?,
            },
            inst_id: column(row, at(16))?,
            inst_account_id: column(row, at(17))?,
            inst_status: column(row, at(18))?,
            inst_created_at: optional_time(row, at(19))?,
            inst_last_started_at: optional_time(row, at(20))?,
            inst_lock_reasons: column(row, at(21))?,
            token: OptionalTokenColumns {
                token_fingerprint: column(row, at(22))?,
                token_snapshot_id: column(row, at(23))?,
            },
            progressing_due_at: optional_time(row, at(24))?,
        })
    }
}

impl CallerRow {
    pub fn into_parts(self) -> (CreateState, Option<TokenBinding>) {
        let state = CreateState {
            account: self.account.into_account(),
            ..CreateState::default()
        };
        (state, self.token.into_binding())
    }
}

impl LockedDiskRow {
    pub fn into_parts(self) -> Result<(CreateState, Option<TokenBinding>), StoreError> {
        let disk = Disk::try_from(self.disk)?;
        let instance = match (self.inst_id, self.inst_account_id, self.inst_status) {
            (Some(instance_id), Some(account_id), Some(status)) => {
                Some(Instance::try_from(InstanceRow {
                    instance_id,
                    account_id,
                    status,
                    created_at: self.inst_created_at.unwrap_or_default(),
                    last_started_at: self.inst_last_started_at,
                    lock_reasons: self.inst_lock_reasons.unwrap_or_default(),
                })?)
            }
            _ => None,
        };
        let in_progress = match (self.progressing_snapshot_id, self.progressing_since) {
            (Some(snapshot_id), Some(started_at)) => Some(InProgressSnapshot {
                snapshot_id,
                started_at,
                source_disk_size_gib: disk.size_gib,
                due_at: self.progressing_due_at,
            }),
            _ => None,
        };
        let state = CreateState {
            account: self.account.into_account(),
            disk: Some(disk),
            instance,
            snapshot_count: i64::from(self.snapshot_count),
            in_progress,
        };
        Ok((state, self.token.into_binding()))
    }
}

#[derive(Debug, FromRow)]
pub(crate) struct SnapshotRow {
    pub snapshot_id: String,
    pub account_id: String,
    pub source_disk_id: String,
    pub snapshot_name: Option<String>,
    pub description: String,
    pub source_disk_size_gib: i32,
    pub source_disk_type: String,
    pub status: String,
    pub created_at: Timestamp,
    pub started_at: Timestamp,
    pub copy_due_at: Timestamp,
    pub last_modified_at: Timestamp,
    pub retention_days: i32,
    pub usage: String,
}

impl TryFrom<SnapshotRow> for Snapshot {
    type Error = StoreError;

    /// Without tags: the reads that need them add them (DescribeSnapshots reads its rows, tags and
    /// all, in [`DescribedRow`]).
    fn try_from(row: SnapshotRow) -> Result<Self, StoreError> {
        Ok(Self {
            source_disk_type: DiskType::parse(&row.source_disk_type)
                .ok_or_else(|| corrupt("disk type", &row.source_disk_type))?,
            status: SnapshotStatus::parse(&row.status)
                .ok_or_else(|| corrupt("snapshot status", &row.status))?,
            usage: SnapshotUsage::parse(&row.usage)
                .ok_or_else(|| corrupt("snapshot usage", &row.usage))?,
            retention: RetentionDays::parse(row.retention_days)
                .map_err(|_| corrupt("retention", &row.retention_days.to_string()))?,
            snapshot_id: row.snapshot_id,
            account_id: row.account_id,
            source_disk_id: row.source_disk_id,
            snapshot_name: row.snapshot_name,
            description: row.description,
            source_disk_size_gib: row.source_disk_size_gib,
            created_at: row.created_at,
            started_at: row.started_at,
            copy_due_at: row.copy_due_at,
            last_modified_at: row.last_modified_at,
            tags: Vec::new(),
        })
    }
}

#[derive(Debug, FromRow)]
pub(crate) struct TagRow {
    pub snapshot_id: String,
    pub key: String,
    pub value: String,
}

/// A DescribeSnapshots row: the snapshot with its tags, and every snapshot the filters match.
#[derive(Debug)]
pub(crate) struct DescribedRow {
    pub snapshot: Snapshot,
    pub total: i64,
}

/// The describe statement's select list, in order (`shared::describe_snapshots_statement`):
/// [`DescribedRow`] reads its columns by position, not by name, which spares a hash look-up and
/// a type check by name per column and row (336 on a page of 20). The store checks the names
/// against the statement's in debug builds, and a test against SQLite's answer. `tags` is JSON
/// `[[key, value], …]` in key order (NULL or `[]` without any).
pub(crate) const DESCRIBED_COLUMNS: [&str; 16] = [
    "snapshot_id",
    "account_id",
    "source_disk_id",
    "snapshot_name",
    "description",
    "source_disk_size_gib",
    "source_disk_type",
    "status",
    "created_at",
    "started_at",
    "copy_due_at",
    "last_modified_at",
    "retention_days",
    "usage",
    "tags",
    "total",
];

impl<'r, R> FromRow<'r, R> for DescribedRow
where
    R: Row,
    usize: ColumnIndex<R>,
    String: Decode<'r, R::Database> + Type<R::Database>,
    &'r str: Decode<'r, R::Database> + Type<R::Database>,
    i32: Decode<'r, R::Database> + Type<R::Database>,
    i64: Decode<'r, R::Database> + Type<R::Database>,
    StoredTime: Decode<'r, R::Database> + Type<R::Database>,
{
    /// By position, in the order of [`DESCRIBED_COLUMNS`]. The enums and the tags' JSON are
    /// read where they lie in the row (`&str`) and parsed at once, not copied into strings
    /// that are parsed and dropped (63 on a page of 20; bench/README.md, tenth round).
    fn from_row(row: &'r R) -> Result<Self, sqlx::Error> {
        debug_assert!(
            row.columns().iter().map(Column::name).eq(DESCRIBED_COLUMNS),
            "the describe statement selects DESCRIBED_COLUMNS, in order"
        );
        let retention_days: i32 = column(row, 12)?;
        let tags: Option<&str> = column(row, 14)?;
        Ok(Self {
            snapshot: Snapshot {
                snapshot_id: column(row, 0)?,
                account_id: column(row, 1)?,
                source_disk_id: column(row, 2)?,
                snapshot_name: column(row, 3)?,
                description: column(row, 4)?,
                source_disk_size_gib: column(row, 5)?,
                source_disk_type: parsed(row, 6, "disk type", DiskType::parse)?,
                status: parsed(row, 7, "snapshot status", SnapshotStatus::parse)?,
                created_at: time(row, 8)?,
                started_at: time(row, 9)?,
                copy_due_at: time(row, 10)?,
                last_modified_at: time(row, 11)?,
                retention: RetentionDays::parse(retention_days).map_err(|_| {
                    undecodable(12, corrupt("retention", &retention_days.to_string()))
                })?,
                usage: parsed(row, 13, "snapshot usage", SnapshotUsage::parse)?,
                tags: match tags {
                    Some(json) => parse_tags(json).map_err(|err| undecodable(14, err))?,
                    None => Vec::new(),
                },
            },
            total: column(row, 15)?,
        })
    }
}

/// Column `index` of `row`, text the domain reads with `parse`; text it does not know is a
/// [`StoreError::Corrupt`] naming `what`.
fn parsed<'r, R, T>(
    row: &'r R,
    index: usize,
    what: &str,
    parse: fn(&str) -> Option<T>,
) -> Result<T, sqlx::Error>
where
    R: Row,
    usize: ColumnIndex<R>,
    &'r str: Decode<'r, R::Database> + Type<R::Database>,
{
    let text: &str = column(row, index)?;
    parse(text).ok_or_else(|| undecodable(index, corrupt(what, text)))
}

/// A tag list as the describe statement writes it: JSON `[[key, value], …]`.
fn parse_tags(json: &str) -> Result<Vec<Tag>, StoreError> {
    if json == "[]" {
        return Ok(Vec::new());
    }
    let pairs: Vec<(String, String)> =
        serde_json::from_str(json).map_err(|_| corrupt("tag list", json))?;
    Ok(pairs
        .into_iter()
        .map(|(key, value)| Tag { key, value })
        .collect())
}

/// Column `index` of the describe statement holding what the domain cannot read, reported as
/// the driver reports a column that does not decode (the store's error as its cause).
fn undecodable(index: usize, err: StoreError) -> sqlx::Error {
    sqlx::Error::ColumnDecode {
        index: DESCRIBED_COLUMNS[index].to_owned(),
        source: Box::new(err),
    }
}

/// Column `index` of `row`, decoded. Release builds skip sqlx's type check of each value
/// against the column's type (its `type_info` clone and `compatible` test: a quarter of the
/// instructions that decode a describe row, bench/README.md): the statements' select lists are
/// fixed, and debug builds, which run every test on both backends, keep the check.
pub(super) fn column<'r, R, T>(row: &'r R, index: usize) -> Result<T, sqlx::Error>
where
    R: Row,
    usize: ColumnIndex<R>,
    T: Decode<'r, R::Database> + Type<R::Database>,
{
    if cfg!(debug_assertions) {
        row.try_get(index)
    } else {
        row.try_get_unchecked(index)
    }
}

/// Column `index` of `row`, an instant (see [`StoredTime`]).
fn time<'r, R>(row: &'r R, index: usize) -> Result<Timestamp, sqlx::Error>
where
    R: Row,
    usize: ColumnIndex<R>,
    StoredTime: Decode<'r, R::Database> + Type<R::Database>,
{
    column::<R, StoredTime>(row, index).map(|at| at.0)
}

/// Column `index` of `row`, an instant or NULL (see [`StoredTime`]).
fn optional_time<'r, R>(row: &'r R, index: usize) -> Result<Option<Timestamp>, sqlx::Error>
where
    R: Row,
    usize: ColumnIndex<R>,
    StoredTime: Decode<'r, R::Database> + Type<R::Database>,
{
    column::<R, Option<StoredTime>>(row, index).map(|at| at.map(|at| at.0))
}

/// One page from the rows of the describe statement (one more than `limit` tells whether
/// another follows), with the total count they carry; `None` for no row.
pub(crate) fn into_described_page(rows: Vec<DescribedRow>, limit: u32) -> Option<SnapshotPage> {
    let total = rows
        .first()
        .map(|row| u64::try_from(row.total).unwrap_or(0))?;
    let limit = usize::try_from(limit).unwrap_or(usize::MAX);
    let more = rows.len() > limit;
    let snapshots: Vec<Snapshot> = rows
        .into_iter()
        .take(limit)
        .map(|row| row.snapshot)
        .collect();
    let next = more.then(|| {
        let last = snapshots.last().expect("a full page");
        PageCursor {
            created_at: last.created_at,
            snapshot_id: last.snapshot_id.clone(),
            total: Some(total),
        }
    });
    Some(SnapshotPage {
        snapshots,
        next,
        total,
    })
}

/// Rows of a worker queue, skipping (and logging) any that do not decode, so that one bad row
/// cannot stop the queue behind it.
pub(crate) fn decode_queue(rows: Vec<SnapshotRow>) -> Vec<Snapshot> {
    rows.into_iter()
        .filter_map(|row| {
            let id = row.snapshot_id.clone();
            Snapshot::try_from(row)
                .map_err(|err| tracing::error!(snapshot_id = %id, error = %err, "skipping an unreadable snapshot"))
                .ok()
        })
        .collect()
}

#[derive(Debug, FromRow)]
pub(crate) struct SteeringRow {
    pub disk_id: String,
    pub rate_mibps: Option<i64>,
    pub rate_since: Option<Timestamp>,
    pub checkpoint_snapshot: Option<String>,
    pub checkpoint_kib: Option<i64>,
    pub fail_from: Option<Timestamp>,
    pub doomed_snapshot_id: Option<String>,
}

impl From<SteeringRow> for DiskSteering {
    fn from(row: SteeringRow) -> Self {
        Self {
            disk_id: row.disk_id,
            rate: row
                .rate_mibps
                .zip(row.rate_since)
                .map(|(mibps, since)| SteeredRate { mibps, since }),
            checkpoint: row.checkpoint_snapshot.zip(row.checkpoint_kib).map(
                |(snapshot_id, copied_kib)| Checkpoint {
                    snapshot_id,
                    copied_kib,
                },
            ),
            fail_from: row.fail_from,
            doomed_snapshot_id: row.doomed_snapshot_id,
        }
    }
}
