//! What the properties share: their proptest configuration and a fresh database per use
//! (a PostgreSQL database on the local server, or a SQLite file in a temp dir).
//!
//! A PostgreSQL property that cannot reach a server fails and says what to start; it never
//! passes silently.

use std::time::Duration;

use proptest::test_runner::Config as ProptestConfig;
use sqlx::Connection;

/// `default` cases, or `PROPTEST_CASES` when it is set (then every property runs that many).
pub fn config(default: u32) -> ProptestConfig {
    let cases = std::env::var("PROPTEST_CASES")
        .ok()
        .and_then(|n| n.parse().ok())
        .unwrap_or(default);
    ProptestConfig {
        cases,
        // A counterexample is printed in full; nothing is written into the source tree.
        failure_persistence: None,
        max_shrink_iters: 256,
        ..ProptestConfig::default()
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Backend {
    Postgres,
    Sqlite,
}

/// The server's `postgres` database: `DATABASE_URL` when it names PostgreSQL, else the local
/// server on 127.0.0.1:5432 (user postgres, trust auth).
fn postgres_admin_url() -> String {
    match std::env::var("DATABASE_URL") {
        Ok(url) if url.starts_with("postgres") => url,
        _ => "postgres://postgres@127.0.0.1:5432/postgres".to_owned(),
    }
}

async fn admin_connection(admin_url: &str) -> sqlx::PgConnection {
    match tokio::time::timeout(
        Duration::from_secs(10),
        sqlx::PgConnection::connect(admin_url),
    )
    .await
    {
        Ok(Ok(conn)) => conn,
        Ok(Err(err)) => panic!(
            "PostgreSQL at {admin_url} refused the connection ({err}). These properties need it: \
             start PostgreSQL on 127.0.0.1:5432 (user postgres, trust auth) or set DATABASE_URL \
             to a postgres:// URL."
        ),
        Err(_) => panic!(
            "PostgreSQL at {admin_url} did not answer within 10 s. These properties need it: \
             start PostgreSQL on 127.0.0.1:5432 (user postgres, trust auth) or set DATABASE_URL \
             to a postgres:// URL."
        ),
    }
}

/// A database of its own for one property case, dropped with it (even when the case panics).
pub struct TestDatabase {
    pub url: String,
    postgres: Option<(String, String)>,
    _dir: Option<tempfile::TempDir>,
}

impl TestDatabase {
    pub async fn create(backend: Backend) -> Self {
        match backend {
            Backend::Postgres => {
                let admin_url = postgres_admin_url();
                let name = format!("snapshotd_prop_{}", uuid::Uuid::new_v4().simple());
                let mut admin = admin_connection(&admin_url).await;
                sqlx::query(&format!("CREATE DATABASE {name}"))
                    .execute(&mut admin)
                    .await
                    .expect("creating a property-test database");
                let (base, _) = admin_url
                    .rsplit_once('/')
                    .expect("a PostgreSQL URL ends with its database");
                Self {
                    url: format!("{base}/{name}"),
                    postgres: Some((admin_url, name)),
                    _dir: None,
                }
            }
            Backend::Sqlite => {
                let dir = tempfile::tempdir().expect("a temp dir");
                Self {
                    url: format!("sqlite://{}", dir.path().join("snapshotd.db").display()),
                    postgres: None,
                    _dir: Some(dir),
                }
            }
        }
    }
}

impl Drop for TestDatabase {
    fn drop(&mut self) {
        let Some((admin_url, name)) = self.postgres.take() else {
            return;
        };
        let sql = format!("DROP DATABASE IF EXISTS {name} WITH (FORCE)");
        // Drop cannot await and may run inside a runtime: use a plain thread with its own.
        let _ = std::thread::spawn(move || {
            let runtime = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .ok()?;
            runtime.block_on(async {
                let mut admin = sqlx::PgConnection::connect(&admin_url).await.ok()?;
                sqlx::query(&sql).execute(&mut admin).await.ok()
            })
        })
        .join();
    }
}

/// A multi-threaded runtime for one property test (the server, the store and the client run
/// on it; cases are driven with `block_on`).
/// Its threads are named `name`, so a panic hook can tell the server's panics from the test's.
pub fn runtime(name: &str) -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .thread_name(name)
        .enable_all()
        .build()
        .expect("a tokio runtime")
}
