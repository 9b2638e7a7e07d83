//! Integration tests: the real server on a random port, real tonic clients, and a fresh
//! PostgreSQL database or SQLite file per test. Each API test runs on both backends.

mod assertions;
mod fault_proxy;
mod helpers;

mod concurrency;
mod create_snapshot;
mod embedded;
mod faults;
mod idempotence;
mod inventory;
mod server;
mod tenants;
mod worker;
