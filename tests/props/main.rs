//! Property tests (issue 6): each module states a promise of the service as a property and lets
//! `proptest` hunt for a counterexample.
//!
//! - `engine_model`: `decide_create` against an independent reference model of the seed's rules.
//! - `validators`: the request validators against their specification, over random Unicode.
//! - `interleavings`: random create/delete/complete/image/retention sequences (one at a time,
//!   and in concurrent batches) against the real store on PostgreSQL and SQLite never break the
//!   invariants or lose an acknowledged snapshot.
//! - `fuzz`: arbitrary, mutated and oddly-filled request messages sent as raw bytes to every RPC
//!   of the real server: no panic, always a proper status.
//!
//! The tests named after a bug these properties found (retry delays rounded down, NUL
//! characters and ancient timestamps reaching PostgreSQL) pin down its fix.
//!
//! Case counts are small so the binary runs in under a minute on two cores; set
//! `PROPTEST_CASES` to run that many cases of every property instead.

#[path = "../harness/mod.rs"]
mod harness;
mod support;

mod engine_model;
mod fuzz;
mod interleavings;
mod validators;
