//! A database of a test's own: a new `snapshotd_test_<uuid>` PostgreSQL database on the server
//! [`super::postgres`] found, or a SQLite file in a temp dir. It is dropped with the value, even
//! when the test panics.

use sqlx::Connection;

use super::postgres::{postgres_admin_url, replace_database};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Backend {
    Postgres,
    Sqlite,
}

/// A database made for one test, dropped when the test ends (even when it panics).
pub struct TestDatabase {
    pub url: String,
    /// The server and name to drop; `None` for SQLite and for a borrowed handle.
    owned: Option<(String, String)>,
    _dir: Option<tempfile::TempDir>,
}

impl TestDatabase {
    pub async fn create(backend: Backend) -> Self {
        match backend {
            Backend::Postgres => Self::create_on(postgres_admin_url().await).await,
            Backend::Sqlite => {
                let dir = tempfile::tempdir().expect("a temp dir");
                Self {
                    url: format!("sqlite://{}", dir.path().join("snapshotd.db").display()),
                    owned: None,
                    _dir: Some(dir),
                }
            }
        }
    }

    /// A fresh PostgreSQL database on the server at `admin_url`.
    pub async fn create_on(admin_url: &str) -> Self {
        let name = format!("snapshotd_test_{}", uuid::Uuid::new_v4().simple());
        let mut admin = sqlx::PgConnection::connect(admin_url)
            .await
            .unwrap_or_else(|err| panic!("connecting to PostgreSQL at {admin_url}: {err}"));
        sqlx::query(&format!("CREATE DATABASE {name}"))
            .execute(&mut admin)
            .await
            .expect("creating the test database");
        Self {
            url: replace_database(admin_url, &name),
            owned: Some((admin_url.to_owned(), name)),
            _dir: None,
        }
    }

    /// A handle on a database another value owns (a second server on it); dropping the handle
    /// drops nothing.
    pub fn borrowed(url: &str) -> Self {
        Self {
            url: url.to_owned(),
            owned: None,
            _dir: None,
        }
    }
}

impl Drop for TestDatabase {
    fn drop(&mut self) {
        let Some((admin_url, name)) = self.owned.take() else {
            return;
        };
        let sql = format!("DROP DATABASE IF EXISTS {name} WITH (FORCE)");
        // A fresh runtime on a plain thread: Drop cannot await, and may run during a panic.
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
