//! ECS's tag actions on snapshots: TagResources, UntagResources and ListTagResources. Each reads
//! ECS's parameters into the domain's and calls the use case the gRPC TagService calls.

use serde_json::{Value, json};

use super::actions::{flag, invalid_value, list_index, tags};
use super::error::EcsError;
use super::params::Params;
use crate::domain::{
    ListTagResourcesParams, SNAPSHOT_RESOURCE_TYPE, TagCursor, TagQuery, TagResourcesCommand,
    TagResourcesParams, UntagResourcesCommand, UntagResourcesParams,
};
use crate::service::Service;

pub async fn tag_resources(
    service: &Service,
    account_id: &str,
    params: &Params,
) -> Result<Value, EcsError> {
    let ids = numbered(params, "ResourceId", usize::MAX)?;
    let id_refs: Vec<&str> = ids.iter().map(String::as_str).collect();
    let tags = tags(params)?;
    let tag_refs: Vec<(&str, &str)> = tags.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
    let tag = TagResourcesParams {
        resource_type: params.text("ResourceType"),
        resource_ids: &id_refs,
        tags: &tag_refs,
    };
    let command = TagResourcesCommand::parse(account_id.to_owned(), &tag)?;
    service.tag_resources(&command).await?;
    Ok(json!({}))
}

pub async fn untag_resources(
    service: &Service,
    account_id: &str,
    params: &Params,
) -> Result<Value, EcsError> {
    let ids = numbered(params, "ResourceId", usize::MAX)?;
    let id_refs: Vec<&str> = ids.iter().map(String::as_str).collect();
    let keys = numbered(params, "TagKey", usize::MAX)?;
    let key_refs: Vec<&str> = keys.iter().map(String::as_str).collect();
    let all = flag(params, "All")?;
    let untag = UntagResourcesParams {
        resource_type: params.text("ResourceType"),
        resource_ids: &id_refs,
        tag_keys: &key_refs,
        all,
    };
    let command = UntagResourcesCommand::parse(account_id.to_owned(), &untag)?;
    service.untag_resources(&command).await?;
    Ok(json!({}))
}

pub async fn list_tag_resources(
    service: &Service,
    account_id: &str,
    params: &Params,
) -> Result<Value, EcsError> {
    let ids = numbered(params, "ResourceId", usize::MAX)?;
    let id_refs: Vec<&str> = ids.iter().map(String::as_str).collect();
    let tags = tags(params)?;
    let tag_refs: Vec<(&str, &str)> = tags.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
    let list = ListTagResourcesParams {
        resource_type: params.text("ResourceType"),
        resource_ids: &id_refs,
        tags: &tag_refs,
        next_token: params.text("NextToken"),
    };
    let query = TagQuery::parse(account_id.to_owned(), &list)?;
    let page = service.list_tag_resources(&query).await?;
    let rows: Vec<Value> = page
        .tags
        .into_iter()
        .map(|tag| {
            json!({
                "ResourceId": tag.snapshot_id,
                "ResourceType": SNAPSHOT_RESOURCE_TYPE,
                "TagKey": tag.key,
                "TagValue": tag.value,
            })
        })
        .collect();
    Ok(json!({
        "NextToken": page.next.as_ref().map(TagCursor::to_token).unwrap_or_default(),
        "TagResources": { "TagResource": rows },
    }))
}

/// `<list>.N` (`ResourceId.1`, `ResourceId.2`, …), in N's order; N is a whole number from 1.
/// How many there may be is the domain's rule (50 resource ids, 20 tag keys).
fn numbered(params: &Params, list: &'static str, max: usize) -> Result<Vec<String>, EcsError> {
    let prefix = format!("{list}.");
    let mut items: Vec<(usize, String)> = Vec::new();
    for name in params.names_with_prefix(&prefix) {
        let index = name
            .strip_prefix(prefix.as_str())
            .and_then(|n| list_index(n, max))
            .ok_or_else(|| {
                invalid_value(
                    list,
                    &format!("{name} is not {list}.N with N a number from 1 to {max}"),
                )
            })?;
        items.push((index, params.text(name).to_owned()));
    }
    items.sort_by_key(|(n, _)| *n);
    Ok(items.into_iter().map(|(_, item)| item).collect())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn params(query: &str) -> Params {
        Params::decode(query, b"").expect("valid parameters")
    }

    #[test]
    fn numbered_lists_are_read_in_order_and_odd_names_are_refused() {
        assert_eq!(
            numbered(
                &params("ResourceId.2=b&ResourceId.1=a&ResourceId.10=c"),
                "ResourceId",
                usize::MAX
            )
            .expect("valid"),
            vec!["a", "b", "c"]
        );
        for bad in [
            "ResourceId.0=a",
            "ResourceId.x=a",
            "ResourceId.1.Key=a",
            "ResourceId.=a",
            // Another spelling of ResourceId.1: it must not stand beside it as a second entry.
            "ResourceId.01=a",
            "ResourceId.+1=a",
            "ResourceId.-1=a",
        ] {
            assert!(
                matches!(
                    numbered(&params(bad), "ResourceId", usize::MAX),
                    Err(EcsError::InvalidValue { .. })
                ),
                "{bad}"
            );
        }
    }
}
