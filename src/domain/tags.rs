//! The tag calls after creation (ECS's TagResources, UntagResources and ListTagResources), as
//! validated requests. The tags themselves are checked by [`Tag::parse_all`], the one rule
//! CreateSnapshot's tags pass too; only `snapshot` resources are offered.

use super::{ParseError, SnapshotId, Tag};

/// At most this many resource ids in one tag call (ECS's `ResourceId.N`, N 1..=50).
pub const MAX_RESOURCE_IDS: usize = 50;

/// Tag rows in one page of ListTagResources.
pub const TAG_PAGE_SIZE: u32 = 50;

/// The one resource type this service has.
pub const SNAPSHOT_RESOURCE_TYPE: &str = "snapshot";

/// TagResources' parameters as a caller sends them; empty means not given.
#[derive(Debug, Clone, Copy, Default)]
pub struct TagResourcesParams<'a> {
    pub resource_type: &'a str,
    pub resource_ids: &'a [&'a str],
    pub tags: &'a [(&'a str, &'a str)],
}

/// UntagResources' parameters as a caller sends them.
#[derive(Debug, Clone, Copy, Default)]
pub struct UntagResourcesParams<'a> {
    pub resource_type: &'a str,
    pub resource_ids: &'a [&'a str],
    pub tag_keys: &'a [&'a str],
    /// Remove every tag; read only when `tag_keys` is empty (as ECS reads `All`).
    pub all: bool,
}

/// ListTagResources' parameters as a caller sends them.
#[derive(Debug, Clone, Copy, Default)]
pub struct ListTagResourcesParams<'a> {
    pub resource_type: &'a str,
    pub resource_ids: &'a [&'a str],
    /// Snapshots that have every one of these tags; an empty value matches any value.
    pub tags: &'a [(&'a str, &'a str)],
    pub next_token: &'a str,
}

/// A validated TagResources: add these tags to each snapshot, overwriting a key it has.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TagResourcesCommand {
    pub account_id: String,
    /// In the order sent, each once.
    pub snapshot_ids: Vec<String>,
    pub tags: Vec<Tag>,
}

/// A validated UntagResources.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UntagResourcesCommand {
    pub account_id: String,
    pub snapshot_ids: Vec<String>,
    pub keys: TagKeys,
}

/// Which tags UntagResources removes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum TagKeys {
    /// These keys (a key a snapshot does not have is passed over).
    Only(Vec<String>),
    All,
}

/// A validated ListTagResources.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TagQuery {
    pub account_id: String,
    /// Only these snapshots (each must be the caller's); empty: every snapshot of the caller's.
    pub snapshot_ids: Vec<String>,
    /// Only snapshots with every one of these tags; an empty value matches any value.
    pub tags: Vec<Tag>,
    pub after: Option<TagCursor>,
    pub limit: u32,
}

/// Where a page of ListTagResources ends: its last row's `(snapshot id, key)`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TagCursor {
    pub snapshot_id: String,
    pub key: String,
}

/// One tag of one snapshot, as ListTagResources lists it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TagResource {
    pub snapshot_id: String,
    pub key: String,
    pub value: String,
}

/// One page of ListTagResources, by snapshot id then key.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TagPage {
    pub tags: Vec<TagResource>,
    /// Where the next page starts; `None` on the last page.
    pub next: Option<TagCursor>,
}

/// `ResourceType`: required, and `snapshot` is the only type here.
fn resource_type(raw: &str) -> Result<(), ParseError> {
    match raw {
        "" => Err(ParseError::MissingParameter {
            field: "resource_type",
        }),
        SNAPSHOT_RESOURCE_TYPE => Ok(()),
        other => Err(ParseError::InvalidResourceTypeNotFound {
            resource_type: other.to_owned(),
        }),
    }
}

