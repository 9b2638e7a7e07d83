//! Integration tests: the real server on a random port, real tonic clients, and a fresh
//! PostgreSQL database or SQLite file per test. Each API test runs on both backends.

#[path = "../harness/mod.rs"]
mod harness;

mod assertions;
mod ecs_client;
mod fault_proxy;
mod helpers;
mod process;

mod bench;
mod concurrency;
mod create_snapshot;
mod delete_and_images;
mod describe;
mod durability;
mod ecs_edge;
mod ecs_images;
mod ecs_tags;
mod edge;
mod edge_hostile;
mod embedded;
mod failover;
mod faults;
mod group_commit;
mod hostile;
mod hostile_inputs;
mod idempotence;
mod images;
mod inventory;
mod inventory_races;
mod modify_attributes;
mod operations;
mod pgbouncer;
mod policy_knobs;
mod round_trips;
mod server;
mod simulation;
mod sqlite_file;
mod storage_full;
mod tag_resources;
mod tags_and_retention;
mod tenant_matrix;
mod tenants;
mod tls;
mod transport;
mod watch;
mod worker;
