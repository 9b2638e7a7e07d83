//! A real `snapshotd` process for tests that need the binary: its signals, exit codes and logs.

use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use tonic::transport::Channel;
use tonic_health::pb::{HealthCheckRequest, health_client::HealthClient};

pub const BINARY: &str = env!("CARGO_BIN_EXE_snapshotd");

/// A `snapshotd` process; killed if the test ends without stopping it.
pub struct Server {
    pub child: Child,
    /// Where it serves gRPC: known once [`Server::ready`] has returned. The server binds port 0
    /// and the harness reads the port it got back from /proc, so no other process can take the
    /// port between the harness choosing it and the server binding it.
    pub addr: String,
    /// Where it serves `/metrics` and the probes, when the test turned them on: known once
    /// [`Server::ready`] has returned. Bound as the test configured it (port 0, for the same
    /// reason), and read back from the server's log line announcing it.
    pub metrics_addr: Option<String>,
    /// Whether the test turned the metrics listener on (`SNAPSHOTD_METRICS_LISTEN`).
    metrics: bool,
    /// Where its logs go: a file, not a pipe, so a chatty server never blocks on a full pipe.
    pub log: tempfile::NamedTempFile,
}

impl Server {
    pub fn start(dir: &Path, args: &[&str], env: &[(&str, &str)]) -> Self {
        let log = tempfile::NamedTempFile::new().expect("a log file");
        let mut command = Command::new(BINARY);
        command
            .current_dir(dir)
            .env_clear()
            .env("SNAPSHOTD_LISTEN", "127.0.0.1:0")
            .env("SNAPSHOTD_LOG_FORMAT", "json")
            // Tests run in parallel: no fixed metrics port unless a test asks for one.
            .env("SNAPSHOTD_METRICS_LISTEN", "off")
            // Nor the ECS edge (its default port is fixed; the gRPC port is found among the
            // process's listening ports): a test that wants it sets it.
            .env("SNAPSHOTD_ECS_LISTEN", "off")
            .args(args)
            .stdout(Stdio::null())
            .stderr(log.reopen().expect("the log file"));
        for (key, value) in env {
            command.env(key, value);
        }
        // The last setting wins, as it does for the process's environment.
        let metrics = env
            .iter()
            .rev()
            .find(|(key, _)| *key == "SNAPSHOTD_METRICS_LISTEN")
            .is_some_and(|(_, listen)| *listen != "off");
        Self {
            child: command.spawn().expect("starting snapshotd"),
            addr: String::new(),
            metrics_addr: None,
            metrics,
            log,
        }
    }

    /// The port the process listens on for gRPC, once it does: a port it listens on, the
    /// metrics port aside (so, with metrics on, only once the metrics address is known).
    fn grpc_port(&self) -> Option<u16> {
        let metrics_port = match &self.metrics_addr {
            Some(addr) => Some(port_of(addr)),
            None if self.metrics => return None,
            None => None,
        };
        listening_ports(self.child.id())
            .into_iter()
            .find(|port| Some(*port) != metrics_port)
    }

    /// The metrics port, once [`Server::ready`] has returned; fails if the test left it off.
    pub fn metrics_port(&self) -> u16 {
        port_of(
            self.metrics_addr
                .as_deref()
                .expect("a server started with SNAPSHOTD_METRICS_LISTEN"),
        )
    }