/// `ResourceId.N`: 1..=50, each kept once, in the order sent. An id no snapshot can have is not
/// refused here: it is not found, as an unknown or another account's id is not.
fn resource_ids(raw: &[&str], required: bool) -> Result<Vec<String>, ParseError> {
    if raw.is_empty() && required {
        return Err(ParseError::MissingParameter {
            field: "resource_ids",
        });
    }
    if raw.len() > MAX_RESOURCE_IDS {
        return Err(ParseError::NumberExceedResourceIds { count: raw.len() });
    }
    let mut ids: Vec<String> = Vec::with_capacity(raw.len());
    for id in raw {
        if id.is_empty() {
            return Err(ParseError::MissingParameter {
                field: "resource_ids",
            });
        }
        if !ids.iter().any(|seen| seen == id) {
            ids.push((*id).to_owned());
        }
    }
    Ok(ids)
}

impl TagResourcesCommand {
    pub fn parse(account_id: String, params: &TagResourcesParams<'_>) -> Result<Self, ParseError> {
        resource_type(params.resource_type)?;
        let snapshot_ids = resource_ids(params.resource_ids, true)?;
        if params.tags.is_empty() {
            return Err(ParseError::MissingParameter { field: "tags" });
        }
        Ok(Self {
            account_id,
            snapshot_ids,
            tags: Tag::parse_all(params.tags.iter().copied())?,
        })
    }
}

impl UntagResourcesCommand {
    pub fn parse(
        account_id: String,
        params: &UntagResourcesParams<'_>,
    ) -> Result<Self, ParseError> {
        resource_type(params.resource_type)?;
        let snapshot_ids = resource_ids(params.resource_ids, true)?;
        let keys = if !params.tag_keys.is_empty() {
            // A key to remove is a key CreateSnapshot would take: the same rule, the same codes.
            let tags = Tag::parse_all(params.tag_keys.iter().map(|key| (*key, "")))?;
            TagKeys::Only(tags.into_iter().map(|tag| tag.key).collect())
        } else if params.all {
            TagKeys::All
        } else {
            return Err(ParseError::MissingParameter { field: "tag_keys" });
        };
        Ok(Self {
            account_id,
            snapshot_ids,
            keys,
        })
    }
}

impl TagQuery {
    pub fn parse(
        account_id: String,
        params: &ListTagResourcesParams<'_>,
    ) -> Result<Self, ParseError> {
        resource_type(params.resource_type)?;
        let snapshot_ids = resource_ids(params.resource_ids, false)?;
        let tags = Tag::parse_all(params.tags.iter().copied())?;
        if snapshot_ids.is_empty() && tags.is_empty() {
            return Err(ParseError::BothEmptyTagsAndResources);
        }
        Ok(Self {
            account_id,
            snapshot_ids,
            tags,
            after: match params.next_token {
                "" => None,
                token => Some(TagCursor::parse_token(token)?),
            },
            limit: TAG_PAGE_SIZE,
        })
    }
}

const TAG_TOKEN_VERSION: &str = "t1";

impl TagCursor {
    /// The opaque `NextToken`: the hex of `t1|<snapshot id>|<key>|<crc32>`; a token altered or
    /// not written here is malformed rather than a cursor somewhere else.
    pub fn to_token(&self) -> String {
        let body = format!("{TAG_TOKEN_VERSION}|{}|{}", self.snapshot_id, self.key);
        let plain = format!("{body}|{:08x}", crc32fast::hash(body.as_bytes()));
        // Lower-case hex, two digits a byte.
        hex::encode(plain)
    }

