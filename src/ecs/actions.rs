//! The actions this edge serves: each reads ECS's parameters into the domain's, calls one use
//! case of the service (the same the gRPC edge calls) and builds ECS's response body.

use serde_json::{Value, json};

use super::error::EcsError;
use super::params::Params;
use super::tag_actions;
use crate::domain::{
    CreateImageCommand, CreateImageParams, CreateSnapshotCommand, CreateSnapshotParams,
    DescribeSnapshotsParams, DiskType, MAX_TAGS, ModifySnapshotAttributeCommand,
    ModifySnapshotAttributeParams, PageCursor, ParseError, SnapshotId, SnapshotQuery,
    SnapshotStatus, Timestamp,
};
use crate::service::{Service, SnapshotView};

/// The actions of API version 2014-05-26 this edge serves.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Action {
    CreateSnapshot,
    DescribeSnapshots,
    DeleteSnapshot,
    CreateImage,
    ModifySnapshotAttribute,
    TagResources,
    UntagResources,
    ListTagResources,
    DescribeImages,
    DeleteImage,
}

impl Action {
    pub const ALL: [Self; 10] = [
        Self::CreateSnapshot,
        Self::DescribeSnapshots,
        Self::DeleteSnapshot,
        Self::CreateImage,
        Self::ModifySnapshotAttribute,
        Self::TagResources,
        Self::UntagResources,
        Self::ListTagResources,
        Self::DescribeImages,
        Self::DeleteImage,
    ];

    pub fn parse(raw: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|action| action.name() == raw)
    }

    pub fn name(self) -> &'static str {
        match self {
            Self::CreateSnapshot => "CreateSnapshot",
            Self::DescribeSnapshots => "DescribeSnapshots",
            Self::DeleteSnapshot => "DeleteSnapshot",
            Self::CreateImage => "CreateImage",
            Self::ModifySnapshotAttribute => "ModifySnapshotAttribute",
            Self::TagResources => "TagResources",
            Self::UntagResources => "UntagResources",
            Self::ListTagResources => "ListTagResources",
            Self::DescribeImages => "DescribeImages",
            Self::DeleteImage => "DeleteImage",
        }
    }
}

/// Parameters every request may carry: the protocol's, and ECS's RAM-internal ones and the
/// region, which this one-region service accepts and ignores.
const COMMON_PARAMETERS: &[&str] = &[
    "Action",
    "Version",
    "Format",
    "AccessKeyId",
    "Signature",
    "SignatureMethod",
    "SignatureVersion",
    "SignatureNonce",
    "Timestamp",
    "RegionId",
    "OwnerId",
    "OwnerAccount",
    "ResourceOwnerId",
    "ResourceOwnerAccount",
    "DryRun",
];

impl Action {
    /// The parameters this action reads (besides [`COMMON_PARAMETERS`]); anything else is
    /// refused by name, so a caller never believes a filter or an option it sent was applied.
    fn parameters(self) -> &'static [&'static str] {
        match self {
            Self::CreateSnapshot => &[
                "DiskId",
                "SnapshotName",
                "Description",
                "ClientToken",
                "RetentionDays",
                "Category",
                "InstantAccess",
                "InstantAccessRetentionDays",
                "ResourceGroupId",
                "StorageLocationArn",
            ],
            Self::DescribeSnapshots => &[
                "DiskId",
                "SnapshotIds",
                "Status",
                "SnapshotName",
                "SnapshotType",
                "NextToken",
                "MaxResults",
                "PageSize",
                "PageNumber",
                "InstanceId",
                "SourceDiskType",
                "Usage",
            ],
            Self::DeleteSnapshot => &["SnapshotId", "Force"],
            Self::CreateImage => &["SnapshotId", "ImageName", "ClientToken"],
            Self::ModifySnapshotAttribute => &[
                "SnapshotId",
                "SnapshotName",
                "Description",
                "RetentionDays",
                "DisableInstantAccess",
            ],
            Self::TagResources => &["ResourceType"],
            Self::UntagResources => &["ResourceType", "All"],
            Self::ListTagResources => &["ResourceType", "NextToken"],
            Self::DescribeImages => &[
                "ImageId",
                "SnapshotId",
                "PageNumber",
                "PageSize",
                "Status",
                "ImageOwnerAlias",
            ],
            Self::DeleteImage => &["ImageId", "Force"],
        }
    }

    fn takes_tags(self) -> bool {
        matches!(
            self,
            Self::CreateSnapshot
                | Self::DescribeSnapshots
                | Self::TagResources
                | Self::ListTagResources
        )
    }

    /// The numbered lists (`ResourceId.N`, `TagKey.N`) this action reads.
    fn numbered_lists(self) -> &'static [&'static str] {
        match self {
            Self::TagResources | Self::ListTagResources => &["ResourceId"],
            Self::UntagResources => &["ResourceId", "TagKey"],
            Self::DescribeSnapshots => &["Filter"],
            _ => &[],
        }
    }
}

