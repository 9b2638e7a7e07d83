//! The run's inventory: accounts, one running instance each, and disks spread over them, all
//! named after the run id; put through the InventoryService as a control plane would.

use std::time::{Duration, SystemTime};

use futures_util::{StreamExt, TryStreamExt, stream};
use rand::Rng;
use snapshotd::pb;
use snapshotd::pb::inventory_service_client::InventoryServiceClient;
use snapshotd::pb::snapshot_service_client::SnapshotServiceClient;
use tonic::transport::Channel;
use tonic::{Code, Request};

use crate::ecs_client::AccessKey;

/// Inventory calls in flight at once during setup.
const SETUP_CONCURRENCY: usize = 64;

/// How the run's resources are named: disk `j` belongs to account `j % accounts`.
pub struct Naming {
    pub run_id: String,
    pub accounts: usize,
    pub disks: usize,
}

impl Naming {
    pub fn new(run_id: Option<String>, accounts: usize, disks: usize) -> Self {
        let run_id = run_id.unwrap_or_else(|| {
            let mut rng = rand::rng();
            (0..6)
                .map(|_| {
                    char::from(b"0123456789abcdefghijklmnopqrstuvwxyz"[rng.random_range(0..36)])
                })
                .collect()
        });
        Self {
            run_id,
            accounts: accounts.max(1),
            disks: disks.max(1),
        }
    }

    pub fn account(&self, index: usize) -> String {
        format!("bench-{}-a{index}", self.run_id)
    }

    /// Account `index`'s access key id, for the ECS edge.
    pub fn access_key(&self, index: usize) -> String {
        format!("bench-{}-k{index}", self.run_id)
    }

    fn instance(&self, account: usize) -> String {
        format!("i-bench-{}-{account}", self.run_id)
    }

    pub fn disk(&self, index: usize) -> String {
        format!("d-b{}-{index}", self.run_id)
    }

    pub fn owner_of_disk(&self, disk: usize) -> usize {
        disk % self.accounts
    }

    /// The same names as SQL expressions of pgbench's `:disk` (see [`Self::disk`]).
    pub fn disk_sql(&self) -> String {
        format!("'d-b{}-' || :disk", self.run_id)
    }

    pub fn account_of_disk_sql(&self) -> String {
        format!("'bench-{}-a' || (:disk % {})", self.run_id, self.accounts)
    }
}

fn ago(duration: Duration) -> prost_types::Timestamp {
    prost_types::Timestamp::from(SystemTime::now() - duration)
}

fn admin<T>(token: &str, message: T) -> Request<T> {
    let mut request = Request::new(message);
    let value = format!("Bearer {token}")
        .parse()
        .expect("a printable token");
    request.metadata_mut().insert("authorization", value);
    request
}

/// Puts the run's accounts, instances and disks.
pub async fn inventory(
    channel: &Channel,
    token: &str,
    naming: &Naming,
) -> Result<(), tonic::Status> {
    let client = InventoryServiceClient::new(channel.clone());
    stream::iter(0..naming.accounts)
        .map(|account| {
            let mut client = client.clone();
            async move {
                client
                    .put_account(admin(
                        token,
                        pb::PutAccountRequest {
                            account: Some(pb::Account {
                                account_id: naming.account(account),
                                snapshot_service_activated: true,
                                insufficient_balance: false,
                            }),
                        },
                    ))
                    .await?;
                client
                    .put_instance(admin(
                        token,
                        pb::PutInstanceRequest {
                            instance: Some(pb::Instance {
                                instance_id: naming.instance(account),
                                account_id: naming.account(account),
                                status: pb::InstanceStatus::Running.into(),
                                created_at: Some(ago(Duration::from_secs(48 * 3600))),
                                last_started_at: Some(ago(Duration::from_secs(47 * 3600))),
                                lock_reasons: vec![],
                            }),
                        },
                    ))
                    .await?;
                Ok::<_, tonic::Status>(())
            }
        })
        .buffer_unordered(SETUP_CONCURRENCY)
        .try_collect::<()>()
        .await?;
    stream::iter(0..naming.disks)
        .map(|disk| {
            let mut client = client.clone();
            let account = naming.owner_of_disk(disk);
            async move {
                client
                    .put_disk(admin(
                        token,
                        pb::PutDiskRequest {
                            disk: Some(pb::Disk {
                                disk_id: naming.disk(disk),
                                account_id: naming.account(account),
                                category: "cloud_essd".to_owned(),
                                r#type: pb::DiskType::Data.into(),
                                status: pb::DiskStatus::InUse.into(),
                                instance_id: naming.instance(account),
                                size_gib: 1,
                                created_at: Some(ago(Duration::from_secs(24 * 3600))),
                                expires_at: None,
                                ever_attached: true,
                            }),
                        },
                    ))
                    .await
                    .map(|_| ())
            }
        })
        .buffer_unordered(SETUP_CONCURRENCY)
        .try_collect::<()>()
        .await
}

/// Gives every account an access key with a secret of its own, for the ECS edge; the keys, by
/// account.
pub async fn access_keys(
    channel: &Channel,
    token: &str,
    naming: &Naming,
) -> Result<Vec<AccessKey>, tonic::Status> {
    let client = InventoryServiceClient::new(channel.clone());
    let keys: Vec<AccessKey> = (0..naming.accounts)
        .map(|account| AccessKey {
            id: naming.access_key(account),
            secret: format!("bench-secret-{:032x}", rand::random::<u128>()),
        })
        .collect();
    stream::iter(keys.iter().enumerate())
        .map(|(account, key)| {
            let mut client = client.clone();
            async move {
                client
                    .put_access_key(admin(
                        token,
                        pb::PutAccessKeyRequest {
                            access_key: Some(pb::AccessKey {
                                access_key_id: key.id.clone(),
                                access_key_secret: key.secret.clone(),
                                account_id: naming.account(account),
                            }),
                        },
                    ))
                    .await
                    .map(|_| ())
            }
        })
        .buffer_unordered(SETUP_CONCURRENCY)
        .try_collect::<()>()
        .await?;
    Ok(keys)
}

/// Gives account 0 `count` snapshots, over its disks, each disk's next one after its last copy
/// is done.
pub async fn snapshots_to_describe(
    channel: &Channel,
    naming: &Naming,
    count: usize,
) -> Result<(), tonic::Status> {
    let disks: Vec<usize> = (0..naming.disks)
        .filter(|disk| naming.owner_of_disk(*disk) == 0)
        .collect();
    let client = SnapshotServiceClient::new(channel.clone());
    let per_disk = count.div_ceil(disks.len());
    stream::iter(disks)
        .map(|disk| {
            let mut client = client.clone();
            async move {
                let mut made = 0;
                while made < per_disk {
                    let mut request = Request::new(pb::CreateSnapshotRequest {
                        disk_id: naming.disk(disk),
                        ..Default::default()
                    });
                    request
                        .metadata_mut()
                        .insert("x-account-id", naming.account(0).parse().expect("plain id"));
                    match client.create_snapshot(request).await {
                        Ok(_) => made += 1,
                        // The last copy is not recorded yet: wait for the server's worker.
                        Err(status) if status.code() == Code::FailedPrecondition => {
                            tokio::time::sleep(Duration::from_millis(50)).await
                        }
                        Err(status) => return Err(status),
                    }
                }
                Ok(())
            }
        })
        .buffer_unordered(SETUP_CONCURRENCY)
        .try_collect::<()>()
        .await
}
