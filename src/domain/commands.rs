//! Validated requests: what a use case is asked to do, built from a caller's raw parameters
//! by `parse` (the first failing input rule answers, in the seed's order).

use chrono::DateTime;

use super::{
    ClientToken, Description, DiskId, DiskType, ImageName, ParseError, RetentionDays, Snapshot,
    SnapshotId, SnapshotName, SnapshotStatus, SnapshotUsage, Tag, Timestamp, is_plain_id,
    is_storable_time,
};

/// CreateSnapshot's parameters as a caller sends them; an empty string is a parameter not given.
#[derive(Debug, Clone, Copy, Default)]
pub struct CreateSnapshotParams<'a> {
    pub disk_id: &'a str,
    pub snapshot_name: &'a str,
    pub description: &'a str,
    pub client_token: &'a str,
    pub retention_days: i32,
    pub tags: &'a [(&'a str, &'a str)],
}

/// DescribeSnapshots' parameters as a caller sends them; empty means not given.
#[derive(Debug, Clone, Default)]
pub struct DescribeSnapshotsParams<'a> {
    pub disk_id: &'a str,
    pub snapshot_ids: &'a [&'a str],
    pub status: Option<SnapshotStatus>,
    pub snapshot_name: &'a str,
    pub tags: &'a [(&'a str, &'a str)],
    pub next_token: &'a str,
    /// 0: the default page size.
    pub max_results: i32,
    /// 0: not given; else the page to show, counting from 1 in pages of the page size (the
    /// ECS edge's `PageNumber`; the alternative to `next_token`).
    pub page_number: i32,
    /// Snapshots of the disks attached to this instance now.
    pub instance_id: &'a str,
    pub source_disk_type: Option<DiskType>,
    /// `image` or `none`.
    pub usage: &'a str,
    /// Created at or after this instant.
    pub created_after: Option<Timestamp>,
    /// Created before this instant.
    pub created_before: Option<Timestamp>,
}

/// CreateImage's parameters as a caller sends them.
#[derive(Debug, Clone, Copy, Default)]
pub struct CreateImageParams<'a> {
    pub snapshot_id: &'a str,
    pub image_name: &'a str,
    pub client_token: &'a str,
}

/// A validated CreateSnapshot request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CreateSnapshotCommand {
    pub account_id: String,
    pub disk_id: DiskId,
    pub snapshot_name: Option<SnapshotName>,
    pub description: Description,
    pub client_token: Option<ClientToken>,
    pub retention: RetentionDays,
    pub tags: Vec<Tag>,
}

/// Joins fields length-prefixed, so that no two different field lists share a fingerprint.
fn fingerprint_of<'a>(fields: impl IntoIterator<Item = &'a str>) -> String {
    fields
        .into_iter()
        .map(|field| format!("{}:{field}", field.len()))
        .collect::<Vec<_>>()
        .join("|")
}

impl CreateSnapshotCommand {
    /// The caller's parameters, checked in the seed's order: the first failing rule answers.
    pub fn parse(
        account_id: String,
        params: &CreateSnapshotParams<'_>,
    ) -> Result<Self, ParseError> {
        Ok(Self {
            disk_id: DiskId::parse(params.disk_id)?,
            snapshot_name: SnapshotName::parse_optional(params.snapshot_name)?,
            description: Description::parse(params.description)?,
            client_token: ClientToken::parse_optional(params.client_token)?,
            retention: RetentionDays::parse(params.retention_days)?,
            tags: Tag::parse_all(params.tags.iter().copied())?,
            account_id,
        })
    }

    /// What "identical parameters" means for idempotence: every request field but the token.
    /// Tags count as a set (their order does not matter).
    pub fn fingerprint(&self) -> String {
        let retention = self.retention.as_i32().to_string();
        let mut tags = self.tags.clone();
        tags.sort();
        let mut fields = vec![
            self.disk_id.as_str(),
            self.snapshot_name.as_ref().map_or("", SnapshotName::as_str),
            self.description.as_str(),
            retention.as_str(),
        ];
        for tag in &tags {
            fields.push(&tag.key);
            fields.push(&tag.value);
        }
        fingerprint_of(fields)
    }
}