/// Refuses a parameter the action does not read, and a dry run (not offered).
fn check_parameters(action: Action, params: &Params) -> Result<(), EcsError> {
    for (name, _) in params.all() {
        let known = COMMON_PARAMETERS.contains(&name)
            || action.parameters().contains(&name)
            || (action.takes_tags() && name.starts_with("Tag."))
            || action.numbered_lists().iter().any(|list| {
                name.strip_prefix(list)
                    .is_some_and(|rest| rest.starts_with('.'))
            });
        if !known {
            return Err(EcsError::UnknownParameter {
                parameter: name.to_owned(),
                action: action.name(),
            });
        }
    }
    match params.get("DryRun") {
        None | Some("") => Ok(()),
        Some(raw) if raw.eq_ignore_ascii_case("false") => Ok(()),
        Some(_) => Err(invalid_value("DryRun", "dry runs are not offered")),
    }
}

/// Runs `action` as `account_id`; the response body without its `RequestId`.
pub async fn run(
    service: &Service,
    action: Action,
    account_id: &str,
    params: &Params,
) -> Result<Value, EcsError> {
    check_parameters(action, params)?;
    match action {
        Action::CreateSnapshot => create_snapshot(service, account_id, params).await,
        Action::DescribeSnapshots => describe_snapshots(service, account_id, params).await,
        Action::DeleteSnapshot => delete_snapshot(service, account_id, params).await,
        Action::CreateImage => create_image(service, account_id, params).await,
        Action::ModifySnapshotAttribute => {
            modify_snapshot_attribute(service, account_id, params).await
        }
        Action::TagResources => tag_actions::tag_resources(service, account_id, params).await,
        Action::UntagResources => tag_actions::untag_resources(service, account_id, params).await,
        Action::ListTagResources => {
            tag_actions::list_tag_resources(service, account_id, params).await
        }
        Action::DescribeImages => super::images::describe_images(service, account_id, params).await,
        Action::DeleteImage => super::images::delete_image(service, account_id, params).await,
    }
}

async fn create_snapshot(
    service: &Service,
    account_id: &str,
    params: &Params,
) -> Result<Value, EcsError> {
    refuse_unoffered_create_options(params)?;
    let tags = tags(params)?;
    let tag_refs: Vec<(&str, &str)> = tags.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
    let create = CreateSnapshotParams {
        disk_id: params.text("DiskId"),
        snapshot_name: params.text("SnapshotName"),
        description: params.text("Description"),
        client_token: params.text("ClientToken"),
        retention_days: number(params, "RetentionDays")?.unwrap_or(0),
        tags: &tag_refs,
    };
    let command = CreateSnapshotCommand::parse(account_id.to_owned(), &create)?;
    let outcome = service.create_snapshot(&command).await?;
    Ok(json!({ "SnapshotId": outcome.id() }))
}