    pub fn parse_token(token: &str) -> Result<Self, ParseError> {
        let malformed = || ParseError::InvalidNextTokenMalformed;
        // A key is at most 128 characters of 4 bytes, in hex: 2 * (3 + 23 + 512 + 9) < 1100.
        if !token.len().is_multiple_of(2) || token.len() > 1100 {
            return Err(malformed());
        }
        let bytes = (0..token.len())
            .step_by(2)
            .map(|i| {
                token
                    .get(i..i + 2)
                    .and_then(|pair| u8::from_str_radix(pair, 16).ok())
                    .ok_or_else(malformed)
            })
            .collect::<Result<Vec<u8>, _>>()?;
        let plain = String::from_utf8(bytes).map_err(|_| malformed())?;
        let (body, checksum) = plain.rsplit_once('|').ok_or_else(malformed)?;
        if checksum != format!("{:08x}", crc32fast::hash(body.as_bytes())) {
            return Err(malformed());
        }
        // The key is last and may itself hold `|`.
        let mut parts = body.splitn(3, '|');
        let (Some(TAG_TOKEN_VERSION), Some(snapshot_id), Some(key)) =
            (parts.next(), parts.next(), parts.next())
        else {
            return Err(malformed());
        };
        let snapshot_id = SnapshotId::parse(snapshot_id).map_err(|_| malformed())?;
        let key = Tag::parse(key, "").map_err(|_| malformed())?.key;
        Ok(Self {
            snapshot_id: snapshot_id.as_str().to_owned(),
            key,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_snapshots_are_resources_here() {
        let parse = |resource_type| {
            TagResourcesCommand::parse(
                "a".into(),
                &TagResourcesParams {
                    resource_type,
                    resource_ids: &["s-1"],
                    tags: &[("k", "v")],
                },
            )
        };
        assert!(parse("snapshot").is_ok());
        assert_eq!(
            parse(""),
            Err(ParseError::MissingParameter {
                field: "resource_type"
            })
        );
        for other in ["instance", "disk", "image", "Snapshot", "snapshots"] {
            assert_eq!(
                parse(other),
                Err(ParseError::InvalidResourceTypeNotFound {
                    resource_type: other.to_owned()
                }),
                "{other}"
            );
        }
    }

    #[test]
    fn resource_ids_are_1_to_50_each_kept_once() {
        let ids: Vec<String> = (0..51).map(|n| format!("s-{n}")).collect();
        let refs: Vec<&str> = ids.iter().map(String::as_str).collect();
        let cases: [(&[&str], Result<usize, ParseError>); 4] = [
            (
                &[],
                Err(ParseError::MissingParameter {
                    field: "resource_ids",
                }),
            ),
            (&refs[..50], Ok(50)),
            (
                &refs,
                Err(ParseError::NumberExceedResourceIds { count: 51 }),
            ),
            (&["s-1", "s-2", "s-1"], Ok(2)),
        ];
        for (raw, expected) in cases {
            assert_eq!(resource_ids(raw, true).map(|ids| ids.len()), expected);
        }
    }

    #[test]
    fn untag_needs_keys_or_all_and_checks_keys_as_create_does() {
        let parse = |tag_keys, all| {
            UntagResourcesCommand::parse(
                "a".into(),
                &UntagResourcesParams {
                    resource_type: "snapshot",
                    resource_ids: &["s-1"],
                    tag_keys,
                    all,
                },
            )
            .map(|command| command.keys)
        };
        assert_eq!(parse(&["k"], true), Ok(TagKeys::Only(vec!["k".into()])));
        assert_eq!(parse(&[], true), Ok(TagKeys::All));
        assert_eq!(
            parse(&[], false),
            Err(ParseError::MissingParameter { field: "tag_keys" })
        );
        assert!(matches!(
            parse(&["acs:x"], false),
            Err(ParseError::InvalidTagKeyMalformed { .. })
        ));
        assert!(matches!(
            parse(&["k", "k"], false),
            Err(ParseError::DuplicateTagKey { .. })
        ));
    }

    #[test]
    fn a_list_names_snapshots_or_tags() {
        let parse = |resource_ids, tags| {
            TagQuery::parse(
                "a".into(),
                &ListTagResourcesParams {
                    resource_type: "snapshot",
                    resource_ids,
                    tags,
                    next_token: "",
                },
            )
        };
        assert_eq!(parse(&[], &[]), Err(ParseError::BothEmptyTagsAndResources));
        assert!(parse(&["s-1"], &[]).is_ok());
        assert!(parse(&[], &[("k", "")]).is_ok());
    }

    #[test]
    fn a_tag_token_round_trips_and_anything_else_is_malformed() {
        let cursor = TagCursor {
            snapshot_id: "s-0123456789abcdefghij".into(),
            key: "team|a:b 中".into(),
        };
        let token = cursor.to_token();
        assert_eq!(TagCursor::parse_token(&token), Ok(cursor));
        for bad in ["", "zz", "abc", &token[..token.len() - 2]] {
            assert_eq!(
                TagCursor::parse_token(bad),
                Err(ParseError::InvalidNextTokenMalformed),
                "{bad:?}"
            );
        }
    }
}
