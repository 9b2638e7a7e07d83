//! `drill`: steady CreateSnapshot load with client tokens (optionally mixed with
//! DescribeSnapshots) while an operator breaks something (a database failover, a rolling
//! restart), then a check of what the service promised.
//!
//! Each create names a free disk and a token of its own. A failed attempt is retried with the
//! SAME token and the same parameters, as the docs tell clients to, so a create that committed
//! before its answer was lost replays instead of making a second snapshot. Every attempt's answer
//! is counted by code and reason (INTERNAL on its own line: it is never an acceptable answer to a
//! database going away), every acknowledged token → snapshot id is kept, and so is the longest
//! stretch with no acknowledged create.
//!
//! After the load, through the service: every acknowledged snapshot is looked up by id
//! (missing: *lost*); every acknowledged token is replayed and must give the same id; every
//! snapshot of the drill's accounts must be one that was acknowledged. A token that resolves
//! to another id, or a snapshot nobody was told about, is *duplicated*.
//!
//! The last line is the drill's verdict, in the form the calling script asks for
//! (`--last-line failover`: `acknowledged N, lost L, duplicated D, unavailable S s`;
//! `--last-line rolling`: `calls N, failed F, lost L, duplicated D`). The exit status is 0 when
//! nothing was lost or duplicated and no call was abandoned, 2 otherwise.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use clap::{Parser, ValueEnum};
use futures_util::{StreamExt, stream};
use rand::Rng;
use snapshotd::pb;
use snapshotd::pb::snapshot_service_client::SnapshotServiceClient;
use snapshotd_bench::setup::{self, Naming};
use tonic::transport::{Channel, Endpoint};
use tonic::{Code, Request, Status};
use tonic_types::StatusExt;

#[derive(Clone, Copy, PartialEq, Eq, ValueEnum)]
enum LastLine {
    /// `acknowledged N, lost L, duplicated D, unavailable S s`
    Failover,
    /// `calls N, failed F, lost L, duplicated D`
    Rolling,
}

#[derive(Parser)]
#[command(
    name = "drill",
    about = "Create load with client tokens through a failure, then check nothing was lost or doubled"
)]
struct Args {
    /// The server (or the proxy in front of the replicas).
    #[arg(long, default_value = "http://127.0.0.1:50051")]
    target: String,
    /// The server's admin token, to set up the inventory.
    #[arg(long, env = "SNAPSHOTD_ADMIN_TOKEN", hide_env_values = true)]
    admin_token: String,
    /// Calls in flight at once.
    #[arg(long, default_value_t = 16)]
    concurrency: usize,
    /// Calls started per second, over all workers (0: as fast as they go). Retries are not
    /// paced: they wait for their RetryInfo delay or a short backoff.
    #[arg(long, default_value_t = 300)]
    rate: u32,
    /// Percentage of calls that are DescribeSnapshots (a random account's first page of 20).
    #[arg(long, default_value_t = 0)]
    describe_percent: u32,
    /// How long to run the load at least.
    #[arg(long, default_value = "30s", value_parser = humantime::parse_duration)]
    duration: Duration,
    /// After `--duration`, go on until no attempt has failed for this long (the service has
    /// recovered), up to `--max-duration`.
    #[arg(long, default_value = "3s", value_parser = humantime::parse_duration)]
    settle: Duration,
    /// End the load early (still after `--settle`) once this file exists: for a script that
    /// knows when its failure is over.
    #[arg(long)]
    stop_file: Option<std::path::PathBuf>,
    /// The longest the load runs, whatever the failures.
    #[arg(long, default_value = "180s", value_parser = humantime::parse_duration)]
    max_duration: Duration,
    /// One attempt's deadline (sent as grpc-timeout too).
    #[arg(long, default_value = "3s", value_parser = humantime::parse_duration)]
    call_timeout: Duration,
    /// A call still failing this long after its first attempt is abandoned (counted; the
    /// drill then fails).
    #[arg(long, default_value = "120s", value_parser = humantime::parse_duration)]
    give_up_after: Duration,
    /// Also retry INTERNAL answers with the same token (safe with a token; the docs do not call
    /// INTERNAL retryable, so a real client may give up there). Each is counted either way.
    #[arg(long, default_value_t = true, action = clap::ArgAction::Set)]
    retry_internal: bool,
    /// HTTP/2 connections the calls are spread over.
    #[arg(long, default_value_t = 4)]
    connections: usize,
    /// Accounts to set up (each with one instance).
    #[arg(long, default_value_t = 8)]
    accounts: usize,
    /// Disks to set up, spread over the accounts. A disk is snapshotted again only
    /// `--revisit-after` after its last acknowledged snapshot; keep disks × quota above the
    /// creates of the run.
    #[arg(long, default_value_t = 4096)]
    disks: usize,
    #[arg(long, default_value = "5s", value_parser = humantime::parse_duration)]
    revisit_after: Duration,
    /// Names the run's accounts, disks and tokens (default: random).
    #[arg(long)]
    run_id: Option<String>,
    /// Print the seconds with failed attempts (and their neighbours): OK creates / failed
    /// attempts per second.
    #[arg(long)]
    timeline: bool,
    #[arg(long, value_enum, default_value_t = LastLine::Failover)]
    last_line: LastLine,
}

