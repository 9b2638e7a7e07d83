//! The progress line while a run goes, and the summary at its end (a table, or JSON).

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};
use serde::Serialize;

use crate::Args;
use crate::limit::Limit;
use crate::scenario::{Edge, GrpcClient, Outcome, Plan, Scenario};
use crate::server_stats::ServerStats;
use crate::sqlite_limit::SqliteLimit;
use crate::watchers::WatchStats;

/// The progress line (stderr), or nothing with `--quiet`.
pub struct Progress {
    bar: ProgressBar,
}

impl Progress {
    pub fn new(quiet: bool) -> Self {
        let bar = if quiet {
            ProgressBar::with_draw_target(None, ProgressDrawTarget::hidden())
        } else {
            ProgressBar::new_spinner()
        };
        bar.set_style(ProgressStyle::with_template("{spinner} {msg}").expect("a valid template"));
        Self { bar }
    }

    pub fn say(&self, message: &str) {
        self.bar.set_message(message.to_owned());
        self.bar.tick();
    }

    /// Updates the line until the run's deadline.
    pub async fn run(
        &self,
        done: &AtomicU64,
        unexpected: &AtomicU64,
        epoch: Instant,
        warmup: Duration,
        duration: Duration,
    ) {
        let deadline = epoch + warmup + duration;
        let mut last = (Instant::now(), 0);
        loop {
            let now = Instant::now();
            if now >= deadline {
                return;
            }
            let calls = done.load(Ordering::Relaxed);
            let rate = (calls - last.1) as f64 / (now - last.0).as_secs_f64().max(1e-3);
            last = (now, calls);
            let phase = if now < epoch + warmup {
                "warming up"
            } else {
                "measuring"
            };
            self.say(&format!(
                "{phase} {:>5.1}s/{:.0}s · {calls} calls · {rate:.0}/s · unexpected {}",
                (now - epoch).as_secs_f64(),
                (warmup + duration).as_secs_f64(),
                unexpected.load(Ordering::Relaxed),
            ));
            tokio::time::sleep(Duration::from_millis(250).min(deadline - now)).await;
        }
    }

    pub fn finish(&self) {
        self.bar.finish_and_clear();
    }
}

/// Latency percentiles, in milliseconds.
#[derive(Serialize)]
pub struct Latency {
    pub p50_ms: f64,
    pub p90_ms: f64,
    pub p99_ms: f64,
    pub max_ms: f64,
}

#[derive(Serialize)]
pub struct Report {
    pub target: String,
    pub scenario: Scenario,
    pub edge: Edge,
    /// `--edge grpc`: the client (`--grpc-client`).
    pub grpc_client: Option<GrpcClient>,
    pub run_id: String,
    pub concurrency: usize,
    /// gRPC: HTTP/2 connections; HTTP/1.1: at most one per call in flight.
    pub connections: usize,
    pub seconds: f64,
    pub calls: u64,
    pub calls_per_second: f64,
    /// Successful calls per second (for creates: snapshots made per second).
    pub ok_per_second: f64,
    pub latency: Latency,
    /// Calls by "CODE reason".
    pub answers: BTreeMap<String, u64>,
    /// Calls answered otherwise than the scenario expects.
    pub unexpected: u64,
    /// Times no disk was free to snapshot: more disks, or a shorter `--revisit-after`, needed.
    pub starved: u64,
    pub server: Option<ServerStats>,
    /// The bench's own CPU per call (all its threads: the client, its connections' tasks).
    pub client_cpu_us_per_call: Option<f64>,
    pub limit: Option<Limit>,
    /// The same transaction through sqlx, an async driver (`--limit-sqlx`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub sqlx_limit: Option<Limit>,
    /// SQLite's own limit (`--limit-sqlite-file`).
    pub sqlite_limit: Option<SqliteLimit>,
    /// The `watch` scenario's watchers.
    pub watch: Option<WatchStats>,
}

