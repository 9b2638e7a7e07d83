//! What callers write: snapshot and image names, descriptions, client tokens, tags and
//! retention, each with the seed's (or ECS's) rules in its `parse`.

use unicode_script::{Script, UnicodeScript};

use super::{ParseError, Timestamp};

fn starts_with_url_scheme(text: &str) -> bool {
    text.starts_with("http://") || text.starts_with("https://")
}

/// What the seed calls "Chinese characters": Unicode's Han script (the `Script` property), so
/// the CJK Unified Ideographs of every extension (𠀀 U+20000 …), the compatibility ideographs,
/// 〇 and 々 and the CJK radicals count; kana, hangul and unassigned code points do not.
fn is_chinese(c: char) -> bool {
    c.script() == Script::Han
}

/// A snapshot name per the seed: 2..128 characters; begins with an English letter or a Chinese
/// character; then letters, Chinese characters, digits, `_`, `:` or `-`; not `auto…`,
/// `http://…` or `https://…`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SnapshotName(String);

impl SnapshotName {
    /// An empty name means "no name" and is allowed.
    pub fn parse_optional(raw: &str) -> Result<Option<Self>, ParseError> {
        if raw.is_empty() {
            return Ok(None);
        }
        Self::parse(raw).map(Some)
    }

    pub fn parse(raw: &str) -> Result<Self, ParseError> {
        let malformed = |why: &'static str| Err(ParseError::InvalidSnapshotNameMalformed { why });
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
    pub fn parse(raw: &str) -> Result<Self, ParseError> {
        if raw.is_empty() {
            return Ok(Self::default());
        }
        let malformed = |why: &'static str| Err(ParseError::InvalidDescriptionMalformed { why });
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
    pub fn parse_optional(raw: &str) -> Result<Option<Self>, ParseError> {
        if raw.is_empty() {
            return Ok(None);
        }
        let malformed = |why: &'static str| Err(ParseError::InvalidClientTokenMalformed { why });
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

    pub fn parse(raw: i32) -> Result<Self, ParseError> {
        match raw {
            0 => Ok(Self(None)),
            1..=Self::MAX => Ok(Self(u32::try_from(raw).ok())),
            _ => Err(ParseError::InvalidRetentionDaysMalformed {
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
    pub fn parse(key: &str, value: &str) -> Result<Self, ParseError> {
        let bad_key = |why: &'static str| Err(ParseError::InvalidTagKeyMalformed { why });
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
        let bad_value = |why: &'static str| Err(ParseError::InvalidTagValueMalformed { why });
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
    ) -> Result<Vec<Self>, ParseError> {
        let mut parsed: Vec<Self> = Vec::new();
        for (key, value) in tags {
            if parsed.len() == MAX_TAGS {
                return Err(ParseError::InvalidTagKeyMalformed {
                    why: "at most 20 tags are allowed",
                });
            }
            let tag = Self::parse(key, value)?;
            if parsed.iter().any(|t| t.key == tag.key) {
                return Err(ParseError::DuplicateTagKey { key: tag.key });
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
    pub fn parse_optional(raw: &str) -> Result<Option<Self>, ParseError> {
        if raw.is_empty() {
            return Ok(None);
        }
        let malformed = |why: &'static str| Err(ParseError::InvalidImageNameMalformed { why });
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn chinese_characters_are_the_han_script() {
        let han = [
            '中',
            '\u{4E00}',
            '\u{9FFF}',
            '\u{3400}',
            '\u{F900}',
            '\u{20000}',
            '\u{2A700}',
            '\u{3007}',
            '\u{3005}',
            '\u{2E80}',
        ];
        for c in han {
            assert!(is_chinese(c), "{c:?} U+{:04X} is Han", u32::from(c));
            assert!(
                SnapshotName::parse(&format!("{c}x")).is_ok(),
                "{c:?} begins a name"
            );
        }
        let not_han = [
            'ひ', 'ア', '가', '①', '\u{FF21}', '\u{FA6E}', '\u{3000}', '\u{3001}', 'a', '1',
        ];
        for c in not_han {
            assert!(!is_chinese(c), "{c:?} U+{:04X} is not Han", u32::from(c));
        }
    }
    fn repeat(c: char, n: usize) -> String {
        std::iter::repeat_n(c, n).collect()
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
                .map_err(|why| ParseError::InvalidSnapshotNameMalformed { why });
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
                Err(ParseError::InvalidSnapshotNameMalformed {
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
                .map_err(|why| ParseError::InvalidDescriptionMalformed { why });
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
                .map_err(|why| ParseError::InvalidClientTokenMalformed { why });
            assert_eq!(
                ClientToken::parse_optional(&raw).map(|t| t.map(|t| t.as_str().to_owned())),
                expected,
                "{label}"
            );
        }
    }
}
