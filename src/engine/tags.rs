//! Tags after creation: every resource named must be the caller's snapshot, and a snapshot
//! holds at most [`MAX_TAGS`] tags, counting those it has and those a call adds.

use super::RuleError;
use crate::domain::{MAX_TAGS, Tag, TagKeys};

/// A resource the call names: `found` is whether the caller has a snapshot of that id. Another
/// account's snapshot is not found, exactly as an id nobody has.
pub fn require_own_resource(resource_id: &str, found: bool) -> Result<(), RuleError> {
    if found {
        Ok(())
    } else {
        Err(RuleError::InvalidResourceIdNotFound {
            resource_id: resource_id.to_owned(),
        })
    }
}

/// TagResources on one snapshot that has `existing` (`None`: the caller has no such snapshot).
/// A key it has is overwritten and counts once. `Ok(true)` when a tag is new or changes value.
pub fn decide_tag(
    snapshot_id: &str,
    existing: Option<&[Tag]>,
    adding: &[Tag],
) -> Result<bool, RuleError> {
    require_own_resource(snapshot_id, existing.is_some())?;
    let existing = existing.unwrap_or_default();
    let new_keys = adding
        .iter()
        .filter(|tag| !existing.iter().any(|held| held.key == tag.key))
        .count();
    let would_hold = existing.len() + new_keys;
    if would_hold > MAX_TAGS {
        return Err(RuleError::OperationDeniedQuotaExceed {
            snapshot_id: snapshot_id.to_owned(),
            would_hold,
        });
    }
    Ok(adding.iter().any(|tag| !existing.contains(tag)))
}

/// UntagResources on one snapshot that has `existing` (`None`: not the caller's). A key it does
/// not have is passed over. `Ok(true)` when a tag goes.
pub fn decide_untag(
    snapshot_id: &str,
    existing: Option<&[Tag]>,
    keys: &TagKeys,
) -> Result<bool, RuleError> {
    require_own_resource(snapshot_id, existing.is_some())?;
    let existing = existing.unwrap_or_default();
    Ok(match keys {
        TagKeys::All => !existing.is_empty(),
        TagKeys::Only(keys) => existing.iter().any(|held| keys.contains(&held.key)),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tags(keys: std::ops::Range<usize>) -> Vec<Tag> {
        keys.map(|n| Tag {
            key: format!("k{n}"),
            value: "v".into(),
        })
        .collect()
    }

    fn over(would_hold: usize) -> Result<bool, RuleError> {
        Err(RuleError::OperationDeniedQuotaExceed {
            snapshot_id: "s-1".into(),
            would_hold,
        })
    }

    #[test]
    fn a_snapshot_holds_at_most_20_tags_counting_overwrites_once() {
        let changed = |value: &str| {
            vec![Tag {
                key: "k0".into(),
                value: value.into(),
            }]
        };
        // (held, sent, verdict)
        type Case = (Vec<Tag>, Vec<Tag>, Result<bool, RuleError>);
        let cases: [Case; 7] = [
            (vec![], tags(0..20), Ok(true)),
            (vec![], tags(0..21), over(21)),
            (tags(0..9), tags(9..20), Ok(true)),
            (tags(0..10), tags(10..21), over(21)),
            // 20 held, all 20 sent again: overwrites, nothing new, nothing changes.
            (tags(0..20), tags(0..20), Ok(false)),
            (tags(0..20), changed("w"), Ok(true)),
            (tags(0..20), tags(19..21), over(21)),
        ];
        for (existing, adding, expected) in cases {
            assert_eq!(
                decide_tag("s-1", Some(&existing), &adding),
                expected,
                "{} held, {} sent",
                existing.len(),
                adding.len()
            );
        }
    }

    #[test]
    fn a_snapshot_not_the_callers_is_not_found_for_every_call() {
        let not_found = Err(RuleError::InvalidResourceIdNotFound {
            resource_id: "s-1".into(),
        });
        assert_eq!(decide_tag("s-1", None, &tags(0..1)), not_found);
        assert_eq!(decide_untag("s-1", None, &TagKeys::All), not_found);
        assert_eq!(require_own_resource("s-1", false).map(|()| true), not_found);
    }

    #[test]
    fn untag_changes_only_when_a_held_key_goes() {
        let held = tags(0..2);
        let cases = [
            (TagKeys::All, true),
            (TagKeys::Only(vec!["k1".into()]), true),
            (TagKeys::Only(vec!["k9".into()]), false),
        ];
        for (keys, expected) in cases {
            assert_eq!(decide_untag("s-1", Some(&held), &keys), Ok(expected));
        }
        assert_eq!(decide_untag("s-1", Some(&[]), &TagKeys::All), Ok(false));
    }
}
