//! The request validators against their specification, over random Unicode.
//!
//! Each field's rule is written here once more as a plain predicate, from the seed and the error
//! tables of `docs/errors.md` (not from `src/domain/`), and the property is: `parse` accepts
//! exactly when the predicate holds, refuses with the field's own error code otherwise, and an
//! accepted value reads back unchanged. Strings are built to sit on the boundaries: lengths around
//! each limit (counted in characters), the reserved prefixes (`auto`, `http://`, `https://`,
//! `acs:`, `aliyun`) and their near misses, Chinese characters at the edges of their blocks,
//! control characters and other non-ASCII text.

use proptest::prelude::*;
use proptest::sample::select;
use snapshotd::domain::{
    ClientToken, Description, DiskId, ImageName, ParseError, RetentionDays, SnapshotId,
    SnapshotName, Tag,
};

use crate::support::config;

// ---------------------------------------------------------------------------------------------
// The specification, as predicates.

/// "Chinese characters": Unicode's Han script (our reading of the seed's words, in
/// `docs/errors.md`), as the `unicode-script` crate's tables say; `domain::names`' table test
/// pins characters on each side of it.
fn chinese(c: char) -> bool {
    use unicode_script::{Script, UnicodeScript};
    c.script() == Script::Han
}

fn english_letter(c: char) -> bool {
    c.is_ascii_uppercase() || c.is_ascii_lowercase()
}

fn characters(text: &str) -> usize {
    text.chars().count()
}

fn begins_with_any(text: &str, prefixes: &[&str]) -> bool {
    prefixes.iter().any(|prefix| text.starts_with(prefix))
}

fn contains_url(text: &str) -> bool {
    text.contains("http://") || text.contains("https://")
}

/// SnapshotName: 2..128 characters; the first an English letter or a Chinese character; the
/// rest English letters, Chinese characters, digits, `_`, `:` or `-`; not beginning with
/// `auto` (case-sensitive), `http://` or `https://`.
pub(crate) fn valid_snapshot_name(name: &str) -> bool {
    let mut rest = name.chars();
    let Some(first) = rest.next() else {
        return false;
    };
    (2..=128).contains(&characters(name))
        && (english_letter(first) || chinese(first))
        && rest.all(|c| english_letter(c) || chinese(c) || c.is_ascii_digit() || "_:-".contains(c))
        && !begins_with_any(name, &["auto", "http://", "https://"])
}

/// Description: empty, or 2..256 characters not beginning with `http://` or `https://`, and no
/// NUL character (no database stores one in text).
pub(crate) fn valid_description(text: &str) -> bool {
    text.is_empty()
        || ((2..=256).contains(&characters(text))
            && !begins_with_any(text, &["http://", "https://"])
            && !text.contains('\0'))
}

/// ClientToken: at most 64 ASCII characters, printable (space to tilde); empty means none.
pub(crate) fn valid_client_token(token: &str) -> bool {
    characters(token) <= 64 && token.chars().all(|c| (' '..='~').contains(&c))
}

/// ImageName: 2..128 characters; the first an English letter or a Chinese character; the rest
/// also digits, `.`, `_`, `:` or `-`; not beginning with `http://`, `https://`, `aliyun` or
/// `acs:`. Empty means none.
pub(crate) fn valid_image_name(name: &str) -> bool {
    let mut rest = name.chars();
    let Some(first) = rest.next() else {
        return false;
    };
    (2..=128).contains(&characters(name))
        && (english_letter(first) || chinese(first))
        && rest.all(|c| english_letter(c) || chinese(c) || c.is_ascii_digit() || "._:-".contains(c))
        && !begins_with_any(name, &["http://", "https://", "aliyun", "acs:"])
}

/// A tag key: 1..128 characters, not beginning with `acs:` or `aliyun`, no URL inside.
pub(crate) fn valid_tag_key(key: &str) -> bool {
    (1..=128).contains(&characters(key))
        && !begins_with_any(key, &["acs:", "aliyun"])
        && !contains_url(key)
        && !key.contains('\0')
}

/// A tag value: at most 128 characters (empty allowed), no URL inside, no NUL character.
pub(crate) fn valid_tag_value(value: &str) -> bool {
    characters(value) <= 128 && !contains_url(value) && !value.contains('\0')
}

