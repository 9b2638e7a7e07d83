//! Domain values: ids, the inventory records and the validated parts of a request.
//!
//! Parse, don't validate: every value that crosses the API edge is built through a `parse`
//! constructor that enforces the seed's rules, so code holding a `SnapshotName` never re-checks
//! it. Parse failures are the engine's [`RuleError`]s, so a rule is found by its ECS code.

use chrono::{DateTime, Utc};
use rand::Rng;

use crate::engine::RuleError;

/// Timestamps are UTC instants throughout.
pub type Timestamp = DateTime<Utc>;

/// A disk id: `d-` followed by 1..62 of `[0-9a-z-]`.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct DiskId(String);

impl DiskId {
    pub fn parse(raw: &str) -> Result<Self, RuleError> {
        if raw.is_empty() {
            return Err(RuleError::MissingParameter { field: "disk_id" });
        }
        let valid = raw.strip_prefix("d-").is_some_and(|rest| {
            (1..=62).contains(&rest.len())
                && rest
                    .bytes()
                    .all(|b| b.is_ascii_digit() || b.is_ascii_lowercase() || b == b'-')
        });
        if valid {
            Ok(Self(raw.to_owned()))
        } else {
            Err(RuleError::DiskIdValueNotSupported {
                disk_id: raw.to_owned(),
            })
        }
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

/// Account and instance ids: 1..=64 of `[A-Za-z0-9._:-]`. The same rule holds for the
/// `x-account-id` header and the inventory, so every caller the header admits can be stored.
pub const MAX_PLAIN_ID_LEN: usize = 64;

pub fn is_plain_id(raw: &str) -> bool {
    (1..=MAX_PLAIN_ID_LEN).contains(&raw.len())
        && raw
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b':' | b'-'))
}

/// Lower-case alphanumerics used in generated ids.
const ID_ALPHABET: &[u8] = b"0123456789abcdefghijklmnopqrstuvwxyz";

/// `prefix` + 20 random characters of `[0-9a-z]` (about 103 bits of entropy).
fn generate_id(prefix: &str) -> String {
    let mut rng = rand::rng();
    let mut id = String::with_capacity(prefix.len() + 20);
    id.push_str(prefix);
    for _ in 0..20 {
        id.push(ID_ALPHABET[rng.random_range(0..ID_ALPHABET.len())] as char);
    }
    id
}

/// A snapshot id: `s-` + 20 characters of `[0-9a-z]`.
pub fn new_snapshot_id() -> String {
    generate_id("s-")
}

/// An image id: `m-` + 20 characters of `[0-9a-z]`.
pub fn new_image_id() -> String {
    generate_id("m-")
}

/// True for `prefix` followed by exactly 20 of `[0-9a-z]`, the shape of the ids we generate.
fn is_generated_id(raw: &str, prefix: &str) -> bool {
    raw.strip_prefix(prefix).is_some_and(|rest| {
        rest.len() == 20
            && rest
                .bytes()
                .all(|b| b.is_ascii_digit() || b.is_ascii_lowercase())
    })
}

/// A snapshot id as a caller sends it.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct SnapshotId(String);