/// Options of ECS's CreateSnapshot this service does not offer: refused by name rather than
/// dropped, so a caller never believes it got what it asked for.
fn refuse_unoffered_create_options(params: &Params) -> Result<(), EcsError> {
    if let Some(category) = params.get("Category")
        && !category.eq_ignore_ascii_case("standard")
    {
        return Err(invalid_value(
            "Category",
            "only standard snapshots are offered",
        ));
    }
    if let Some(instant) = params.get("InstantAccess")
        && !instant.eq_ignore_ascii_case("false")
    {
        return Err(invalid_value(
            "InstantAccess",
            "instant access is not offered",
        ));
    }
    let unoffered = [
        (
            "InstantAccessRetentionDays",
            "instant access is not offered",
        ),
        ("ResourceGroupId", "resource groups are not offered"),
        (
            "StorageLocationArn",
            "snapshots are stored by this service; another location is not offered",
        ),
    ];
    for (parameter, why) in unoffered {
        if params.get(parameter).is_some_and(|value| !value.is_empty()) {
            return Err(invalid_value(parameter, why));
        }
    }
    Ok(())
}

async fn describe_snapshots(
    service: &Service,
    account_id: &str,
    params: &Params,
) -> Result<Value, EcsError> {
    match params.get("SnapshotType") {
        None | Some("" | "all" | "user") => {}
        Some(_) => {
            return Err(invalid_value(
                "SnapshotType",
                "every snapshot here is a user snapshot: all or user",
            ));
        }
    }
    let snapshot_ids = snapshot_ids(params)?;
    let id_refs: Vec<&str> = snapshot_ids.iter().map(String::as_str).collect();
    let tags = tags(params)?;
    let tag_refs: Vec<(&str, &str)> = tags.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
    let max_results = match number(params, "MaxResults")? {
        Some(max) => max,
        None => number(params, "PageSize")?.unwrap_or(0),
    };
    let creation_times = creation_times(params)?;
    let describe = DescribeSnapshotsParams {
        disk_id: params.text("DiskId"),
        snapshot_ids: &id_refs,
        status: status_filter(params)?,
        snapshot_name: params.text("SnapshotName"),
        tags: &tag_refs,
        next_token: params.text("NextToken"),
        max_results,
        page_number: page_number(params)?,
        instance_id: params.text("InstanceId"),
        source_disk_type: source_disk_type(params)?,
        usage: params.text("Usage"),
        created_after: creation_times.start,
        created_before: creation_times.end,
    };
    let query = SnapshotQuery::parse(account_id.to_owned(), &describe)?;
    let page = service.describe_snapshots(&query).await?;
    let snapshots: Vec<Value> = page.snapshots.into_iter().map(snapshot_json).collect();
    let mut body = json!({
        "PageSize": query.limit,
        "TotalCount": page.total,
        "NextToken": page.next.as_ref().map(PageCursor::to_token).unwrap_or_default(),
        "Snapshots": { "Snapshot": snapshots },
    });
    // A page reached by NextToken has no number.
    if query.after.is_none() {
        body["PageNumber"] = Value::from(query.skip / query.limit.max(1) + 1);
    }
    Ok(body)
}

async fn delete_snapshot(
    service: &Service,
    account_id: &str,
    params: &Params,
) -> Result<Value, EcsError> {
    let snapshot_id = SnapshotId::parse(params.text("SnapshotId"))?;
    let force = flag(params, "Force")?;
    service
        .delete_snapshot(account_id, &snapshot_id, force)
        .await?;
    Ok(json!({}))
}

async fn create_image(
    service: &Service,
    account_id: &str,
    params: &Params,
) -> Result<Value, EcsError> {
    let create = CreateImageParams {
        snapshot_id: params.text("SnapshotId"),
        image_name: params.text("ImageName"),
        client_token: params.text("ClientToken"),
    };
    let command = CreateImageCommand::parse(account_id.to_owned(), &create)?;
    let outcome = service.create_image(&command).await?;
    Ok(json!({ "ImageId": outcome.id() }))
}

/// A parameter absent keeps its attribute; given empty (`SnapshotName=`) it empties it, as
/// proto3's `optional` field set to "" does on the gRPC edge. `RetentionDays` given empty is
/// not given, as every number parameter of this edge.
async fn modify_snapshot_attribute(
    service: &Service,
    account_id: &str,
    params: &Params,
) -> Result<Value, EcsError> {
    // Deprecated by ECS (instant access is now always on there) and never offered here: there
    // is nothing to disable, so `false` and `true` both change nothing.
    flag(params, "DisableInstantAccess")?;
    let modify = ModifySnapshotAttributeParams {
        snapshot_id: params.text("SnapshotId"),
        snapshot_name: params.get("SnapshotName"),
        description: params.get("Description"),
        retention_days: number(params, "RetentionDays")?,
    };
    let command = ModifySnapshotAttributeCommand::parse(account_id.to_owned(), &modify)?;
    service.modify_snapshot_attribute(&command).await?;
    Ok(json!({}))
}

