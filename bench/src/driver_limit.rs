//! The database limit through an async driver: the transaction pgbench runs (the store's own
//! CreateSnapshot transaction, [`crate::limit::script`]), statement by statement through sqlx on
//! this process's multi-threaded tokio runtime, `clients` tasks each on a connection of its
//! own, as prepared statements, for as long.
//!
//! pgbench is one blocking C loop per thread: between two round trips of a transaction it
//! only waits in `recv`. An async client's task parks instead, and its thread sleeps and is
//! woken for each answer, as the service's are. So at 1 in flight this limit is what any async
//! client of the same statements on the same runtime pays, and the service ÷ this limit shows
//! what the service adds on top of that (bench/README.md, issue 19: "At 1 in flight").

use std::time::{Duration, Instant};

use hdrhistogram::Histogram;
use rand::Rng;
use sqlx::Connection;

use crate::limit::Limit;

/// A statement of the script, its pgbench variables turned into `$n`, in the order they bind.
#[derive(Debug, PartialEq)]
struct Statement {
    sql: String,
    variables: Vec<Variable>,
}

#[derive(Debug, Clone, Copy, PartialEq)]
enum Variable {
    Disk,
    Snap,
}

/// The script's statements, without its comments and `\set` lines; each `:disk` and `:snap`
/// (not a `::` cast) becomes a parameter of its own.
fn statements(script: &str) -> Vec<Statement> {
    let body: String = script
        .lines()
        .filter(|line| !line.starts_with("--") && !line.starts_with('\\'))
        .map(|line| format!("{line}\n"))
        .collect();
    body.split(";\n")
        .map(str::trim)
        .filter(|text| !text.is_empty())
        .map(|text| {
            let mut sql = String::with_capacity(text.len());
            let mut variables = Vec::new();
            let mut rest = text;
            while let Some(at) = rest.find(':') {
                let (before, after) = rest.split_at(at);
                sql.push_str(before);
                let named = [("disk", Variable::Disk), ("snap", Variable::Snap)]
                    .into_iter()
                    .find(|(name, _)| {
                        after[1..].starts_with(name)
                            && !after[1 + name.len()..]
                                .starts_with(|c: char| c.is_alphanumeric() || c == '_')
                    });
                match named {
                    Some((name, variable)) if !before.ends_with(':') => {
                        variables.push(variable);
                        sql.push_str(&format!("${}", variables.len()));
                        rest = &after[1 + name.len()..];
                    }
                    _ => {
                        sql.push(':');
                        rest = &after[1..];
                    }
                }
            }
            sql.push_str(rest);
            Statement { sql, variables }
        })
        .collect()
}

/// Runs the script's transaction with `clients` connections for `duration`, each picking a
/// random disk of `disks` (as pgbench's `\set disk random(0, disks - 1)`).
pub async fn measure(
    database_url: &str,
    script: &str,
    disks: u64,
    clients: usize,
    duration: Duration,
) -> Result<Limit, String> {
    let statements = std::sync::Arc::new(statements(script));
    let deadline = Instant::now() + duration;
    let mut tasks = Vec::with_capacity(clients);
    for _ in 0..clients {
        let mut connection = sqlx::PgConnection::connect(database_url)
            .await
            .map_err(|err| format!("connecting for the sqlx limit: {err}"))?;
        let statements = std::sync::Arc::clone(&statements);
        tasks.push(tokio::spawn(async move {
            let mut latency = Histogram::<u64>::new(3).expect("three significant digits");
            while Instant::now() < deadline {
                let disk = rand::rng().random_range(0..disks.max(1)) as i64;
                let snap = rand::rng().random_range(1..1_000_000_000_000_i64);
                let started = Instant::now();
                for statement in statements.iter() {
                    let mut query = sqlx::query(&statement.sql);
                    for variable in &statement.variables {
                        query = query.bind(match variable {
                            Variable::Disk => disk,
                            Variable::Snap => snap,
                        });
                    }
                    query
                        .fetch_all(&mut connection)
                        .await
                        .map_err(|err| format!("the sqlx limit's transaction: {err}"))?;
                }
                latency
                    .record(started.elapsed().as_micros() as u64)
                    .expect("a latency within the histogram's range");
            }
            Ok::<_, String>(latency)
        }));
    }
    let started = Instant::now();
    let mut latency = Histogram::<u64>::new(3).expect("three significant digits");
    for task in tasks {
        let part = task.await.map_err(|err| err.to_string())??;
        latency.add(part).map_err(|err| err.to_string())?;
    }
    let seconds = started.elapsed().as_secs_f64().max(duration.as_secs_f64());
    let ms = |micros: u64| micros as f64 / 1e3;
    Ok(Limit {
        workload: "create (sqlx)".to_owned(),
        pgbench_tps: latency.len() as f64 / seconds,
        latency_p50_ms: ms(latency.value_at_quantile(0.50)),
        latency_p99_ms: ms(latency.value_at_quantile(0.99)),
        latency_max_ms: ms(latency.max()),
        clients,
        seconds: duration.as_secs().max(1),
        parts: Vec::new(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn variables_become_parameters_and_casts_stay() {
        let script = "-- a comment\n\\set disk random(0, 3)\nBEGIN;\nSELECT ARRAY[('d-' || :disk)]::text[], (:disk % 64), :snap,\n  ':diskette'::text, :disks;\nCOMMIT;\n";
        assert_eq!(
            statements(script),
            vec![
                Statement {
                    sql: "BEGIN".into(),
                    variables: vec![]
                },
                Statement {
                    sql: "SELECT ARRAY[('d-' || $1)]::text[], ($2 % 64), $3,\n  ':diskette'::text, :disks".into(),
                    variables: vec![Variable::Disk, Variable::Disk, Variable::Snap]
                },
                Statement {
                    sql: "COMMIT".into(),
                    variables: vec![]
                },
            ]
        );
    }
}
