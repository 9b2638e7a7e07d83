//! The `watch` scenario's watchers: many WatchSnapshots streams, each of one disk, held open on
//! connections of their own while `spread`'s creates run; what they cost the server idle (RSS
//! per watcher) and busy (messages received, server CPU per message).

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use futures_util::StreamExt;
use serde::Serialize;
use snapshotd::pb;
use snapshotd::pb::snapshot_service_client::SnapshotServiceClient;
use tonic::Request;
use tonic::transport::Channel;

use crate::setup::Naming;

/// Watches per connection: the server takes 100 streams on one.
const PER_CONNECTION: usize = 90;

/// Watches being opened at once.
const OPENING: usize = 64;

/// What the watchers measured; the RSS numbers when the server's pid was given.
#[derive(Serialize)]
pub struct WatchStats {
    pub watchers: usize,
    pub connections: usize,
    pub rss_before_kib: Option<u64>,
    pub rss_idle_kib: Option<u64>,
    /// Extra server RSS per idle watcher (all of them open, nothing changing).
    pub rss_bytes_per_idle_watcher: Option<f64>,
    /// Messages the watchers received during the measured load.
    pub messages: u64,
    /// Server CPU time of the measured load per message received.
    pub cpu_us_per_message: Option<f64>,
    /// Watches that ended before the run did (each a failure).
    pub ended: u64,
}

pub struct Watchers {
    pub connections: usize,
    pub received: Arc<AtomicU64>,
    pub ended: Arc<AtomicU64>,
}

/// Opens `count` watches, one disk each, round-robin over the run's disks and `targets`.
pub async fn open(
    targets: &[String],
    naming: &Naming,
    count: usize,
) -> Result<Watchers, Box<dyn std::error::Error>> {
    let connections = count.div_ceil(PER_CONNECTION).max(1);
    let mut channels = Vec::with_capacity(connections);
    for connection in 0..connections {
        let target = &targets[connection % targets.len()];
        channels.push(Channel::from_shared(target.clone())?.connect().await?);
    }
    let received = Arc::new(AtomicU64::new(0));
    let ended = Arc::new(AtomicU64::new(0));
    let opened: Vec<Result<(), tonic::Status>> = futures_util::stream::iter(0..count)
        .map(|n| {
            let channel = channels[n / PER_CONNECTION].clone();
            let disk = n % naming.disks;
            let account = naming.account(naming.owner_of_disk(disk));
            let request = pb::WatchSnapshotsRequest {
                disk_id: naming.disk(disk),
                ..Default::default()
            };
            let received = Arc::clone(&received);
            let ended = Arc::clone(&ended);
            async move {
                let mut request = Request::new(request);
                let account = account.parse().expect("an ASCII account id");
                request.metadata_mut().insert("x-account-id", account);
                let mut stream = SnapshotServiceClient::new(channel)
                    .watch_snapshots(request)
                    .await?
                    .into_inner();
                tokio::spawn(async move {
                    while let Ok(Some(_)) = stream.message().await {
                        received.fetch_add(1, Ordering::Relaxed);
                    }
                    ended.fetch_add(1, Ordering::Relaxed);
                });
                Ok(())
            }
        })
        .buffer_unordered(OPENING)
        .collect()
        .await;
    if let Some(Err(status)) = opened.into_iter().find(Result::is_err) {
        return Err(format!(
            "a watch did not open (the server's --max-watches-per-account must allow \
             watchers ÷ accounts, and its --max-watches-per-peer all the watchers): {status:?}"
        )
        .into());
    }
    // The first messages of the disks' snapshots are in; what follows is idle.
    tokio::time::sleep(Duration::from_secs(2)).await;
    Ok(Watchers {
        connections,
        received,
        ended,
    })
}