impl Report {
    pub fn new(
        target: &str,
        plan: &Plan,
        args: &Args,
        outcome: Outcome,
        mut server: Option<ServerStats>,
    ) -> Self {
        let calls: u64 = outcome.answers.values().sum();
        let ok = outcome.answers.get("OK").copied().unwrap_or(0);
        let unexpected = outcome
            .answers
            .iter()
            .filter(|(answer, _)| !plan.scenario.expects(answer))
            .map(|(_, count)| count)
            .sum();
        let seconds = outcome.elapsed.as_secs_f64();
        let ms = |quantile: f64| outcome.latency.value_at_quantile(quantile) as f64 / 1e3;
        if let (Some(server), Some(cpu)) = (server.as_mut(), outcome.server_cpu) {
            server.cpu_seconds = cpu.total().as_secs_f64();
            server.system_cpu_seconds = cpu.system.as_secs_f64();
            server.cpu_us_per_call = (calls > 0).then(|| server.cpu_seconds * 1e6 / calls as f64);
        }
        if let (Some(server), Some(Ok(instructions))) =
            (server.as_mut(), &outcome.server_instructions)
        {
            server.instructions = Some(*instructions);
            server.instructions_per_call = (calls > 0).then(|| *instructions as f64 / calls as f64);
        }
        let client_cpu_us_per_call = outcome
            .client_cpu
            .filter(|_| calls > 0)
            .map(|cpu| cpu.as_secs_f64() * 1e6 / calls as f64);
        Self {
            target: target.to_owned(),
            scenario: plan.scenario,
            edge: args.edge,
            grpc_client: (args.edge == Edge::Grpc).then_some(args.grpc_client),
            run_id: plan.naming.run_id.clone(),
            concurrency: args.concurrency,
            connections: match args.edge {
                Edge::Grpc => args.connections,
                Edge::Http => args.concurrency,
            },
            seconds,
            calls,
            calls_per_second: calls as f64 / seconds,
            ok_per_second: ok as f64 / seconds,
            latency: Latency {
                p50_ms: ms(0.50),
                p90_ms: ms(0.90),
                p99_ms: ms(0.99),
                max_ms: outcome.latency.max() as f64 / 1e3,
            },
            answers: outcome.answers,
            unexpected,
            starved: outcome.starved,
            server,
            client_cpu_us_per_call,
            limit: None,
            sqlx_limit: None,
            sqlite_limit: None,
            watch: None,
        }
    }

