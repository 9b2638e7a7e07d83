//! The test harness both test binaries share (`tests/api` and `tests/props` include it with
//! `#[path = "../harness/mod.rs"]`), so both find PostgreSQL the same way and make their fresh
//! databases the same way.
//!
//! - `postgres`: finding a server once per binary (`DATABASE_URL`, `127.0.0.1:5432`, else a
//!   throwaway cluster), the `Cluster` a test can start and stop, and URL helpers.
//! - `database`: `Backend` and `TestDatabase`, a database of a test's own, dropped with it.
//!
//! What only one binary needs stays there (`tests/api/helpers.rs`: the server and its clients;
//! `tests/props/support.rs`: proptest's configuration).

// Each binary uses part of the harness (only the api tests stop a cluster or proxy a server).
#![allow(dead_code)]

pub mod database;
pub mod postgres;

pub use database::{Backend, TestDatabase};