/// `PageNumber`: 0 when not given, else 1 or more.
pub(super) fn page_number(params: &Params) -> Result<i32, EcsError> {
    match number(params, "PageNumber")? {
        None => Ok(0),
        Some(page) if page >= 1 => Ok(page),
        Some(_) => Err(invalid_value("PageNumber", "must be 1 or more")),
    }
}

/// A `true`/`false` parameter (any case); not given is false.
pub(super) fn flag(params: &Params, name: &'static str) -> Result<bool, EcsError> {
    match params.get(name) {
        None | Some("") => Ok(false),
        Some(raw) if raw.eq_ignore_ascii_case("true") => Ok(true),
        Some(raw) if raw.eq_ignore_ascii_case("false") => Ok(false),
        Some(_) => Err(invalid_value(name, "must be true or false")),
    }
}

pub(super) fn invalid_value(parameter: &'static str, why: &str) -> EcsError {
    EcsError::InvalidValue {
        parameter,
        why: why.to_owned(),
    }
}

/// A whole-number parameter, if given, in plain decimal: `-5`, `0`, `12`; not `+5`, `05` or
/// `-0`, which a parser would read as some number the caller may not have meant.
pub(super) fn number(params: &Params, name: &'static str) -> Result<Option<i32>, EcsError> {
    match params.get(name) {
        None | Some("") => Ok(None),
        Some(raw) => {
            let digits = raw.strip_prefix('-').unwrap_or(raw);
            let plain = !digits.is_empty()
                && digits.bytes().all(|b| b.is_ascii_digit())
                && (digits == "0" && digits.len() == raw.len() || !digits.starts_with('0'));
            plain
                .then(|| raw.parse().ok())
                .flatten()
                .map(Some)
                .ok_or_else(|| invalid_value(name, "must be a whole number"))
        }
    }
}

/// `Status`: one of the snapshot statuses, or `all` (the same as not given).
fn status_filter(params: &Params) -> Result<Option<SnapshotStatus>, EcsError> {
    match params.get("Status") {
        None | Some("") | Some("all") => Ok(None),
        Some(raw) => SnapshotStatus::parse(raw).map(Some).ok_or_else(|| {
            invalid_value("Status", "must be progressing, accomplished, failed or all")
        }),
    }
}

/// `SnapshotIds`: a JSON array of ids, as ECS takes it (`["s-1","s-2"]`).
fn snapshot_ids(params: &Params) -> Result<Vec<String>, EcsError> {
    match params.get("SnapshotIds") {
        None | Some("") => Ok(Vec::new()),
        Some(raw) => serde_json::from_str(raw).map_err(|_| {
            ParseError::InvalidSnapshotIdsMalformed {
                why: "must be a JSON array of snapshot ids, e.g. [\"s-…\"]",
            }
            .into()
        }),
    }
}

/// N of a numbered parameter (`Tag.N.Key`, `ResourceId.N`) as ECS writes it: a decimal from 1
/// to `max`, without sign or leading zeros, so that `Tag.01` cannot stand beside `Tag.1` as a
/// second spelling of one entry.
pub(super) fn list_index(raw: &str, max: usize) -> Option<usize> {
    let canonical = raw.bytes().all(|b| b.is_ascii_digit()) && !raw.starts_with('0');
    canonical
        .then(|| raw.parse::<usize>().ok())
        .flatten()
        .filter(|n| (1..=max).contains(n))
}

