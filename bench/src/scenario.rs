//! The scenarios, and the workers that drive one for a duration.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use crate::direct::GrpcConnection;
use clap::ValueEnum;
use hdrhistogram::Histogram;
use rand::Rng;
use serde::Serialize;
use snapshotd::pb;
use snapshotd::pb::snapshot_service_client::SnapshotServiceClient;
use tonic::Request;
use tonic_health::pb::HealthCheckRequest;
use tonic_health::pb::health_client::HealthClient;
use tonic_types::StatusExt;

use crate::ecs_client::EcsClient;
use crate::report::Progress;
use crate::server_stats::{CpuTime, Sampler, cpu_time};
use crate::setup::Naming;

#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Scenario {
    /// CreateSnapshot over many disks; a disk is revisited only after its last copy is done.
    Spread,
    /// CreateSnapshot on one disk: one succeeds, the rest are refused under the disk's lock.
    Hot,
    /// CreateSnapshot with one client token again and again: the original answer, replayed.
    Replay,
    /// Paged DescribeSnapshots over an account with thousands of snapshots.
    Describe,
    /// 70% DescribeSnapshots, 25% CreateSnapshot (as `spread`), 5% DeleteSnapshot.
    Mixed,
    /// `spread`'s creates while `--watchers` WatchSnapshots streams, one disk each, receive
    /// their changes.
    Watch,
    /// `grpc.health.v1.Health/Check`: a gRPC round trip that reaches no database, to set what
    /// the client, the network and the server's gRPC stack cost a call beside the pgbench limit
    /// (at 1 in flight a create's latency is that plus its transaction). gRPC only.
    Noop,
}

impl Scenario {
    /// The ErrorInfo reasons this scenario expects besides success.
    fn expected_refusals(self) -> &'static [&'static str] {
        match self {
            Scenario::Hot => &[
                "IncorrectDiskStatus.CreatingSnapshot",
                "QuotaExceed.Snapshot",
            ],
            _ => &[],
        }
    }

    /// Whether an answer ("OK", or "CODE reason") is one this scenario expects.
    pub fn expects(self, answer: &str) -> bool {
        answer == "OK"
            || self
                .expected_refusals()
                .iter()
                .any(|reason| answer.ends_with(reason))
    }
}

/// Which of the server's edges the scenario's calls go through.
#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Edge {
    /// The SnapshotService over HTTP/2 (`--target`).
    Grpc,
    /// The ECS-compatible HTTP edge (`--ecs-target`): signed RPC calls over HTTP/1.1.
    Http,
}

/// The gRPC client the scenario's calls go through (`--grpc-client`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum GrpcClient {
    /// tonic's `Channel`.
    Channel,
    /// hyper's HTTP/2 `SendRequest`, no `Buffer` task (`crate::direct`).
    Direct,
}

/// How the workers reach the server: worker `i` takes the `i % len`-th entry (gRPC: each
/// connection with its target, the origin of its requests).
pub enum Clients {
    Grpc(Vec<(GrpcConnection, http::Uri)>),
    Http(Vec<EcsClient>),
}

pub struct Plan {
    pub scenario: Scenario,
    pub naming: Arc<Naming>,
    pub revisit_after: Duration,
    /// `describe`: snapshots per page.
    pub describe_page_size: u32,
    /// `describe`: read the first page at every call instead of walking `next_token`.
    pub describe_first_pages: bool,
}

/// What the measured part of a run produced.
pub struct Outcome {
    pub elapsed: Duration,
    /// Latency in microseconds, of every measured call.
    pub latency: Histogram<u64>,
    /// Calls by "CODE reason".
    pub answers: BTreeMap<String, u64>,
    /// Times a worker found no disk free to snapshot (`spread`, `mixed`): the run was limited by
    /// its disks, not the server.
    pub starved: u64,
    /// Server CPU time over the measured part, when its pid was given.
    pub server_cpu: Option<CpuTime>,
    /// `--callgrind`: the servers' instructions over the measured part, or why they are unknown.
    pub server_instructions: Option<Result<u64, String>>,
    /// This process's CPU over the measured part: what the client costs per call.
    pub client_cpu: Option<Duration>,
}

/// State the workers share.
struct Shared {
    plan_disks: usize,
    /// Per disk: when it may be snapshotted again, in ms since `epoch`; `u64::MAX` while in use.
    free_at_ms: Vec<AtomicU64>,
    cursor: AtomicUsize,
    epoch: Instant,
    /// Snapshots this run made (for `mixed`'s deletes): (account index, snapshot id).
    created: Mutex<Vec<(usize, String)>>,
    done: AtomicU64,
    unexpected: AtomicU64,
}

