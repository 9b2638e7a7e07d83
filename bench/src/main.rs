//! `snapshotd-bench`: a load generator for a running snapshotd, and the database limit measured
//! beside it.
//!
//! It sets up its own inventory through the InventoryService (accounts, instances and disks
//! named after a run id, so runs never collide), drives one scenario at a concurrency over a
//! number of HTTP/2 connections for a duration, and prints throughput, latency percentiles and
//! a count per gRPC code and reason. With `--limit-database-url` it then runs `pgbench` with the
//! store's own CreateSnapshot transaction (`describe`: its describe statement; `mixed`: both,
//! combined by the mix) against the same database, at the same concurrency and for as long, and
//! prints service ÷ limit; with `--limit-sqlite-file` it runs the same statements as the SQLite
//! store through the sqlite3 CLI instead (`sqlite_limit`). `bench/limit.sh` wraps all of it.
//!
//! With `--edge http` the scenario's calls go through the ECS-compatible HTTP edge instead,
//! signed with an access key per account (put through the InventoryService with the rest of
//! the inventory, which is always set up over gRPC).

mod direct;
mod driver_limit;
mod limit;
mod pgbench;
mod report;
mod scenario;
mod server_stats;
mod sqlite_limit;
mod watchers;

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use clap::Parser;
use snapshotd_bench::{ecs_client, setup};
use tonic::transport::Channel;

use crate::direct::{DirectConnection, GrpcConnection};
use crate::ecs_client::EcsClient;
use crate::report::Report;
use crate::scenario::{Clients, Edge, GrpcClient, Scenario};
use crate::setup::Naming;

/// The most pgbench clients by default (a default PostgreSQL accepts 100 connections).
const MAX_LIMIT_CLIENTS: usize = 64;

