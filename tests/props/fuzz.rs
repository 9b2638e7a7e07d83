//! Fuzzing every RPC of the real server (its SimulationService mounted too) over a real socket, driven by proptest so it runs in CI.
//!
//! The request body is sent as raw bytes (a pass-through codec on `tonic::client::Grpc`), so
//! the server's own decoding is under test: arbitrary bytes, valid encodings with random
//! mutations, well-formed messages whose every field holds something odd, and invalid UTF-8 in
//! string fields. The promises:
//! - every answer is OK or one of the statuses the API documents for a caller's mistake
//!   (INVALID_ARGUMENT, NOT_FOUND, FAILED_PRECONDITION, PERMISSION_DENIED, UNAUTHENTICATED,
//!   RESOURCE_EXHAUSTED): never UNKNOWN, never INTERNAL, and an OK body decodes;
//! - invalid UTF-8 in a string field is INVALID_ARGUMENT;
//! - for a body that decodes as CreateSnapshot, DeleteSnapshot, CreateImage or DeleteImage, OK
//!   only if every
//!   field keeps its rule as `validators.rs` specifies it, and a refusal for an input rule names
//!   the first rule broken, in the seed's order (nothing slips past validation, nothing valid is
//!   refused for a rule it keeps);
//! - the server never panics (a panic hook watches its threads) and keeps answering.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, Once};
use std::time::Duration;

use bytes::{Buf, BufMut, Bytes};
use chrono::{TimeDelta, Utc};
use proptest::prelude::*;
use proptest::sample::select;
use proptest::test_runner::{TestCaseError, TestRunner};
use prost::Message;
use snapshotd::domain::{
    Account, CreateImageCommand, CreateSnapshotCommand, Description, Disk, DiskCategory, DiskId,
    DiskStatus, DiskType, Instance, InstanceStatus, MAX_CLOCK_ADVANCE_SECONDS, RetentionDays,
    SnapshotId,
};
use snapshotd::pb;
use snapshotd::service::{CreateOutcome, Service};
use snapshotd::{App, Config};
use tokio::sync::oneshot;
use tonic::codec::{Codec, DecodeBuf, Decoder, EncodeBuf, Encoder};
use tonic::codegen::http::uri::PathAndQuery;
use tonic::transport::Channel;
use tonic::{Code, Status};

use crate::support::{Backend, TestDatabase, config, runtime};
use crate::validators::text;

const ADMIN_TOKEN: &str = "fuzz-admin-token";
const ACCOUNT: &str = "acct-fuzz";
/// The threads the fuzzed server runs on; the panic hook counts panics there.
const SERVER_THREADS: &str = "fuzz-server";

// ---------------------------------------------------------------------------------------------
// A codec that sends and receives message bodies as they are.

#[derive(Debug, Clone, Copy, Default)]
struct RawCodec;

struct RawEncoder;

struct RawDecoder;

impl Encoder for RawEncoder {
    type Item = Bytes;
    type Error = Status;

    fn encode(&mut self, item: Bytes, dst: &mut EncodeBuf<'_>) -> Result<(), Status> {
        dst.put(item);
        Ok(())
    }
}

impl Decoder for RawDecoder {
    type Item = Bytes;
    type Error = Status;

    fn decode(&mut self, src: &mut DecodeBuf<'_>) -> Result<Option<Bytes>, Status> {
        Ok(Some(src.copy_to_bytes(src.remaining())))
    }
}

impl Codec for RawCodec {
    type Encode = Bytes;
    type Decode = Bytes;
    type Encoder = RawEncoder;
    type Decoder = RawDecoder;

    fn encoder(&mut self) -> RawEncoder {
        RawEncoder
    }

    fn decoder(&mut self) -> RawDecoder {
        RawDecoder
    }
}

// ---------------------------------------------------------------------------------------------
// The RPCs, with a generator of well-formed requests for each.

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Rpc {
    CreateSnapshot,
    DescribeSnapshots,
    DeleteSnapshot,
    CreateImage,
    DescribeImages,
    DeleteImage,
    PutAccount,
    PutInstance,
    PutDisk,
    GetDisk,
    ModifySnapshotAttribute,
    TagResources,
    UntagResources,
    ListTagResources,
    WatchSnapshots,
    AdvanceClock,
    FailNextCopy,
    SetCopyRate,
}

const RPCS: [Rpc; 18] = [
    Rpc::CreateSnapshot,
    Rpc::DescribeSnapshots,
    Rpc::DeleteSnapshot,
    Rpc::CreateImage,
    Rpc::ModifySnapshotAttribute,
    Rpc::DescribeImages,
    Rpc::DeleteImage,
    Rpc::PutAccount,
    Rpc::PutInstance,
    Rpc::PutDisk,
    Rpc::GetDisk,
    Rpc::TagResources,
    Rpc::UntagResources,
    Rpc::ListTagResources,
    Rpc::WatchSnapshots,
    Rpc::AdvanceClock,
    Rpc::FailNextCopy,
    Rpc::SetCopyRate,
];

impl Rpc {
    fn path(self) -> &'static str {
        match self {
            Self::CreateSnapshot => "/ecs.snapshot.v1.SnapshotService/CreateSnapshot",
            Self::DescribeSnapshots => "/ecs.snapshot.v1.SnapshotService/DescribeSnapshots",
            Self::DeleteSnapshot => "/ecs.snapshot.v1.SnapshotService/DeleteSnapshot",
            Self::CreateImage => "/ecs.snapshot.v1.ImageService/CreateImage",
            Self::DescribeImages => "/ecs.snapshot.v1.ImageService/DescribeImages",
            Self::DeleteImage => "/ecs.snapshot.v1.ImageService/DeleteImage",
            Self::PutAccount => "/ecs.snapshot.v1.InventoryService/PutAccount",
            Self::PutInstance => "/ecs.snapshot.v1.InventoryService/PutInstance",
            Self::PutDisk => "/ecs.snapshot.v1.InventoryService/PutDisk",
            Self::GetDisk => "/ecs.snapshot.v1.InventoryService/GetDisk",
            Self::ModifySnapshotAttribute => {
                "/ecs.snapshot.v1.SnapshotService/ModifySnapshotAttribute"
            }
            Self::TagResources => "/ecs.snapshot.v1.TagService/TagResources",
            Self::UntagResources => "/ecs.snapshot.v1.TagService/UntagResources",
            Self::ListTagResources => "/ecs.snapshot.v1.TagService/ListTagResources",
            Self::WatchSnapshots => "/ecs.snapshot.v1.SnapshotService/WatchSnapshots",
            Self::AdvanceClock => "/ecs.snapshot.v1.SimulationService/AdvanceClock",
            Self::FailNextCopy => "/ecs.snapshot.v1.SimulationService/FailNextCopy",
            Self::SetCopyRate => "/ecs.snapshot.v1.SimulationService/SetCopyRate",
        }
    }

    /// The request's string fields, each as the path of field numbers that leads to it: a
    /// top-level string, or one inside a message field (`Tag` has its key at 1 and its value at
    /// 2; a Put request holds its record at 1).
    fn string_fields(self) -> &'static [&'static [u32]] {
        match self {
            Self::CreateSnapshot => &[&[1], &[2], &[3], &[4], &[6, 1], &[6, 2]],
            Self::DescribeSnapshots => &[&[1], &[2], &[4], &[6], &[7, 1], &[7, 2], &[8], &[10]],
            Self::DeleteSnapshot | Self::DeleteImage | Self::GetDisk => &[&[1]],
            Self::DescribeImages => &[&[1], &[2], &[4]],
            Self::CreateImage | Self::ModifySnapshotAttribute => &[&[1], &[2], &[3]],
            Self::PutAccount => &[&[1, 1]],
            Self::PutInstance => &[&[1, 1], &[1, 2], &[1, 6]],
            Self::PutDisk => &[&[1, 1], &[1, 2], &[1, 3], &[1, 6]],
            Self::TagResources => &[&[1], &[2], &[3, 1], &[3, 2]],
            Self::UntagResources => &[&[1], &[2], &[3]],
            Self::ListTagResources => &[&[1], &[2], &[3, 1], &[3, 2], &[4]],
            Self::WatchSnapshots => &[&[1], &[2]],
            Self::AdvanceClock => &[],
            Self::FailNextCopy | Self::SetCopyRate => &[&[1]],
        }
    }

    /// An OK answer must decode as the RPC's response message.
    fn decodes_as_response(self, body: &[u8]) -> Result<(), prost::DecodeError> {
        match self {
            Self::CreateSnapshot => pb::CreateSnapshotResponse::decode(body).map(drop),
            Self::DescribeSnapshots => pb::DescribeSnapshotsResponse::decode(body).map(drop),
            Self::DeleteSnapshot => pb::DeleteSnapshotResponse::decode(body).map(drop),
            Self::CreateImage => pb::CreateImageResponse::decode(body).map(drop),
            Self::DescribeImages => pb::DescribeImagesResponse::decode(body).map(drop),
            Self::DeleteImage => pb::DeleteImageResponse::decode(body).map(drop),
            Self::PutAccount => pb::PutAccountResponse::decode(body).map(drop),
            Self::PutInstance => pb::PutInstanceResponse::decode(body).map(drop),
            Self::PutDisk => pb::PutDiskResponse::decode(body).map(drop),
            Self::GetDisk => pb::GetDiskResponse::decode(body).map(drop),
            Self::ModifySnapshotAttribute => {
                pb::ModifySnapshotAttributeResponse::decode(body).map(drop)
            }
            Self::TagResources => pb::TagResourcesResponse::decode(body).map(drop),
            Self::UntagResources => pb::UntagResourcesResponse::decode(body).map(drop),
            Self::ListTagResources => pb::ListTagResourcesResponse::decode(body).map(drop),
            Self::WatchSnapshots => pb::WatchSnapshotsResponse::decode(body).map(drop),
            Self::AdvanceClock => pb::AdvanceClockResponse::decode(body).map(drop),
            Self::FailNextCopy => pb::FailNextCopyResponse::decode(body).map(drop),
            Self::SetCopyRate => pb::SetCopyRateResponse::decode(body).map(drop),
        }
    }
}

