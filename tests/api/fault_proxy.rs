//! A TCP proxy in front of PostgreSQL that a test can cut and restore, to take the database
//! away from a running server without touching the server itself, or point at another server,
//! as HAProxy does in a failover, or turn into a black hole (a host that is gone: connections
//! are taken and never answered).

use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};

use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;

pub struct FaultProxy {
    pub addr: SocketAddr,
    cut: Arc<AtomicBool>,
    silent: Arc<AtomicBool>,
    upstream: Arc<Mutex<SocketAddr>>,
    generation: watch::Sender<u64>,
    accept_loop: tokio::task::JoinHandle<()>,
}

impl FaultProxy {
    pub async fn start(upstream: SocketAddr) -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let cut = Arc::new(AtomicBool::new(false));
        let silent = Arc::new(AtomicBool::new(false));
        let upstream = Arc::new(Mutex::new(upstream));
        let (generation, _) = watch::channel(0u64);
        let accept_loop = tokio::spawn({
            let cut = cut.clone();
            let silent = silent.clone();
            let upstream = upstream.clone();
            let generation = generation.clone();
            async move {
                while let Ok((mut client, _)) = listener.accept().await {
                    if cut.load(Ordering::SeqCst) {
                        drop(client); // refuse: close at once
                        continue;
                    }
                    let mut cut_signal = generation.subscribe();
                    if silent.load(Ordering::SeqCst) {
                        // Held, never answered, until the proxy changes again.
                        tokio::spawn(async move {
                            let _ = cut_signal.changed().await;
                            drop(client);
                        });
                        continue;
                    }
                    let upstream = *upstream.lock().unwrap();
                    tokio::spawn(async move {
                        let Ok(mut server) = TcpStream::connect(upstream).await else {
                            return;
                        };
                        tokio::select! {
                            _ = tokio::io::copy_bidirectional(&mut client, &mut server) => {}
                            _ = cut_signal.changed() => {} // drop both ends
                        }
                    });
                }
            }
        });
        Self {
            addr,
            cut,
            silent,
            upstream,
            generation,
            accept_loop,
        }
    }

    /// Sends new connections to `upstream`; open ones stay with the server they reached (as
    /// HAProxy's do, unless told `on-marked-down shutdown-sessions`).
    pub fn point_to(&self, upstream: SocketAddr) {
        *self.upstream.lock().unwrap() = upstream;
    }

    /// Drops every open connection and refuses new ones.
    pub fn cut(&self) {
        self.cut.store(true, Ordering::SeqCst);
        self.generation.send_modify(|g| *g += 1);
    }

    /// Drops every open connection and takes new ones without ever answering, as a host that
    /// went away does (a connect then waits for its own timeout, not for a refusal).
    pub fn black_hole(&self) {
        self.silent.store(true, Ordering::SeqCst);
        self.generation.send_modify(|g| *g += 1);
    }

    /// Accepts and forwards connections again (the ones a black hole held are dropped).
    pub fn restore(&self) {
        self.cut.store(false, Ordering::SeqCst);
        if self.silent.swap(false, Ordering::SeqCst) {
            self.generation.send_modify(|g| *g += 1);
        }
    }
}

impl Drop for FaultProxy {
    fn drop(&mut self) {
        self.accept_loop.abort();
    }
}
