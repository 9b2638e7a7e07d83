//! Conversions between generated protobuf types and domain values.
//!
//! Decoding validates: a proto that does not make a valid domain value is a `ParseError` naming
//! the field, so a bad inventory record is refused before anything is written.

use std::sync::Arc;

use chrono::DateTime;

use crate::domain::{
    Account, Disk, DiskCategory, DiskId, DiskStatus, DiskType, Image, Instance, InstanceStatus,
    LATEST_TIMESTAMP_SECONDS, ParseError, SNAPSHOT_RESOURCE_TYPE, SnapshotStatus, Tag, TagResource,
    Timestamp, is_plain_id,
};
use crate::pb;
use crate::service::{SnapshotView, WatchEvent};

fn invalid(field: &'static str, why: impl Into<String>) -> ParseError {
    ParseError::InvalidParameter {
        field,
        why: why.into(),
    }
}

pub fn timestamp_to_proto(at: Timestamp) -> prost_types::Timestamp {
    prost_types::Timestamp {
        seconds: at.timestamp(),
        nanos: i32::try_from(at.timestamp_subsec_nanos()).unwrap_or(0),
    }
}

/// Input timestamps must lie in 1970..=9999 (`LATEST_TIMESTAMP_SECONDS`, the domain's rule).
pub fn timestamp_from_proto(
    field: &'static str,
    at: Option<prost_types::Timestamp>,
) -> Result<Option<Timestamp>, ParseError> {
    at.map(|at| {
        u32::try_from(at.nanos)
            .ok()
            .filter(|_| (0..=LATEST_TIMESTAMP_SECONDS).contains(&at.seconds))
            // Microseconds: what PostgreSQL keeps, so both backends store the same instant.
            .and_then(|nanos| DateTime::from_timestamp(at.seconds, nanos / 1000 * 1000))
            .ok_or_else(|| invalid(field, "must be a timestamp from 1970 to 9999"))
    })
    .transpose()
}

fn required_timestamp(
    field: &'static str,
    at: Option<prost_types::Timestamp>,
) -> Result<Timestamp, ParseError> {
    timestamp_from_proto(field, at)?.ok_or_else(|| invalid(field, "is required"))
}

/// Account and instance ids: 1..=64 of `[A-Za-z0-9._:-]`.
fn parse_plain_id(field: &'static str, raw: &str) -> Result<String, ParseError> {
    if raw.is_empty() {
        return Err(ParseError::MissingParameter { field });
    }
    if is_plain_id(raw) {
        Ok(raw.to_owned())
    } else {
        Err(invalid(field, "must be 1 to 64 of [A-Za-z0-9._:-]"))
    }
}

/// Distinct lock reasons an instance may carry (ECS knows a handful).
const MAX_LOCK_REASONS: usize = 16;

/// An instance's lock reasons, each valid, each once (a repeat adds nothing), at most
/// [`MAX_LOCK_REASONS`].
fn parse_lock_reasons(raw: &[String]) -> Result<Vec<String>, ParseError> {
    let mut reasons: Vec<String> = Vec::new();
    for reason in raw {
        let reason = parse_lock_reason(reason)?;
        if reasons.contains(&reason) {
            continue;
        }
        if reasons.len() == MAX_LOCK_REASONS {
            return Err(invalid(
                "lock_reasons",
                format!("at most {MAX_LOCK_REASONS} distinct lock reasons"),
            ));
        }
        reasons.push(reason);
    }
    Ok(reasons)
}

fn parse_lock_reason(raw: &str) -> Result<String, ParseError> {
    let valid = (1..=64).contains(&raw.len())
        && raw
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'_' | b'-'));
    if valid {
        Ok(raw.to_owned())
    } else {
        Err(invalid(
            "lock_reasons",
            "each must be 1 to 64 of [A-Za-z0-9_-]",
        ))
    }
}

impl TryFrom<pb::Account> for Account {
    type Error = ParseError;