/// One worker's records, merged at the end.
struct Tally {
    latency: Histogram<u64>,
    answers: BTreeMap<String, u64>,
    starved: u64,
}

impl Tally {
    fn new() -> Self {
        Self {
            latency: Histogram::new_with_bounds(1, 60_000_000, 3).expect("valid bounds"),
            answers: BTreeMap::new(),
            starved: 0,
        }
    }
}

/// Drives `plan` with `concurrency` workers over `clients` for `warmup` + `duration`.
pub async fn drive(
    plan: &Plan,
    clients: &Clients,
    concurrency: usize,
    warmup: Duration,
    duration: Duration,
    progress: &Progress,
    sampler: Option<&Sampler>,
) -> Outcome {
    let epoch = Instant::now();
    let shared = Arc::new(Shared {
        plan_disks: plan.naming.disks,
        free_at_ms: (0..plan.naming.disks).map(|_| AtomicU64::new(0)).collect(),
        cursor: AtomicUsize::new(0),
        epoch,
        created: Mutex::new(Vec::new()),
        done: AtomicU64::new(0),
        unexpected: AtomicU64::new(0),
    });
    let measure_from = epoch + warmup;
    let deadline = measure_from + duration;
    let mut workers = Vec::with_capacity(concurrency);
    for worker in 0..concurrency.max(1) {
        let client = match clients {
            Clients::Grpc(connections) => {
                let (connection, origin) = &connections[worker % connections.len()];
                Client::Grpc(Box::new(GrpcClients {
                    snapshots: SnapshotServiceClient::with_origin(
                        connection.clone(),
                        origin.clone(),
                    ),
                    health: HealthClient::with_origin(connection.clone(), origin.clone()),
                }))
            }
            Clients::Http(edges) => Client::Http(edges[worker % edges.len()].clone()),
        };
        let shared = Arc::clone(&shared);
        let naming = Arc::clone(&plan.naming);
        let (scenario, revisit_after) = (plan.scenario, plan.revisit_after);
        let describe_page_size = i32::try_from(plan.describe_page_size).unwrap_or(i32::MAX);
        let describe_first_pages = plan.describe_first_pages;
        workers.push(tokio::spawn(async move {
            let mut worker = Worker {
                client,
                shared,
                naming,
                scenario,
                revisit_after,
                describe_page_size,
                describe_first_pages,
                next_token: String::new(),
            };
            worker.run(measure_from, deadline).await
        }));
    }
    // The server's CPU clock is read when measuring starts; `progress.run` returns at the
    // deadline, and the workers finish their last call.
    let cpu_at_start = async {
        tokio::time::sleep_until(measure_from.into()).await;
        let counting = match sampler {
            Some(sampler) => sampler.start_counting().await,
            None => Ok(()),
        };
        (
            sampler.map(Sampler::cpu),
            cpu_time(std::process::id()),
            counting,
        )
    };
    let ((), (cpu_before, client_cpu_before, counting)) = tokio::join!(
        progress.run(&shared.done, &shared.unexpected, epoch, warmup, duration),
        cpu_at_start
    );
    let mut total = Tally::new();
    for worker in workers {
        let tally = worker.await.expect("a worker task");
        total.latency.add(&tally.latency).expect("same bounds");
        for (answer, count) in tally.answers {
            *total.answers.entry(answer).or_default() += count;
        }
        total.starved += tally.starved;
    }
    let server_cpu = match (sampler, cpu_before) {
        (Some(sampler), Some(before)) => Some(sampler.cpu_since(before)),
        _ => None,
    };
    let server_instructions = match (sampler, counting) {
        (Some(sampler), Ok(())) => sampler.instructions().await,
        (_, Err(err)) => Some(Err(err)),
        (None, Ok(())) => None,
    };
    let client_cpu = client_cpu_before
        .zip(cpu_time(std::process::id()))
        .map(|(before, after)| after.since(before).total());
    Outcome {
        elapsed: duration,
        latency: total.latency,
        answers: total.answers,
        starved: total.starved,
        server_cpu,
        server_instructions,
        client_cpu,
    }
}

/// The SnapshotService, and the health service for `noop`, on one connection.
struct GrpcClients {
    snapshots: SnapshotServiceClient<GrpcConnection>,
    health: HealthClient<GrpcConnection>,
}