#[derive(Parser)]
#[command(name = "snapshotd-bench", about = "Load generator for snapshotd")]
struct Args {
    /// The server to load; repeat for replicas (connections are spread over them).
    #[arg(long, default_value = "http://127.0.0.1:50051")]
    target: Vec<String>,
    /// The server's admin token, to set up the inventory.
    #[arg(long, env = "SNAPSHOTD_ADMIN_TOKEN", hide_env_values = true)]
    admin_token: String,
    #[arg(long, value_enum, default_value_t = Scenario::Spread)]
    scenario: Scenario,
    /// The edge the scenario's calls go through (setup always uses gRPC at `--target`).
    #[arg(long, value_enum, default_value_t = Edge::Grpc)]
    edge: Edge,
    /// `--edge http`: the server's ECS edge (its `--ecs-listen`); repeat for replicas, in the
    /// order of `--target`.
    #[arg(long, default_value = "http://127.0.0.1:8080")]
    ecs_target: Vec<String>,
    /// How long to measure (after the warm-up).
    #[arg(long, default_value = "10s", value_parser = humantime::parse_duration)]
    duration: Duration,
    /// Load before measuring starts (connections, caches, pool).
    #[arg(long, default_value = "2s", value_parser = humantime::parse_duration)]
    warmup: Duration,
    /// Calls in flight at once.
    #[arg(long, default_value_t = 64)]
    concurrency: usize,
    /// HTTP/2 connections the calls are spread over (`--edge grpc`; over HTTP/1.1 each call
    /// in flight holds a connection of its own, kept alive between calls).
    #[arg(long, default_value_t = 4)]
    connections: usize,
    /// `--edge grpc`: how the scenario's calls reach the server. `channel`: tonic's `Channel`
    /// (a tower `Buffer` task in front of each connection); `direct`: the generated client over
    /// the HTTP/2 connection's `SendRequest`, one task hand-off less per call. Same server, same
    /// calls: the difference is the client's share of each call's latency.
    #[arg(long, value_enum, default_value_t = GrpcClient::Channel)]
    grpc_client: GrpcClient,
    /// Accounts to set up (each with one instance).
    #[arg(long, default_value_t = 64)]
    accounts: usize,
    /// Disks to set up, spread over the accounts.
    #[arg(long, default_value_t = 8192)]
    disks: usize,
    /// `spread`/`mixed`: a disk is snapshotted again only this long after its last snapshot
    /// (longer than the server's copy time plus its worker interval).
    #[arg(long, default_value = "2s", value_parser = humantime::parse_duration)]
    revisit_after: Duration,
    /// `describe`: snapshots the described account holds.
    #[arg(long, default_value_t = 2000)]
    describe_snapshots: usize,
    /// `describe`: snapshots per page (`MaxResults`). (`mixed` reads first pages of 20.)
    #[arg(long, default_value_t = 100, value_parser = clap::value_parser!(u32).range(1..=100))]
    describe_page_size: u32,
    /// `describe`: every call reads the account's first page (a console listing the account)
    /// instead of walking `next_token`; its limit runs the first page's statement alone.
    #[arg(long)]
    describe_first_pages: bool,
    /// `watch`: WatchSnapshots streams to hold open (the server's --max-watches-per-account must
    /// allow this many ÷ --accounts, and its --max-watches-per-peer this many: they all come
    /// from this process's address).
    #[arg(long, default_value_t = 10_000)]
    watchers: usize,
    /// The server's process id (same machine), repeated for replicas: report peak RSS (the
    /// largest of them) and CPU per call (all of them).
    #[arg(long)]
    server_pid: Vec<u32>,
    /// The servers of `--server-pid` run under valgrind's callgrind: also report the
    /// instructions they execute per call, a count that does not move with the machine's load
    /// (`callgrind_control` zeroes their counters when the measured part starts, reads them and
    /// dumps a profile of that part when it ends; `bench/limit.sh` with `CALLGRIND=DIR`).
    #[arg(long, requires = "server_pid")]
    callgrind: bool,
    /// Also write the report as JSON to this file (`-` for stdout).
    #[arg(long)]
    json: Option<PathBuf>,
    /// After the run, measure the database limit with pgbench on this database (the server's).
    #[arg(long)]
    limit_database_url: Option<String>,
    /// pgbench clients for the limit (default: the concurrency, at most 64, which a default
    /// PostgreSQL's `max_connections` of 100 allows).
    #[arg(long)]
    limit_clients: Option<usize>,
    /// With `--limit-database-url`, for creates (`spread`, `hot`): also run the same
    /// transaction through sqlx, an async driver on this process's runtime, after pgbench.
    #[arg(long)]
    limit_sqlx: bool,
    /// After the run, measure SQLite's own limit with the sqlite3 CLI on a copy of this database
    /// file (the server's, a path or its `sqlite://` URL): the scenario's statements, one
    /// transaction after another in one process, as long as the run.
    #[arg(long)]
    limit_sqlite_file: Option<String>,
    /// The server's `synchronous` setting, for the SQLite limit.
    #[arg(long, env = "SNAPSHOTD_SQLITE_SYNCHRONOUS", default_value = "full", value_parser = ["full", "normal"])]
    limit_sqlite_synchronous: String,
    /// Print the SQLite limit's script (this many create transactions, then as many describe
    /// pages of `--limit-sqlite-file`'s account 0) and exit.
    #[arg(long)]
    print_sqlite_script: Option<u64>,
    /// Names the run's accounts and disks (default: random).
    #[arg(long)]
    run_id: Option<String>,
    /// Print the pgbench script for this run's disks and exit.
    #[arg(long)]
    print_pgbench_script: bool,
    /// No progress line (for logs).
    #[arg(long)]
    quiet: bool,
}

#[tokio::main]
async fn main() -> std::process::ExitCode {
    let args = Args::parse();
    match run(args).await {
        Ok(true) => std::process::ExitCode::SUCCESS,
        Ok(false) => std::process::ExitCode::from(2),
        Err(err) => {
            eprintln!("snapshotd-bench: {err}");
            std::process::ExitCode::FAILURE
        }
    }
}