    fn try_from(account: pb::Account) -> Result<Self, ParseError> {
        Ok(Self {
            account_id: parse_plain_id("account_id", &account.account_id)?,
            snapshot_service_activated: account.snapshot_service_activated,
            insufficient_balance: account.insufficient_balance,
        })
    }
}

impl From<Account> for pb::Account {
    fn from(account: Account) -> Self {
        Self {
            account_id: account.account_id,
            snapshot_service_activated: account.snapshot_service_activated,
            insufficient_balance: account.insufficient_balance,
        }
    }
}

impl TryFrom<pb::Instance> for Instance {
    type Error = ParseError;

    fn try_from(instance: pb::Instance) -> Result<Self, ParseError> {
        let status = match pb::InstanceStatus::try_from(instance.status) {
            Ok(pb::InstanceStatus::Pending) => InstanceStatus::Pending,
            Ok(pb::InstanceStatus::Starting) => InstanceStatus::Starting,
            Ok(pb::InstanceStatus::Running) => InstanceStatus::Running,
            Ok(pb::InstanceStatus::Stopping) => InstanceStatus::Stopping,
            Ok(pb::InstanceStatus::Stopped) => InstanceStatus::Stopped,
            Ok(pb::InstanceStatus::Unspecified) | Err(_) => {
                return Err(invalid("status", "must be a known INSTANCE_STATUS_*"));
            }
        };
        Ok(Self {
            instance_id: parse_plain_id("instance_id", &instance.instance_id)?,
            account_id: parse_plain_id("account_id", &instance.account_id)?,
            status,
            created_at: required_timestamp("created_at", instance.created_at)?,
            last_started_at: timestamp_from_proto("last_started_at", instance.last_started_at)?,
            lock_reasons: parse_lock_reasons(&instance.lock_reasons)?,
        })
    }
}

impl From<Instance> for pb::Instance {
    fn from(instance: Instance) -> Self {
        let status = match instance.status {
            InstanceStatus::Pending => pb::InstanceStatus::Pending,
            InstanceStatus::Starting => pb::InstanceStatus::Starting,
            InstanceStatus::Running => pb::InstanceStatus::Running,
            InstanceStatus::Stopping => pb::InstanceStatus::Stopping,
            InstanceStatus::Stopped => pb::InstanceStatus::Stopped,
        };
        Self {
            instance_id: instance.instance_id,
            account_id: instance.account_id,
            status: status.into(),
            created_at: Some(timestamp_to_proto(instance.created_at)),
            last_started_at: instance.last_started_at.map(timestamp_to_proto),
            lock_reasons: instance.lock_reasons,
        }
    }
}

pub fn disk_type_to_proto(disk_type: DiskType) -> pb::DiskType {
    match disk_type {
        DiskType::System => pb::DiskType::System,
        DiskType::Data => pb::DiskType::Data,
    }
}

/// The largest disk ECS offers, in GiB.
const MAX_DISK_SIZE_GIB: i32 = 65_536;

impl TryFrom<pb::Disk> for Disk {
    type Error = ParseError;