/// A field value: mostly one the seeded inventory knows (so requests get past the first rule),
/// sometimes anything from the validators' boundary-hugging generator.
fn field(known: &'static [&'static str], limits: &'static [usize]) -> BoxedStrategy<String> {
    prop_oneof![
        6 => select(known).prop_map(str::to_owned),
        1 => text(limits),
    ]
    .boxed()
}

fn disk_id() -> BoxedStrategy<String> {
    field(
        &["d-fuzz-0", "d-fuzz-1", "d-fuzz-2", "d-other", "", "d-nope"],
        &[0, 3, 64],
    )
}

fn account_id() -> BoxedStrategy<String> {
    field(&[ACCOUNT, "acct-other", ""], &[0, 1, 64])
}

thread_local! {
    /// The ids of the snapshots seeded into the server this thread's test fuzzes.
    static SEEDED_SNAPSHOTS: std::cell::RefCell<Vec<String>> =
        const { std::cell::RefCell::new(Vec::new()) };
}

/// An image id: well-formed ones nobody has, near misses of the shape (short, long, upper
/// case, a snapshot's prefix), empty, or anything near the id's length.
fn image_id() -> BoxedStrategy<String> {
    field(
        &[
            "m-00000000000000000000",
            "m-zzzzzzzzzzzzzzzzzzzz",
            "m-0000000000000000000",
            "m-000000000000000000000",
            "m-ZZZZZZZZZZZZZZZZZZZZ",
            "s-00000000000000000000",
            "",
        ],
        &[0, 2, 22, 23],
    )
}

/// Mostly a snapshot the server holds (read when the value is generated, after seeding).
fn snapshot_id() -> BoxedStrategy<String> {
    let seeded = any::<prop::sample::Index>().prop_map(|pick| {
        SEEDED_SNAPSHOTS.with(|ids| {
            let ids = ids.borrow();
            if ids.is_empty() {
                String::new()
            } else {
                ids[pick.index(ids.len())].clone()
            }
        })
    });
    prop_oneof![
        4 => seeded,
        2 => field(&["s-00000000000000000000", "", "s-1"], &[0, 22]),
    ]
    .boxed()
}

/// Mostly zero (the default of every number in the API), sometimes small, sometimes anything.
fn small_int() -> BoxedStrategy<i32> {
    prop_oneof![6 => Just(0), 2 => -2i32..=8, 1 => any::<i32>()].boxed()
}

fn timestamp() -> impl Strategy<Value = Option<prost_types::Timestamp>> {
    let now = Utc::now().timestamp();
    proptest::option::of(
        (
            prop_oneof![
                4 => now - 200_000..now + 10_000,
                1 => any::<i64>(),
                1 => -100_000_000_000_000i64..100_000_000_000_000,
            ],
            prop_oneof![4 => Just(0i32), 1 => any::<i32>()],
        )
            .prop_map(|(seconds, nanos)| prost_types::Timestamp { seconds, nanos }),
    )
}

fn tags() -> impl Strategy<Value = Vec<pb::Tag>> {
    proptest::collection::vec(
        (
            field(&["env", "team"], &[0, 1, 128]),
            field(&["prod", ""], &[0, 128]),
        )
            .prop_map(|(key, value)| pb::Tag { key, value }),
        0..4,
    )
}