/// A validated CreateImage request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CreateImageCommand {
    pub account_id: String,
    pub snapshot_id: SnapshotId,
    pub image_name: Option<ImageName>,
    pub client_token: Option<ClientToken>,
}

impl CreateImageCommand {
    pub fn parse(account_id: String, params: &CreateImageParams<'_>) -> Result<Self, ParseError> {
        Ok(Self {
            snapshot_id: SnapshotId::parse(params.snapshot_id)?,
            image_name: ImageName::parse_optional(params.image_name)?,
            client_token: ClientToken::parse_optional(params.client_token)?,
            account_id,
        })
    }

    pub fn fingerprint(&self) -> String {
        fingerprint_of([
            self.snapshot_id.as_str(),
            self.image_name.as_ref().map_or("", ImageName::as_str),
        ])
    }
}

/// ModifySnapshotAttribute's parameters as a caller sends them: `None` is an attribute not
/// given, which keeps its value; `Some("")` is given empty (a name removed, a description
/// emptied).
#[derive(Debug, Clone, Copy, Default)]
pub struct ModifySnapshotAttributeParams<'a> {
    pub snapshot_id: &'a str,
    pub snapshot_name: Option<&'a str>,
    pub description: Option<&'a str>,
    pub retention_days: Option<i32>,
}

/// A validated ModifySnapshotAttribute request: each attribute given, checked by the very
/// parser CreateSnapshot checks it with (same rules, same codes).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ModifySnapshotAttributeCommand {
    pub account_id: String,
    pub snapshot_id: SnapshotId,
    /// `Some(None)`: remove the name.
    pub snapshot_name: Option<Option<SnapshotName>>,
    pub description: Option<Description>,
    pub retention: Option<RetentionDays>,
}

impl ModifySnapshotAttributeCommand {
    /// The caller's parameters in CreateSnapshot's order: the first failing rule answers.
    pub fn parse(
        account_id: String,
        params: &ModifySnapshotAttributeParams<'_>,
    ) -> Result<Self, ParseError> {
        Ok(Self {
            snapshot_id: SnapshotId::parse(params.snapshot_id)?,
            snapshot_name: params
                .snapshot_name
                .map(SnapshotName::parse_optional)
                .transpose()?,
            description: params.description.map(Description::parse).transpose()?,
            retention: params
                .retention_days
                .map(RetentionDays::parse)
                .transpose()?,
            account_id,
        })
    }

    /// Whether the request names no attribute at all (it then changes nothing).
    pub fn changes_nothing(&self) -> bool {
        self.snapshot_name.is_none() && self.description.is_none() && self.retention.is_none()
    }
}

/// Where a page of DescribeSnapshots ends: the last row's sort key, and the listing's total.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PageCursor {
    pub created_at: Timestamp,
    pub snapshot_id: String,
    /// Every match, counted on the listing's first page and carried from page to page, so a
    /// page reached with a token counts nothing. `None`: a `v1` token, written before the total
    /// was carried; its page counts.
    pub total: Option<u64>,
}

/// DescribeSnapshots' tokens: `v2` with the listing's total; `v1`, written before the total was
/// carried, still read (a listing begun before an upgrade goes on).
const SNAPSHOT_TOKENS: TokenVersions = TokenVersions {
    counted: "v2",
    uncounted: "v1",
};

/// 9999-12-31T23:59:59Z: no later instant is stored anywhere.
const LATEST_SECONDS: i64 = 253_402_300_799;

impl PageCursor {
    /// The opaque `next_token`: the hex of
    /// `v2|<seconds>|<nanoseconds>|<snapshot id>|<total>|<crc32>` (`v1` had no total).
    /// The checksum makes a token that was altered by accident (or not written by us) malformed
    /// rather than a cursor somewhere else. It is no signature: a caller who rewrites it can
    /// move their own cursor and total, within their own account (docs/decisions.md).
    pub fn to_token(&self) -> String {
        SNAPSHOT_TOKENS.write(self.created_at, &self.snapshot_id, self.total)
    }

