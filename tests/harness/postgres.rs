//! Finding PostgreSQL for a test binary, once: `DATABASE_URL`, else `127.0.0.1:5432`, else a
//! throwaway cluster of the tests' own (docs/testing.md, "How the tests find PostgreSQL").
//! If none of that works, the caller panics and says what to install or start; a PostgreSQL test
//! never passes silently.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::Command;
use std::time::Duration;

use sqlx::Connection;
use tokio::sync::OnceCell;

/// An admin URL (to the `postgres` database) of a server tests may create databases on.
static POSTGRES_ADMIN_URL: OnceCell<String> = OnceCell::const_new();

pub async fn postgres_admin_url() -> &'static str {
    POSTGRES_ADMIN_URL.get_or_init(find_postgres).await
}

async fn can_connect(url: &str) -> bool {
    matches!(
        tokio::time::timeout(Duration::from_secs(5), sqlx::PgConnection::connect(url)).await,
        Ok(Ok(_))
    )
}

async fn find_postgres() -> String {
    if let Ok(url) = std::env::var("DATABASE_URL")
        && url.starts_with("postgres")
    {
        assert!(
            can_connect(&url).await,
            "DATABASE_URL={url} does not accept connections: start that PostgreSQL server"
        );
        return url;
    }
    let local = "postgres://postgres@127.0.0.1:5432/postgres".to_owned();
    if can_connect(&local).await {
        return local;
    }
    let url = tokio::task::spawn_blocking(start_throwaway_cluster)
        .await
        .expect("starting a throwaway cluster")
        .unwrap_or_else(|why| {
            panic!(
                "these tests need PostgreSQL and none could be reached or started: {why}.\n\
                 Start one at 127.0.0.1:5432 (user postgres, trust auth), set DATABASE_URL to \
                 a postgres:// URL, or install PostgreSQL (apt-get install postgresql) so the \
                 tests can start a throwaway cluster."
            )
        });
    assert!(
        can_connect(&url).await,
        "the throwaway cluster at {url} does not answer"
    );
    url
}

pub fn postgres_bin_dir() -> Result<PathBuf, String> {
    for probe in [
        Command::new("pg_config").arg("--bindir").output(),
        Command::new("sh")
            .args(["-c", "dirname \"$(command -v initdb)\""])
            .output(),
    ]
    .into_iter()
    .flatten()
    {
        let dir = PathBuf::from(String::from_utf8_lossy(&probe.stdout).trim());
        if dir.join("initdb").exists() && dir.join("pg_ctl").exists() {
            return Ok(dir);
        }
    }
    let mut found: Vec<PathBuf> = std::fs::read_dir("/usr/lib/postgresql")
        .map_err(|_| "no PostgreSQL binaries under /usr/lib/postgresql".to_owned())?
        .filter_map(|entry| Some(entry.ok()?.path().join("bin")))
        .filter(|bin| bin.join("initdb").exists())
        .collect();
    found.sort();
    found.pop().ok_or_else(|| "initdb was not found".to_owned())
}

/// A PostgreSQL cluster of the tests' own, made with `initdb` in `dir` and run with `pg_ctl`.
/// As root, the binaries run as the `postgres` user (PostgreSQL refuses to run as root).
pub struct Cluster {
    bin: PathBuf,
    dir: PathBuf,
    port: u16,
    as_root: bool,
}

impl Cluster {
    /// The cluster in `dir`, made if missing, on its saved port or a free one.
    pub fn new(dir: PathBuf) -> Result<Self, String> {
        let cluster = Self::at(dir)?;
        if !cluster.data().join("PG_VERSION").exists() {
            let _ = std::fs::remove_dir_all(cluster.data());
            let data = cluster.data_arg();
            cluster.run(
                "initdb",
                &["-D", &data, "-U", "postgres", "--auth=trust", "-E", "UTF8"],
            )?;
        }
        Ok(cluster)
    }

    /// A streaming standby of `primary` (running) in `dir`, copied with `pg_basebackup`: started,
    /// it replays the primary's WAL, in recovery and read-only until [`Cluster::promote`].
    pub fn standby_of(primary: &Cluster, dir: PathBuf) -> Result<Self, String> {
        let standby = Self::at(dir)?;
        let (data, port) = (standby.data_arg(), primary.port.to_string());
        standby.run(
            "pg_basebackup",
            &[
                "-D",
                &data,
                "-h",
                "127.0.0.1",
                "-p",
                &port,
                "-U",
                "postgres",
                "--write-recovery-conf",
                "--wal-method=stream",
                "--checkpoint=fast",
            ],
        )?;
        Ok(standby)
    }

    /// Ends a standby's recovery: it becomes a primary that takes writes.
    pub fn promote(&self) -> Result<(), String> {
        let data = self.data_arg();
        self.run("pg_ctl", &["-D", &data, "-w", "promote"])
    }

    /// Where the cluster listens.
    pub fn addr(&self) -> SocketAddr {
        SocketAddr::from(([127, 0, 0, 1], self.port))
    }

