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
    pub addr: String,
    /// Where its logs go: a file, not a pipe, so a chatty server never blocks on a full pipe.
    pub log: tempfile::NamedTempFile,
}

pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

impl Server {
    pub fn start(dir: &Path, args: &[&str], env: &[(&str, &str)]) -> Self {
        let addr = format!("127.0.0.1:{}", free_port());
        let log = tempfile::NamedTempFile::new().expect("a log file");
        let mut command = Command::new(BINARY);
        command
            .current_dir(dir)
            .env_clear()
            .env("SNAPSHOTD_LISTEN", &addr)
            .env("SNAPSHOTD_LOG_FORMAT", "json")
            // Tests run in parallel: no fixed metrics port unless a test asks for one.
            .env("SNAPSHOTD_METRICS_LISTEN", "off")
            .args(args)
            .stdout(Stdio::null())
            .stderr(log.reopen().expect("the log file"));
        for (key, value) in env {
            command.env(key, value);
        }
        Self {
            child: command.spawn().expect("starting snapshotd"),
            addr,
            log,
        }
    }

    /// Waits until health says SERVING; returns a channel to the server.
    pub async fn ready(&mut self) -> Channel {
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            if let Some(status) = self.child.try_wait().unwrap() {
                panic!("snapshotd exited early with {status}: {}", self.stderr());
            }
            if let Ok(channel) = Channel::from_shared(format!("http://{}", self.addr))
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