/// One worker's way to the server.
enum Client {
    Grpc(Box<GrpcClients>),
    Http(EcsClient),
}

struct Worker {
    client: Client,
    shared: Arc<Shared>,
    naming: Arc<Naming>,
    scenario: Scenario,
    revisit_after: Duration,
    describe_page_size: i32,
    describe_first_pages: bool,
    /// `describe`: where this worker's paging is.
    next_token: String,
}

/// A call's answer: "OK", or "CODE reason".
type Answer = String;

impl Worker {
    async fn run(&mut self, measure_from: Instant, deadline: Instant) -> Tally {
        let mut tally = Tally::new();
        loop {
            let started = Instant::now();
            if started >= deadline {
                return tally;
            }
            let Some(answer) = self.call(&mut tally).await else {
                // Every disk was busy: wait for one (counted as starved).
                tokio::time::sleep(Duration::from_millis(1)).await;
                continue;
            };
            let finished = Instant::now();
            if started < measure_from || finished > deadline {
                continue;
            }
            let micros = u64::try_from((finished - started).as_micros()).unwrap_or(u64::MAX);
            tally.latency.saturating_record(micros.max(1));
            if !self.scenario.expects(&answer) {
                self.shared.unexpected.fetch_add(1, Ordering::Relaxed);
            }
            self.shared.done.fetch_add(1, Ordering::Relaxed);
            *tally.answers.entry(answer).or_default() += 1;
        }
    }

    /// One call of the scenario; `None` when no disk was free to snapshot.
    async fn call(&mut self, tally: &mut Tally) -> Option<Answer> {
        match self.scenario {
            Scenario::Spread | Scenario::Watch => self.create_on_a_free_disk(tally).await,
            Scenario::Hot => Some(self.create(0, None).await.0),
            Scenario::Replay => {
                let token = format!("bench-{}-replay", self.naming.run_id);
                Some(self.create(0, Some(token)).await.0)
            }
            Scenario::Describe => {
                if self.describe_first_pages {
                    self.next_token.clear();
                }
                Some(self.describe_next_page(0, self.describe_page_size).await)
            }
            Scenario::Noop => Some(self.health_check().await),
            Scenario::Mixed => {
                let roll = rand::rng().random_range(0..100);
                if roll < 70 {
                    let account = rand::rng().random_range(0..self.naming.accounts);
                    Some(self.describe_first_page(account).await)
                } else if roll < 95 {
                    self.create_on_a_free_disk(tally).await
                } else {
                    let victim = self.shared.created.lock().expect("not poisoned").pop();
                    match victim {
                        Some((account, snapshot_id)) => {
                            Some(self.delete(account, snapshot_id).await)
                        }
                        None => Some(self.describe_first_page(0).await),
                    }
                }
            }
        }
    }

    async fn create_on_a_free_disk(&mut self, tally: &mut Tally) -> Option<Answer> {
        let Some(disk) = self.claim_free_disk() else {
            tally.starved += 1;
            return None;
        };
        let (answer, snapshot_id) = self.create(disk, None).await;
        let now_ms = self.now_ms();
        let free_at = match &snapshot_id {
            Some(_) => now_ms + u64::try_from(self.revisit_after.as_millis()).unwrap_or(u64::MAX),
            None => now_ms,
        };
        self.shared.free_at_ms[disk].store(free_at, Ordering::Release);
        if let (Some(id), Scenario::Mixed) = (snapshot_id, self.scenario) {
            let account = self.naming.owner_of_disk(disk);
            self.shared
                .created
                .lock()
                .expect("not poisoned")
                .push((account, id));
        }
        Some(answer)
    }

    fn now_ms(&self) -> u64 {
        u64::try_from(self.shared.epoch.elapsed().as_millis()).unwrap_or(u64::MAX)
    }

    /// Takes the next disk, in round-robin order, that may be snapshotted now.
    fn claim_free_disk(&self) -> Option<usize> {
        let now_ms = self.now_ms();
        for _ in 0..self.shared.plan_disks {
            let disk = self.shared.cursor.fetch_add(1, Ordering::Relaxed) % self.shared.plan_disks;
            let slot = &self.shared.free_at_ms[disk];
            let free_at = slot.load(Ordering::Acquire);
            if free_at <= now_ms
                && slot
                    .compare_exchange(free_at, u64::MAX, Ordering::AcqRel, Ordering::Relaxed)
                    .is_ok()
            {
                return Some(disk);
            }
        }
        None
    }