/// DiskId: `d-` and then 1..62 of lowercase ASCII letters, digits and `-`.
pub(crate) fn valid_disk_id(id: &str) -> bool {
    id.strip_prefix("d-").is_some_and(|rest| {
        (1..=62).contains(&characters(rest))
            && rest
                .chars()
                .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-')
    })
}

/// SnapshotId: `s-` and then exactly 20 of lowercase ASCII letters and digits.
pub(crate) fn valid_snapshot_id(id: &str) -> bool {
    id.strip_prefix("s-").is_some_and(|rest| {
        characters(rest) == 20
            && rest
                .chars()
                .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit())
    })
}

/// An image id: `m-` and 20 of `[0-9a-z]` (the InvalidImageId.Malformed row).
pub(crate) fn valid_image_id(id: &str) -> bool {
    id.strip_prefix("m-").is_some_and(|rest| {
        characters(rest) == 20
            && rest
                .chars()
                .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit())
    })
}

// ---------------------------------------------------------------------------------------------
// Generators.

const PUNCTUATION: &[char] = &['_', ':', '-', '.', ' ', '/', '~', '!', '"', '\''];

/// The edges of the Chinese blocks, and look-alikes of letters, digits, spaces and commas.
const EDGES: &[char] = &[
    '\u{33FF}',
    '\u{3400}',
    '\u{4DBF}',
    '\u{4DC0}',
    '\u{4DFF}',
    '\u{4E00}',
    '\u{9FFF}',
    '\u{A000}',
    '\u{F8FF}',
    '\u{F900}',
    '\u{FAFF}',
    '\u{FB00}',
    '\u{3007}',
    '\u{3000}',
    '\u{3001}',
    '\u{FF0C}',
    '\u{FF21}',
    '\u{FF41}',
    '\u{FF11}',
    '\u{20000}',
    '\u{2A6DF}',
    'é',
    'Ω',
    'ß',
    'İ',
    '\u{212A}',
    '\u{0661}',
    '😀',
    '\u{200B}',
    '\u{FEFF}',
    '\u{FFFD}',
];

/// Control characters, DEL and the C1 range.
const CONTROLS: &[char] = &[
    '\0', '\u{1}', '\t', '\n', '\r', '\u{1b}', '\u{7f}', '\u{80}', '\u{85}', '\u{9f}',
];

/// Characters that matter to some rule, their near misses, and anything at all, weighted by
/// class. One flat strategy (not a union of many) keeps long strings cheap to generate; it
/// shrinks towards `a`.
fn interesting_char() -> impl Strategy<Value = char> {
    (0u32..22, any::<u32>()).prop_map(|(class, n)| {
        let in_range = |low: char, high: char| {
            let (low, high) = (u32::from(low), u32::from(high));
            char::from_u32(low + n % (high - low + 1)).unwrap_or('\u{FFFD}')
        };
        let one_of = |set: &[char]| set[n as usize % set.len()];
        match class {
            0..=3 => in_range('a', 'z'),
            4 | 5 => in_range('A', 'Z'),
            6 | 7 => in_range('0', '9'),
            8 | 9 => one_of(PUNCTUATION),
            10..=12 => in_range('\u{4E00}', '\u{9FFF}'),
            13 => in_range('\u{3400}', '\u{4DBF}'),
            14 => in_range('\u{F900}', '\u{FAFF}'),
            // Han beyond the Basic Multilingual Plane (extensions B to F), and its edges.
            19 => in_range('\u{1FFF0}', '\u{2EBFF}'),
            15 | 16 => one_of(EDGES),
            17 | 18 => one_of(CONTROLS),
            // Any scalar value (a surrogate code point becomes U+FFFD).
            _ => char::from_u32(n % 0x11_0000).unwrap_or('\u{FFFD}'),
        }
    })
}

const PREFIXES: &[&str] = &[
    "",
    "",
    "",
    "",
    "a",
    "Z",
    "快照",
    "auto",
    "autoX",
    "auto-daily",
    "Auto",
    "AUTO",
    "aut",
    "http://",
    "https://",
    "http:",
    "https:/",
    "HTTP://",
    "Https://",
    " http://",
    "acs:",
    "acs",
    "ACS:",
    "aliyun",
    "Aliyun",
    "aliyu",
    "d-",
    "s-",
    "D-",
];