/// A well-formed encoding of a request to `rpc`, with values chosen by [`field`].
fn well_formed(rpc: Rpc) -> BoxedStrategy<Vec<u8>> {
    match rpc {
        Rpc::CreateSnapshot => (
            disk_id(),
            field(&["", "nightly"], &[0, 2, 128]),
            field(&["", "before upgrade"], &[0, 2, 256]),
            field(&["", "token-1"], &[0, 64]),
            small_int(),
            tags(),
        )
            .prop_map(
                |(disk_id, snapshot_name, description, client_token, retention_days, tags)| {
                    pb::CreateSnapshotRequest {
                        disk_id,
                        snapshot_name,
                        description,
                        client_token,
                        retention_days,
                        tags,
                    }
                    .encode_to_vec()
                },
            )
            .boxed(),
        Rpc::DescribeSnapshots => (
            field(&["", "d-fuzz-0"], &[0, 64]),
            proptest::collection::vec(snapshot_id(), 0..3),
            small_int(),
            field(&["", "nightly"], &[0, 128]),
            small_int(),
            field(&[""], &[0, 2, 100]),
            tags(),
            field(&["", "i-fuzz"], &[0, 1, 65]),
            small_int(),
            field(&["", "image", "none"], &[0, 6]),
            timestamp(),
            timestamp(),
        )
            .prop_map(
                |(
                    disk_id,
                    snapshot_ids,
                    status,
                    snapshot_name,
                    max_results,
                    next_token,
                    tags,
                    instance_id,
                    source_disk_type,
                    usage,
                    created_after,
                    created_before,
                )| {
                    pb::DescribeSnapshotsRequest {
                        disk_id,
                        snapshot_ids,
                        status,
                        snapshot_name,
                        max_results,
                        next_token,
                        tags,
                        instance_id,
                        source_disk_type,
                        usage,
                        created_after,
                        created_before,
                    }
                    .encode_to_vec()
                },
            )
            .boxed(),
        Rpc::DeleteSnapshot => (snapshot_id(), any::<bool>())
            .prop_map(|(snapshot_id, force)| {
                pb::DeleteSnapshotRequest { snapshot_id, force }.encode_to_vec()
            })
            .boxed(),
        Rpc::CreateImage => (
            snapshot_id(),
            field(&["", "web-base"], &[0, 2, 128]),
            field(&["", "image-token"], &[0, 64]),
        )
            .prop_map(|(snapshot_id, image_name, client_token)| {
                pb::CreateImageRequest {
                    snapshot_id,
                    image_name,
                    client_token,
                }
                .encode_to_vec()
            })
            .boxed(),
        Rpc::DescribeImages => (
            proptest::collection::vec(image_id(), 0..3),
            snapshot_id(),
            small_int(),
            field(&[""], &[0, 2, 100]),
        )
            .prop_map(|(image_ids, snapshot_id, max_results, next_token)| {
                pb::DescribeImagesRequest {
                    image_ids,
                    snapshot_id,
                    max_results,
                    next_token,
                }
                .encode_to_vec()
            })
            .boxed(),
        Rpc::DeleteImage => image_id()
            .prop_map(|image_id| pb::DeleteImageRequest { image_id }.encode_to_vec())
            .boxed(),
        Rpc::PutAccount => (
            account_id(),
            proptest::bool::weighted(0.9),
            proptest::bool::weighted(0.1),
        )
            .prop_map(|(account_id, activated, broke)| {
                pb::PutAccountRequest {
                    account: Some(pb::Account {
                        account_id,
                        snapshot_service_activated: activated,
                        insufficient_balance: broke,
                    }),
                }
                .encode_to_vec()
            })
            .boxed(),
        Rpc::PutInstance => (
            field(&["i-fuzz", "i-other"], &[0, 64]),
            account_id(),
            small_int(),
            timestamp(),
            timestamp(),
            proptest::collection::vec(field(&["security", "financial"], &[0, 64]), 0..3),
        )
            .prop_map(
                |(instance_id, account_id, status, created_at, last_started_at, lock_reasons)| {
                    pb::PutInstanceRequest {
                        instance: Some(pb::Instance {
                            instance_id,
                            account_id,
                            status,
                            created_at,
                            last_started_at,
                            lock_reasons,
                        }),
                    }
                    .encode_to_vec()
                },
            )
            .boxed(),
        Rpc::PutDisk => (
            (
                disk_id(),
                account_id(),
                field(&["cloud_essd", "local_ssd_pro"], &[0, 32]),
                small_int(),
                small_int(),
            ),
            (
                field(&["i-fuzz", ""], &[0, 64]),
                prop_oneof![3 => 1i32..100, 1 => any::<i32>()],
                timestamp(),
                timestamp(),
                any::<bool>(),
            ),
        )
            .prop_map(
                |(
                    (disk_id, account_id, category, r#type, status),
                    (instance_id, size_gib, created_at, expires_at, ever_attached),
                )| {
                    pb::PutDiskRequest {
                        disk: Some(pb::Disk {
                            disk_id,
                            account_id,
                            category,
                            r#type,
                            status,
                            instance_id,
                            size_gib,
                            created_at,
                            expires_at,
                            ever_attached,
                        }),
                    }
                    .encode_to_vec()
                },
            )
            .boxed(),
        Rpc::GetDisk => disk_id()
            .prop_map(|disk_id| pb::GetDiskRequest { disk_id }.encode_to_vec())
            .boxed(),
        // Each attribute absent, given empty, or given: proto3 `optional` tells them apart.
        Rpc::ModifySnapshotAttribute => (
            snapshot_id(),
            proptest::option::of(field(&["", "renamed"], &[0, 2, 128])),
            proptest::option::of(field(&["", "after upgrade"], &[0, 2, 256])),
            proptest::option::of(prop_oneof![small_int(), Just(65_536), Just(65_537)]),
        )
            .prop_map(
                |(snapshot_id, snapshot_name, description, retention_days)| {
                    pb::ModifySnapshotAttributeRequest {
                        snapshot_id,
                        snapshot_name,
                        description,
                        retention_days,
                    }
                    .encode_to_vec()
                },
            )
            .boxed(),
        Rpc::TagResources => (
            resource_type(),
            proptest::collection::vec(snapshot_id(), 0..3),
            tags(),
        )
            .prop_map(|(resource_type, resource_ids, tags)| {
                pb::TagResourcesRequest {
                    resource_type,
                    resource_ids,
                    tags,
                }
                .encode_to_vec()
            })
            .boxed(),
        Rpc::UntagResources => (
            resource_type(),
            proptest::collection::vec(snapshot_id(), 0..3),
            proptest::collection::vec(field(&["env", "team"], &[0, 1, 128]), 0..3),
            any::<bool>(),
        )
            .prop_map(|(resource_type, resource_ids, tag_keys, all)| {
                pb::UntagResourcesRequest {
                    resource_type,
                    resource_ids,
                    tag_keys,
                    all,
                }
                .encode_to_vec()
            })
            .boxed(),
        Rpc::ListTagResources => (
            resource_type(),
            proptest::collection::vec(snapshot_id(), 0..3),
            tags(),
            field(&[""], &[0, 2, 100]),
        )
            .prop_map(|(resource_type, resource_ids, tags, next_token)| {
                pb::ListTagResourcesRequest {
                    resource_type,
                    resource_ids,
                    tags,
                    next_token,
                }
                .encode_to_vec()
            })
            .boxed(),
        Rpc::WatchSnapshots => (proptest::collection::vec(snapshot_id(), 0..3), disk_id())
            .prop_map(|(snapshot_ids, disk_id)| {
                pb::WatchSnapshotsRequest {
                    snapshot_ids,
                    disk_id,
                }
                .encode_to_vec()
            })
            .boxed(),
        // Mostly small moves, sometimes the longest, anything, or backward: the clock may run
        // to the end of year 9999 within a run, and every other RPC must still answer properly.
        Rpc::AdvanceClock => prop_oneof![
            4 => 1i64..=86_400,
            1 => Just(MAX_CLOCK_ADVANCE_SECONDS),
            1 => any::<i64>(),
            1 => -2i64..=0,
        ]
        .prop_map(|seconds| pb::AdvanceClockRequest { seconds }.encode_to_vec())
        .boxed(),
        Rpc::FailNextCopy => disk_id()
            .prop_map(|disk_id| pb::FailNextCopyRequest { disk_id }.encode_to_vec())
            .boxed(),
        Rpc::SetCopyRate => (
            disk_id(),
            prop_oneof![
                2 => Just(i64::from(COPY_RATE_MIBPS)),
                1 => Just(0i64),
                1 => 1i64..=1024,
                1 => any::<i64>(),
            ],
        )
            .prop_map(|(disk_id, mibps)| pb::SetCopyRateRequest { disk_id, mibps }.encode_to_vec())
            .boxed(),
    }
}

/// The tag calls' resource type: mostly the one there is, sometimes another or anything.
fn resource_type() -> BoxedStrategy<String> {
    field(&["snapshot", "snapshot", "instance", ""], &[0, 8, 64])
}

fn any_rpc() -> impl Strategy<Value = Rpc> {
    select(RPCS.to_vec())
}

fn well_formed_request() -> impl Strategy<Value = (Rpc, Vec<u8>)> {
    any_rpc().prop_flat_map(|rpc| (Just(rpc), well_formed(rpc)))
}

// ---------------------------------------------------------------------------------------------
// Mutations of an encoding.

#[derive(Debug, Clone)]
enum Mutation {
    FlipBit(prop::sample::Index, u8),
    SetByte(prop::sample::Index, u8),
    Insert(prop::sample::Index, Vec<u8>),
    Remove(prop::sample::Index, usize),
    Truncate(prop::sample::Index),
    /// Appends a field with any number, wire type and payload.
    AppendField(u32, u8, Vec<u8>),
}

fn mutation() -> impl Strategy<Value = Mutation> {
    let index = any::<prop::sample::Index>();
    prop_oneof![
        3 => (index.clone(), 0u8..8).prop_map(|(at, bit)| Mutation::FlipBit(at, bit)),
        2 => (index.clone(), prop_oneof![Just(0x80u8), Just(0xff), Just(0), any::<u8>()])
            .prop_map(|(at, byte)| Mutation::SetByte(at, byte)),
        1 => (index.clone(), proptest::collection::vec(any::<u8>(), 1..8))
            .prop_map(|(at, bytes)| Mutation::Insert(at, bytes)),
        1 => (index.clone(), 1usize..8).prop_map(|(at, n)| Mutation::Remove(at, n)),
        1 => index.prop_map(Mutation::Truncate),
        1 => (prop_oneof![1u32..16, any::<u32>()], 0u8..8, proptest::collection::vec(any::<u8>(), 0..12))
            .prop_map(|(number, wire, bytes)| Mutation::AppendField(number, wire, bytes)),
    ]
}

fn put_varint(buf: &mut Vec<u8>, mut value: u64) {
    while value >= 0x80 {
        buf.push((value as u8) | 0x80);
        value >>= 7;
    }
    buf.push(value as u8);
}

fn apply(mut bytes: Vec<u8>, mutation: &Mutation) -> Vec<u8> {
    match mutation {
        Mutation::FlipBit(at, bit) if !bytes.is_empty() => {
            let at = at.index(bytes.len());
            bytes[at] ^= 1 << bit;
        }
        Mutation::SetByte(at, byte) if !bytes.is_empty() => {
            let at = at.index(bytes.len());
            bytes[at] = *byte;
        }
        Mutation::Insert(at, inserted) => {
            let at = at.index(bytes.len() + 1);
            bytes.splice(at..at, inserted.iter().copied());
        }
        Mutation::Remove(at, n) if !bytes.is_empty() => {
            let at = at.index(bytes.len());
            let end = (at + n).min(bytes.len());
            bytes.drain(at..end);
        }
        Mutation::Truncate(at) => bytes.truncate(at.index(bytes.len() + 1)),
        Mutation::AppendField(number, wire, payload) => {
            put_varint(&mut bytes, (u64::from(*number) << 3) | u64::from(*wire));
            if *wire == 2 {
                put_varint(&mut bytes, payload.len() as u64);
            }
            bytes.extend_from_slice(payload);
        }
        _ => {}
    }
    bytes
}

/// A length-delimited field `number` holding `payload`.
fn length_delimited(number: u32, payload: &[u8]) -> Vec<u8> {
    let mut field = Vec::new();
    put_varint(&mut field, (u64::from(number) << 3) | 2);
    put_varint(&mut field, payload.len() as u64);
    field.extend_from_slice(payload);
    field
}

/// Byte sequences that are not UTF-8: a lone continuation byte, a truncated sequence, an
/// overlong encoding, an encoded surrogate, bytes never used, a code point past U+10FFFF.
const NOT_UTF8: &[&[u8]] = &[
    b"\x80",
    b"\xc3",
    b"ab\xc3",
    b"\xc0\xaf",
    b"\xed\xa0\x80",
    b"\xff\xfe",
    b"d-\xf5\x80\x80\x80",
    b"\xf4\x90\x80\x80",
    b"ok\xe6\x9c",
];

// ---------------------------------------------------------------------------------------------
// The server under fuzz.

static SERVER_PANICS: AtomicUsize = AtomicUsize::new(0);
static LAST_SERVER_PANIC: Mutex<String> = Mutex::new(String::new());

/// Counts panics on the server's threads (the test's own assertion failures are not counted).
fn watch_server_panics() {
    static INSTALL: Once = Once::new();
    INSTALL.call_once(|| {
        let default = std::panic::take_hook();
        std::panic::set_hook(Box::new(move |info| {
            if std::thread::current().name() == Some(SERVER_THREADS) {
                SERVER_PANICS.fetch_add(1, Ordering::SeqCst);
                if let Ok(mut last) = LAST_SERVER_PANIC.lock() {
                    *last = info.to_string();
                }
            }
            default(info);
        }));
    });
}

/// A client of the fuzzed server.
#[derive(Clone)]
struct Client {
    channel: Channel,
    /// How often each RPC got each code, to show the fuzz gets past the first checks.
    tally: Arc<Mutex<BTreeMap<String, usize>>>,
}

impl Client {
    async fn call(&self, rpc: Rpc, body: Vec<u8>, identity: Identity) -> Result<Bytes, Status> {
        let mut grpc = tonic::client::Grpc::new(self.channel.clone());
        grpc.ready()
            .await
            .map_err(|err| Status::unknown(format!("the channel is not ready: {err}")))?;
        let mut request = tonic::Request::new(Bytes::from(body));
        let metadata = request.metadata_mut();
        if let Some(account) = identity.account {
            metadata.insert("x-account-id", account.parse().expect("an ASCII header"));
        }
        if let Some(authorization) = identity.authorization {
            metadata.insert(
                "authorization",
                authorization.parse().expect("an ASCII header"),
            );
        }
        let path = PathAndQuery::from_static(rpc.path());
        if rpc == Rpc::WatchSnapshots {
            // A watch that opened is answered OK (its headers came); the first message, if
            // any, is its body. The stream is dropped here, which ends the watch.
            let mut stream = grpc
                .server_streaming(request, path, RawCodec)
                .await?
                .into_inner();
            let first = tokio::time::timeout(Duration::from_millis(50), stream.message()).await;
            return match first {
                Ok(Ok(Some(message))) => Ok(message),
                Ok(Err(status)) => Err(status),
                Ok(Ok(None)) | Err(_) => Ok(Bytes::new()),
            };
        }
        grpc.unary(request, path, RawCodec)
            .await
            .map(tonic::Response::into_inner)
    }

    /// Sends `body` to `rpc` and checks that the answer is a proper one.
    async fn send(&self, rpc: Rpc, body: Vec<u8>, identity: Identity) -> Result<(), TestCaseError> {
        let answer = self.call(rpc, body.clone(), identity).await;
        let code = answer.as_ref().map_or_else(Status::code, |_| Code::Ok);
        *self
            .tally
            .lock()
            .expect("the tally")
            .entry(format!("{rpc:?} {code:?}"))
            .or_default() += 1;
        check_answer(rpc, &body, &answer)
    }

    /// Moves the clock forward as far as the service takes it, in halving steps, to within a
    /// day of its end.
    async fn advance_to_the_end_of_time(&self) {
        // 9999-12-31T23:59:59Z.
        const LAST_SECOND: i64 = 253_402_300_799;
        let mut step = MAX_CLOCK_ADVANCE_SECONDS;
        let mut now = 0;
        while step >= 86_400 {
            let body = pb::AdvanceClockRequest { seconds: step }.encode_to_vec();
            match self.call(Rpc::AdvanceClock, body, Identity::CALLER).await {
                Ok(answer) => {
                    let answer = pb::AdvanceClockResponse::decode(answer).expect("an answer");
                    now = answer.now.expect("the time").seconds;
                }
                Err(status) if status.code() == Code::InvalidArgument => step /= 2,
                Err(status) => panic!("AdvanceClock by {step} s: {status:?}"),
            }
        }
        assert!(
            LAST_SECOND - now < 2 * 86_400,
            "the clock stopped at {now}, short of the end of time"
        );
    }

    /// A plain, valid call still gets OK: the server is alive and serving.
    async fn still_answers(&self) -> Result<(), TestCaseError> {
        let body = pb::DescribeSnapshotsRequest::default().encode_to_vec();
        match self
            .call(Rpc::DescribeSnapshots, body, Identity::CALLER)
            .await
        {
            Ok(_) => Ok(()),
            Err(status) => Err(TestCaseError::fail(format!(
                "the server stopped answering: {status:?}"
            ))),
        }
    }
}

/// The real server (`App`) on a port of its own, over a fresh database.
struct Server {
    client: Client,
    shutdown: Option<oneshot::Sender<()>>,
    server: Option<tokio::task::JoinHandle<()>>,
    _db: TestDatabase,
}

impl Server {
    async fn spawn(backend: Backend) -> Self {
        let db = TestDatabase::create(backend).await;
        let mut config = Config::for_database(db.url.clone());
        config.admin_token = Some(ADMIN_TOKEN.to_owned());
        config.db_max_connections = 8;
        // Copies of the 1 GiB disks take a millisecond, so creates often find the disk free.
        config.copy_rate_mibps = COPY_RATE_MIBPS;
        config.worker_interval = Duration::from_millis(5);
        config.simulation_controls = true;
        let app = App::build(config).await.expect("building the app");
        let seeded = seed(&app.service()).await;
        SEEDED_SNAPSHOTS.with(|ids| *ids.borrow_mut() = seeded);
        let addr = app.local_addr();
        let (shutdown, stop) = oneshot::channel::<()>();
        let server = tokio::spawn(async move {
            app.run_until(async {
                let _ = stop.await;
            })
            .await
            .expect("the server runs");
        });
        let channel = Channel::from_shared(format!("http://{addr}"))
            .expect("a URI")
            .timeout(Duration::from_secs(10))
            .connect()
            .await
            .expect("connecting to the server");
        Self {
            client: Client {
                channel,
                tally: Arc::default(),
            },
            shutdown: Some(shutdown),
            server: Some(server),
            _db: db,
        }
    }

    async fn stop(mut self) {
        if let Some(shutdown) = self.shutdown.take() {
            let _ = shutdown.send(());
        }
        if let Some(server) = self.server.take() {
            let _ = tokio::time::timeout(Duration::from_secs(10), server).await;
        }
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        if let Some(server) = self.server.take() {
            server.abort();
        }
    }
}

const COPY_RATE_MIBPS: u32 = 1_048_576;

/// Two accounts with a running instance each; healthy 1 GiB disks `d-fuzz-0..2` and
/// `d-other`; two accomplished snapshots of `d-fuzz-1`, the first pinned by an image. Returns
/// the snapshot ids.
async fn seed(service: &Service) -> Vec<String> {
    let now = Utc::now();
    for account_id in [ACCOUNT, "acct-other"] {
        service
            .put_account(&Account {
                account_id: account_id.to_owned(),
                snapshot_service_activated: true,
                insufficient_balance: false,
            })
            .await
            .expect("PutAccount");
    }
    for (instance_id, account_id) in [("i-fuzz", ACCOUNT), ("i-other", "acct-other")] {
        service
            .put_instance(&Instance {
                instance_id: instance_id.to_owned(),
                account_id: account_id.to_owned(),
                status: InstanceStatus::Running,
                created_at: now - TimeDelta::days(3),
                last_started_at: Some(now - TimeDelta::days(3)),
                lock_reasons: Vec::new(),
            })
            .await
            .expect("PutInstance");
    }
    for (disk_id, account_id, instance_id) in [
        ("d-fuzz-0", ACCOUNT, "i-fuzz"),
        ("d-fuzz-1", ACCOUNT, "i-fuzz"),
        ("d-fuzz-2", ACCOUNT, "i-fuzz"),
        ("d-other", "acct-other", "i-other"),
    ] {
        service
            .put_disk(&Disk {
                disk_id: disk_id.to_owned(),
                account_id: account_id.to_owned(),
                category: DiskCategory::CloudEssd,
                disk_type: DiskType::Data,
                status: DiskStatus::InUse,
                instance_id: Some(instance_id.to_owned()),
                size_gib: 1,
                created_at: now - TimeDelta::days(2),
                expires_at: None,
                ever_attached: true,
            })
            .await
            .expect("PutDisk");
    }
    let mut ids = Vec::new();
    for _ in 0..2 {
        let command = CreateSnapshotCommand {
            account_id: ACCOUNT.to_owned(),
            disk_id: DiskId::parse("d-fuzz-1").expect("a disk id"),
            snapshot_name: None,
            description: Description::default(),
            client_token: None,
            retention: RetentionDays::default(),
            tags: Vec::new(),
        };
        match service.create_snapshot(&command).await {
            Ok(CreateOutcome::Created { id }) => ids.push(id),
            other => panic!("seeding a snapshot: {other:?}"),
        }
        // The copy of a 1 GiB disk takes a millisecond at this rate.
        let mut steps = 0;
        while service
            .worker_step()
            .await
            .expect("a worker step")
            .accomplished
            == 0
        {
            steps += 1;
            assert!(steps < 1000, "the seeded copy never finished");
            tokio::time::sleep(Duration::from_millis(2)).await;
        }
    }
    let image = CreateImageCommand {
        account_id: ACCOUNT.to_owned(),
        snapshot_id: SnapshotId::parse(&ids[0]).expect("a snapshot id"),
        image_name: None,
        client_token: None,
    };
    service
        .create_image(&image)
        .await
        .expect("seeding an image");
    ids
}

/// Who a fuzzed call claims to be: mostly the seeded account and the right admin token, so
/// the body reaches the handler; sometimes nobody, a stranger or a wrong token.
#[derive(Debug, Clone, Copy)]
struct Identity {
    account: Option<&'static str>,
    authorization: Option<&'static str>,
}

const BEARER: &str = "Bearer fuzz-admin-token";

impl Identity {
    const CALLER: Self = Self {
        account: Some(ACCOUNT),
        authorization: Some(BEARER),
    };

    /// Whether the server admits this caller to `rpc` on its headers alone, before it reads the
    /// body: the admin token for the inventory, a well-formed account (surrounding white space
    /// aside) for the rest.
    fn admitted_to(self, rpc: Rpc) -> bool {
        if rpc.path().starts_with("/ecs.snapshot.v1.InventoryService/")
            || rpc
                .path()
                .starts_with("/ecs.snapshot.v1.SimulationService/")
        {
            // The scheme is case-insensitive (RFC 9110), the token exact.
            let token = BEARER.strip_prefix("Bearer ");
            self.authorization
                .and_then(|value| value.split_once(' '))
                .is_some_and(|(scheme, presented)| {
                    scheme.eq_ignore_ascii_case("bearer") && Some(presented) == token
                })
        } else {
            self.account.map(str::trim).is_some_and(|account| {
                !account.is_empty()
                    && account
                        .bytes()
                        .all(|b| b.is_ascii_alphanumeric() || b"._:-".contains(&b))
            })
        }
    }
}

fn identity() -> impl Strategy<Value = Identity> {
    let account = prop_oneof![
        8 => Just(Some(ACCOUNT)),
        1 => select(vec![None, Some(""), Some("acct-other"), Some("not valid"), Some("acct-fuzz ")]),
    ];
    let authorization = prop_oneof![
        8 => Just(Some(BEARER)),
        1 => select(vec![None, Some("Bearer"), Some("Bearer fuzz"), Some("bearer fuzz-admin-token")]),
    ];
    (account, authorization).prop_map(|(account, authorization)| Identity {
        account,
        authorization,
    })
}

/// The codes the API documents for a caller's mistake; anything else is a bug.
const PROPER: [Code; 7] = [
    Code::Ok,
    Code::InvalidArgument,
    Code::NotFound,
    Code::FailedPrecondition,
    Code::PermissionDenied,
    Code::Unauthenticated,
    Code::ResourceExhausted,
];

fn check_answer(
    rpc: Rpc,
    body: &[u8],
    answer: &Result<Bytes, Status>,
) -> Result<(), TestCaseError> {
    match answer {
        Ok(response) => {
            prop_assert!(
                rpc.decodes_as_response(response).is_ok(),
                "{:?} answered OK with a body that does not decode: {:02x?}",
                rpc,
                response
            );
        }
        Err(status) => {
            prop_assert!(
                PROPER.contains(&status.code()),
                "{:?} answered {:?} ({:?}) to {:02x?}",
                rpc,
                status.code(),
                status.message(),
                body
            );
        }
    }
    check_input_rules(rpc, body, answer)
}

// ---------------------------------------------------------------------------------------------
// The input rules, from the validators' specification.

/// The ErrorInfo reasons of the input rules modelled by [`first_broken_rule`].
const INPUT_RULE_REASONS: [&str; 12] = [
    "MissingParameter",
    "DiskId.ValueNotSupported",
    "InvalidSnapshotName.Malformed",
    "InvalidDescription.Malformed",
    "InvalidClientToken.Malformed",
    "InvalidRetentionDays.Malformed",
    "InvalidTagKey.Malformed",
    "InvalidTagValue.Malformed",
    "Duplicate.TagKey",
    "InvalidSnapshotId.Malformed",
    "InvalidImageName.Malformed",
    "InvalidImageId.Malformed",
];

/// The first input rule of a request that breaks one, in the seed's order, as the ErrorInfo
/// reason the API answers it with; by the predicates of `validators.rs`, not by `src/domain/`.
/// `Some(None)`: the request breaks none. `None`: not modelled (a body that does not decode, or
/// an RPC with input rules the predicates do not cover).
fn first_broken_rule(rpc: Rpc, body: &[u8]) -> Option<Option<&'static str>> {
    use crate::validators::{
        valid_client_token, valid_description, valid_disk_id, valid_image_id, valid_image_name,
        valid_snapshot_id, valid_snapshot_name, valid_tag_key, valid_tag_value,
    };
    let snapshot_id = |id: &str| match id {
        "" => Some("MissingParameter"),
        id if !valid_snapshot_id(id) => Some("InvalidSnapshotId.Malformed"),
        _ => None,
    };
    let token =
        |token: &str| (!valid_client_token(token)).then_some("InvalidClientToken.Malformed");
    match rpc {
        Rpc::CreateSnapshot => {
            let request = pb::CreateSnapshotRequest::decode(body).ok()?;
            let mut seen: Vec<&str> = Vec::new();
            let tags = request.tags.iter().enumerate().find_map(|(position, tag)| {
                if position == 20 || !valid_tag_key(&tag.key) {
                    Some("InvalidTagKey.Malformed")
                } else if !valid_tag_value(&tag.value) {
                    Some("InvalidTagValue.Malformed")
                } else if seen.contains(&tag.key.as_str()) {
                    Some("Duplicate.TagKey")
                } else {
                    seen.push(&tag.key);
                    None
                }
            });
            Some(
                match request.disk_id.as_str() {
                    "" => Some("MissingParameter"),
                    id if !valid_disk_id(id) => Some("DiskId.ValueNotSupported"),
                    _ => None,
                }
                .or_else(|| {
                    (!request.snapshot_name.is_empty()
                        && !valid_snapshot_name(&request.snapshot_name))
                    .then_some("InvalidSnapshotName.Malformed")
                })
                .or_else(|| {
                    (!valid_description(&request.description))
                        .then_some("InvalidDescription.Malformed")
                })
                .or_else(|| token(&request.client_token))
                .or_else(|| {
                    (!(0..=65_536).contains(&request.retention_days))
                        .then_some("InvalidRetentionDays.Malformed")
                })
                .or(tags),
            )
        }
        Rpc::DeleteSnapshot => {
            let request = pb::DeleteSnapshotRequest::decode(body).ok()?;
            Some(snapshot_id(&request.snapshot_id))
        }
        // DescribeSnapshots' rules for the ids and the disk, then one of them is required.
        Rpc::WatchSnapshots => {
            let request = pb::WatchSnapshotsRequest::decode(body).ok()?;
            let ids = request.snapshot_ids.len() > 100
                || !request.snapshot_ids.iter().all(|id| valid_snapshot_id(id));
            Some(if ids {
                Some("InvalidSnapshotIds.Malformed")
            } else if !request.disk_id.is_empty() && !valid_disk_id(&request.disk_id) {
                Some("DiskId.ValueNotSupported")
            } else if request.snapshot_ids.is_empty() && request.disk_id.is_empty() {
                Some("InvalidParameter")
            } else {
                None
            })
        }
        // CreateSnapshot's rules for the attributes given, in its order.
        Rpc::ModifySnapshotAttribute => {
            let request = pb::ModifySnapshotAttributeRequest::decode(body).ok()?;
            Some(
                snapshot_id(&request.snapshot_id)
                    .or_else(|| {
                        request
                            .snapshot_name
                            .as_deref()
                            .is_some_and(|name| !name.is_empty() && !valid_snapshot_name(name))
                            .then_some("InvalidSnapshotName.Malformed")
                    })
                    .or_else(|| {
                        request
                            .description
                            .as_deref()
                            .is_some_and(|text| !valid_description(text))
                            .then_some("InvalidDescription.Malformed")
                    })
                    .or_else(|| {
                        request
                            .retention_days
                            .is_some_and(|days| !(0..=65_536).contains(&days))
                            .then_some("InvalidRetentionDays.Malformed")
                    }),
            )
        }
        Rpc::CreateImage => {
            let request = pb::CreateImageRequest::decode(body).ok()?;
            Some(
                snapshot_id(&request.snapshot_id)
                    .or_else(|| {
                        (!request.image_name.is_empty() && !valid_image_name(&request.image_name))
                            .then_some("InvalidImageName.Malformed")
                    })
                    .or_else(|| token(&request.client_token)),
            )
        }
        Rpc::DeleteImage => {
            let request = pb::DeleteImageRequest::decode(body).ok()?;
            Some(match request.image_id.as_str() {
                "" => Some("MissingParameter"),
                id if !valid_image_id(id) => Some("InvalidImageId.Malformed"),
                _ => None,
            })
        }
        _ => None,
    }
}