    pub fn table(&self) -> String {
        let mut out = String::new();
        let _ = writeln!(
            out,
            "scenario {:?} over {:?}{} · {} concurrent over {} connections · {:.1} s · {}",
            self.scenario,
            self.edge,
            self.grpc_client
                .map(|client| format!(" ({client:?} client)"))
                .unwrap_or_default(),
            self.concurrency,
            self.connections,
            self.seconds,
            self.target
        );
        let _ = writeln!(
            out,
            "throughput  {:>10.0} calls/s   ({:.0} OK/s, {} calls)",
            self.calls_per_second, self.ok_per_second, self.calls
        );
        let _ = writeln!(
            out,
            "latency ms  p50 {:.2}   p90 {:.2}   p99 {:.2}   max {:.2}",
            self.latency.p50_ms, self.latency.p90_ms, self.latency.p99_ms, self.latency.max_ms
        );
        let _ = writeln!(out, "{:<60} {:>10}", "answer (code reason)", "calls");
        for (answer, count) in &self.answers {
            let _ = writeln!(out, "{answer:<60} {count:>10}");
        }
        let _ = writeln!(out, "unexpected answers: {}", self.unexpected);
        if self.starved > 0 {
            let _ = writeln!(
                out,
                "starved: {} times no disk was free (add --disks or shorten --revisit-after)",
                self.starved
            );
        }
        if let Some(server) = &self.server {
            let _ = writeln!(
                out,
                "server      peak RSS {:.1} MiB   CPU {:.2} s (kernel {:.2} s)   {} µs CPU per call",
                server.peak_rss_kib as f64 / 1024.0,
                server.cpu_seconds,
                server.system_cpu_seconds,
                server
                    .cpu_us_per_call
                    .map_or("–".to_owned(), |us| format!("{us:.0}")),
            );
        }
        if let Some(server) = &self.server
            && let Some(per_call) = server.instructions_per_call
        {
            let _ = writeln!(
                out,
                "server      {per_call:.0} instructions per call (callgrind, all threads)"
            );
        }
        if let Some(us) = self.client_cpu_us_per_call {
            let _ = writeln!(out, "client      {us:.0} µs CPU per call (this bench)");
        }
        if let Some(watch) = &self.watch {
            let kib = |value: Option<u64>| {
                value.map_or("–".to_owned(), |v| format!("{:.1}", v as f64 / 1024.0))
            };
            let _ = writeln!(
                out,
                "watchers    {} over {} connections · server RSS {} MiB before, {} MiB idle with them · {} bytes per idle watcher",
                watch.watchers,
                watch.connections,
                kib(watch.rss_before_kib),
                kib(watch.rss_idle_kib),
                watch
                    .rss_bytes_per_idle_watcher
                    .map_or("–".to_owned(), |bytes| format!("{bytes:.0}")),
            );
            let _ = writeln!(
                out,
                "watch load  {} messages received · {} µs server CPU per message · {} watches ended early",
                watch.messages,
                watch
                    .cpu_us_per_message
                    .map_or("–".to_owned(), |us| format!("{us:.1}")),
                watch.ended,
            );
        }
        if let Some(limit) = &self.limit {
            let parts = if limit.parts.is_empty() {
                std::slice::from_ref(limit)
            } else {
                limit.parts.as_slice()
            };
            for part in parts {
                let _ = writeln!(
                    out,
                    "limit       pgbench {:.0} tx/s, p50 {:.2} ms p99 {:.2} ms max {:.2} ms \
                     with the store's {} ({} clients)",
                    part.pgbench_tps,
                    part.latency_p50_ms,
                    part.latency_p99_ms,
                    part.latency_max_ms,
                    if part.workload == "describe" {
                        "describe statement"
                    } else {
                        "create transaction"
                    },
                    part.clients
                );
            }
            if !limit.parts.is_empty() {
                let _ = writeln!(
                    out,
                    "limit       {:.0} tx/s: {}",
                    limit.pgbench_tps, limit.workload
                );
            }
            let _ = writeln!(
                out,
                "HEADLINE    service ÷ limit = {:.0} ÷ {:.0} = {:.2}",
                self.ok_per_second,
                limit.pgbench_tps,
                self.ok_per_second / limit.pgbench_tps
            );
            // The database's own p99 grows with its clients, so it is a fair floor only at the
            // same concurrency; say so when pgbench ran with fewer (it is capped at 64).
            let concurrency = if limit.clients == self.concurrency {
                "same concurrency".to_owned()
            } else {
                format!(
                    "service {} in flight, pgbench {} clients",
                    self.concurrency, limit.clients
                )
            };
            let p99 = parts
                .iter()
                .map(|part| format!("{} {:.2} ms", part.workload, part.latency_p99_ms))
                .collect::<Vec<_>>()
                .join(", ");
            let _ = writeln!(
                out,
                "p99         service {:.2} ms vs database alone {p99} ({concurrency})",
                self.latency.p99_ms
            );
        }
        if let Some(limit) = &self.sqlx_limit {
            let _ = writeln!(
                out,
                "limit       sqlx {:.0} tx/s, p50 {:.2} ms p99 {:.2} ms max {:.2} ms with the store's \
                 create transaction ({} tasks on one multi-threaded runtime)",
                limit.pgbench_tps,
                limit.latency_p50_ms,
                limit.latency_p99_ms,
                limit.latency_max_ms,
                limit.clients
            );
            let _ = writeln!(
                out,
                "vs sqlx     service ÷ sqlx limit = {:.0} ÷ {:.0} = {:.2}; p50 {:.2} ms vs {:.2} ms",
                self.ok_per_second,
                limit.pgbench_tps,
                self.ok_per_second / limit.pgbench_tps,
                self.latency.p50_ms,
                limit.latency_p50_ms
            );
        }
        if let Some(limit) = &self.sqlite_limit {
            let _ = writeln!(
                out,
                "limit       sqlite3 {:.0} tx/s, p50 {:.2} ms p99 {:.2} ms max {:.2} ms \
                 with the store's statements ({:?}, one process, synchronous={})",
                limit.tps,
                limit.latency_p50_ms,
                limit.latency_p99_ms,
                limit.latency_max_ms,
                limit.statements,
                limit.synchronous,
            );
            let _ = writeln!(
                out,
                "HEADLINE    service ÷ limit = {:.0} ÷ {:.0} = {:.2}",
                self.ok_per_second,
                limit.tps,
                self.ok_per_second / limit.tps
            );
            let _ = writeln!(
                out,
                "p99         service {:.2} ms vs database alone {:.2} ms (SQLite: one writer, any concurrency)",
                self.latency.p99_ms, limit.latency_p99_ms
            );
        }
        out
    }
}