const INFIXES: &[&str] = &[
    "", "", "", "", "http://", "https://", "auto", "acs:", "aliyun",
];

/// A string of `length` characters (or its prefix's length, if longer) that begins with one
/// of [`PREFIXES`] and may hold one of [`INFIXES`] somewhere inside.
fn text_of_length(length: impl Strategy<Value = usize>) -> impl Strategy<Value = String> {
    (
        select(PREFIXES),
        select(INFIXES),
        length,
        any::<prop::sample::Index>(),
    )
        .prop_flat_map(|(prefix, infix, length, at)| {
            let body = length.saturating_sub(characters(prefix) + characters(infix));
            proptest::collection::vec(interesting_char(), body).prop_map(move |chars| {
                let (head, tail) = chars.split_at(at.index(chars.len() + 1));
                let mut text = prefix.to_owned();
                text.extend(head);
                text.push_str(infix);
                text.extend(tail);
                text
            })
        })
}

/// Strings for a field whose limits are `limits` (lengths in characters): lengths at and next
/// to each limit, short ones, and any length up to just past the largest limit; plus strings of
/// arbitrary characters.
pub(crate) fn text(limits: &'static [usize]) -> impl Strategy<Value = String> {
    let largest = limits.iter().copied().max().unwrap_or(0);
    let near_limit = (select(limits), -1i64..=1).prop_map(|(limit, delta)| {
        usize::try_from(i64::try_from(limit).unwrap_or(0) + delta).unwrap_or(0)
    });
    prop_oneof![
        3 => text_of_length(near_limit),
        3 => text_of_length(0usize..8),
        2 => text_of_length(0..=largest + 2),
        1 => proptest::collection::vec(any::<char>(), 0..=largest + 2)
            .prop_map(String::from_iter),
    ]
}

// ---------------------------------------------------------------------------------------------
// The properties.