    /// Reads a `next_token` back (`v2`, or a `v1` of an older server); anything this service
    /// did not write is malformed.
    pub fn parse_token(token: &str) -> Result<Self, ParseError> {
        let (created_at, snapshot_id, total) = SNAPSHOT_TOKENS.read(token)?;
        let snapshot_id =
            SnapshotId::parse(&snapshot_id).map_err(|_| ParseError::InvalidNextTokenMalformed)?;
        Ok(Self {
            created_at,
            snapshot_id: snapshot_id.as_str().to_owned(),
            total,
        })
    }
}

/// The versions of one listing's tokens: `counted` carries the listing's total after the id,
/// `uncounted` (an older server's) does not, and is read but never written by a count.
pub(super) struct TokenVersions {
    pub counted: &'static str,
    pub uncounted: &'static str,
}

impl TokenVersions {
    /// The token of a page ending at `(created_at, id)`: counted when the total is known.
    pub fn write(&self, created_at: Timestamp, id: &str, total: Option<u64>) -> String {
        match total {
            Some(total) => cursor_token(self.counted, created_at, &format!("{id}|{total}")),
            None => cursor_token(self.uncounted, created_at, id),
        }
    }

    /// A token of either version back: its instant, its id (unchecked) and its total.
    pub fn read(&self, token: &str) -> Result<(Timestamp, String, Option<u64>), ParseError> {
        let malformed = || ParseError::InvalidNextTokenMalformed;
        let (version, created_at, rest) =
            read_cursor_token(token, &[self.counted, self.uncounted])?;
        if version != self.counted {
            return Ok((created_at, rest, None));
        }
        let (id, total) = rest.split_once('|').ok_or_else(malformed)?;
        let total = parse_total(total).ok_or_else(malformed)?;
        Ok((created_at, id.to_owned(), Some(total)))
    }
}

/// A count as [`PageCursor::to_token`] writes it: decimal digits without a sign or a leading
/// zero, at most what a database count (`bigint`) can be.
fn parse_total(text: &str) -> Option<u64> {
    let canonical = !text.is_empty()
        && text.bytes().all(|b| b.is_ascii_digit())
        && (text == "0" || !text.starts_with('0'));
    text.parse::<u64>()
        .ok()
        .filter(|total| canonical && i64::try_from(*total).is_ok())
}

/// A page's end `(created_at, id)` as an opaque token of the listing `version` names (`v2`:
/// snapshots; each listing its own, so one listing's token is malformed in another); `rest` is
/// the id, and after it what the version adds (`v2`: `|<total>`).
pub(super) fn cursor_token(version: &str, created_at: Timestamp, rest: &str) -> String {
    use std::fmt::Write as _;
    let mut plain = String::with_capacity(version.len() + rest.len() + 40);
    // Writing to a String cannot fail.
    let _ = write!(
        plain,
        "{version}|{}|{}|{rest}",
        created_at.timestamp(),
        created_at.timestamp_subsec_nanos(),
    );
    let checksum = crc32fast::hash(plain.as_bytes());
    let _ = write!(plain, "|{checksum:08x}");
    // Lower-case hex, two digits a byte (a slice, not `hex::encode`'s char by char).
    let mut token = vec![0; plain.len() * 2];
    hex::encode_to_slice(plain, &mut token).expect("twice the length");
    String::from_utf8(token).expect("hex digits are ASCII")
}