/// For a request that decodes: OK only if it keeps every input rule, and a refusal for an input
/// rule names the first rule it breaks (and only one it breaks). Identity is checked first, so
/// a refusal for the caller's identity says nothing about the fields.
fn check_input_rules(
    rpc: Rpc,
    body: &[u8],
    answer: &Result<Bytes, Status>,
) -> Result<(), TestCaseError> {
    use tonic_types::StatusExt;
    let Some(broken) = first_broken_rule(rpc, body) else {
        return Ok(());
    };
    match answer {
        Ok(_) => prop_assert!(
            broken.is_none(),
            "{:?} answered OK to a request that breaks {:?}: {:02x?}",
            rpc,
            broken,
            body
        ),
        Err(status)
            if matches!(
                status.code(),
                Code::Unauthenticated | Code::PermissionDenied
            ) => {}
        Err(status) => {
            let reason = status
                .get_details_error_info()
                .map(|info| info.reason)
                .unwrap_or_default();
            match broken {
                Some(rule) => prop_assert_eq!(
                    reason.as_str(),
                    rule,
                    "{:?}: {:?} to a request whose first broken rule is {}: {:02x?}",
                    rpc,
                    status.message(),
                    rule,
                    body
                ),
                None => prop_assert!(
                    !INPUT_RULE_REASONS.contains(&reason.as_str()),
                    "{:?} refused a request that keeps every input rule with {}: {:02x?}",
                    rpc,
                    reason,
                    body
                ),
            }
        }
    }
    Ok(())
}