proptest! {
    #![proptest_config(config(2048))]

    #[test]
    fn a_snapshot_name_is_accepted_exactly_when_the_seed_allows_it(raw in text(&[0, 2, 128])) {
        match SnapshotName::parse_optional(&raw) {
            Ok(None) => prop_assert!(raw.is_empty()),
            Ok(Some(name)) => {
                prop_assert!(valid_snapshot_name(&raw), "accepted {:?}", raw);
                prop_assert_eq!(name.as_str(), raw.as_str());
            }
            Err(ParseError::InvalidSnapshotNameMalformed { .. }) => {
                prop_assert!(!raw.is_empty() && !valid_snapshot_name(&raw), "refused {:?}", raw);
            }
            Err(other) => prop_assert!(false, "{:?} answered {:?}", raw, other),
        }
    }

    #[test]
    fn a_description_is_accepted_exactly_when_the_seed_allows_it(raw in text(&[0, 2, 256])) {
        match Description::parse(&raw) {
            Ok(description) => {
                prop_assert!(valid_description(&raw), "accepted {:?}", raw);
                prop_assert_eq!(description.as_str(), raw.as_str());
            }
            Err(ParseError::InvalidDescriptionMalformed { .. }) => {
                prop_assert!(!valid_description(&raw), "refused {:?}", raw);
            }
            Err(other) => prop_assert!(false, "{:?} answered {:?}", raw, other),
        }
    }

    #[test]
    fn a_client_token_is_accepted_exactly_when_it_is_at_most_64_printable_ascii_characters(
        raw in text(&[0, 1, 64])
    ) {
        match ClientToken::parse_optional(&raw) {
            Ok(None) => prop_assert!(raw.is_empty()),
            Ok(Some(token)) => {
                prop_assert!(valid_client_token(&raw), "accepted {:?}", raw);
                prop_assert_eq!(token.as_str(), raw.as_str());
            }
            Err(ParseError::InvalidClientTokenMalformed { .. }) => {
                prop_assert!(!valid_client_token(&raw), "refused {:?}", raw);
            }
            Err(other) => prop_assert!(false, "{:?} answered {:?}", raw, other),
        }
    }

    #[test]
    fn an_image_name_is_accepted_exactly_when_the_ecs_rules_allow_it(raw in text(&[0, 2, 128])) {
        match ImageName::parse_optional(&raw) {
            Ok(None) => prop_assert!(raw.is_empty()),
            Ok(Some(name)) => {
                prop_assert!(valid_image_name(&raw), "accepted {:?}", raw);
                prop_assert_eq!(name.as_str(), raw.as_str());
            }
            Err(ParseError::InvalidImageNameMalformed { .. }) => {
                prop_assert!(!raw.is_empty() && !valid_image_name(&raw), "refused {:?}", raw);
            }
            Err(other) => prop_assert!(false, "{:?} answered {:?}", raw, other),
        }
    }

    /// The key is checked before the value; each refusal names the part that broke the rule.
    #[test]
    fn a_tag_is_accepted_exactly_when_its_key_and_value_follow_the_rules(
        key in text(&[0, 1, 128]),
        value in text(&[0, 128]),
    ) {
        match Tag::parse(&key, &value) {
            Ok(tag) => {
                prop_assert!(valid_tag_key(&key) && valid_tag_value(&value));
                prop_assert_eq!(&tag.key, &key);
                prop_assert_eq!(&tag.value, &value);
            }
            Err(ParseError::InvalidTagKeyMalformed { .. }) => {
                prop_assert!(!valid_tag_key(&key), "refused key {:?}", key);
            }
            Err(ParseError::InvalidTagValueMalformed { .. }) => {
                prop_assert!(valid_tag_key(&key), "key {:?} should have answered first", key);
                prop_assert!(!valid_tag_value(&value), "refused value {:?}", value);
            }
            Err(other) => prop_assert!(false, "{:?}={:?} answered {:?}", key, value, other),
        }
    }

    /// Tags are checked in the order sent: the first bad, duplicate or 21st tag answers.
    #[test]
    fn a_tag_list_answers_with_its_first_broken_rule(
        tags in proptest::collection::vec(
            (prop_oneof![4 => select(vec!["env", "team", "k", "acs:x"]).prop_map(str::to_owned),
                         1 => text(&[0, 1, 128])],
             prop_oneof![4 => Just(String::new()), 1 => text(&[0, 128])]),
            0..24,
        )
    ) {
        let mut expected: Result<Vec<(String, String)>, &str> = Ok(Vec::new());
        for (position, (key, value)) in tags.iter().enumerate() {
            let Ok(seen) = expected.as_mut() else { break };
            // A 21st tag is refused as a bad key, whatever it holds.
            if position == 20 || !valid_tag_key(key) {
                expected = Err("InvalidTagKey.Malformed");
            } else if !valid_tag_value(value) {
                expected = Err("InvalidTagValue.Malformed");
            } else if seen.iter().any(|(k, _)| k == key) {
                expected = Err("Duplicate.TagKey");
            } else {
                seen.push((key.clone(), value.clone()));
            }
        }
        let parsed = Tag::parse_all(tags.iter().map(|(k, v)| (k.as_str(), v.as_str())));
        match (parsed, expected) {
            (Ok(parsed), Ok(expected)) => {
                let parsed: Vec<_> = parsed.into_iter().map(|t| (t.key, t.value)).collect();
                prop_assert_eq!(parsed, expected);
            }
            (Err(err), Err(code)) => {
                let answered = err.to_string();
                prop_assert!(answered.starts_with(&format!("{code}:")), "{} vs {}", answered, code);
            }
            (parsed, expected) => prop_assert!(false, "{:?} vs {:?}", parsed, expected),
        }
    }

    #[test]
    fn retention_is_zero_for_forever_or_1_to_65536_days(
        raw in prop_oneof![-2i32..=2, 65_534i32..=65_538, any::<i32>()]
    ) {
        match RetentionDays::parse(raw) {
            Ok(retention) => {
                prop_assert!((0..=65_536).contains(&raw));
                prop_assert_eq!(retention.as_i32(), raw);
                prop_assert_eq!(retention.days(), u32::try_from(raw).ok().filter(|d| *d > 0));
            }
            Err(ParseError::InvalidRetentionDaysMalformed { retention_days }) => {
                prop_assert!(!(0..=65_536).contains(&raw));
                prop_assert_eq!(retention_days, raw);
            }
            Err(other) => prop_assert!(false, "{} answered {:?}", raw, other),
        }
    }

    #[test]
    fn a_disk_id_is_accepted_exactly_when_it_is_d_dash_and_1_to_62_of_0_9_a_z_dash(
        raw in prop_oneof![
            text(&[0, 2, 3, 64, 65]),
            (select(vec!["d-", "d-", "D-", "d_", "s-", "d"]),
             proptest::collection::vec(
                 prop_oneof![4 => select(vec!['a', 'z', '0', '9', '-']), 1 => interesting_char()],
                 0..66,
             ))
                .prop_map(|(prefix, chars)| format!("{prefix}{}", chars.into_iter().collect::<String>())),
        ]
    ) {
        match DiskId::parse(&raw) {
            Ok(id) => {
                prop_assert!(valid_disk_id(&raw), "accepted {:?}", raw);
                prop_assert_eq!(id.as_str(), raw.as_str());
            }
            Err(ParseError::MissingParameter { field: "disk_id" }) => prop_assert!(raw.is_empty()),
            Err(ParseError::DiskIdValueNotSupported { disk_id }) => {
                prop_assert!(!raw.is_empty() && !valid_disk_id(&raw), "refused {:?}", raw);
                prop_assert_eq!(disk_id, raw);
            }
            Err(other) => prop_assert!(false, "{:?} answered {:?}", raw, other),
        }
    }

    #[test]
    fn a_snapshot_id_is_accepted_exactly_when_it_is_s_dash_and_20_of_0_9_a_z(
        raw in prop_oneof![
            text(&[0, 22]),
            (select(vec!["s-", "s-", "S-", "m-", "s"]),
             proptest::collection::vec(
                 prop_oneof![6 => select(vec!['a', 'z', '0', '9']), 1 => interesting_char()],
                 19..=21,
             ))
                .prop_map(|(prefix, chars)| format!("{prefix}{}", chars.into_iter().collect::<String>())),
        ]
    ) {
        match SnapshotId::parse(&raw) {
            Ok(id) => {
                prop_assert!(valid_snapshot_id(&raw), "accepted {:?}", raw);
                prop_assert_eq!(id.as_str(), raw.as_str());
            }
            Err(ParseError::MissingParameter { field: "snapshot_id" }) => prop_assert!(raw.is_empty()),
            Err(ParseError::InvalidSnapshotIdMalformed { snapshot_id }) => {
                prop_assert!(!raw.is_empty() && !valid_snapshot_id(&raw), "refused {:?}", raw);
                prop_assert_eq!(snapshot_id, raw);
            }
            Err(other) => prop_assert!(false, "{:?} answered {:?}", raw, other),
        }
    }
}