impl SnapshotId {
    pub fn parse(raw: &str) -> Result<Self, RuleError> {
        if raw.is_empty() {
            return Err(RuleError::MissingParameter {
                field: "snapshot_id",
            });
        }
        if is_generated_id(raw, "s-") {
            Ok(Self(raw.to_owned()))
        } else {
            Err(RuleError::InvalidSnapshotIdMalformed {
                snapshot_id: raw.to_owned(),
            })
        }
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

/// A request id: a v4 UUID, hyphenated and upper case like the seed's sample.
pub fn new_request_id() -> String {
    uuid::Uuid::new_v4()
        .hyphenated()
        .encode_upper(&mut uuid::Uuid::encode_buffer())
        .to_owned()
}

fn starts_with_url_scheme(text: &str) -> bool {
    text.starts_with("http://") || text.starts_with("https://")
}

/// CJK Unified Ideographs (with extension A and the compatibility block): what the seed calls
/// "Chinese characters".
fn is_chinese(c: char) -> bool {
    matches!(c, '\u{4E00}'..='\u{9FFF}' | '\u{3400}'..='\u{4DBF}' | '\u{F900}'..='\u{FAFF}')
}

/// A snapshot name per the seed: 2..128 characters; begins with an English letter or a Chinese
/// character; then letters, Chinese characters, digits, `_`, `:` or `-`; not `auto…`,
/// `http://…` or `https://…`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SnapshotName(String);

impl SnapshotName {
    /// An empty name means "no name" and is allowed.
    pub fn parse_optional(raw: &str) -> Result<Option<Self>, RuleError> {
        if raw.is_empty() {
            return Ok(None);
        }
        Self::parse(raw).map(Some)
    }

    pub fn parse(raw: &str) -> Result<Self, RuleError> {
        let malformed = |why: &'static str| Err(RuleError::InvalidSnapshotNameMalformed { why });
        let length = raw.chars().count();
        if !(2..=128).contains(&length) {
            return malformed("must be 2 to 128 characters long");
        }
        let first = raw.chars().next().expect("length checked above");
        if !(first.is_ascii_alphabetic() || is_chinese(first)) {
            return malformed("must begin with an English letter or a Chinese character");
        }
        if raw.starts_with("auto") {
            return malformed("must not begin with `auto`, which marks automatic snapshots");
        }
        if starts_with_url_scheme(raw) {
            return malformed("must not begin with http:// or https://");
        }
        let allowed =
            |c: char| c.is_ascii_alphanumeric() || is_chinese(c) || matches!(c, '_' | ':' | '-');
        if !raw.chars().all(allowed) {
            return malformed(
                "may contain only letters, Chinese characters, digits, `_`, `:` and `-`",
            );
        }
        Ok(Self(raw.to_owned()))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

/// A snapshot description: empty, or 2..256 characters not beginning with `http://`/`https://`.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Description(String);

impl Description {
    pub fn parse(raw: &str) -> Result<Self, RuleError> {
        if raw.is_empty() {
            return Ok(Self::default());
        }
        let malformed = |why: &'static str| Err(RuleError::InvalidDescriptionMalformed { why });
        if !(2..=256).contains(&raw.chars().count()) {
            return malformed("must be empty or 2 to 256 characters long");
        }
        if starts_with_url_scheme(raw) {
            return malformed("must not begin with http:// or https://");
        }
        if raw.contains('\0') {
            return malformed("must not contain NUL characters");
        }
        Ok(Self(raw.to_owned()))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

/// A client token: at most 64 printable ASCII characters (0x20..=0x7E).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ClientToken(String);

impl ClientToken {
    /// An empty token means "no idempotence requested".
    pub fn parse_optional(raw: &str) -> Result<Option<Self>, RuleError> {
        if raw.is_empty() {
            return Ok(None);
        }
        let malformed = |why: &'static str| Err(RuleError::InvalidClientTokenMalformed { why });
        if raw.len() > 64 {
            return malformed("must be at most 64 characters long");
        }
        if !raw.bytes().all(|b| (0x20..=0x7e).contains(&b)) {
            return malformed("must contain only printable ASCII characters");
        }
        Ok(Some(Self(raw.to_owned())))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

/// How long a snapshot is kept: `None` forever, else 1..=65536 days.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct RetentionDays(Option<u32>);

impl RetentionDays {
    pub const MAX: i32 = 65_536;

    pub fn parse(raw: i32) -> Result<Self, RuleError> {
        match raw {
            0 => Ok(Self(None)),
            1..=Self::MAX => Ok(Self(u32::try_from(raw).ok())),
            _ => Err(RuleError::InvalidRetentionDaysMalformed {
                retention_days: raw,
            }),
        }
    }

    pub fn days(self) -> Option<u32> {
        self.0
    }

    /// 0 for "forever", as the API shows it.
    pub fn as_i32(self) -> i32 {
        self.0.map_or(0, |d| i32::try_from(d).unwrap_or(i32::MAX))
    }

    /// When a snapshot created at `created_at` is released.
    pub fn release_at(self, created_at: Timestamp) -> Option<Timestamp> {
        self.0
            .map(|days| created_at + chrono::TimeDelta::days(i64::from(days)))
    }
}

/// A resource tag.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub struct Tag {
    pub key: String,
    pub value: String,
}

/// At most this many tags on one snapshot.
pub const MAX_TAGS: usize = 20;

fn contains_url(text: &str) -> bool {
    text.contains("http://") || text.contains("https://")
}

impl Tag {
    /// A tag as ECS allows it: key 1..=128 characters, not `acs:`/`aliyun`-prefixed, value at
    /// most 128 characters; neither may contain `http://` or `https://`.
    pub fn parse(key: &str, value: &str) -> Result<Self, RuleError> {
        let bad_key = |why: &'static str| Err(RuleError::InvalidTagKeyMalformed { why });
        if key.is_empty() {
            return bad_key("a tag key must not be empty");
        }
        if key.chars().count() > 128 {
            return bad_key("a tag key must be at most 128 characters long");
        }
        if key.starts_with("acs:") || key.starts_with("aliyun") {
            return bad_key("a tag key must not begin with `acs:` or `aliyun`");
        }
        if contains_url(key) {
            return bad_key("a tag key must not contain http:// or https://");
        }
        if key.contains('\0') {
            return bad_key("a tag key must not contain NUL characters");
        }
        let bad_value = |why: &'static str| Err(RuleError::InvalidTagValueMalformed { why });
        if value.chars().count() > 128 {
            return bad_value("a tag value must be at most 128 characters long");
        }
        if contains_url(value) {
            return bad_value("a tag value must not contain http:// or https://");
        }
        if value.contains('\0') {
            return bad_value("a tag value must not contain NUL characters");
        }
        Ok(Self {
            key: key.to_owned(),
            value: value.to_owned(),
        })
    }

    /// A request's tags: each valid, at most [`MAX_TAGS`], no key twice.
    pub fn parse_all<'a>(
        tags: impl IntoIterator<Item = (&'a str, &'a str)>,
    ) -> Result<Vec<Self>, RuleError> {
        let mut parsed: Vec<Self> = Vec::new();
        for (key, value) in tags {
            if parsed.len() == MAX_TAGS {
                return Err(RuleError::InvalidTagKeyMalformed {
                    why: "at most 20 tags are allowed",
                });
            }
            let tag = Self::parse(key, value)?;
            if parsed.iter().any(|t| t.key == tag.key) {
                return Err(RuleError::DuplicateTagKey { key: tag.key });
            }
            parsed.push(tag);
        }
        Ok(parsed)
    }
}

/// A custom image name: 2..128 characters, begins with a letter or a Chinese character; then
/// letters, Chinese characters, digits, `.`, `_`, `:` or `-`; not `http://…`, `https://…`,
/// `aliyun…` or `acs:…`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ImageName(String);

impl ImageName {
    pub fn parse_optional(raw: &str) -> Result<Option<Self>, RuleError> {
        if raw.is_empty() {
            return Ok(None);
        }
        let malformed = |why: &'static str| Err(RuleError::InvalidImageNameMalformed { why });
        if !(2..=128).contains(&raw.chars().count()) {
            return malformed("must be 2 to 128 characters long");
        }
        let first = raw.chars().next().expect("length checked above");
        if !(first.is_ascii_alphabetic() || is_chinese(first)) {
            return malformed("must begin with an English letter or a Chinese character");
        }
        if starts_with_url_scheme(raw) || raw.starts_with("aliyun") || raw.starts_with("acs:") {
            return malformed("must not begin with http://, https://, aliyun or acs:");
        }
        let allowed = |c: char| {
            c.is_ascii_alphanumeric() || is_chinese(c) || matches!(c, '.' | '_' | ':' | '-')
        };
        if !raw.chars().all(allowed) {
            return malformed(
                "may contain only letters, Chinese characters, digits, `.`, `_`, `:` and `-`",
            );
        }
        Ok(Some(Self(raw.to_owned())))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

/// Disk categories known to ECS. Local and ephemeral disks cannot be snapshotted.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DiskCategory {
    Cloud,
    CloudEfficiency,
    CloudSsd,
    CloudEssd,
    CloudAuto,
    CloudEssdEntry,
    LocalSsdPro,
    LocalHddPro,
    Ephemeral,
    EphemeralSsd,
    ElasticEphemeralDiskStandard,
    ElasticEphemeralDiskPremium,
}

impl DiskCategory {
    pub const ALL: [DiskCategory; 12] = [
        Self::Cloud,
        Self::CloudEfficiency,
        Self::CloudSsd,
        Self::CloudEssd,
        Self::CloudAuto,
        Self::CloudEssdEntry,
        Self::LocalSsdPro,
        Self::LocalHddPro,
        Self::Ephemeral,
        Self::EphemeralSsd,
        Self::ElasticEphemeralDiskStandard,
        Self::ElasticEphemeralDiskPremium,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            Self::Cloud => "cloud",
            Self::CloudEfficiency => "cloud_efficiency",
            Self::CloudSsd => "cloud_ssd",
            Self::CloudEssd => "cloud_essd",
            Self::CloudAuto => "cloud_auto",
            Self::CloudEssdEntry => "cloud_essd_entry",
            Self::LocalSsdPro => "local_ssd_pro",
            Self::LocalHddPro => "local_hdd_pro",
            Self::Ephemeral => "ephemeral",
            Self::EphemeralSsd => "ephemeral_ssd",
            Self::ElasticEphemeralDiskStandard => "elastic_ephemeral_disk_standard",
            Self::ElasticEphemeralDiskPremium => "elastic_ephemeral_disk_premium",
        }
    }

    pub fn parse(raw: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|c| c.as_str() == raw)
    }

    /// Cloud disks can be snapshotted; local and ephemeral ones cannot
    /// (`DiskCategory.OperationNotSupported`).
    pub fn supports_snapshots(self) -> bool {
        matches!(
            self,
            Self::Cloud
                | Self::CloudEfficiency
                | Self::CloudSsd
                | Self::CloudEssd
                | Self::CloudAuto
                | Self::CloudEssdEntry
        )
    }
}

/// Generates `as_str`/`parse` for a plain enum stored as text.
macro_rules! text_enum {
    ($name:ident { $($variant:ident => $text:literal),+ $(,)? }) => {
        #[derive(Debug, Clone, Copy, PartialEq, Eq)]
        pub enum $name { $($variant),+ }

        impl $name {
            pub fn as_str(self) -> &'static str {
                match self { $(Self::$variant => $text),+ }
            }

            pub fn parse(raw: &str) -> Option<Self> {
                match raw { $($text => Some(Self::$variant),)+ _ => None }
            }
        }
    };
}

text_enum!(InstanceStatus {
    Pending => "Pending",
    Starting => "Starting",
    Running => "Running",
    Stopping => "Stopping",
    Stopped => "Stopped",
});

text_enum!(DiskType {
    System => "system",
    Data => "data",
});

// The seed's spellings: `In_use` is the only status a snapshot can be taken in.
text_enum!(DiskStatus {
    InUse => "In_use",
    Available => "Available",
    Attaching => "Attaching",
    Detaching => "Detaching",
    Creating => "Creating",
    ReIniting => "ReIniting",
});

text_enum!(SnapshotStatus {
    Progressing => "progressing",
    Accomplished => "accomplished",
    Failed => "failed",
});

/// A tenant account as pushed by the control plane.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Account {
    pub account_id: String,
    pub snapshot_service_activated: bool,
    pub insufficient_balance: bool,
}

/// The OperationLocks reason that forbids snapshots.
pub const SECURITY_LOCK: &str = "security";

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Instance {
    pub instance_id: String,
    pub account_id: String,
    pub status: InstanceStatus,
    pub created_at: Timestamp,
    /// `None`: never started since creation.
    pub last_started_at: Option<Timestamp>,
    pub lock_reasons: Vec<String>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Disk {
    pub disk_id: String,
    pub account_id: String,
    pub category: DiskCategory,
    pub disk_type: DiskType,
    pub status: DiskStatus,
    /// The instance it is attached to now.
    pub instance_id: Option<String>,
    pub size_gib: i32,
    pub created_at: Timestamp,
    /// Subscription end; `None` for pay-as-you-go.
    pub expires_at: Option<Timestamp>,
    pub ever_attached: bool,
}

/// The snapshot currently being copied from a disk, as far as the rules need it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct InProgressSnapshot {
    pub snapshot_id: String,
    pub started_at: Timestamp,
    pub source_disk_size_gib: i32,
    /// When the backend said the copy would be done, when the store could read it; else the
    /// engine estimates it from the size and the copy rate.
    pub due_at: Option<Timestamp>,
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
    pub fn fingerprint(&self) -> String {
        fingerprint_of([
            self.snapshot_id.as_str(),
            self.image_name.as_ref().map_or("", ImageName::as_str),
        ])
    }
}

/// What a snapshot is used by: nothing, or a custom image (which pins it).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SnapshotUsage {
    None,
    Image,
}

impl SnapshotUsage {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::None => "none",
            Self::Image => "image",
        }
    }

