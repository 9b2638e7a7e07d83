"""The official ECS SDK for Python against snapshotd's ECS-compatible edge.

Run by tests/api/ecs_edge.rs with the edge's address; prints `ok <step>` for each step that
passed and exits non-zero at the first that did not. Both signature schemes the SDK sends are
walked through: ACS3-HMAC-SHA256 (its default) and signature v1 (`signature_algorithm='v2'`).
"""

import sys
import uuid
from datetime import datetime, timedelta, timezone

from alibabacloud_ecs20140526 import models as ecs
from alibabacloud_ecs20140526.client import Client
from alibabacloud_tea_openapi import models as open_api_models
from alibabacloud_tea_util import models as util_models

ENDPOINT = sys.argv[1]
DEMO = ("LTAIdemo", "demo-secret-of-acct-demo")
BROKE = ("LTAIdemoBroke", "demo-secret-of-acct-demo-broke")
NO_RETRY = util_models.RuntimeOptions(autoretry=False)


def client(key, scheme):
    config = open_api_models.Config(
        access_key_id=key[0],
        access_key_secret=key[1],
        endpoint=ENDPOINT,
        protocol="http",
        region_id="cn-hangzhou",
    )
    if scheme == "v1":
        config.signature_algorithm = "v2"  # the SDK's name for RPC signature v1 (HMAC-SHA1)
    return Client(config)


def refused(call, code, status):
    try:
        call()
    except Exception as err:  # the SDK raises ClientException / ServerException
        got = (getattr(err, "code", None), getattr(err, "status_code", None))
        assert got == (code, status), f"expected {(code, status)}, got {got}: {err}"
        return err
    raise AssertionError(f"expected {code}, the call succeeded")