/// The generators reach both sides of every rule (a property that saw only refusals would
/// prove little).
#[test]
fn the_generated_strings_are_accepted_and_refused_by_every_rule() {
    use proptest::strategy::ValueTree;
    use proptest::test_runner::TestRunner;

    type Rule = (&'static str, fn(&str) -> bool, &'static [usize]);
    let rules: [Rule; 6] = [
        ("snapshot name", valid_snapshot_name, &[0, 2, 128]),
        ("description", valid_description, &[0, 2, 256]),
        ("client token", valid_client_token, &[0, 1, 64]),
        ("image name", valid_image_name, &[0, 2, 128]),
        ("tag key", valid_tag_key, &[0, 1, 128]),
        ("tag value", valid_tag_value, &[0, 128]),
    ];
    let mut runner = TestRunner::deterministic();
    for (label, rule, limits) in rules {
        let strategy = text(limits);
        let (mut accepted, mut refused) = (0, 0);
        for _ in 0..2000 {
            let raw = strategy.new_tree(&mut runner).expect("a string").current();
            if rule(&raw) {
                accepted += 1;
            } else {
                refused += 1;
            }
        }
        assert!(
            accepted >= 100 && refused >= 100,
            "{label}: {accepted} accepted, {refused} refused"
        );
    }
}