    fn try_from(disk: pb::Disk) -> Result<Self, ParseError> {
        let disk_type = match pb::DiskType::try_from(disk.r#type) {
            Ok(pb::DiskType::System) => DiskType::System,
            Ok(pb::DiskType::Data) => DiskType::Data,
            Ok(pb::DiskType::Unspecified) | Err(_) => {
                return Err(invalid(
                    "type",
                    "must be DISK_TYPE_SYSTEM or DISK_TYPE_DATA",
                ));
            }
        };
        let status = match pb::DiskStatus::try_from(disk.status) {
            Ok(pb::DiskStatus::InUse) => DiskStatus::InUse,
            Ok(pb::DiskStatus::Available) => DiskStatus::Available,
            Ok(pb::DiskStatus::Attaching) => DiskStatus::Attaching,
            Ok(pb::DiskStatus::Detaching) => DiskStatus::Detaching,
            Ok(pb::DiskStatus::Creating) => DiskStatus::Creating,
            Ok(pb::DiskStatus::Reiniting) => DiskStatus::ReIniting,
            Ok(pb::DiskStatus::Unspecified) | Err(_) => {
                return Err(invalid("status", "must be a known DISK_STATUS_*"));
            }
        };
        let category = DiskCategory::parse(&disk.category).ok_or_else(|| {
            invalid(
                "category",
                format!("unknown disk category {:?}", disk.category),
            )
        })?;
        let instance_id = match disk.instance_id.as_str() {
            "" => None,
            raw => Some(parse_plain_id("instance_id", raw)?),
        };
        if status == DiskStatus::InUse && instance_id.is_none() {
            return Err(invalid(
                "instance_id",
                "an In_use disk must name its instance",
            ));
        }
        if !(1..=MAX_DISK_SIZE_GIB).contains(&disk.size_gib) {
            return Err(invalid(
                "size_gib",
                format!("must be 1 to {MAX_DISK_SIZE_GIB}"),
            ));
        }
        Ok(Self {
            disk_id: DiskId::parse(&disk.disk_id)?.as_str().to_owned(),
            account_id: parse_plain_id("account_id", &disk.account_id)?,
            category,
            disk_type,
            status,
            instance_id,
            size_gib: disk.size_gib,
            created_at: required_timestamp("created_at", disk.created_at)?,
            expires_at: timestamp_from_proto("expires_at", disk.expires_at)?,
            ever_attached: disk.ever_attached,
        })
    }
}

impl From<Disk> for pb::Disk {
    fn from(disk: Disk) -> Self {
        let status = match disk.status {
            DiskStatus::InUse => pb::DiskStatus::InUse,
            DiskStatus::Available => pb::DiskStatus::Available,
            DiskStatus::Attaching => pb::DiskStatus::Attaching,
            DiskStatus::Detaching => pb::DiskStatus::Detaching,
            DiskStatus::Creating => pb::DiskStatus::Creating,
            DiskStatus::ReIniting => pb::DiskStatus::Reiniting,
        };
        Self {
            disk_id: disk.disk_id,
            account_id: disk.account_id,
            category: disk.category.as_str().to_owned(),
            r#type: disk_type_to_proto(disk.disk_type).into(),
            status: status.into(),
            instance_id: disk.instance_id.unwrap_or_default(),
            size_gib: disk.size_gib,
            created_at: Some(timestamp_to_proto(disk.created_at)),
            expires_at: disk.expires_at.map(timestamp_to_proto),
            ever_attached: disk.ever_attached,
        }
    }
}

pub fn tags_to_proto(tags: Vec<Tag>) -> Vec<pb::Tag> {
    tags.into_iter()
        .map(|t| pb::Tag {
            key: t.key,
            value: t.value,
        })
        .collect()
}

/// One tag of one snapshot, as ListTagResources lists it.
pub fn tag_resource_to_proto(tag: TagResource) -> pb::TagResource {
    pb::TagResource {
        resource_id: tag.snapshot_id,
        resource_type: SNAPSHOT_RESOURCE_TYPE.to_owned(),
        tag_key: tag.key,
        tag_value: tag.value,
    }
}

/// A request's tags as the domain's raw `(key, value)` pairs (validated by the domain).
pub fn tag_pairs(tags: &[pb::Tag]) -> Vec<(&str, &str)> {
    tags.iter()
        .map(|t| (t.key.as_str(), t.value.as_str()))
        .collect()
}

pub fn snapshot_status_to_proto(status: SnapshotStatus) -> pb::SnapshotStatus {
    match status {
        SnapshotStatus::Progressing => pb::SnapshotStatus::Progressing,
        SnapshotStatus::Accomplished => pb::SnapshotStatus::Accomplished,
        SnapshotStatus::Failed => pb::SnapshotStatus::Failed,
    }
}

