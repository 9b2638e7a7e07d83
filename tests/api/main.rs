//! Integration tests: the real server on a random port, real tonic clients, and a fresh
//! PostgreSQL database or SQLite file per test. Each API test runs on both backends.

mod helpers;

mod assertions;
mod create_snapshot;
