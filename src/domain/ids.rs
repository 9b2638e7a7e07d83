//! Ids: what callers send (disks, snapshots, accounts) and what the service generates.

use rand::Rng;

use super::{ParseError, Timestamp};

/// A disk id: `d-` followed by 1..62 of `[0-9a-z-]`.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct DiskId(String);

impl DiskId {
    pub fn parse(raw: &str) -> Result<Self, ParseError> {
        if raw.is_empty() {
            return Err(ParseError::MissingParameter { field: "disk_id" });
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
            Err(ParseError::DiskIdValueNotSupported {
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

/// Characters after the prefix of a generated id.
const GENERATED_ID_CHARS: usize = 20;

/// The leading characters of a generated id that spell its creation second in base 36 (7 of
/// them last until the year 4453).
const SECOND_CHARS: usize = 7;

/// `prefix` + 20 characters of `[0-9a-z]`: the second `created_at` falls in, in base 36 (7
/// characters), then 13 random ones (about 67 bits of entropy). Ids made later sort after
/// earlier ones, so a new row's key lands beside the last one's in every index on it, instead
/// of on a random leaf of an index that grows with the table: a create dirties the same few
/// pages as the creates before it, which is what keeps a big database's writes (and SQLite's
/// checkpoints) as cheap as an empty one's (bench/README.md, "ids in time order").
fn generate_id(prefix: &str, created_at: Timestamp) -> String {
    let mut id = String::with_capacity(prefix.len() + GENERATED_ID_CHARS);
    id.push_str(prefix);
    id.extend(base36_second(created_at).map(char::from));
    let mut rng = rand::rng();
    for _ in SECOND_CHARS..GENERATED_ID_CHARS {
        id.push(ID_ALPHABET[rng.random_range(0..ID_ALPHABET.len())] as char);
    }
    id
}

/// `at`'s second since the Unix epoch in base 36, `SECOND_CHARS` wide (before 1970: all zeros).
fn base36_second(at: Timestamp) -> [u8; SECOND_CHARS] {
    let base = ID_ALPHABET.len() as u64;
    let mut second = u64::try_from(at.timestamp()).unwrap_or(0);
    let mut digits = [b'0'; SECOND_CHARS];
    for digit in digits.iter_mut().rev() {
        *digit = ID_ALPHABET[(second % base) as usize];
        second /= base;
    }
    digits
}

/// A snapshot id: `s-` + 20 characters of `[0-9a-z]`, in creation order (see `generate_id`).
pub fn new_snapshot_id(created_at: Timestamp) -> String {
    generate_id("s-", created_at)
}

/// An image id: `m-` + 20 characters of `[0-9a-z]`, in creation order (see `generate_id`).
pub fn new_image_id(created_at: Timestamp) -> String {
    generate_id("m-", created_at)
}

/// True for `prefix` followed by exactly 20 of `[0-9a-z]`, the shape of the ids we generate.
fn is_generated_id(raw: &str, prefix: &str) -> bool {
    raw.strip_prefix(prefix).is_some_and(|rest| {
        rest.len() == GENERATED_ID_CHARS
            && rest
                .bytes()
                .all(|b| b.is_ascii_digit() || b.is_ascii_lowercase())
    })
}

/// A snapshot id as a caller sends it.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct SnapshotId(String);

impl SnapshotId {
    pub fn parse(raw: &str) -> Result<Self, ParseError> {
        if raw.is_empty() {
            return Err(ParseError::MissingParameter {
                field: "snapshot_id",
            });
        }
        if is_generated_id(raw, "s-") {
            Ok(Self(raw.to_owned()))
        } else {
            Err(ParseError::InvalidSnapshotIdMalformed {
                snapshot_id: raw.to_owned(),
            })
        }
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

/// An image id as a caller sends it: `m-` + 20 of `[0-9a-z]`, the shape of the ids we generate.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct ImageId(String);

impl ImageId {
    /// `field` names the parameter in the error (`image_id`, or `image_ids` for a list).
    pub fn parse_field(field: &'static str, raw: &str) -> Result<Self, ParseError> {
        if raw.is_empty() {
            return Err(ParseError::MissingParameter { field });
        }
        if is_generated_id(raw, "m-") {
            Ok(Self(raw.to_owned()))
        } else {
            Err(ParseError::InvalidImageIdMalformed {
                field,
                image_id: raw.to_owned(),
            })
        }
    }

    pub fn parse(raw: &str) -> Result<Self, ParseError> {
        Self::parse_field("image_id", raw)
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    fn repeat(c: char, n: usize) -> String {
        std::iter::repeat_n(c, n).collect()
    }

    fn at(rfc3339: &str) -> Timestamp {
        chrono::DateTime::parse_from_rfc3339(rfc3339)
            .expect("a valid instant")
            .to_utc()
    }

    #[test]
    fn generated_ids_have_the_documented_shape() {
        let now = at("2026-12-01T07:00:00Z");
        let id = new_snapshot_id(now);
        assert_eq!(id.len(), 22);
        assert!(id.starts_with("s-"));
        assert!(id[2..].bytes().all(|b| ID_ALPHABET.contains(&b)));
        assert_eq!(
            SnapshotId::parse(&id).map(|id| id.as_str().to_owned()),
            Ok(id)
        );
        assert_ne!(new_snapshot_id(now), new_snapshot_id(now));
    }

    #[test]
    fn a_generated_id_starts_with_its_creation_second_in_base_36() {
        let cases = [
            ("the epoch", "1970-01-01T00:00:00Z", "0000000"),
            ("before the epoch", "1969-12-31T23:59:59Z", "0000000"),
            ("one second", "1970-01-01T00:00:01.999Z", "0000001"),
            ("36 seconds", "1970-01-01T00:00:36Z", "0000010"),
            // 1,796,108,400 s since the epoch; int("0tpcu40", 36) in Python gives it back.
            ("a day in 2026", "2026-12-01T07:00:00Z", "0tpcu40"),
        ];
        for (label, instant, second) in cases {
            let id = new_image_id(at(instant));
            assert_eq!(&id[2..2 + SECOND_CHARS], second, "{label}");
        }
    }

    #[test]
    fn ids_made_in_a_later_second_sort_after_earlier_ones() {
        let earlier = new_snapshot_id(at("2026-12-01T07:00:00Z"));
        for later in [
            "2026-12-01T07:00:01Z",
            "2026-12-01T07:00:36Z",
            "2027-01-01T00:00:00Z",
            "2100-01-01T00:00:00Z",
        ] {
            assert!(new_snapshot_id(at(later)) > earlier, "{later}");
        }
    }

    #[test]
    fn an_image_id_is_m_dash_and_20_lowercase_alphanumerics() {
        let generated = new_image_id(chrono::Utc::now());
        assert_eq!(
            ImageId::parse(&generated).map(|id| id.as_str().to_owned()),
            Ok(generated)
        );
        assert_eq!(
            ImageId::parse(""),
            Err(ParseError::MissingParameter { field: "image_id" })
        );
        let twenty = repeat('a', 20);
        for bad in [
            format!("s-{twenty}"),
            format!("m-{}", repeat('a', 19)),
            format!("m-{}", repeat('a', 21)),
            format!("M-{twenty}"),
            format!("m-{}A", repeat('a', 19)),
            "m-".to_owned(),
        ] {
            assert_eq!(
                ImageId::parse(&bad),
                Err(ParseError::InvalidImageIdMalformed {
                    field: "image_id",
                    image_id: bad.clone()
                }),
                "{bad}"
            );
        }
    }

    #[test]
    fn a_disk_id_is_d_dash_and_1_to_62_lowercase_alphanumerics_or_hyphens() {
        let not_supported = |raw: &str| {
            Err(ParseError::DiskIdValueNotSupported {
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
                Err(ParseError::MissingParameter { field: "disk_id" }),
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
}