/// Reads a [`cursor_token`] of one of the listing's `versions` back into that version, its
/// instant and its (unchecked) rest.
fn read_cursor_token(
    token: &str,
    versions: &[&'static str],
) -> Result<(&'static str, Timestamp, String), ParseError> {
    let malformed = || ParseError::InvalidNextTokenMalformed;
    if !token.len().is_multiple_of(2) || token.len() > 256 {
        return Err(malformed());
    }
    // Anything but hex digits is refused here (into a slice: `hex::decode` collects by pairs).
    let mut bytes = vec![0; token.len() / 2];
    hex::decode_to_slice(token, &mut bytes).map_err(|_| malformed())?;
    let plain = String::from_utf8(bytes).map_err(|_| malformed())?;
    let (body, checksum) = plain.rsplit_once('|').ok_or_else(malformed)?;
    if checksum != format!("{:08x}", crc32fast::hash(body.as_bytes())) {
        return Err(malformed());
    }
    let mut parts = body.splitn(4, '|');
    let (Some(read_version), Some(seconds), Some(nanos), Some(rest)) =
        (parts.next(), parts.next(), parts.next(), parts.next())
    else {
        return Err(malformed());
    };
    let version = versions
        .iter()
        .find(|version| **version == read_version)
        .ok_or_else(malformed)?;
    let seconds: i64 = seconds.parse().map_err(|_| malformed())?;
    let nanos: u32 = nanos.parse().map_err(|_| malformed())?;
    // Only instants a row can have been created at (both databases store them).
    if !(0..=LATEST_SECONDS).contains(&seconds) || nanos >= 1_000_000_000 {
        return Err(malformed());
    }
    let created_at = DateTime::from_timestamp(seconds, nanos).ok_or_else(malformed)?;
    Ok((version, created_at, rest.to_owned()))
}

/// At most this many ids in one DescribeSnapshots.
pub const MAX_SNAPSHOT_IDS: usize = 100;

/// The largest page a Describe call returns (`MaxResults`).
pub const MAX_PAGE_SIZE: u32 = 100;

/// Page size of DescribeSnapshots (and DescribeImages): 1..=100, 0 meaning the default of 10.
pub(super) fn page_size(max_results: i32) -> Result<u32, ParseError> {
    match u32::try_from(max_results) {
        Ok(0) => Ok(10),
        Ok(size @ 1..=MAX_PAGE_SIZE) => Ok(size),
        _ => Err(ParseError::InvalidParameter {
            field: "max_results",
            why: "must be 1 to 100".to_owned(),
        }),
    }
}

/// A validated DescribeSnapshots request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SnapshotQuery {
    pub account_id: String,
    pub disk_id: Option<String>,
    pub snapshot_ids: Vec<String>,
    pub status: Option<SnapshotStatus>,
    pub snapshot_name: Option<String>,
    /// Every tag must match; an empty value matches any value of the key.
    pub tags: Vec<Tag>,
    /// Snapshots of the disks attached to this instance now.
    pub instance_id: Option<String>,
    pub source_disk_type: Option<DiskType>,
    pub usage: Option<SnapshotUsage>,
    /// `created_at` in `[created_after, created_before)`.
    pub created_after: Option<Timestamp>,
    pub created_before: Option<Timestamp>,
    pub after: Option<PageCursor>,
    pub limit: u32,
    /// Matching snapshots to pass over before the page (`page_number`'s pages before it).
    pub skip: u32,
}

/// The most snapshots a numbered page may pass over: deep offsets cost the database a scan of
/// everything before them; past this, page with `next_token`.
pub const MAX_SKIP: u32 = 100_000;

impl SnapshotQuery {
    /// Every snapshot of the account, newest first, the first page of `limit`: no filter.
    pub fn all_of(account_id: impl Into<String>, limit: u32) -> Self {
        Self {
            account_id: account_id.into(),
            disk_id: None,
            snapshot_ids: Vec::new(),
            status: None,
            snapshot_name: None,
            tags: Vec::new(),
            instance_id: None,
            source_disk_type: None,
            usage: None,
            created_after: None,
            created_before: None,
            after: None,
            limit,
            skip: 0,
        }
    }

    /// Whether the query selects every snapshot of the account (whatever its page).
    pub fn filters_only_by_account(&self) -> bool {
        // Named one by one, so that a new filter must be looked at here.
        let Self {
            account_id: _,
            disk_id,
            snapshot_ids,
            status,
            snapshot_name,
            tags,
            instance_id,
            source_disk_type,
            usage,
            created_after,
            created_before,
            after: _,
            limit: _,
            skip: _,
        } = self;
        disk_id.is_none()
            && snapshot_ids.is_empty()
            && status.is_none()
            && snapshot_name.is_none()
            && tags.is_empty()
            && instance_id.is_none()
            && source_disk_type.is_none()
            && usage.is_none()
            && created_after.is_none()
            && created_before.is_none()
    }