/// Runs `cases` of `strategy` against one server on `backend`, each through `case` and then a
/// check that the server still answers; finally checks that no server thread panicked.
fn fuzz<S, F, Fut>(backend: Backend, cases: u32, strategy: S, case: F)
where
    S: Strategy,
    F: Fn(Client, S::Value) -> Fut,
    Fut: Future<Output = Result<(), TestCaseError>>,
{
    fuzz_from(backend, Clock::Now, cases, strategy, case);
}

/// Where the fuzzed server's clock starts.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Clock {
    Now,
    /// Within a day of the last instant anything is stored at (9999-12-31T23:59:59Z).
    AtTheEndOfTime,
}

/// [`fuzz`] with the server's clock at `clock` first.
fn fuzz_from<S, F, Fut>(backend: Backend, clock: Clock, cases: u32, strategy: S, case: F)
where
    S: Strategy,
    F: Fn(Client, S::Value) -> Fut,
    Fut: Future<Output = Result<(), TestCaseError>>,
{
    watch_server_panics();
    let runtime = runtime(SERVER_THREADS);
    let server = runtime.block_on(Server::spawn(backend));
    if clock == Clock::AtTheEndOfTime {
        runtime.block_on(server.client.advance_to_the_end_of_time());
    }
    let panics_before = SERVER_PANICS.load(Ordering::SeqCst);
    let mut runner = TestRunner::new(config(cases));
    let result = runner.run(&strategy, |value| {
        let client = server.client.clone();
        runtime.block_on(async {
            tokio::time::timeout(Duration::from_secs(30), async {
                case(client.clone(), value).await?;
                client.still_answers().await
            })
            .await
            .map_err(|_| TestCaseError::fail("the server did not answer within 30 s"))?
        })
    });
    let panics = SERVER_PANICS.load(Ordering::SeqCst) - panics_before;
    let tally = server.client.tally.lock().expect("the tally").clone();
    runtime.block_on(server.stop());
    if let Err(err) = result {
        panic!("{backend:?}: {err}");
    }
    eprintln!("{backend:?}: {tally:#?}");
    assert_eq!(
        panics,
        0,
        "the server panicked {panics} times; the last: {}",
        LAST_SERVER_PANIC
            .lock()
            .map(|p| p.clone())
            .unwrap_or_default()
    );
}

