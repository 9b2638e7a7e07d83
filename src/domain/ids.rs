//! Ids: what callers send (disks, snapshots, accounts) and what the service generates.

use rand::Rng;

use super::ParseError;

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

    #[test]
    fn generated_ids_have_the_documented_shape() {
        let id = new_snapshot_id();
        assert_eq!(id.len(), 22);
        assert!(id.starts_with("s-"));
        assert!(id[2..].bytes().all(|b| ID_ALPHABET.contains(&b)));
        assert_ne!(new_snapshot_id(), new_snapshot_id());
    }

    #[test]
    fn an_image_id_is_m_dash_and_20_lowercase_alphanumerics() {
        let generated = new_image_id();
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