/// DescribeSnapshots' `source_disk_type`: unspecified is any.
pub fn disk_type_filter(raw: i32) -> Result<Option<DiskType>, ParseError> {
    match pb::DiskType::try_from(raw) {
        Ok(pb::DiskType::Unspecified) => Ok(None),
        Ok(pb::DiskType::System) => Ok(Some(DiskType::System)),
        Ok(pb::DiskType::Data) => Ok(Some(DiskType::Data)),
        Err(_) => Err(invalid("source_disk_type", "must be a known DISK_TYPE_*")),
    }
}

/// A status filter: `UNSPECIFIED` means any.
pub fn snapshot_status_filter(raw: i32) -> Result<Option<SnapshotStatus>, ParseError> {
    match pb::SnapshotStatus::try_from(raw) {
        Ok(pb::SnapshotStatus::Unspecified) => Ok(None),
        Ok(pb::SnapshotStatus::Progressing) => Ok(Some(SnapshotStatus::Progressing)),
        Ok(pb::SnapshotStatus::Accomplished) => Ok(Some(SnapshotStatus::Accomplished)),
        Ok(pb::SnapshotStatus::Failed) => Ok(Some(SnapshotStatus::Failed)),
        Err(_) => Err(invalid("status", "must be a known SNAPSHOT_STATUS_*")),
    }
}

/// A snapshot with its copy's progress, as DescribeSnapshots shows it.
pub fn snapshot_to_proto(view: SnapshotView) -> pb::Snapshot {
    let SnapshotView {
        snapshot,
        progress_percent: progress,
        remaining,
    } = view;
    let remaining_secs = remaining.as_secs_f64().ceil() as u64;
    let available = snapshot.is_available();
    pb::Snapshot {
        snapshot_name: snapshot.snapshot_name.unwrap_or_default(),
        description: snapshot.description,
        source_disk_size_gib: snapshot.source_disk_size_gib,
        source_disk_type: disk_type_to_proto(snapshot.source_disk_type).into(),
        status: snapshot_status_to_proto(snapshot.status).into(),
        progress: i32::from(progress),
        remain_time_seconds: i32::try_from(remaining_secs).unwrap_or(i32::MAX),
        created_at: Some(timestamp_to_proto(snapshot.created_at)),
        last_modified_at: Some(timestamp_to_proto(snapshot.last_modified_at)),
        retention_days: snapshot.retention.as_i32(),
        tags: tags_to_proto(snapshot.tags),
        usage: snapshot.usage.as_str().to_owned(),
        available,
        snapshot_id: snapshot.snapshot_id,
        source_disk_id: snapshot.source_disk_id,
    }
}

/// A watch's message: the snapshot as DescribeSnapshots shows it, or its id and disk when it
/// is gone.
pub fn watch_event_to_proto(event: WatchEvent) -> pb::WatchSnapshotsResponse {
    match event {
        WatchEvent::Changed(view) => pb::WatchSnapshotsResponse {
            snapshot: Some(snapshot_to_proto(
                Arc::try_unwrap(view).unwrap_or_else(|shared| (*shared).clone()),
            )),
            deleted: false,
        },
        WatchEvent::Deleted {
            snapshot_id,
            disk_id,
        } => pb::WatchSnapshotsResponse {
            snapshot: Some(pb::Snapshot {
                snapshot_id: snapshot_id.to_string(),
                source_disk_id: disk_id.to_string(),
                ..pb::Snapshot::default()
            }),
            deleted: true,
        },
    }
}

/// An image as DescribeImages shows it.
pub fn image_to_proto(image: Image) -> pb::Image {
    pb::Image {
        image_name: image.image_name.unwrap_or_default(),
        created_at: Some(timestamp_to_proto(image.created_at)),
        size_gib: image.size_gib,
        disk_type: disk_type_to_proto(image.disk_type).into(),
        image_id: image.image_id,
        snapshot_id: image.snapshot_id,
    }
}