/// Arbitrary bytes mostly do not decode, but some do and reach the store: both backends.
fn arbitrary_bytes_sent_to_every_rpc_get_a_proper_status(backend: Backend) {
    let strategy = (
        any_rpc(),
        proptest::collection::vec(any::<u8>(), 0..256),
        identity(),
    );
    fuzz(
        backend,
        256,
        strategy,
        |client, (rpc, body, identity)| async move { client.send(rpc, body, identity).await },
    );
}

#[test]
fn arbitrary_bytes_sent_to_every_rpc_get_a_proper_status_sqlite() {
    arbitrary_bytes_sent_to_every_rpc_get_a_proper_status(Backend::Sqlite);
}

#[test]
fn arbitrary_bytes_sent_to_every_rpc_get_a_proper_status_postgres() {
    arbitrary_bytes_sent_to_every_rpc_get_a_proper_status(Backend::Postgres);
}

#[test]
fn mutated_valid_requests_sent_to_every_rpc_get_a_proper_status() {
    let strategy = (
        well_formed_request(),
        proptest::collection::vec(mutation(), 1..4),
        identity(),
    );
    fuzz(
        Backend::Sqlite,
        256,
        strategy,
        |client, ((rpc, body), mutations, identity)| async move {
            let body = mutations.iter().fold(body, apply);
            client.send(rpc, body, identity).await
        },
    );
}