    /// `dir` prepared for a cluster (its port chosen and saved, owned by `postgres` when run as
    /// root), without making one.
    fn at(dir: PathBuf) -> Result<Self, String> {
        let bin = postgres_bin_dir()?;
        std::fs::create_dir_all(&dir).map_err(|e| e.to_string())?;
        let as_root = Command::new("id")
            .arg("-u")
            .output()
            .is_ok_and(|o| String::from_utf8_lossy(&o.stdout).trim() == "0");
        let saved_port = std::fs::read_to_string(dir.join("port"))
            .ok()
            .and_then(|p| p.trim().parse::<u16>().ok());
        let port = match saved_port {
            Some(port) => port,
            None => std::net::TcpListener::bind("127.0.0.1:0")
                .and_then(|l| l.local_addr())
                .map_err(|e| e.to_string())?
                .port(),
        };
        std::fs::write(dir.join("port"), port.to_string()).map_err(|e| e.to_string())?;
        let cluster = Self {
            bin,
            dir,
            port,
            as_root,
        };
        if cluster.as_root {
            Command::new("chown")
                .args(["-R", "postgres:postgres"])
                .arg(&cluster.dir)
                .status()
                .map_err(|e| e.to_string())?;
        }
        Ok(cluster)
    }

    fn data(&self) -> PathBuf {
        self.dir.join("data")
    }

    fn data_arg(&self) -> String {
        self.data().to_string_lossy().into_owned()
    }

    fn run(&self, program: &str, args: &[&str]) -> Result<(), String> {
        let program = self.bin.join(program);
        let mut command = if self.as_root {
            let mut c = Command::new("runuser");
            c.args(["-u", "postgres", "--"]).arg(&program);
            c
        } else {
            Command::new(&program)
        };
        let output = command.args(args).output().map_err(|e| e.to_string())?;
        if output.status.success() {
            Ok(())
        } else {
            Err(format!(
                "{} failed: {}",
                program.display(),
                String::from_utf8_lossy(&output.stderr)
            ))
        }
    }

    pub fn admin_url(&self) -> String {
        format!("postgres://postgres@127.0.0.1:{}/postgres", self.port)
    }

    /// The URL of database `name` on this cluster.
    pub fn url(&self, name: &str) -> String {
        replace_database(&self.admin_url(), name)
    }

    pub fn is_running(&self) -> bool {
        self.run("pg_ctl", &["status", "-D", &self.data_arg()])
            .is_ok()
    }

    fn answers(&self) -> bool {
        std::net::TcpStream::connect_timeout(
            &SocketAddr::from(([127, 0, 0, 1], self.port)),
            Duration::from_secs(2),
        )
        .is_ok()
    }

    pub fn start(&self) -> Result<(), String> {
        let options = format!(
            "-p {} -k {} -c listen_addresses=127.0.0.1 -c max_connections=300 -c fsync=off",
            self.port,
            self.dir.to_string_lossy()
        );
        let log = self.dir.join("postgres.log").to_string_lossy().into_owned();
        let data = self.data_arg();
        self.run(
            "pg_ctl",
            &["-D", &data, "-l", &log, "-o", &options, "-w", "start"],
        )
    }

    /// Stops at once, as a crash or an operator's fast shutdown would.
    pub fn stop(&self) -> Result<(), String> {
        let data = self.data_arg();
        self.run("pg_ctl", &["-D", &data, "-m", "immediate", "-w", "stop"])
    }
}

/// Starts (or reuses) one throwaway cluster in `$TMPDIR/snapshotd-test-pg` on a free port. It is
/// left running for the next test run, so runs do not pile up clusters; stop it with
/// `pg_ctl -D $TMPDIR/snapshotd-test-pg/data stop`.
fn start_throwaway_cluster() -> Result<String, String> {
    let cluster = Cluster::new(std::env::temp_dir().join("snapshotd-test-pg"))?;
    if cluster.is_running() {
        if cluster.answers() {
            return Ok(cluster.admin_url());
        }
        // Running but out of reach (another network namespace): start it afresh.
        cluster.stop()?;
    }
    cluster.start()?;
    Ok(cluster.admin_url())
}

/// The address of the PostgreSQL server the tests use.
pub async fn postgres_server_addr() -> SocketAddr {
    let url = postgres_admin_url().await;
    let after_at = url.rsplit_once('@').map_or(url, |(_, rest)| rest);
    let host_port = after_at.split('/').next().expect("host:port");
    tokio::net::lookup_host(host_port)
        .await
        .expect("resolving the PostgreSQL host")
        .next()
        .expect("an address")
}

/// `url` with its host and port replaced by `addr`.
pub fn replace_host(url: &str, addr: SocketAddr) -> String {
    let (credentials, rest) = url.rsplit_once('@').expect("a URL with a user");
    let (_, path) = rest.split_once('/').expect("a URL with a database");
    format!("{credentials}@{addr}/{path}")
}

pub fn replace_database(url: &str, database: &str) -> String {
    let (base, _) = url.rsplit_once('/').expect("a URL with a database path");
    format!("{base}/{database}")
}
