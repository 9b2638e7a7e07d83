//! What the load generator (`snapshotd-bench`) and the drills (`drill`) share: the run's
//! inventory and its naming (`setup`), and the ECS edge's signed client (`ecs_client`).

pub mod ecs_client;
pub mod setup;