/// Every field of a well-formed message holds something odd (boundary lengths, reserved
/// prefixes, control characters, any Unicode, out-of-range numbers and timestamps), `cases`
/// times, the server's clock at `clock`. The store sees these values, so this runs on both
/// backends.
fn well_formed_requests_get_a_proper_status(
    backend: Backend,
    clock: Clock,
    cases: u32,
    requests: impl Strategy<Value = (Rpc, Vec<u8>)>,
) {
    let strategy = (proptest::collection::vec(requests, 1..4), identity());
    fuzz_from(
        backend,
        clock,
        cases,
        strategy,
        |client, (requests, identity)| async move {
            for (rpc, body) in requests {
                client.send(rpc, body, identity).await?;
            }
            Ok(())
        },
    );
}

#[test]
fn well_formed_requests_with_odd_field_values_get_a_proper_status_sqlite() {
    well_formed_requests_get_a_proper_status(
        Backend::Sqlite,
        Clock::Now,
        192,
        well_formed_request(),
    );
}

#[test]
fn well_formed_requests_with_odd_field_values_get_a_proper_status_postgres() {
    well_formed_requests_get_a_proper_status(
        Backend::Postgres,
        Clock::Now,
        192,
        well_formed_request(),
    );
}

// The same, a day before the last instant the service stores: a snapshot's copy, retention and
// release, an image's creation and every time it answers lie past it or just before it.

#[test]
fn well_formed_requests_at_the_end_of_time_get_a_proper_status_sqlite() {
    well_formed_requests_get_a_proper_status(
        Backend::Sqlite,
        Clock::AtTheEndOfTime,
        96,
        well_formed_request(),
    );
}

#[test]
fn well_formed_requests_at_the_end_of_time_get_a_proper_status_postgres() {
    well_formed_requests_get_a_proper_status(
        Backend::Postgres,
        Clock::AtTheEndOfTime,
        96,
        well_formed_request(),
    );
}