    pub fn parse(
        account_id: String,
        params: &DescribeSnapshotsParams<'_>,
    ) -> Result<Self, ParseError> {
        if params.snapshot_ids.len() > MAX_SNAPSHOT_IDS {
            return Err(ParseError::InvalidSnapshotIdsMalformed {
                why: "at most 100 snapshot ids",
            });
        }
        let snapshot_ids = params
            .snapshot_ids
            .iter()
            .map(|id| SnapshotId::parse(id).map(|id| id.as_str().to_owned()))
            .collect::<Result<Vec<_>, _>>()
            .map_err(|_| ParseError::InvalidSnapshotIdsMalformed {
                why: "each must be `s-` followed by 20 of [0-9a-z]",
            })?;
        let disk_id = match params.disk_id {
            "" => None,
            raw => Some(DiskId::parse(raw)?.as_str().to_owned()),
        };
        let limit = page_size(params.max_results)?;
        Ok(Self {
            account_id,
            disk_id,
            snapshot_ids,
            status: params.status,
            // Only a valid name can match: refuse anything else as CreateSnapshot would.
            snapshot_name: SnapshotName::parse_optional(params.snapshot_name)?
                .map(|name| name.as_str().to_owned()),
            tags: Tag::parse_all(params.tags.iter().copied())?,
            instance_id: match params.instance_id {
                "" => None,
                id if is_plain_id(id) => Some(id.to_owned()),
                _ => {
                    return Err(ParseError::InvalidParameter {
                        field: "instance_id",
                        why: "must be 1 to 64 of [A-Za-z0-9._:-]".to_owned(),
                    });
                }
            },
            source_disk_type: params.source_disk_type,
            usage: match params.usage {
                "" => None,
                raw => {
                    Some(
                        SnapshotUsage::parse(raw).ok_or_else(|| ParseError::InvalidParameter {
                            field: "usage",
                            why: "must be image or none".to_owned(),
                        })?,
                    )
                }
            },
            created_after: storable("created_after", params.created_after)?,
            created_before: match (
                params.created_after,
                storable("created_before", params.created_before)?,
            ) {
                (Some(after), Some(before)) if before <= after => {
                    return Err(ParseError::InvalidParameter {
                        field: "created_before",
                        why: "must be later than created_after".to_owned(),
                    });
                }
                (_, before) => before,
            },
            after: match params.next_token {
                "" => None,
                token => Some(PageCursor::parse_token(token)?),
            },
            limit,
            skip: skip(params, limit)?,
        })
    }
}

/// A validated WatchSnapshots request: these snapshot ids, the snapshots of this disk (those
/// created later too), or both (a snapshot must match both, as DescribeSnapshots' filters do).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WatchQuery {
    pub account_id: String,
    pub disk_id: Option<String>,
    /// Sorted, without duplicates.
    pub snapshot_ids: Vec<String>,
}

impl WatchQuery {
    /// The ids and the disk are checked as DescribeSnapshots checks them (same codes, same
    /// limit of ids); a request that names neither watches nothing and is refused.
    pub fn parse(
        account_id: String,
        snapshot_ids: &[&str],
        disk_id: &str,
    ) -> Result<Self, ParseError> {
        let params = DescribeSnapshotsParams {
            disk_id,
            snapshot_ids,
            status: None,
            snapshot_name: "",
            tags: &[],
            next_token: "",
            max_results: 0,
            page_number: 0,
            instance_id: "",
            source_disk_type: None,
            usage: "",
            created_after: None,
            created_before: None,
        };
        let query = SnapshotQuery::parse(account_id, &params)?;
        if query.snapshot_ids.is_empty() && query.disk_id.is_none() {
            return Err(ParseError::InvalidParameter {
                field: "snapshot_ids",
                why: "name the snapshot ids or the disk id to watch".to_owned(),
            });
        }
        let mut snapshot_ids = query.snapshot_ids;
        snapshot_ids.sort_unstable();
        snapshot_ids.dedup();
        Ok(Self {
            account_id: query.account_id,
            disk_id: query.disk_id,
            snapshot_ids,
        })
    }