/// `Tag.N.Key` and `Tag.N.Value`, N from 1 to [`MAX_TAGS`], in N's order.
pub(super) fn tags(params: &Params) -> Result<Vec<(String, String)>, EcsError> {
    let mut tags: Vec<(usize, String, String)> = Vec::new();
    for name in params.names_with_prefix("Tag.") {
        let index = name
            .strip_prefix("Tag.")
            .and_then(|rest| rest.split_once('.'))
            .filter(|(_, part)| matches!(*part, "Key" | "Value"))
            .and_then(|(n, _)| list_index(n, MAX_TAGS))
            .ok_or_else(|| {
                invalid_value(
                    "Tag.N",
                    &format!("{name} is not Tag.N.Key or Tag.N.Value with N from 1 to {MAX_TAGS}"),
                )
            })?;
        if tags.iter().any(|(n, _, _)| *n == index) {
            continue;
        }
        let key = params.get(&format!("Tag.{index}.Key"));
        let Some(key) = key else {
            return Err(ParseError::MissingParameter { field: "Tag.N.Key" }.into());
        };
        let value = params.text(&format!("Tag.{index}.Value"));
        tags.push((index, key.to_owned(), value.to_owned()));
    }
    tags.sort_by_key(|(n, _, _)| *n);
    Ok(tags.into_iter().map(|(_, k, v)| (k, v)).collect())
}

/// `SourceDiskType`: `System` or `Data`, in any case (as ECS takes it).
fn source_disk_type(params: &Params) -> Result<Option<DiskType>, EcsError> {
    match params.get("SourceDiskType") {
        None | Some("") => Ok(None),
        Some(raw) if raw.eq_ignore_ascii_case("system") => Ok(Some(DiskType::System)),
        Some(raw) if raw.eq_ignore_ascii_case("data") => Ok(Some(DiskType::Data)),
        Some(_) => Err(invalid_value("SourceDiskType", "must be System or Data")),
    }
}

/// The creation-time range of `Filter.N.Key` = `CreationStartTime` / `CreationEndTime` with
/// `Filter.N.Value` in ECS's UTC format (`2026-01-02T03:04Z`, or with seconds).
#[derive(Debug, Default, PartialEq, Eq)]
struct CreationTimes {
    start: Option<Timestamp>,
    end: Option<Timestamp>,
}

/// The most `Filter.N` pairs: one per key ECS offers here.
const MAX_FILTERS: usize = 2;

fn creation_times(params: &Params) -> Result<CreationTimes, EcsError> {
    let mut times = CreationTimes::default();
    let mut seen = Vec::new();
    for name in params.names_with_prefix("Filter.") {
        let index = name
            .strip_prefix("Filter.")
            .and_then(|rest| rest.split_once('.'))
            .filter(|(_, part)| matches!(*part, "Key" | "Value"))
            .and_then(|(n, _)| list_index(n, MAX_FILTERS))
            .ok_or_else(|| {
                invalid_value(
                    "Filter.N",
                    &format!(
                        "{name} is not Filter.N.Key or Filter.N.Value with N from 1 to {MAX_FILTERS}"
                    ),
                )
            })?;
        if seen.contains(&index) {
            continue;
        }
        seen.push(index);
        let key = params.text(&format!("Filter.{index}.Key"));
        let value = params.text(&format!("Filter.{index}.Value"));
        let slot = match key {
            "CreationStartTime" => &mut times.start,
            "CreationEndTime" => &mut times.end,
            "" => {
                return Err(ParseError::MissingParameter {
                    field: "Filter.N.Key",
                }
                .into());
            }
            _ => {
                return Err(invalid_value(
                    "Filter.N.Key",
                    "must be CreationStartTime or CreationEndTime",
                ));
            }
        };
        if slot.is_some() {
            return Err(invalid_value(
                "Filter.N.Key",
                &format!("{key} is given twice"),
            ));
        }
        *slot = Some(ecs_time_parse(value).ok_or_else(|| {
            invalid_value(
                "Filter.N.Value",
                "must be a UTC time such as 2026-01-02T03:04Z or 2026-01-02T03:04:05Z",
            )
        })?);
    }
    Ok(times)
}

/// ECS's UTC time, to the minute or to the second.
fn ecs_time_parse(raw: &str) -> Option<Timestamp> {
    ["%Y-%m-%dT%H:%MZ", "%Y-%m-%dT%H:%M:%SZ"]
        .into_iter()
        .find_map(|format| chrono::NaiveDateTime::parse_from_str(raw, format).ok())
        .map(|at| at.and_utc())
}