    pub fn parse(raw: &str) -> Option<Self> {
        match raw {
            "none" => Some(Self::None),
            "image" => Some(Self::Image),
            _ => None,
        }
    }
}

/// A snapshot row as the store keeps it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Snapshot {
    pub snapshot_id: String,
    pub account_id: String,
    pub source_disk_id: String,
    pub snapshot_name: Option<String>,
    pub description: String,
    pub source_disk_size_gib: i32,
    pub source_disk_type: DiskType,
    pub status: SnapshotStatus,
    pub created_at: Timestamp,
    /// When the copy started; progress is derived from it, so it survives restarts.
    pub started_at: Timestamp,
    /// When the backend expects the copy to be done; the worker looks at it from then on.
    pub copy_due_at: Timestamp,
    pub last_modified_at: Timestamp,
    pub retention: RetentionDays,
    pub tags: Vec<Tag>,
    pub usage: SnapshotUsage,
}

/// Where a page of DescribeSnapshots ends: the last row's sort key.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PageCursor {
    pub created_at: Timestamp,
    pub snapshot_id: String,
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
    pub after: Option<PageCursor>,
    pub limit: u32,
}

/// One page of snapshots, newest first.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SnapshotPage {
    pub snapshots: Vec<Snapshot>,
    /// Where the next page starts; `None` on the last page.
    pub next: Option<PageCursor>,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn generated_ids_have_the_documented_shape() {
        let id = new_snapshot_id();
        assert_eq!(id.len(), 22);
        assert!(id.starts_with("s-"));
        assert!(id[2..].bytes().all(|b| ID_ALPHABET.contains(&b)));
        assert_ne!(new_snapshot_id(), new_snapshot_id());

        let request_id = new_request_id();
        assert_eq!(request_id.len(), 36);
        assert_eq!(request_id, request_id.to_uppercase());
        assert!(uuid::Uuid::parse_str(&request_id).is_ok());
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
    fn every_category_round_trips_and_only_cloud_disks_support_snapshots() {
        for category in DiskCategory::ALL {
            assert_eq!(DiskCategory::parse(category.as_str()), Some(category));
            assert_eq!(
                category.supports_snapshots(),
                category.as_str().starts_with("cloud")
            );
        }
        assert_eq!(DiskCategory::parse("nvme"), None);
    }

    fn repeat(c: char, n: usize) -> String {
        std::iter::repeat_n(c, n).collect()
    }

    #[test]
    fn a_disk_id_is_d_dash_and_1_to_62_lowercase_alphanumerics_or_hyphens() {
        let not_supported = |raw: &str| {
            Err(RuleError::DiskIdValueNotSupported {
                disk_id: raw.to_owned(),
            })
        };
        let shortest = "d-a".to_owned();
        let longest = format!("d-{}", repeat('z', 62));
        let too_long = format!("d-{}", repeat('z', 63));
        let cases = [
            (
                "empty",
                String::new(),
                Err(RuleError::MissingParameter { field: "disk_id" }),
            ),
            (
                "one character after the prefix",
                shortest.clone(),
                Ok(shortest),
            ),
            (
                "62 characters after the prefix",
                longest.clone(),
                Ok(longest),
            ),
            (
                "digits, letters and hyphens",
                "d-0a-9z--".to_owned(),
                Ok("d-0a-9z--".to_owned()),
            ),
            (
                "63 characters after the prefix",
                too_long.clone(),
                not_supported(&too_long),
            ),
            ("the prefix alone", "d-".to_owned(), not_supported("d-")),
            ("uppercase", "d-ABC".to_owned(), not_supported("d-ABC")),
            (
                "uppercase prefix",
                "D-abc".to_owned(),
                not_supported("D-abc"),
            ),
            ("underscore", "d-a_b".to_owned(), not_supported("d-a_b")),
            ("missing prefix", "abc".to_owned(), not_supported("abc")),
            ("another prefix", "i-abc".to_owned(), not_supported("i-abc")),
            ("non-ASCII", "d-é".to_owned(), not_supported("d-é")),
            ("space", "d-a b".to_owned(), not_supported("d-a b")),
        ];
        for (label, raw, expected) in cases {
            assert_eq!(
                DiskId::parse(&raw).map(|id| id.as_str().to_owned()),
                expected,
                "{label}"
            );
        }
    }

    #[test]
    fn a_snapshot_name_follows_the_seed_rules_counted_in_characters() {
        const LENGTH: &str = "must be 2 to 128 characters long";
        const FIRST: &str = "must begin with an English letter or a Chinese character";
        const AUTO: &str = "must not begin with `auto`, which marks automatic snapshots";
        const URL: &str = "must not begin with http:// or https://";
        const CHARSET: &str =
            "may contain only letters, Chinese characters, digits, `_`, `:` and `-`";
        let cases = [
            ("one letter", "a".to_owned(), Err(LENGTH)),
            ("two letters", "ab".to_owned(), Ok(())),
            ("128 letters", repeat('a', 128), Ok(())),
            ("129 letters", repeat('a', 129), Err(LENGTH)),
            ("one Chinese character", "快".to_owned(), Err(LENGTH)),
            ("two Chinese characters", "快照".to_owned(), Ok(())),
            (
                "128 Chinese characters (384 bytes)",
                repeat('快', 128),
                Ok(()),
            ),
            ("129 Chinese characters", repeat('快', 129), Err(LENGTH)),
            ("uppercase first letter", "Backup".to_owned(), Ok(())),
            ("Chinese first character", "快照-1".to_owned(), Ok(())),
            ("digit first", "1backup".to_owned(), Err(FIRST)),
            ("underscore first", "_backup".to_owned(), Err(FIRST)),
            ("hyphen first", "-backup".to_owned(), Err(FIRST)),
            ("colon first", ":backup".to_owned(), Err(FIRST)),
            ("non-English letter first", "émile".to_owned(), Err(FIRST)),
            ("auto alone", "auto".to_owned(), Err(AUTO)),
            ("auto prefix", "autoX".to_owned(), Err(AUTO)),
            (
                "auto prefix with a hyphen",
                "auto-daily".to_owned(),
                Err(AUTO),
            ),
            // The seed forbids the literal prefix `auto`; other casings are ordinary names.
            ("capitalised Auto prefix", "Auto1".to_owned(), Ok(())),
            ("auto later in the name", "my-auto".to_owned(), Ok(())),
            ("http:// prefix", "http://x".to_owned(), Err(URL)),
            ("https:// prefix", "https://x".to_owned(), Err(URL)),
            ("http without slashes", "http:x".to_owned(), Ok(())),
            ("period", "a.b".to_owned(), Err(CHARSET)),
            ("space", "a b".to_owned(), Err(CHARSET)),
            ("slash", "a/b".to_owned(), Err(CHARSET)),
            ("Chinese punctuation", "快照，".to_owned(), Err(CHARSET)),
            ("digits after the first", "a123".to_owned(), Ok(())),
            ("underscore after the first", "a_b".to_owned(), Ok(())),
            ("colon after the first", "a:b".to_owned(), Ok(())),
            ("hyphen after the first", "a-b".to_owned(), Ok(())),
            (
                "every allowed kind",
                "Db:快照_2026-06-01".to_owned(),
                Ok(()),
            ),
        ];
        for (label, raw, expected) in cases {
            let expected = expected
                .map(|()| raw.clone())
                .map_err(|why| RuleError::InvalidSnapshotNameMalformed { why });
            assert_eq!(
                SnapshotName::parse(&raw).map(|name| name.as_str().to_owned()),
                expected,
                "{label}"
            );
        }
    }

    #[test]
    fn an_empty_snapshot_name_means_no_name() {
        let cases = [
            ("empty", "", Ok(None)),
            ("valid", "ab", Ok(Some("ab".to_owned()))),
            (
                "malformed",
                "a",
                Err(RuleError::InvalidSnapshotNameMalformed {
                    why: "must be 2 to 128 characters long",
                }),
            ),
        ];
        for (label, raw, expected) in cases {
            assert_eq!(
                SnapshotName::parse_optional(raw).map(|name| name.map(|n| n.as_str().to_owned())),
                expected,
                "{label}"
            );
        }
    }

    #[test]
    fn a_description_is_empty_or_2_to_256_characters_not_starting_with_a_url() {
        const LENGTH: &str = "must be empty or 2 to 256 characters long";
        const URL: &str = "must not begin with http:// or https://";
        let cases = [
            ("empty", String::new(), Ok(())),
            ("one character", "a".to_owned(), Err(LENGTH)),
            ("one Chinese character", "快".to_owned(), Err(LENGTH)),
            ("two characters", "ab".to_owned(), Ok(())),
            ("256 characters", repeat('a', 256), Ok(())),
            ("257 characters", repeat('a', 257), Err(LENGTH)),
            (
                "256 Chinese characters (768 bytes)",
                repeat('快', 256),
                Ok(()),
            ),
            ("257 Chinese characters", repeat('快', 257), Err(LENGTH)),
            ("http:// prefix", "http://example.com".to_owned(), Err(URL)),
            (
                "https:// prefix",
                "https://example.com".to_owned(),
                Err(URL),
            ),
            (
                "a URL later in the text",
                "see https://example.com".to_owned(),
                Ok(()),
            ),
            (
                "spaces and punctuation",
                "nightly backup, v1.2!".to_owned(),
                Ok(()),
            ),
        ];
        for (label, raw, expected) in cases {
            let expected = expected
                .map(|()| raw.clone())
                .map_err(|why| RuleError::InvalidDescriptionMalformed { why });
            assert_eq!(
                Description::parse(&raw).map(|d| d.as_str().to_owned()),
                expected,
                "{label}"
            );
        }
    }

    #[test]
    fn a_client_token_is_at_most_64_printable_ascii_characters() {
        const LENGTH: &str = "must be at most 64 characters long";
        const PRINTABLE: &str = "must contain only printable ASCII characters";
        let cases = [
            ("empty means no token", String::new(), Ok(None)),
            ("one character", "x".to_owned(), Ok(Some(()))),
            ("64 characters", repeat('x', 64), Ok(Some(()))),
            ("65 characters", repeat('x', 65), Err(LENGTH)),
            ("space", "a b".to_owned(), Ok(Some(()))),
            ("tilde", "a~b".to_owned(), Ok(Some(()))),
            (
                "every printable kind",
                "Az09 !\"#-_.~".to_owned(),
                Ok(Some(())),
            ),
            ("control character", "a\u{1}b".to_owned(), Err(PRINTABLE)),
            ("tab", "a\tb".to_owned(), Err(PRINTABLE)),
            ("newline", "a\nb".to_owned(), Err(PRINTABLE)),
            ("DEL", "a\u{7f}b".to_owned(), Err(PRINTABLE)),
            ("non-ASCII", "tokén".to_owned(), Err(PRINTABLE)),
        ];
        for (label, raw, expected) in cases {
            let expected = expected
                .map(|token| token.map(|()| raw.clone()))
                .map_err(|why| RuleError::InvalidClientTokenMalformed { why });
            assert_eq!(
                ClientToken::parse_optional(&raw).map(|t| t.map(|t| t.as_str().to_owned())),
                expected,
                "{label}"
            );
        }
    }
}