    /// Whether a snapshot of `account_id` on `disk_id` is one this query watches.
    pub fn matches(&self, account_id: &str, disk_id: &str, snapshot_id: &str) -> bool {
        account_id == self.account_id
            && self.disk_id.as_deref().is_none_or(|disk| disk == disk_id)
            && (self.snapshot_ids.is_empty()
                || self
                    .snapshot_ids
                    .binary_search_by(|id| id.as_str().cmp(snapshot_id))
                    .is_ok())
    }

    /// The DescribeSnapshots query that reads what this watch matches, a page from `after`.
    pub fn page(&self, after: Option<PageCursor>) -> SnapshotQuery {
        SnapshotQuery {
            disk_id: self.disk_id.clone(),
            snapshot_ids: self.snapshot_ids.clone(),
            after,
            ..SnapshotQuery::all_of(self.account_id.clone(), MAX_SNAPSHOT_IDS as u32)
        }
    }
}

/// A creation-time bound, refused outside what [`is_storable_time`] allows.
fn storable(field: &'static str, at: Option<Timestamp>) -> Result<Option<Timestamp>, ParseError> {
    match at {
        Some(at) if !is_storable_time(&at) => Err(ParseError::InvalidParameter {
            field,
            why: "must be a timestamp from 1970 to 9999".to_owned(),
        }),
        at => Ok(at),
    }
}

/// The snapshots a numbered page passes over: `(page_number - 1) * limit`.
fn skip(params: &DescribeSnapshotsParams<'_>, limit: u32) -> Result<u32, ParseError> {
    page_skip(params.page_number, params.next_token, limit)
}

/// The rows a numbered page passes over: `(page_number - 1) * limit`; 0 when no page is named.
pub(super) fn page_skip(page_number: i32, next_token: &str, limit: u32) -> Result<u32, ParseError> {
    let invalid = |why: &str| ParseError::InvalidParameter {
        field: "page_number",
        why: why.to_owned(),
    };
    match page_number {
        0 => Ok(0),
        page if page < 0 => Err(invalid("must be 1 or more")),
        _ if !next_token.is_empty() => {
            Err(invalid("pass either next_token or page_number, not both"))
        }
        page => u32::try_from(page - 1)
            .ok()
            .and_then(|before| before.checked_mul(limit))
            .filter(|skip| *skip <= MAX_SKIP)
            .ok_or_else(|| {
                invalid(&format!(
                    "a numbered page may start at most {MAX_SKIP} rows in; page on with next_token"
                ))
            }),
    }
}