    /// Waits until health says SERVING; returns a channel to the server.
    pub async fn ready(&mut self) -> Channel {
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            if let Some(status) = self.child.try_wait().unwrap() {
                panic!("snapshotd exited early with {status}: {}", self.stderr());
            }
            if self.metrics && self.metrics_addr.is_none() {
                self.metrics_addr = logged_metrics_addr(&self.stderr());
            }
            if self.addr.is_empty()
                && let Some(port) = self.grpc_port()
            {
                self.addr = format!("127.0.0.1:{port}");
            }
            if !self.addr.is_empty()
                && let Ok(channel) = Channel::from_shared(format!("http://{}", self.addr))
                    .unwrap()
                    .connect()
                    .await
            {
                let serving = HealthClient::new(channel.clone())
                    .check(HealthCheckRequest::default())
                    .await
                    .is_ok_and(|r| r.into_inner().status == 1);
                if serving {
                    return channel;
                }
            }
            assert!(Instant::now() < deadline, "snapshotd never became ready");
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// Waits for the process to exit by itself (a refused startup); fails after 20 s.
    pub fn exit_status(&mut self) -> std::process::ExitStatus {
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            if let Some(status) = self.child.try_wait().unwrap() {
                return status;
            }
            assert!(
                Instant::now() < deadline,
                "snapshotd did not exit within 20 s"
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    pub fn stderr(&mut self) -> String {
        std::fs::read_to_string(self.log.path()).unwrap_or_default()
    }

    /// The process id.
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Sends `signal` (a name `kill` knows: `TERM`, `INT`, `KILL`, …) and returns at once.
    pub fn signal(&self, signal: &str) {
        let status = Command::new("kill")
            .arg(format!("-{signal}"))
            .arg(self.pid().to_string())
            .status()
            .expect("kill");
        assert!(status.success(), "kill -{signal} {} failed", self.pid());
    }

    /// Waits (without blocking the runtime) up to `within` for the process to exit by itself;
    /// `None` if it is still running then.
    pub async fn exited_within(&mut self, within: Duration) -> Option<std::process::ExitStatus> {
        let deadline = Instant::now() + within;
        loop {
            if let Some(status) = self.child.try_wait().unwrap() {
                return Some(status);
            }
            if Instant::now() >= deadline {
                return None;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// Waits up to `within` for a log line containing `needle`; returns the whole log.
    pub async fn wait_for_log(&mut self, needle: &str, within: Duration) -> String {
        let deadline = Instant::now() + within;
        loop {
            let log = self.stderr();
            if log.contains(needle) {
                return log;
            }
            assert!(
                Instant::now() < deadline,
                "no log line with {needle:?} within {within:?}: {log}"
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// SIGTERM, then waits for a clean exit.
    pub fn terminate(mut self) -> std::process::ExitStatus {
        let pid = self.child.id().to_string();
        Command::new("kill")
            .args(["-TERM", &pid])
            .status()
            .expect("kill");
        self.exit_status()
    }

    /// SIGKILL: no chance to clean up.
    pub fn kill(mut self) {
        self.child.kill().expect("SIGKILL");
        self.child.wait().expect("reaping the killed server");
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// The port of `host:port`.
pub fn port_of(addr: &str) -> u16 {
    addr.rsplit(':')
        .next()
        .and_then(|port| port.parse().ok())
        .unwrap_or_else(|| panic!("an address with a port: {addr}"))
}

/// The address the server's log announces `/metrics` at: the `addr` field of that line, in the
/// JSON format or the text one (`addr=…`).
fn logged_metrics_addr(log: &str) -> Option<String> {
    let line = log
        .lines()
        .find(|line| line.contains("metrics at /metrics"))?;
    match serde_json::from_str::<serde_json::Value>(line) {
        Ok(json) => Some(json.get("addr")?.as_str()?.to_owned()),
        Err(_) => {
            let field = line
                .split_whitespace()
                .find_map(|f| f.strip_prefix("addr="))?;
            Some(field.trim_matches('"').to_owned())
        }
    }
}

/// The TCP ports `pid` listens on: its socket descriptors' inodes, found in its
/// /proc/PID/net/tcp{,6} in the listening state (`0A`). Empty while it has none.
pub fn listening_ports(pid: u32) -> std::collections::BTreeSet<u16> {
    let Ok(descriptors) = std::fs::read_dir(format!("/proc/{pid}/fd")) else {
        return Default::default();
    };
    let inodes: std::collections::BTreeSet<String> = descriptors
        .filter_map(|fd| std::fs::read_link(fd.ok()?.path()).ok())
        .filter_map(|target| {
            let target = target.to_string_lossy().into_owned();
            Some(
                target
                    .strip_prefix("socket:[")?
                    .strip_suffix(']')?
                    .to_owned(),
            )
        })
        .collect();
    let mut ports = std::collections::BTreeSet::new();
    for table in ["tcp", "tcp6"] {
        let Ok(text) = std::fs::read_to_string(format!("/proc/{pid}/net/{table}")) else {
            continue;
        };
        for line in text.lines().skip(1) {
            let fields: Vec<&str> = line.split_whitespace().collect();
            let (Some(local), Some(&"0A"), Some(inode)) =
                (fields.get(1), fields.get(3), fields.get(9))
            else {
                continue;
            };
            let port = local
                .rsplit(':')
                .next()
                .and_then(|hex| u16::from_str_radix(hex, 16).ok());
            if let Some(port) = port
                && inodes.contains(*inode)
            {
                ports.insert(port);
            }
        }
    }
    ports
}
