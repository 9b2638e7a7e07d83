//! What the properties share: their proptest configuration and runtime.
//!
//! A fresh database per case (`Backend`, `TestDatabase`) comes from the harness the api tests
//! use too (`tests/harness`), so PostgreSQL is found the same way: `DATABASE_URL`, the local
//! server, else a throwaway cluster; a PostgreSQL property that finds none fails and says what
//! to start. It is re-exported here so a property imports from one module.

use proptest::test_runner::Config as ProptestConfig;

pub use crate::harness::{Backend, TestDatabase};

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