/// A call's answer, as counted: "OK", "CODE reason", or "CODE (no ErrorInfo)" for an answer the
/// service did not write (a transport error, a proxy's own answer).
fn answer_of(status: &Status) -> String {
    match status.get_error_details().error_info() {
        Some(info) => format!("{:?} {}", status.code(), info.reason),
        None => format!(
            "{:?} (no ErrorInfo: {})",
            status.code(),
            short(status.message())
        ),
    }
}

fn short(message: &str) -> String {
    let message = message.split(':').next().unwrap_or(message).trim();
    message.chars().take(48).collect()
}

/// Whether a failed attempt is retried with the same token, and after how long.
fn retry_after(status: &Status, retry_internal: bool) -> Option<Duration> {
    let hinted = status
        .get_error_details()
        .retry_info()
        .and_then(|info| info.retry_delay);
    let base = match status.code() {
        // The database, a replica or the connection went away; the call was shed; it ran out of
        // time (its transaction rolled back); the stream was reset by a proxy or a GOAWAY.
        Code::Unavailable
        | Code::DeadlineExceeded
        | Code::ResourceExhausted
        | Code::Cancelled
        | Code::Unknown
        | Code::Aborted => Duration::from_millis(100),
        Code::Internal if retry_internal => Duration::from_millis(100),
        // A disk whose last copy is not recorded yet (RetryInfo: the copy's time left).
        Code::FailedPrecondition if hinted.is_some() => Duration::from_millis(100),
        _ => return None,
    };
    Some(hinted.unwrap_or(base).min(Duration::from_secs(1)))
}

fn as_account<T>(naming: &Naming, account: usize, message: T, timeout: Duration) -> Request<T> {
    let mut request = Request::new(message);
    let id = naming.account(account).parse().expect("a plain account id");
    request.metadata_mut().insert("x-account-id", id);
    request.set_timeout(timeout);
    request
}

/// An acknowledged create.
struct Ack {
    token: String,
    disk: usize,
    snapshot_id: String,
}

struct Shared {
    naming: Naming,
    free_at_ms: Vec<AtomicU64>,
    cursor: AtomicUsize,
    epoch: Instant,
    stop: AtomicBool,
    next_token: AtomicU64,
    /// When an attempt last failed, in ms since `epoch` (0: never).
    last_failure_ms: AtomicU64,
    acks: Mutex<Vec<Ack>>,
    abandoned: Mutex<Vec<String>>,
}

impl Shared {
    fn now_ms(&self) -> u64 {
        u64::try_from(self.epoch.elapsed().as_millis()).unwrap_or(u64::MAX)
    }

