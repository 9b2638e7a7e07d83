//! Custom images as the store keeps them, and the validated DescribeImages request.
//!
//! DescribeImages pages as DescribeSnapshots does (the same page sizes, numbered pages and
//! `next_token`s), through the helpers of [`super::commands`]; its tokens are of their own
//! listing (`i2`, and `i1` before the total was carried), so a snapshot listing's token is
//! malformed here and the other way round.

use super::commands::{TokenVersions, page_size, page_skip};
use super::{DiskType, ImageId, ParseError, SnapshotId, Timestamp};

/// A custom image as the store keeps it, with what it shows of its snapshot's disk.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Image {
    pub image_id: String,
    pub account_id: String,
    pub snapshot_id: String,
    pub image_name: Option<String>,
    pub created_at: Timestamp,
    /// The snapshot's source disk.
    pub size_gib: i32,
    pub disk_type: DiskType,
}

/// DescribeImages' parameters as a caller sends them; empty means not given.
#[derive(Debug, Clone, Default)]
pub struct DescribeImagesParams<'a> {
    pub image_ids: &'a [&'a str],
    pub snapshot_id: &'a str,
    pub next_token: &'a str,
    /// 0: the default page size.
    pub max_results: i32,
    /// 0: not given; else the page to show, from 1 (the ECS edge's `PageNumber`).
    pub page_number: i32,
}

/// At most this many ids in one DescribeImages.
pub const MAX_IMAGE_IDS: usize = 100;

/// Where a page of DescribeImages ends: the last row's sort key, and the listing's total.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ImageCursor {
    pub created_at: Timestamp,
    pub image_id: String,
    /// Every match, counted on the listing's first page and carried from page to page, as
    /// DescribeSnapshots' tokens carry theirs. `None`: an `i1` token (written before the total
    /// was carried); its page counts.
    pub total: Option<u64>,
}

/// DescribeImages' tokens: `i2` with the listing's total; `i1`, written before the total was
/// carried, still read.
const IMAGE_TOKENS: TokenVersions = TokenVersions {
    counted: "i2",
    uncounted: "i1",
};

impl ImageCursor {
    /// The opaque `next_token`, checksummed as DescribeSnapshots' are: `i2|…|<image id>|<total>`.
    pub fn to_token(&self) -> String {
        IMAGE_TOKENS.write(self.created_at, &self.image_id, self.total)
    }

    /// Reads a `next_token` back (`i2`, or an `i1` of an older server); anything this service
    /// did not write for images is malformed.
    pub fn parse_token(token: &str) -> Result<Self, ParseError> {
        let (created_at, image_id, total) = IMAGE_TOKENS.read(token)?;
        let image_id =
            ImageId::parse(&image_id).map_err(|_| ParseError::InvalidNextTokenMalformed)?;
        Ok(Self {
            created_at,
            image_id: image_id.as_str().to_owned(),
            total,
        })
    }
}

/// A validated DescribeImages request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ImageQuery {
    pub account_id: String,
    pub image_ids: Vec<String>,
    pub snapshot_id: Option<String>,
    pub after: Option<ImageCursor>,
    pub limit: u32,
    /// Matching images to pass over before the page (`page_number`'s pages before it).
    pub skip: u32,
}

impl ImageQuery {
    /// Checked in this order: the ids, the snapshot filter, the token, the page size, the page.
    pub fn parse(
        account_id: String,
        params: &DescribeImagesParams<'_>,
    ) -> Result<Self, ParseError> {
        if params.image_ids.len() > MAX_IMAGE_IDS {
            return Err(ParseError::InvalidParameter {
                field: "image_ids",
                why: format!("at most {MAX_IMAGE_IDS} image ids"),
            });
        }
        let image_ids = params
            .image_ids
            .iter()
            .map(|id| match *id {
                // An empty item of a list is a malformed id, not a missing parameter.
                "" => Err(ParseError::InvalidImageIdMalformed {
                    field: "image_ids",
                    image_id: String::new(),
                }),
                id => ImageId::parse_field("image_ids", id).map(|id| id.as_str().to_owned()),
            })
            .collect::<Result<Vec<_>, _>>()?;
        let snapshot_id = match params.snapshot_id {
            "" => None,
            raw => Some(SnapshotId::parse(raw)?.as_str().to_owned()),
        };
        let after = match params.next_token {
            "" => None,
            token => Some(ImageCursor::parse_token(token)?),
        };
        let limit = page_size(params.max_results)?;
        Ok(Self {
            account_id,
            image_ids,
            snapshot_id,
            after,
            limit,
            skip: page_skip(params.page_number, params.next_token, limit)?,
        })
    }
}

/// One page of images, newest first.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ImagePage {
    pub images: Vec<Image>,
    /// Where the next page starts; `None` on the last page.
    pub next: Option<ImageCursor>,
    /// Every image the filters match.
    pub total: u64,
}

#[cfg(test)]
mod tests {
    use chrono::DateTime;