    async fn create(
        &mut self,
        disk: usize,
        client_token: Option<String>,
    ) -> (Answer, Option<String>) {
        let account = self.naming.owner_of_disk(disk);
        let disk_id = self.naming.disk(disk);
        let client_token = client_token.unwrap_or_default();
        match &mut self.client {
            Client::Grpc(grpc) => {
                let client = &mut grpc.snapshots;
                let request = as_account(
                    &self.naming,
                    account,
                    pb::CreateSnapshotRequest {
                        disk_id,
                        client_token,
                        ..Default::default()
                    },
                );
                match client.create_snapshot(request).await {
                    Ok(response) => ("OK".to_owned(), Some(response.into_inner().snapshot_id)),
                    Err(status) => (refusal(&status), None),
                }
            }
            Client::Http(edge) => {
                let mut params = vec![("DiskId", disk_id.as_str())];
                if !client_token.is_empty() {
                    params.push(("ClientToken", client_token.as_str()));
                }
                match edge.call(account, "CreateSnapshot", &params).await {
                    Ok(body) => ("OK".to_owned(), body.snapshot_id),
                    Err(answer) => (answer, None),
                }
            }
        }
    }

    async fn describe_next_page(&mut self, account: usize, page: i32) -> Answer {
        let next_token = std::mem::take(&mut self.next_token);
        let (answer, next_token) = match &mut self.client {
            Client::Grpc(grpc) => {
                let client = &mut grpc.snapshots;
                let request = as_account(
                    &self.naming,
                    account,
                    pb::DescribeSnapshotsRequest {
                        max_results: page,
                        next_token,
                        ..Default::default()
                    },
                );
                match client.describe_snapshots(request).await {
                    Ok(response) => ("OK".to_owned(), response.into_inner().next_token),
                    Err(status) => (refusal(&status), String::new()),
                }
            }
            Client::Http(edge) => {
                let page = page.to_string();
                let mut params = vec![("MaxResults", page.as_str())];
                if !next_token.is_empty() {
                    params.push(("NextToken", next_token.as_str()));
                }
                match edge.call(account, "DescribeSnapshots", &params).await {
                    Ok(body) => ("OK".to_owned(), body.next_token.unwrap_or_default()),
                    Err(answer) => (answer, String::new()),
                }
            }
        };
        self.next_token = next_token;
        answer
    }

    async fn health_check(&mut self) -> Answer {
        let Client::Grpc(grpc) = &mut self.client else {
            return "UNIMPLEMENTED noop is gRPC only".to_owned();
        };
        match grpc.health.check(HealthCheckRequest::default()).await {
            Ok(_) => "OK".to_owned(),
            Err(status) => refusal(&status),
        }
    }

    async fn describe_first_page(&mut self, account: usize) -> Answer {
        self.next_token.clear();
        let page = i32::try_from(crate::limit::MIXED_DESCRIBE_PAGE).expect("a small page");
        let answer = self.describe_next_page(account, page).await;
        self.next_token.clear();
        answer
    }

    async fn delete(&mut self, account: usize, snapshot_id: String) -> Answer {
        match &mut self.client {
            Client::Grpc(grpc) => {
                let client = &mut grpc.snapshots;
                let request = as_account(
                    &self.naming,
                    account,
                    pb::DeleteSnapshotRequest {
                        snapshot_id,
                        force: false,
                    },
                );
                match client.delete_snapshot(request).await {
                    Ok(_) => "OK".to_owned(),
                    Err(status) => refusal(&status),
                }
            }
            Client::Http(edge) => {
                let params = [("SnapshotId", snapshot_id.as_str())];
                match edge.call(account, "DeleteSnapshot", &params).await {
                    Ok(_) => "OK".to_owned(),
                    Err(answer) => answer,
                }
            }
        }
    }
}

/// `message` as a call of `account`.
fn as_account<T>(naming: &Naming, account: usize, message: T) -> Request<T> {
    let mut request = Request::new(message);
    let id = naming.account(account).parse().expect("a plain account id");
    request.metadata_mut().insert("x-account-id", id);
    request
}

/// "CODE reason" of a refused call (the reason from its ErrorInfo, if any).
fn refusal(status: &tonic::Status) -> Answer {
    let reason = status
        .get_error_details()
        .error_info()
        .map(|info| info.reason.clone())
        .unwrap_or_default();
    format!("{:?} {reason}", status.code())
        .trim_end()
        .to_owned()
}