    fn claim_free_disk(&self) -> Option<usize> {
        let now_ms = self.now_ms();
        let disks = self.naming.disks;
        for _ in 0..disks {
            let disk = self.cursor.fetch_add(1, Ordering::Relaxed) % disks;
            let slot = &self.free_at_ms[disk];
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
}

#[derive(Default)]
struct Tally {
    /// Attempts by kind ("create"/"describe") and answer.
    answers: BTreeMap<(&'static str, String), u64>,
    creates: u64,
    describes: u64,
    /// Calls that needed more than one attempt.
    retried: u64,
    /// When each create was acknowledged, in ms since the epoch.
    ok_at_ms: Vec<u64>,
    /// Per second of the run: (creates acknowledged, attempts failed).
    per_second: BTreeMap<u64, (u64, u64)>,
}

impl Tally {
    fn merge(&mut self, other: Tally) {
        for (key, count) in other.answers {
            *self.answers.entry(key).or_default() += count;
        }
        self.creates += other.creates;
        self.describes += other.describes;
        self.retried += other.retried;
        self.ok_at_ms.extend(other.ok_at_ms);
        for (second, (ok, failed)) in other.per_second {
            let entry = self.per_second.entry(second).or_default();
            entry.0 += ok;
            entry.1 += failed;
        }
    }

    fn failed_attempts(&self) -> u64 {
        self.answers
            .iter()
            .filter(|((_, answer), _)| answer != "OK")
            .map(|(_, count)| count)
            .sum()
    }
}

struct Worker {
    client: SnapshotServiceClient<Channel>,
    shared: Arc<Shared>,
    call_timeout: Duration,
    give_up_after: Duration,
    retry_internal: bool,
    revisit_after: Duration,
    describe_percent: u32,
    tally: Tally,
}

impl Worker {
    async fn run(mut self, period: Option<Duration>) -> Tally {
        let mut ticks = period.map(|period| {
            let mut interval = tokio::time::interval(period);
            interval.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            interval
        });
        while !self.shared.stop.load(Ordering::Relaxed) {
            if let Some(ticks) = &mut ticks {
                ticks.tick().await;
            }
            if rand::rng().random_range(0..100) < self.describe_percent {
                self.describe().await;
            } else {
                self.create().await;
            }
        }
        self.tally
    }

    fn record(&mut self, kind: &'static str, answer: String) {
        let second = self.shared.now_ms() / 1000;
        let entry = self.tally.per_second.entry(second).or_default();
        if answer == "OK" {
            if kind == "create" {
                entry.0 += 1;
            }
        } else {
            entry.1 += 1;
            self.shared
                .last_failure_ms
                .store(self.shared.now_ms(), Ordering::Relaxed);
        }
        *self.tally.answers.entry((kind, answer)).or_default() += 1;
    }

    async fn create(&mut self) {
        let Some(disk) = self.shared.claim_free_disk() else {
            tokio::time::sleep(Duration::from_millis(5)).await;
            return;
        };
        let shared = Arc::clone(&self.shared);
        let naming = &shared.naming;
        let account = naming.owner_of_disk(disk);
        let token = format!(
            "drill-{}-{}",
            naming.run_id,
            self.shared.next_token.fetch_add(1, Ordering::Relaxed)
        );
        let message = pb::CreateSnapshotRequest {
            disk_id: naming.disk(disk),
            client_token: token.clone(),
            ..Default::default()
        };
        self.tally.creates += 1;
        let first = Instant::now();
        let mut attempts = 0;
        let acknowledged = loop {
            attempts += 1;
            let request = as_account(naming, account, message.clone(), self.call_timeout);
            match self.client.create_snapshot(request).await {
                Ok(response) => {
                    let snapshot_id = response.into_inner().snapshot_id;
                    self.tally.ok_at_ms.push(self.shared.now_ms());
                    self.record("create", "OK".to_owned());
                    break Some(snapshot_id);
                }
                Err(status) => {
                    self.record("create", answer_of(&status));
                    match retry_after(&status, self.retry_internal) {
                        Some(delay) if first.elapsed() < self.give_up_after => {
                            tokio::time::sleep(delay).await
                        }
                        _ => break None,
                    }
                }
            }
        };
        if attempts > 1 {
            self.tally.retried += 1;
        }
        let now_ms = self.shared.now_ms();
        let free_at = match acknowledged {
            Some(snapshot_id) => {
                self.shared.acks.lock().expect("not poisoned").push(Ack {
                    token,
                    disk,
                    snapshot_id,
                });
                now_ms + u64::try_from(self.revisit_after.as_millis()).unwrap_or(u64::MAX)
            }
            None => {
                self.shared
                    .abandoned
                    .lock()
                    .expect("not poisoned")
                    .push(token);
                // Never reuse a disk whose create was abandoned: it may have committed.
                u64::MAX - 1
            }
        };
        self.shared.free_at_ms[disk].store(free_at, Ordering::Release);
    }

    async fn describe(&mut self) {
        let account = rand::rng().random_range(0..self.shared.naming.accounts);
        self.tally.describes += 1;
        let first = Instant::now();
        let mut attempts = 0;
        loop {
            attempts += 1;
            let request = as_account(
                &self.shared.naming,
                account,
                pb::DescribeSnapshotsRequest {
                    max_results: 20,
                    ..Default::default()
                },
                self.call_timeout,
            );
            match self.client.describe_snapshots(request).await {
                Ok(_) => {
                    self.record("describe", "OK".to_owned());
                    break;
                }
                Err(status) => {
                    self.record("describe", answer_of(&status));
                    match retry_after(&status, self.retry_internal) {
                        Some(delay) if first.elapsed() < self.give_up_after => {
                            tokio::time::sleep(delay).await
                        }
                        _ => break,
                    }
                }
            }
        }
        if attempts > 1 {
            self.tally.retried += 1;
        }
    }
}

/// Runs `call` until it answers or fails in a way not worth retrying (verification).
async fn with_retries<T, F, Fut>(mut call: F) -> Result<T, Status>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Result<T, Status>>,
{
    let first = Instant::now();
    loop {
        match call().await {
            Ok(value) => return Ok(value),
            Err(status) => match retry_after(&status, true) {
                Some(delay) if first.elapsed() < Duration::from_secs(60) => {
                    tokio::time::sleep(delay).await
                }
                _ => return Err(status),
            },
        }
    }
}

/// What the verification found.
struct Verdict {
    present: usize,
    lost: Vec<String>,
    replayed_same: usize,
    replayed_other: Vec<(String, String, String)>,
    wrong_disk: usize,
    unacknowledged: Vec<String>,
    total_listed: usize,
}

async fn verify(
    channel: &Channel,
    naming: &Naming,
    acks: &[Ack],
    timeout: Duration,
) -> Result<Verdict, Status> {
    let client = SnapshotServiceClient::new(channel.clone());
    // 1. Every acknowledged snapshot, by id, per account, 100 at a time.
    let mut by_account: BTreeMap<usize, Vec<&Ack>> = BTreeMap::new();
    for ack in acks {
        by_account
            .entry(naming.owner_of_disk(ack.disk))
            .or_default()
            .push(ack);
    }
    let mut found: HashMap<String, String> = HashMap::new();
    for (account, acks) in &by_account {
        for chunk in acks.chunks(100) {
            let ids: Vec<String> = chunk.iter().map(|ack| ack.snapshot_id.clone()).collect();
            let response = with_retries(|| {
                let mut client = client.clone();
                let request = as_account(
                    naming,
                    *account,
                    pb::DescribeSnapshotsRequest {
                        snapshot_ids: ids.clone(),
                        max_results: 100,
                        ..Default::default()
                    },
                    timeout,
                );
                async move { client.describe_snapshots(request).await }
            })
            .await?
            .into_inner();
            for snapshot in response.snapshots {
                found.insert(snapshot.snapshot_id, snapshot.source_disk_id);
            }
        }
    }
    let mut lost = Vec::new();
    let mut wrong_disk = 0;
    for ack in acks {
        match found.get(&ack.snapshot_id) {
            None => lost.push(ack.snapshot_id.clone()),
            Some(disk) if *disk != naming.disk(ack.disk) => wrong_disk += 1,
            Some(_) => {}
        }
    }
    // 2. Every acknowledged token, replayed: the same id.
    let replays: Vec<Result<(usize, String), Status>> = stream::iter(acks.iter().enumerate())
        .map(|(index, ack)| {
            let client = client.clone();
            async move {
                let account = naming.owner_of_disk(ack.disk);
                let message = pb::CreateSnapshotRequest {
                    disk_id: naming.disk(ack.disk),
                    client_token: ack.token.clone(),
                    ..Default::default()
                };
                let response = with_retries(|| {
                    let mut client = client.clone();
                    let request = as_account(naming, account, message.clone(), timeout);
                    async move { client.create_snapshot(request).await }
                })
                .await?;
                Ok((index, response.into_inner().snapshot_id))
            }
        })
        .buffer_unordered(32)
        .collect()
        .await;
    let mut replayed_same = 0;
    let mut replayed_other = Vec::new();
    for replay in replays {
        let (index, id) = replay?;
        let ack = &acks[index];
        if id == ack.snapshot_id {
            replayed_same += 1;
        } else {
            replayed_other.push((ack.token.clone(), ack.snapshot_id.clone(), id));
        }
    }
    // 3. Every snapshot of the drill's accounts: one that was acknowledged.
    let acknowledged: HashSet<&str> = acks.iter().map(|ack| ack.snapshot_id.as_str()).collect();
    let mut unacknowledged = Vec::new();
    let mut total_listed = 0;
    for account in 0..naming.accounts {
        let mut next_token = String::new();
        loop {
            let token = next_token.clone();
            let page = with_retries(|| {
                let mut client = client.clone();
                let request = as_account(
                    naming,
                    account,
                    pb::DescribeSnapshotsRequest {
                        max_results: 100,
                        next_token: token.clone(),
                        ..Default::default()
                    },
                    timeout,
                );
                async move { client.describe_snapshots(request).await }
            })
            .await?
            .into_inner();
            for snapshot in &page.snapshots {
                total_listed += 1;
                if !acknowledged.contains(snapshot.snapshot_id.as_str()) {
                    unacknowledged.push(snapshot.snapshot_id.clone());
                }
            }
            if page.next_token.is_empty() {
                break;
            }
            next_token = page.next_token;
        }
    }
    Ok(Verdict {
        present: acks.len() - lost.len(),
        lost,
        replayed_same,
        replayed_other,
        wrong_disk,
        unacknowledged,
        total_listed,
    })
}

/// A stretch of the run, in ms: (length, from, to).
type Stretch = (u64, u64, u64);

/// The longest stretch with no acknowledged create, between `start` and `end`.
fn longest_gap(ok_at_ms: &mut [u64], start: u64, end: u64) -> Stretch {
    ok_at_ms.sort_unstable();
    let mut best = (0, start, start);
    let mut previous = start;
    for &at in ok_at_ms.iter().chain(std::iter::once(&end)) {
        if at.saturating_sub(previous) > best.0 {
            best = (at - previous, previous, at);
        }
        previous = previous.max(at);
    }
    best
}

#[tokio::main]
async fn main() -> std::process::ExitCode {
    let args = Args::parse();
    match run(args).await {
        Ok(true) => std::process::ExitCode::SUCCESS,
        Ok(false) => std::process::ExitCode::from(2),
        Err(err) => {
            eprintln!("drill: {err}");
            std::process::ExitCode::FAILURE
        }
    }
}

async fn run(args: Args) -> Result<bool, Box<dyn std::error::Error>> {
    let naming = Naming::new(args.run_id.clone(), args.accounts, args.disks);
    let endpoint = Endpoint::from_shared(args.target.clone())?
        .connect_timeout(Duration::from_secs(1))
        .tcp_nodelay(true)
        .http2_keep_alive_interval(Duration::from_secs(5))
        .keep_alive_timeout(Duration::from_secs(2))
        .keep_alive_while_idle(true);
    let channels: Vec<Channel> = (0..args.connections.max(1))
        .map(|_| endpoint.connect_lazy())
        .collect();
    eprintln!(
        "drill: setting up {} accounts and {} disks (run {}) at {}",
        naming.accounts, naming.disks, naming.run_id, args.target
    );
    // The inventory calls are upserts: run the whole setup again on a passing failure (a busy
    // database, a replica restarting).
    with_retries(|| setup::inventory(&channels[0], &args.admin_token, &naming)).await?;

    let shared = Arc::new(Shared {
        free_at_ms: (0..naming.disks).map(|_| AtomicU64::new(0)).collect(),
        naming,
        cursor: AtomicUsize::new(0),
        epoch: Instant::now(),
        stop: AtomicBool::new(false),
        next_token: AtomicU64::new(0),
        last_failure_ms: AtomicU64::new(0),
        acks: Mutex::new(Vec::new()),
        abandoned: Mutex::new(Vec::new()),
    });
    let concurrency = args.concurrency.max(1);
    let period =
        (args.rate > 0).then(|| Duration::from_secs_f64(concurrency as f64 / f64::from(args.rate)));
    eprintln!(
        "drill: load started: {concurrency} in flight, {} calls/s, {} % describe, at least {}",
        if args.rate > 0 {
            args.rate.to_string()
        } else {
            "unpaced".to_owned()
        },
        args.describe_percent,
        humantime::format_duration(args.duration)
    );
    let mut workers = Vec::with_capacity(concurrency);
    for index in 0..concurrency {
        let worker = Worker {
            client: SnapshotServiceClient::new(channels[index % channels.len()].clone()),
            shared: Arc::clone(&shared),
            call_timeout: args.call_timeout,
            give_up_after: args.give_up_after,
            retry_internal: args.retry_internal,
            revisit_after: args.revisit_after,
            describe_percent: args.describe_percent.min(100),
            tally: Tally::default(),
        };
        workers.push(tokio::spawn(worker.run(period)));
    }
    // Stop once the duration is over and nothing failed for `settle`, or at the longest.
    let settle_ms = u64::try_from(args.settle.as_millis()).unwrap_or(u64::MAX);
    loop {
        tokio::time::sleep(Duration::from_millis(100)).await;
        let elapsed = shared.epoch.elapsed();
        let quiet_ms = shared
            .now_ms()
            .saturating_sub(shared.last_failure_ms.load(Ordering::Relaxed));
        let asked = args.stop_file.as_ref().is_some_and(|file| file.exists());
        if elapsed >= args.max_duration
            || ((elapsed >= args.duration || asked) && quiet_ms >= settle_ms)
        {
            break;
        }
    }
    let load_end_ms = shared.now_ms();
    shared.stop.store(true, Ordering::Relaxed);
    let mut tally = Tally::default();
    for worker in workers {
        tally.merge(worker.await?);
    }
    let acks = std::mem::take(&mut *shared.acks.lock().expect("not poisoned"));
    let abandoned = std::mem::take(&mut *shared.abandoned.lock().expect("not poisoned"));

    eprintln!(
        "drill: load over; verifying {} acknowledged creates",
        acks.len()
    );
    let verdict = verify(&channels[0], &shared.naming, &acks, args.call_timeout).await?;

    // The report.
    let (gap_ms, gap_from, gap_to) = longest_gap(&mut tally.ok_at_ms, 0, load_end_ms);
    println!(
        "run {}: {:.1} s of load, {} in flight, {} calls/s asked, {} % describe, target {}",
        shared.naming.run_id,
        load_end_ms as f64 / 1000.0,
        concurrency,
        args.rate,
        args.describe_percent,
        args.target
    );
    println!("answers per attempt:");
    for ((kind, answer), count) in &tally.answers {
        println!("  {kind:<8} {answer:<60} {count}");
    }
    let internal: u64 = tally
        .answers
        .iter()
        .filter(|((_, answer), _)| answer.starts_with("Internal"))
        .map(|(_, count)| count)
        .sum();
    let attempts: u64 = tally.answers.values().sum();
    let failed = tally.failed_attempts();
    println!("internal answers: {internal}");
    println!(
        "calls {} (creates {}, describes {}), attempts {attempts}, failed attempts {failed} ({:.3} %), calls retried {}, calls abandoned {}",
        tally.creates + tally.describes,
        tally.creates,
        tally.describes,
        failed as f64 * 100.0 / (tally.creates + tally.describes).max(1) as f64,
        tally.retried,
        abandoned.len()
    );
    println!(
        "longest stretch without an acknowledged create: {:.1} s (from {:.1} s to {:.1} s into the run)",
        gap_ms as f64 / 1000.0,
        gap_from as f64 / 1000.0,
        gap_to as f64 / 1000.0
    );
    if args.timeline {
        let worst: HashSet<u64> = tally
            .per_second
            .iter()
            .filter(|(_, (_, failed))| *failed > 0)
            .flat_map(|(second, _)| second.saturating_sub(1)..=second + 1)
            .collect();
        // Seconds in which no attempt ended (every worker waiting on a call) count as 0/0.
        let last = load_end_ms / 1000;
        let line: Vec<String> = (0..=last)
            .filter(|second| worst.contains(second) || !tally.per_second.contains_key(second))
            .map(|second| {
                let (ok, failed) = tally.per_second.get(&second).copied().unwrap_or_default();
                format!("{second}s:{ok}/{failed}")
            })
            .collect();
        println!(
            "timeline (second: creates acknowledged/attempts failed, around failures): {}",
            if line.is_empty() {
                "no failures".to_owned()
            } else {
                line.join(" ")
            }
        );
    }
    println!(
        "verify: acknowledged {}, present {}, lost {}, on another disk {}, tokens replayed to the same id {}, to another id {}, snapshots listed {}, not acknowledged {}",
        acks.len(),
        verdict.present,
        verdict.lost.len(),
        verdict.wrong_disk,
        verdict.replayed_same,
        verdict.replayed_other.len(),
        verdict.total_listed,
        verdict.unacknowledged.len()
    );
    for id in verdict.lost.iter().take(10) {
        println!("  lost: {id}");
    }
    for (token, first, second) in verdict.replayed_other.iter().take(10) {
        println!("  token {token}: acknowledged {first}, replayed {second}");
    }
    for id in verdict.unacknowledged.iter().take(10) {
        println!("  not acknowledged under any token: {id}");
    }
    for token in abandoned.iter().take(10) {
        println!("  abandoned: {token}");
    }
    let lost = verdict.lost.len();
    let duplicated = verdict.replayed_other.len() + verdict.unacknowledged.len();
    match args.last_line {
        LastLine::Failover => println!(
            "acknowledged {}, lost {lost}, duplicated {duplicated}, unavailable {:.1} s",
            acks.len(),
            gap_ms as f64 / 1000.0
        ),
        LastLine::Rolling => println!(
            "calls {}, failed {failed}, lost {lost}, duplicated {duplicated}",
            tally.creates + tally.describes
        ),
    }
    Ok(lost == 0 && duplicated == 0 && abandoned.is_empty() && verdict.wrong_disk == 0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_longest_stretch_counts_from_the_start_and_to_the_end_of_the_load() {
        let cases: [(&[u64], u64, Stretch); 4] = [
            (&[100, 200, 5_000, 5_100], 6_000, (4_800, 200, 5_000)),
            (&[3_000, 3_100], 3_500, (3_000, 0, 3_000)),
            (&[100, 200], 9_000, (8_800, 200, 9_000)),
            (&[], 1_000, (1_000, 0, 1_000)),
        ];
        for (acks, end, expected) in cases {
            let mut acks = acks.to_vec();
            acks.reverse();
            assert_eq!(longest_gap(&mut acks, 0, end), expected, "{acks:?}");
        }
    }

    #[test]
    fn a_call_is_retried_on_the_answers_the_docs_call_retryable_and_not_on_a_refusal() {
        let retried = [
            Code::Unavailable,
            Code::DeadlineExceeded,
            Code::ResourceExhausted,
            Code::Cancelled,
            Code::Unknown,
        ];
        for code in retried {
            assert!(
                retry_after(&Status::new(code, "x"), false).is_some(),
                "{code:?}"
            );
        }
        let refused = [
            Code::InvalidArgument,
            Code::NotFound,
            Code::PermissionDenied,
            Code::Unauthenticated,
            Code::FailedPrecondition,
        ];
        for code in refused {
            assert!(
                retry_after(&Status::new(code, "x"), true).is_none(),
                "{code:?}"
            );
        }
        let internal = Status::new(Code::Internal, "x");
        assert!(retry_after(&internal, false).is_none());
        assert!(retry_after(&internal, true).is_some());
    }
}