def walk(scheme, disk_id, disk_type):
    demo = client(DEMO, scheme)
    token = str(uuid.uuid4())
    create = ecs.CreateSnapshotRequest(
        disk_id=disk_id,
        snapshot_name="nightly",
        description="before the upgrade",
        client_token=token,
        retention_days=7,
        tag=[ecs.CreateSnapshotRequestTag(key="env", value="prod")],
    )
    created = demo.create_snapshot_with_options(create, NO_RETRY)
    snapshot_id = created.body.snapshot_id
    assert created.status_code == 200 and snapshot_id.startswith("s-"), created.body
    assert created.body.request_id, created.body
    print(f"ok create {scheme}")

    replayed = demo.create_snapshot_with_options(create, NO_RETRY)
    assert replayed.body.snapshot_id == snapshot_id, replayed.body
    assert replayed.body.request_id != created.body.request_id
    print(f"ok replay {scheme}")

    described = demo.describe_snapshots_with_options(
        ecs.DescribeSnapshotsRequest(region_id="cn-hangzhou", snapshot_ids=f'["{snapshot_id}"]'),
        NO_RETRY,
    )
    snapshots = described.body.snapshots.snapshot
    assert len(snapshots) == 1, described.body
    snapshot = snapshots[0]
    assert snapshot.snapshot_id == snapshot_id
    assert snapshot.snapshot_name == "nightly"
    assert snapshot.source_disk_id == disk_id
    assert snapshot.status == "progressing", snapshot.status
    assert snapshot.progress.endswith("%"), snapshot.progress
    assert snapshot.retention_days == 7
    assert snapshot.tags.tag[0].tag_key == "env" and snapshot.tags.tag[0].tag_value == "prod"
    print(f"ok describe {scheme}")

    rows = [
        ("d-demo-local", "DiskCategory.OperationNotSupported", 400),
        ("d-nobody-has-it", "InvalidDiskId.NotFound", 404),
        ("D-BAD", "DiskId.ValueNotSupported", 403),
        (disk_id, "IncorrectDiskStatus.CreatingSnapshot", 403),
        ("d-demo-instance-locked", "InstanceLockedForSecurity", 403),
    ]
    for disk, code, status in rows:
        refused(
            lambda: demo.create_snapshot_with_options(ecs.CreateSnapshotRequest(disk_id=disk), NO_RETRY),
            code,
            status,
        )
    refused(
        lambda: demo.create_snapshot_with_options(
            ecs.CreateSnapshotRequest(disk_id=disk_id, description="http://x"), NO_RETRY
        ),
        "InvalidDescription.Malformed",
        404,
    )
    refused(
        lambda: demo.create_snapshot_with_options(
            ecs.CreateSnapshotRequest(disk_id=disk_id, client_token=token), NO_RETRY
        ),
        "IdempotentParameterMismatch",
        403,
    )
    print(f"ok refusals {scheme}")

    broke = client(BROKE, scheme)
    theirs = broke.describe_snapshots_with_options(
        ecs.DescribeSnapshotsRequest(region_id="cn-hangzhou", snapshot_ids=f'["{snapshot_id}"]'),
        NO_RETRY,
    )
    assert not theirs.body.snapshots.snapshot, theirs.body
    refused(
        lambda: broke.delete_snapshot_with_options(
            ecs.DeleteSnapshotRequest(snapshot_id=snapshot_id), NO_RETRY
        ),
        "InvalidSnapshotId.NotFound",
        404,
    )
    print(f"ok isolation {scheme}")

    wrong = client((DEMO[0], "not-the-demo-secret"), scheme)
    err = refused(
        lambda: wrong.describe_snapshots_with_options(
            ecs.DescribeSnapshotsRequest(region_id="cn-hangzhou"), NO_RETRY
        ),
        "SignatureDoesNotMatch",
        400,
    )
    assert "server string to sign is:" in str(err), err
    print(f"ok wrong secret {scheme}")

    unknown = client(("LTAInobody", "whatever-secret-123"), scheme)
    refused(
        lambda: unknown.describe_snapshots_with_options(
            ecs.DescribeSnapshotsRequest(region_id="cn-hangzhou"), NO_RETRY
        ),
        "InvalidAccessKeyId.NotFound",
        404,
    )
    print(f"ok unknown key {scheme}")

    start = (datetime.now(timezone.utc) - timedelta(minutes=5)).strftime("%Y-%m-%dT%H:%MZ")
    filtered = demo.describe_snapshots_with_options(
        ecs.DescribeSnapshotsRequest(
            region_id="cn-hangzhou",
            instance_id="i-demo-running",
            source_disk_type=disk_type,
            usage="none",
            filter=[ecs.DescribeSnapshotsRequestFilter(key="CreationStartTime", value=start)],
        ),
        NO_RETRY,
    )
    listed = [s.snapshot_id for s in filtered.body.snapshots.snapshot]
    assert snapshot_id in listed, filtered.body
    assert filtered.body.total_count == len(listed), filtered.body
    print(f"ok describe filters {scheme}")

    demo.modify_snapshot_attribute_with_options(
        ecs.ModifySnapshotAttributeRequest(
            snapshot_id=snapshot_id, snapshot_name="nightly-renamed", retention_days=30
        ),
        NO_RETRY,
    )
    refused(
        lambda: demo.modify_snapshot_attribute_with_options(
            ecs.ModifySnapshotAttributeRequest(snapshot_id=snapshot_id, retention_days=7), NO_RETRY
        ),
        "InvalidRetentionDays.ShortenNotSupported",
        403,
    )
    print(f"ok modify {scheme}")

    demo.tag_resources_with_options(
        ecs.TagResourcesRequest(
            region_id="cn-hangzhou",
            resource_type="snapshot",
            resource_id=[snapshot_id],
            tag=[ecs.TagResourcesRequestTag(key="team", value="storage")],
        ),
        NO_RETRY,
    )
    tags = demo.list_tag_resources_with_options(
        ecs.ListTagResourcesRequest(
            region_id="cn-hangzhou", resource_type="snapshot", resource_id=[snapshot_id]
        ),
        NO_RETRY,
    )
    pairs = {(t.tag_key, t.tag_value) for t in tags.body.tag_resources.tag_resource}
    assert pairs == {("env", "prod"), ("team", "storage")}, tags.body
    demo.untag_resources_with_options(
        ecs.UntagResourcesRequest(
            region_id="cn-hangzhou",
            resource_type="snapshot",
            resource_id=[snapshot_id],
            tag_key=["team"],
        ),
        NO_RETRY,
    )
    print(f"ok tags {scheme}")

    images = demo.describe_images_with_options(
        ecs.DescribeImagesRequest(region_id="cn-hangzhou", snapshot_id=snapshot_id), NO_RETRY
    )
    assert images.body.total_count == 0, images.body
    refused(
        lambda: demo.delete_image_with_options(
            ecs.DeleteImageRequest(region_id="cn-hangzhou", image_id="m-00000000000000000000"),
            NO_RETRY,
        ),
        "InvalidImageId.NotFound",
        404,
    )
    print(f"ok images {scheme}")

    deleted = demo.delete_snapshot_with_options(
        ecs.DeleteSnapshotRequest(snapshot_id=snapshot_id, force=True), NO_RETRY
    )
    assert deleted.status_code == 200 and deleted.body.request_id
    refused(
        lambda: demo.delete_snapshot_with_options(
            ecs.DeleteSnapshotRequest(snapshot_id=snapshot_id), NO_RETRY
        ),
        "InvalidSnapshotId.NotFound",
        404,
    )
    print(f"ok delete {scheme}")


walk("acs3", "d-demo-ok", "Data")
walk("v1", "d-demo-ok-2", "System")
