//! The image actions beside CreateImage: DescribeImages and DeleteImage, in ECS's parameters and
//! field names, calling the same use cases as `ecs.snapshot.v1.ImageService`.

use serde_json::{Value, json};

use super::actions::{ecs_time, flag, invalid_value, number, page_number};
use super::error::EcsError;
use super::params::Params;
use crate::domain::{DescribeImagesParams, Image, ImageId, ImageQuery};
use crate::service::Service;

/// DescribeImages: the caller's own images. ECS's `Status` and `ImageOwnerAlias` are accepted
/// for the one value every image here has (`Available`, `self`) and refused otherwise, so a
/// script asking for public or failed images never takes the caller's for them.
pub(super) async fn describe_images(
    service: &Service,
    account_id: &str,
    params: &Params,
) -> Result<Value, EcsError> {
    match params.get("Status") {
        None | Some("" | "Available") => {}
        Some(_) => {
            return Err(invalid_value(
                "Status",
                "every image here is Available: Available or nothing",
            ));
        }
    }
    match params.get("ImageOwnerAlias") {
        None | Some("" | "self") => {}
        Some(_) => {
            return Err(invalid_value(
                "ImageOwnerAlias",
                "only the caller's own images are offered: self or nothing",
            ));
        }
    }
    // `ImageId`: one id, or several separated by commas.
    let image_ids: Vec<&str> = match params.text("ImageId") {
        "" => Vec::new(),
        list => list.split(',').map(str::trim).collect(),
    };
    let describe = DescribeImagesParams {
        image_ids: &image_ids,
        snapshot_id: params.text("SnapshotId"),
        next_token: "",
        max_results: number(params, "PageSize")?.unwrap_or(0),
        page_number: page_number(params)?,
    };
    let query = ImageQuery::parse(account_id.to_owned(), &describe)?;
    let page = service.describe_images(&query).await?;
    let images: Vec<Value> = page.images.into_iter().map(image_json).collect();
    Ok(json!({
        "PageNumber": query.skip / query.limit.max(1) + 1,
        "PageSize": query.limit,
        "TotalCount": page.total,
        "Images": { "Image": images },
    }))
}

/// DeleteImage. `Force` is accepted (`true` or `false`): no instance runs an image here, so
/// there is nothing for it to override.
pub(super) async fn delete_image(
    service: &Service,
    account_id: &str,
    params: &Params,
) -> Result<Value, EcsError> {
    let image_id = ImageId::parse(params.text("ImageId"))?;
    flag(params, "Force")?;
    service.delete_image(account_id, &image_id).await?;
    Ok(json!({}))
}

/// One image in ECS's field names and formats; the constants are what this service offers (a
/// custom image of the caller's, made from one snapshot, available at once, run by no instance).
fn image_json(image: Image) -> Value {
    json!({
        "ImageId": image.image_id,
        "ImageName": image.image_name.unwrap_or_default(),
        "Status": "Available",
        "Progress": "100%",
        "CreationTime": ecs_time(image.created_at),
        "ImageOwnerAlias": "self",
        "Usage": "none",
        "Size": image.size_gib,
        "DiskDeviceMappings": {
            "DiskDeviceMapping": [{
                "SnapshotId": image.snapshot_id,
                "Size": image.size_gib.to_string(),
                "Type": image.disk_type.as_str(),
            }],
        },
    })
}