/// One page of snapshots, newest first.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SnapshotPage {
    pub snapshots: Vec<Snapshot>,
    /// Where the next page starts; `None` on the last page.
    pub next: Option<PageCursor>,
    /// Every snapshot the filters match, on every page.
    pub total: u64,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn numbered_pages_pass_over_the_pages_before_them() {
        let params = |page_number, next_token| DescribeSnapshotsParams {
            page_number,
            next_token,
            ..Default::default()
        };
        let cases: [(i32, &str, u32, Option<u32>); 6] = [
            (0, "", 10, Some(0)),
            (1, "", 10, Some(0)),
            (3, "", 10, Some(20)),
            (-1, "", 10, None),
            (2, "a-token", 10, None),
            (i32::MAX, "", 100, None),
        ];
        for (page, token, limit, expected) in cases {
            assert_eq!(
                skip(&params(page, token), limit).ok(),
                expected,
                "page {page}"
            );
        }
    }
    #[test]
    fn fingerprints_differ_when_any_parameter_differs() {
        let base = CreateSnapshotCommand {
            account_id: "a".into(),
            disk_id: DiskId::parse("d-1").unwrap(),
            snapshot_name: None,
            description: Description::parse("").unwrap(),
            client_token: None,
            retention: RetentionDays::default(),
            tags: Vec::new(),
        };
        let named = CreateSnapshotCommand {
            snapshot_name: Some(SnapshotName::parse("ab").unwrap()),
            ..base.clone()
        };
        let described = CreateSnapshotCommand {
            description: Description::parse("ab").unwrap(),
            ..base.clone()
        };
        assert_ne!(base.fingerprint(), named.fingerprint());
        assert_ne!(named.fingerprint(), described.fingerprint());
        assert_eq!(base.fingerprint(), base.clone().fingerprint());
    }

    #[test]
    fn modify_reads_absent_as_unchanged_empty_as_cleared_and_checks_as_create_does() {
        let parse = |name: Option<&str>, description: Option<&str>, retention: Option<i32>| {
            ModifySnapshotAttributeCommand::parse(
                "a".into(),
                &ModifySnapshotAttributeParams {
                    snapshot_id: "s-0123456789abcdefghij",
                    snapshot_name: name,
                    description,
                    retention_days: retention,
                },
            )
        };
        let nothing = parse(None, None, None).unwrap();
        assert!(nothing.changes_nothing());
        let cleared = parse(Some(""), Some(""), Some(0)).unwrap();
        assert_eq!(cleared.snapshot_name, Some(None));
        assert_eq!(cleared.description, Some(Description::default()));
        assert_eq!(cleared.retention, Some(RetentionDays::default()));
        // The create rules, in the create order, with the create codes.
        type Refusal<'a> = (Option<&'a str>, Option<&'a str>, Option<i32>, &'a str);
        let refusals: [Refusal; 5] = [
            (Some("a"), None, None, "InvalidSnapshotName.Malformed"),
            (Some("auto1"), None, None, "InvalidSnapshotName.Malformed"),
            (None, Some("x"), None, "InvalidDescription.Malformed"),
            (None, None, Some(65_537), "InvalidRetentionDays.Malformed"),
            (
                Some("a"),
                Some("x"),
                Some(-1),
                "InvalidSnapshotName.Malformed",
            ),
        ];
        for (name, description, retention, code) in refusals {
            let refused = parse(name, description, retention).unwrap_err();
            assert!(
                refused.to_string().starts_with(code),
                "{name:?} {description:?} {retention:?}: {refused}"
            );
        }
        let missing = ModifySnapshotAttributeCommand::parse("a".into(), &Default::default());
        assert_eq!(
            missing,
            Err(ParseError::MissingParameter {
                field: "snapshot_id"
            })
        );
    }

    const SNAPSHOT: &str = "s-0123456789abcdefghij";

    fn cursor(total: Option<u64>) -> PageCursor {
        PageCursor {
            created_at: DateTime::from_timestamp(1_780_000_000, 123_456_000).unwrap(),
            snapshot_id: SNAPSHOT.into(),
            total,
        }
    }

    #[test]
    fn a_next_token_round_trips_and_anything_else_is_malformed() {
        for total in [Some(0), Some(1), Some(10_000), Some(i64::MAX as u64), None] {
            let cursor = cursor(total);
            let token = cursor.to_token();
            assert_eq!(PageCursor::parse_token(&token), Ok(cursor), "{total:?}");
            for bad in [
                "",
                "zz",
                "abc",
                "7631",
                &token[..token.len() - 2],
                &format!("{token}00"),
            ] {
                assert_eq!(
                    PageCursor::parse_token(bad),
                    Err(ParseError::InvalidNextTokenMalformed),
                    "{total:?} {bad:?}"
                );
            }
        }
    }

    #[test]
    fn a_new_token_is_v2_with_the_total_and_a_v1_token_carries_none() {
        let plain = |token: &str| {
            let bytes: Vec<u8> = (0..token.len())
                .step_by(2)
                .map(|i| u8::from_str_radix(&token[i..i + 2], 16).unwrap())
                .collect();
            String::from_utf8(bytes).unwrap()
        };
        let written = plain(&cursor(Some(42)).to_token());
        assert!(
            written.starts_with(&format!("v2|1780000000|123456000|{SNAPSHOT}|42|")),
            "{written}"
        );
        // What a server before the total wrote (and a running one may have handed out).
        let v1 = forged(&format!("v1|1780000000|123456000|{SNAPSHOT}"));
        assert_eq!(PageCursor::parse_token(&v1), Ok(cursor(None)));
    }

    /// A token with a valid checksum around a body this service never wrote.
    fn forged(body: &str) -> String {
        let plain = format!("{body}|{:08x}", crc32fast::hash(body.as_bytes()));
        plain.bytes().map(|b| format!("{b:02x}")).collect()
    }

    #[test]
    fn a_next_token_is_its_text_and_checksum_in_lower_case_hex() {
        let cursor = PageCursor {
            created_at: DateTime::from_timestamp(1_780_000_000, 123_456_000).unwrap(),
            snapshot_id: "s-0123456789abcdefghij".into(),
            total: Some(42),
        };
        assert_eq!(
            cursor.to_token(),
            forged("v2|1780000000|123456000|s-0123456789abcdefghij|42")
        );
    }

    #[test]
    fn a_forged_token_with_an_instant_no_snapshot_can_have_is_malformed() {
        let id = "s-zzzzzzzzzzzzzzzzzzzz";
        for version in ["v1|", "v2|"] {
            let total = if version == "v2|" { "|5" } else { "" };
            for body in [
                format!("-211000000000|0|{id}"),
                format!("-1|0|{id}"),
                format!("253402300800|0|{id}"),
                format!("0|1000000000|{id}"),
                format!("{}|0|{id}", i64::MAX),
            ] {
                assert_eq!(
                    PageCursor::parse_token(&forged(&format!("{version}{body}{total}"))),
                    Err(ParseError::InvalidNextTokenMalformed),
                    "{version}{body}{total}"
                );
            }
            for body in [format!("253402300799|999999999|{id}"), format!("0|0|{id}")] {
                assert!(
                    PageCursor::parse_token(&forged(&format!("{version}{body}{total}"))).is_ok(),
                    "{version}{body}{total}"
                );
            }
        }
    }

    /// The checksum is no signature: a caller can rewrite their own token's total, and is then
    /// told that total on the pages after (their own listing, their own snapshots). What is not
    /// a count is refused.
    #[test]
    fn a_v2_token_carries_any_sane_total_and_refuses_anything_else() {
        let body = |total: &str| forged(&format!("v2|1780000000|123456000|{SNAPSHOT}|{total}"));
        let cases: [(&str, Option<u64>); 16] = [
            ("0", Some(0)),
            ("7", Some(7)),
            ("9223372036854775807", Some(i64::MAX as u64)),
            ("9223372036854775808", None),
            ("18446744073709551616", None),
            ("-1", None),
            ("+7", None),
            ("07", None),
            ("00", None),
            ("", None),
            (" 7", None),
            ("7 ", None),
            ("1e3", None),
            ("7.0", None),
            ("0x10", None),
            ("7|8", None),
        ];
        for (total, expected) in cases {
            let parsed = PageCursor::parse_token(&body(total));
            match expected {
                Some(total) => assert_eq!(parsed, Ok(cursor(Some(total))), "{total:?}"),
                None => assert_eq!(
                    parsed,
                    Err(ParseError::InvalidNextTokenMalformed),
                    "{total:?}"
                ),
            }
        }
        // The versions do not mix: a v2 body without its total, a v1 body with one.
        for bad in [
            format!("v2|1780000000|123456000|{SNAPSHOT}"),
            format!("v1|1780000000|123456000|{SNAPSHOT}|7"),
            format!("v3|1780000000|123456000|{SNAPSHOT}|7"),
        ] {
            assert_eq!(
                PageCursor::parse_token(&forged(&bad)),
                Err(ParseError::InvalidNextTokenMalformed),
                "{bad}"
            );
        }
    }

    #[test]
    fn a_page_holds_1_to_100_snapshots_and_0_means_10() {
        let cases = [
            (0, Ok(10)),
            (1, Ok(1)),
            (100, Ok(100)),
            (101, Err(())),
            (-1, Err(())),
        ];
        for (max_results, expected) in cases {
            assert_eq!(
                page_size(max_results).map_err(|_| ()),
                expected,
                "{max_results}"
            );
        }
    }
}