/// Runs the benchmark; `Ok(false)` when calls failed other than as the scenario expects.
async fn run(args: Args) -> Result<bool, Box<dyn std::error::Error>> {
    let naming = Naming::new(args.run_id.clone(), args.accounts, args.disks);
    if args.print_pgbench_script {
        print!("{}", limit::script(&naming));
        return Ok(true);
    }
    if let Some(transactions) = args.print_sqlite_script {
        print!(
            "{}",
            sqlite_limit::script(
                &naming,
                &args.limit_sqlite_synchronous,
                args.describe_page_size,
                transactions,
            )?
        );
        return Ok(true);
    }
    let mut channels = Vec::with_capacity(args.connections.max(1));
    for connection in 0..args.connections.max(args.target.len()) {
        let target = &args.target[connection % args.target.len()];
        channels.push(Channel::from_shared(target.clone())?.connect().await?);
    }
    let progress = report::Progress::new(args.quiet);
    progress.say(&format!(
        "setting up {} accounts and {} disks (run {})",
        naming.accounts, naming.disks, naming.run_id
    ));
    setup::inventory(&channels[0], &args.admin_token, &naming).await?;
    let clients = match args.edge {
        Edge::Grpc => {
            let mut connections = Vec::with_capacity(channels.len());
            for (connection, channel) in channels.iter().enumerate() {
                let target: http::Uri = args.target[connection % args.target.len()].parse()?;
                connections.push((
                    match args.grpc_client {
                        GrpcClient::Channel => GrpcConnection::Channel(channel.clone()),
                        GrpcClient::Direct => {
                            GrpcConnection::Direct(DirectConnection::connect(&target).await?)
                        }
                    },
                    target,
                ));
            }
            Clients::Grpc(connections)
        }
        Edge::Http => {
            let keys = setup::access_keys(&channels[0], &args.admin_token, &naming).await?;
            let keys: Arc<[ecs_client::AccessKey]> = keys.into();
            let pool = ecs_client::pool()?;
            Clients::Http(
                args.ecs_target
                    .iter()
                    .map(|target| EcsClient::new(pool.clone(), target, Arc::clone(&keys)))
                    .collect(),
            )
        }
    };
    let plan = scenario::Plan {
        scenario: args.scenario,
        naming: Arc::new(naming),
        revisit_after: args.revisit_after,
        describe_page_size: args.describe_page_size,
        describe_first_pages: args.describe_first_pages,
    };
    if matches!(args.scenario, Scenario::Describe) {
        progress.say(&format!(
            "creating {} snapshots to describe",
            args.describe_snapshots
        ));
        setup::snapshots_to_describe(&channels[0], &plan.naming, args.describe_snapshots).await?;
    }
    if let Some(url) = &args.limit_database_url {
        progress.say("analyzing the tables the setup filled");
        limit::refresh_statistics(url).await?;
    }
    let rss = || {
        args.server_pid
            .first()
            .and_then(|pid| server_stats::rss_kib(*pid))
    };
    let watching = if matches!(args.scenario, Scenario::Watch) {
        let rss_before_kib = rss();
        progress.say(&format!("opening {} watches", args.watchers));
        let watchers = watchers::open(&args.target, &plan.naming, args.watchers).await?;
        let rss_idle_kib = rss();
        let opened = watchers.received.load(std::sync::atomic::Ordering::Relaxed);
        Some((watchers, rss_before_kib, rss_idle_kib, opened))
    } else {
        None
    };
    let sampler = (!args.server_pid.is_empty())
        .then(|| server_stats::Sampler::start(args.server_pid.clone(), args.callgrind));
    let outcome = scenario::drive(
        &plan,
        &clients,
        args.concurrency,
        args.warmup,
        args.duration,
        &progress,
        sampler.as_ref(),
    )
    .await;
    let server = sampler.map(|sampler| sampler.finish());
    progress.finish();
    if let Some(Err(err)) = &outcome.server_instructions {
        return Err(format!("--callgrind: {err}").into());
    }

    let target = match args.edge {
        Edge::Grpc => args.target.join(","),
        Edge::Http => args.ecs_target.join(","),
    };
    let mut report = Report::new(&target, &plan, &args, outcome, server);
    if let Some((watchers, rss_before_kib, rss_idle_kib, opened)) = watching {
        use std::sync::atomic::Ordering;
        let messages = watchers.received.load(Ordering::Relaxed) - opened;
        let extra = rss_before_kib.zip(rss_idle_kib).map(|(before, idle)| {
            idle.saturating_sub(before) as f64 * 1024.0 / args.watchers.max(1) as f64
        });
        report.watch = Some(watchers::WatchStats {
            watchers: args.watchers,
            connections: watchers.connections,
            rss_before_kib,
            rss_idle_kib,
            rss_bytes_per_idle_watcher: extra,
            messages,
            cpu_us_per_message: report
                .server
                .as_ref()
                .filter(|_| messages > 0)
                .map(|server| server.cpu_seconds * 1e6 / messages as f64),
            ended: watchers.ended.load(Ordering::Relaxed),
        });
    }
    // `noop` reaches no database: no limit of its own (bench/README.md, issue 19).
    if let Some(url) = args
        .limit_database_url
        .as_ref()
        .filter(|_| args.scenario != Scenario::Noop)
    {
        // The servers' pools would take connections pgbench needs (and CPU): stop them first.
        server_stats::stop(&args.server_pid);
        let clients = args
            .limit_clients
            .unwrap_or(args.concurrency.min(MAX_LIMIT_CLIENTS));
        eprintln!("measuring the database limit with pgbench ({clients} clients)…");
        let measured = match args.scenario {
            Scenario::Describe => limit::measure_describe(
                url,
                &plan.naming,
                args.describe_page_size,
                args.describe_first_pages,
                clients,
                args.duration,
            ),
            Scenario::Mixed => limit::measure_mixed(url, &plan.naming, clients, args.duration),
            _ => limit::measure(url, &plan.naming, clients, args.duration),
        };
        match measured {
            Ok(limit) => report.limit = Some(limit),
            // The service's numbers stand on their own: print them anyway.
            Err(err) => eprintln!("snapshotd-bench: no database limit: {err}"),
        }
        if args.limit_sqlx && matches!(args.scenario, Scenario::Spread | Scenario::Hot) {
            eprintln!("measuring the database limit through sqlx ({clients} tasks)…");
            let script = limit::script(&plan.naming);
            let disks = plan.naming.disks as u64;
            match driver_limit::measure(url, &script, disks, clients, args.duration).await {
                Ok(limit) => report.sqlx_limit = Some(limit),
                Err(err) => eprintln!("snapshotd-bench: no sqlx limit: {err}"),
            }
        }
    }
    if let Some(file) = &args.limit_sqlite_file {
        // One writer at a time: the limit is one process, whatever the concurrency.
        server_stats::stop(&args.server_pid);
        let statements = match args.scenario {
            Scenario::Describe => Some(sqlite_limit::Statements::Describe {
                page: args.describe_page_size,
            }),
            // Its limit is one of its parts' (bench/curve.sh weighs them).
            Scenario::Mixed => None,
            // No statement: its figure is set beside a create's limit measured on its own.
            Scenario::Noop => None,
            Scenario::Spread | Scenario::Hot | Scenario::Replay | Scenario::Watch => {
                Some(sqlite_limit::Statements::Create)
            }
        };
        if let Some(statements) = statements {
            eprintln!("measuring SQLite's limit with the sqlite3 CLI ({statements:?})…");
            match sqlite_limit::measure(
                &sqlite_limit::database_file(file),
                &plan.naming,
                statements,
                &args.limit_sqlite_synchronous,
                args.duration,
            ) {
                Ok(limit) => report.sqlite_limit = Some(limit),
                Err(err) => eprintln!("snapshotd-bench: no SQLite limit: {err}"),
            }
        }
    }
    print!("{}", report.table());
    if let Some(path) = &args.json {
        let json = serde_json::to_string_pretty(&report)?;
        if path.as_os_str() == "-" {
            println!("{json}");
        } else {
            std::fs::write(path, json + "\n")?;
        }
    }
    Ok(report.unexpected == 0)
}