/// ECS's time format: to the second, in UTC.
pub(super) fn ecs_time(at: Timestamp) -> String {
    at.format("%Y-%m-%dT%H:%M:%SZ").to_string()
}

/// One snapshot in ECS's field names and formats.
fn snapshot_json(view: SnapshotView) -> Value {
    let SnapshotView {
        snapshot,
        progress_percent,
        remaining,
    } = view;
    let available = snapshot.is_available();
    let tags: Vec<Value> = snapshot
        .tags
        .iter()
        .map(|tag| json!({ "TagKey": tag.key, "TagValue": tag.value }))
        .collect();
    json!({
        "SnapshotId": snapshot.snapshot_id,
        "SnapshotName": snapshot.snapshot_name.unwrap_or_default(),
        "Description": snapshot.description,
        "SourceDiskId": snapshot.source_disk_id,
        "SourceDiskSize": snapshot.source_disk_size_gib.to_string(),
        "SourceDiskType": snapshot.source_disk_type.as_str(),
        "Status": snapshot.status.as_str(),
        "Progress": format!("{progress_percent}%"),
        "RemainTime": remaining.as_secs_f64().ceil() as u64,
        "CreationTime": ecs_time(snapshot.created_at),
        "LastModifiedTime": ecs_time(snapshot.last_modified_at),
        "RetentionDays": snapshot.retention.as_i32(),
        "Usage": snapshot.usage.as_str(),
        "Category": "standard",
        "SnapshotType": "user",
        "Encrypted": false,
        "InstantAccess": false,
        "Available": available,
        "Tags": { "Tag": tags },
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn params(query: &str) -> Params {
        Params::decode(query, b"").expect("valid parameters")
    }

    #[test]
    fn actions_parse_by_their_ecs_names() {
        for action in Action::ALL {
            assert_eq!(Action::parse(action.name()), Some(action));
        }
        assert_eq!(Action::parse("createsnapshot"), None);
    }

    #[test]
    fn tags_are_read_in_order_and_malformed_names_are_refused() {
        let read = tags(&params("Tag.2.Key=b&Tag.1.Key=a&Tag.1.Value=x")).expect("valid");
        assert_eq!(
            read,
            vec![("a".into(), "x".into()), ("b".into(), String::new())]
        );
        for bad in [
            "Tag.0.Key=a",
            "Tag.21.Key=a",
            "Tag.x.Key=a",
            "Tag.1.Name=a",
            "Tag.1=a",
        ] {
            assert!(
                matches!(tags(&params(bad)), Err(EcsError::InvalidValue { .. })),
                "{bad}"
            );
        }
        assert!(matches!(
            tags(&params("Tag.1.Value=x")),
            Err(EcsError::Invalid(ParseError::MissingParameter { .. }))
        ));
    }

    #[test]
    fn unoffered_create_options_are_refused_by_name() {
        let cases = [
            ("Category=standard&InstantAccess=false", None),
            ("Category=flash", Some("Category")),
            ("InstantAccess=true", Some("InstantAccess")),
            (
                "InstantAccessRetentionDays=1",
                Some("InstantAccessRetentionDays"),
            ),
            ("ResourceGroupId=rg-1", Some("ResourceGroupId")),
            ("StorageLocationArn=arn", Some("StorageLocationArn")),
        ];
        for (query, refused) in cases {
            let result = refuse_unoffered_create_options(&params(query));
            match (result, refused) {
                (Ok(()), None) => {}
                (Err(EcsError::InvalidValue { parameter, .. }), Some(name)) => {
                    assert_eq!(parameter, name)
                }
                (other, _) => panic!("{query}: {other:?}"),
            }
        }
    }

    #[test]
    fn parameters_an_action_does_not_read_are_refused_by_name() {
        let cases = [
            (
                Action::CreateSnapshot,
                "DiskId=d-1&Tag.1.Key=a&RegionId=cn&OwnerId=1",
                None,
            ),
            (
                Action::DescribeSnapshots,
                "SnapshotType=all&Tag.1.Key=a",
                None,
            ),
            (
                Action::DescribeSnapshots,
                "Usage=none&SourceDiskType=Data&InstanceId=i-1&Filter.1.Key=CreationStartTime",
                None,
            ),
            (
                Action::DescribeSnapshots,
                "Category=flash",
                Some("Category"),
            ),
            (
                Action::DeleteSnapshot,
                "SnapshotId=s-1&Filter.1.Key=a",
                Some("Filter.1.Key"),
            ),
            (
                Action::CreateImage,
                "SnapshotId=s-1&Description=x",
                Some("Description"),
            ),
            (
                Action::CreateImage,
                "SnapshotId=s-1&Tag.1.Key=a",
                Some("Tag.1.Key"),
            ),
            (
                Action::DeleteSnapshot,
                "SnapshotId=s-1&snapshotid=s-2",
                Some("snapshotid"),
            ),
            (Action::DeleteSnapshot, "SnapshotId=s-1&DryRun=false", None),
        ];
        for (action, query, refused) in cases {
            match (check_parameters(action, &params(query)), refused) {
                (Ok(()), None) => {}
                (Err(EcsError::UnknownParameter { parameter, .. }), Some(name)) => {
                    assert_eq!(parameter, name)
                }
                (other, _) => panic!("{query}: {other:?}"),
            }
        }
        assert!(matches!(
            check_parameters(Action::DeleteSnapshot, &params("DryRun=true")),
            Err(EcsError::InvalidValue {
                parameter: "DryRun",
                ..
            })
        ));
    }

    #[test]
    fn list_indexes_and_numbers_have_one_spelling() {
        let indexes = [
            ("1", Some(1)),
            ("20", Some(20)),
            ("21", None),
            ("0", None),
            ("01", None),
            ("+1", None),
            ("-1", None),
            (" 1", None),
            ("", None),
            ("99999999999999999999999", None),
        ];
        for (raw, index) in indexes {
            assert_eq!(list_index(raw, 20), index, "{raw:?}");
        }
        let numbers = [
            ("5", Some(5)),
            ("0", Some(0)),
            ("-5", Some(-5)),
            ("+5", None),
            ("05", None),
            ("-0", None),
            ("-", None),
            ("5.0", None),
            ("2147483648", None),
        ];
        for (raw, number_read) in numbers {
            let got = number(&params(&format!("N={}", urlencode(raw))), "N");
            match number_read {
                Some(n) => assert_eq!(got.ok(), Some(Some(n)), "{raw:?}"),
                None => assert!(
                    matches!(got, Err(EcsError::InvalidValue { parameter: "N", .. })),
                    "{raw:?}: {got:?}"
                ),
            }
        }
    }

    fn urlencode(raw: &str) -> String {
        raw.replace('+', "%2B").replace(' ', "%20")
    }

    #[test]
    fn creation_times_in_ecs_format_within_the_storable_range() {
        let times = |query: &str| creation_times(&params(query));
        assert!(times("Filter.1.Key=CreationStartTime&Filter.1.Value=2026-01-02T03:04Z").is_ok());
        assert!(times("Filter.1.Key=CreationEndTime&Filter.1.Value=2026-01-02T03:04:05Z").is_ok());
        for bad in [
            "Filter.1.Key=CreationStartTime&Filter.1.Value=yesterday",
            "Filter.01.Key=CreationStartTime&Filter.01.Value=2026-01-02T03:04Z",
            "Filter.3.Key=CreationStartTime&Filter.3.Value=2026-01-02T03:04Z",
            "Filter.1.Key=Bogus&Filter.1.Value=2026-01-02T03:04Z",
            "Filter.1.Key=CreationStartTime&Filter.1.Value=2026-01-02T03:04Z&Filter.2.Key=CreationStartTime&Filter.2.Value=2026-01-02T03:04Z",
        ] {
            assert!(times(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn snapshot_ids_are_a_json_array() {
        assert_eq!(
            snapshot_ids(&params("SnapshotIds=%5B%22s-1%22%5D")).expect("valid"),
            vec!["s-1".to_owned()]
        );
        assert!(matches!(
            snapshot_ids(&params("SnapshotIds=s-1")),
            Err(EcsError::Invalid(
                ParseError::InvalidSnapshotIdsMalformed { .. }
            ))
        ));
    }
}