    use super::super::PageCursor;
    use super::super::commands::cursor_token;
    use super::*;

    const IMAGE: &str = "m-0123456789abcdefghij";

    #[test]
    fn an_image_token_round_trips_and_a_snapshot_token_is_malformed_here() {
        let at = DateTime::from_timestamp(1_780_000_000, 123_456_000).unwrap();
        let cursor = ImageCursor {
            created_at: at,
            image_id: IMAGE.into(),
            total: Some(5),
        };
        // An `i2` token with its total, and an `i1` of an older server without one.
        for total in [Some(5), None] {
            let cursor = ImageCursor {
                total,
                ..cursor.clone()
            };
            assert_eq!(
                ImageCursor::parse_token(&cursor.to_token()),
                Ok(cursor.clone()),
                "{total:?}"
            );
        }
        // Both versions of a snapshot listing's token (`v1`, and `v2` with its total).
        for total in [None, Some(7)] {
            let snapshots = PageCursor {
                created_at: at,
                snapshot_id: "s-0123456789abcdefghij".into(),
                total,
            };
            assert_eq!(
                ImageCursor::parse_token(&snapshots.to_token()),
                Err(ParseError::InvalidNextTokenMalformed),
                "{total:?}"
            );
        }
        assert_eq!(
            PageCursor::parse_token(&cursor.to_token()),
            Err(ParseError::InvalidNextTokenMalformed)
        );
    }

    /// What is not a count (as DescribeSnapshots' tokens: `commands::parse_total`) is refused,
    /// and the versions do not mix.
    #[test]
    fn an_i2_token_carries_a_count_and_refuses_anything_else() {
        let at = DateTime::from_timestamp(1_780_000_000, 123_456_000).unwrap();
        let token = |version: &str, rest: &str| cursor_token(version, at, rest);
        let counted = |total| ImageCursor {
            created_at: at,
            image_id: IMAGE.into(),
            total,
        };
        let cases: [(String, Result<ImageCursor, ParseError>); 8] = [
            (token("i2", &format!("{IMAGE}|0")), Ok(counted(Some(0)))),
            (
                token("i2", &format!("{IMAGE}|9223372036854775807")),
                Ok(counted(Some(i64::MAX as u64))),
            ),
            (token("i1", IMAGE), Ok(counted(None))),
            (
                token("i2", &format!("{IMAGE}|9223372036854775808")),
                Err(ParseError::InvalidNextTokenMalformed),
            ),
            (
                token("i2", &format!("{IMAGE}|-1")),
                Err(ParseError::InvalidNextTokenMalformed),
            ),
            (
                token("i2", &format!("{IMAGE}|07")),
                Err(ParseError::InvalidNextTokenMalformed),
            ),
            (
                token("i2", IMAGE),
                Err(ParseError::InvalidNextTokenMalformed),
            ),
            (
                token("i1", &format!("{IMAGE}|7")),
                Err(ParseError::InvalidNextTokenMalformed),
            ),
        ];
        for (token, expected) in cases {
            assert_eq!(ImageCursor::parse_token(&token), expected, "{token}");
        }
    }

    #[test]
    fn describe_images_checks_ids_filter_token_and_page_in_order() {
        let too_many = vec![IMAGE; MAX_IMAGE_IDS + 1];
        let hundred = vec![IMAGE; MAX_IMAGE_IDS];
        let params = |image_ids: &'static [&'static str], snapshot_id, next_token, max_results| {
            DescribeImagesParams {
                image_ids,
                snapshot_id,
                next_token,
                max_results,
                page_number: 0,
            }
        };
        let leak = |ids: Vec<&'static str>| -> &'static [&'static str] { ids.leak() };
        let cases: [(&str, DescribeImagesParams<'static>, Result<(), &str>); 7] = [
            ("nothing given", params(&[], "", "", 0), Ok(())),
            ("100 ids", params(leak(hundred), "", "", 100), Ok(())),
            (
                "101 ids",
                params(leak(too_many), "", "", 0),
                Err("InvalidParameter"),
            ),
            (
                "a malformed id before a malformed snapshot",
                params(&["s-0123456789abcdefghij"], "m-1", "", 0),
                Err("InvalidImageId.Malformed"),
            ),
            (
                "a malformed snapshot filter",
                params(&[], "m-0123456789abcdefghij", "", 0),
                Err("InvalidSnapshotId.Malformed"),
            ),
            (
                "a foreign token",
                params(&[], "", "zz", 0),
                Err("InvalidNextToken.Malformed"),
            ),
            (
                "a page of 101",
                params(&[], "", "", 101),
                Err("InvalidParameter"),
            ),
        ];
        for (label, params, expected) in cases {
            let got = ImageQuery::parse("a".into(), &params)
                .map(drop)
                .map_err(|err| {
                    err.to_string()
                        .split(':')
                        .next()
                        .unwrap_or_default()
                        .to_owned()
                });
            assert_eq!(got, expected.map_err(str::to_owned), "{label}");
        }
    }
}