/// Requests that pass every validator and carry a NUL character (U+0000) in a free-text field,
/// or a timestamp that chrono takes but PostgreSQL's `timestamptz` cannot hold.
fn valid_requests_with_values_postgresql_cannot_store() -> Vec<(&'static str, Rpc, Vec<u8>)> {
    let tag = |key: &str, value: &str| pb::Tag {
        key: key.to_owned(),
        value: value.to_owned(),
    };
    let create = |disk_id: &str| pb::CreateSnapshotRequest {
        disk_id: disk_id.to_owned(),
        ..Default::default()
    };
    let describe = pb::DescribeSnapshotsRequest::default;
    let at = |seconds: i64| Some(prost_types::Timestamp { seconds, nanos: 0 });
    // 4713 BC is PostgreSQL's earliest; chrono goes back to 262143 BC.
    let year_minus_100000 = -3_217_862_419_200;
    let ids = |ids: &[&str]| ids.iter().map(|id| (*id).to_owned()).collect::<Vec<_>>();
    let tag_on = |resource_ids: Vec<String>, tags: Vec<pb::Tag>| pb::TagResourcesRequest {
        resource_type: "snapshot".to_owned(),
        resource_ids,
        tags,
    };
    vec![
        (
            "CreateSnapshot description \"ab\\0\"",
            Rpc::CreateSnapshot,
            pb::CreateSnapshotRequest {
                description: "ab\0".to_owned(),
                ..create("d-fuzz-0")
            }
            .encode_to_vec(),
        ),
        (
            "ModifySnapshotAttribute description \"ab\\0\"",
            Rpc::ModifySnapshotAttribute,
            pb::ModifySnapshotAttributeRequest {
                snapshot_id: "s-00000000000000000000".to_owned(),
                description: Some("ab\0".to_owned()),
                ..Default::default()
            }
            .encode_to_vec(),
        ),
        (
            "TagResources resource id \"s-\\0\"",
            Rpc::TagResources,
            tag_on(ids(&["s-\0"]), vec![tag("k", "v")]).encode_to_vec(),
        ),
        (
            "TagResources tag value \"v\\0\"",
            Rpc::TagResources,
            tag_on(ids(&["s-00000000000000000000"]), vec![tag("k", "v\0")]).encode_to_vec(),
        ),
        (
            "UntagResources resource id \"\\0\"",
            Rpc::UntagResources,
            pb::UntagResourcesRequest {
                resource_type: "snapshot".to_owned(),
                resource_ids: ids(&["\0"]),
                all: true,
                ..Default::default()
            }
            .encode_to_vec(),
        ),
        (
            "ListTagResources resource id \"s-\\0\"",
            Rpc::ListTagResources,
            pb::ListTagResourcesRequest {
                resource_type: "snapshot".to_owned(),
                resource_ids: ids(&["s-\0"]),
                ..Default::default()
            }
            .encode_to_vec(),
        ),
        (
            "ListTagResources resource type \"snap\\0\"",
            Rpc::ListTagResources,
            pb::ListTagResourcesRequest {
                resource_type: "snap\0".to_owned(),
                resource_ids: ids(&["s-00000000000000000000"]),
                ..Default::default()
            }
            .encode_to_vec(),
        ),
        (
            "CreateSnapshot tag key \"k\\0\"",
            Rpc::CreateSnapshot,
            pb::CreateSnapshotRequest {
                tags: vec![tag("k\0", "")],
                ..create("d-fuzz-2")
            }
            .encode_to_vec(),
        ),
        (
            "CreateSnapshot tag value \"\\0\"",
            Rpc::CreateSnapshot,
            pb::CreateSnapshotRequest {
                tags: vec![tag("k", "\0")],
                ..create("d-fuzz-1")
            }
            .encode_to_vec(),
        ),
        (
            "DescribeSnapshots snapshot_name \"a\\0b\"",
            Rpc::DescribeSnapshots,
            pb::DescribeSnapshotsRequest {
                snapshot_name: "a\0b".to_owned(),
                ..describe()
            }
            .encode_to_vec(),
        ),
        (
            "DescribeSnapshots tag filter key \"k\\0\"",
            Rpc::DescribeSnapshots,
            pb::DescribeSnapshotsRequest {
                tags: vec![tag("k\0", "")],
                ..describe()
            }
            .encode_to_vec(),
        ),
        (
            "DescribeSnapshots tag filter value \"v\\0\"",
            Rpc::DescribeSnapshots,
            pb::DescribeSnapshotsRequest {
                tags: vec![tag("k", "v\0")],
                ..describe()
            }
            .encode_to_vec(),
        ),
        (
            "DeleteImage image_id with a NUL where a letter belongs",
            Rpc::DeleteImage,
            pb::DeleteImageRequest {
                image_id: "m-000000000000000000\0a".to_owned(),
            }
            .encode_to_vec(),
        ),
        (
            "DescribeImages image id and snapshot filter with NULs",
            Rpc::DescribeImages,
            pb::DescribeImagesRequest {
                image_ids: vec!["m-\0".to_owned()],
                snapshot_id: "s-\0".to_owned(),
                ..Default::default()
            }
            .encode_to_vec(),
        ),
        (
            "PutInstance created_at in the year -100000",
            Rpc::PutInstance,
            pb::PutInstanceRequest {
                instance: Some(pb::Instance {
                    instance_id: "i-ancient".to_owned(),
                    account_id: ACCOUNT.to_owned(),
                    status: pb::InstanceStatus::Running.into(),
                    created_at: at(year_minus_100000),
                    last_started_at: at(year_minus_100000),
                    lock_reasons: Vec::new(),
                }),
            }
            .encode_to_vec(),
        ),
        (
            "PutDisk expires_at in the year -100000",
            Rpc::PutDisk,
            pb::PutDiskRequest {
                disk: Some(pb::Disk {
                    disk_id: "d-ancient".to_owned(),
                    account_id: ACCOUNT.to_owned(),
                    category: "cloud_essd".to_owned(),
                    r#type: pb::DiskType::Data.into(),
                    status: pb::DiskStatus::Available.into(),
                    instance_id: String::new(),
                    size_gib: 1,
                    created_at: at(0),
                    expires_at: at(year_minus_100000),
                    ever_attached: false,
                }),
            }
            .encode_to_vec(),
        ),
    ]
}

/// Each request is either refused as the caller's mistake or stored and answered; never
/// INTERNAL. (SQLite stores them all.)
async fn values_postgresql_cannot_store_get_a_proper_status(backend: Backend) {
    let server = Server::spawn(backend).await;
    let mut failures = Vec::new();
    for (label, rpc, body) in valid_requests_with_values_postgresql_cannot_store() {
        let answer = server
            .client
            .call(rpc, body.clone(), Identity::CALLER)
            .await;
        if let Err(err) = check_answer(rpc, &body, &answer) {
            failures.push(format!("{label}: {err}"));
        }
    }
    server
        .client
        .still_answers()
        .await
        .expect("the server answers");
    server.stop().await;
    assert!(failures.is_empty(), "{backend:?}:\n{}", failures.join("\n"));
}

#[test]
fn nul_characters_and_ancient_timestamps_get_a_proper_status_sqlite() {
    runtime(SERVER_THREADS).block_on(values_postgresql_cannot_store_get_a_proper_status(
        Backend::Sqlite,
    ));
}

#[test]
fn nul_characters_and_ancient_timestamps_get_a_proper_status_postgres() {
    runtime(SERVER_THREADS).block_on(values_postgresql_cannot_store_get_a_proper_status(
        Backend::Postgres,
    ));
}

/// A string field (top-level, the key or value of a tag, or one of a Put's record) that is not
/// UTF-8, appended to a valid request: the last occurrence of a string wins, and a message
/// field's occurrences merge, so it replaces the valid value (or, for a tag, adds one).
fn invalid_utf8_request() -> impl Strategy<Value = (Rpc, Vec<u8>, String)> {
    let with_a_string = select(
        RPCS.into_iter()
            .filter(|rpc| !rpc.string_fields().is_empty())
            .collect::<Vec<_>>(),
    )
    .prop_flat_map(|rpc| (Just(rpc), well_formed(rpc)));
    (
        with_a_string,
        any::<prop::sample::Index>(),
        select(NOT_UTF8),
    )
        .prop_map(|((rpc, mut body), pick, bad)| {
            let fields = rpc.string_fields();
            let path = fields[pick.index(fields.len())];
            let (&string, outer) = path.split_last().expect("a path names a field");
            let field = outer
                .iter()
                .rev()
                .fold(length_delimited(string, bad), |inner, &message| {
                    length_delimited(message, &inner)
                });
            body.extend(field);
            let label = path
                .iter()
                .map(u32::to_string)
                .collect::<Vec<_>>()
                .join(".");
            (rpc, body, format!("field {label} = {bad:02x?}"))
        })
}

#[test]
fn invalid_utf8_in_any_string_field_is_invalid_argument() {
    fuzz(
        Backend::Sqlite,
        96,
        (invalid_utf8_request(), identity()),
        |client, ((rpc, body, label), identity)| async move {
            let answer = client.call(rpc, body.clone(), identity).await;
            let code = answer.as_ref().err().map(Status::code);
            // Who calls is decided on the headers, before the body is read.
            let expected = if identity.admitted_to(rpc) {
                Code::InvalidArgument
            } else {
                Code::Unauthenticated
            };
            prop_assert_eq!(
                code,
                Some(expected),
                "{:?} with {} answered {:?}",
                rpc,
                label,
                answer
            );
            Ok(())
        },
    );
}
