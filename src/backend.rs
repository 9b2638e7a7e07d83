//! The snapshot backend: the data plane that copies a disk's blocks into a snapshot.
//!
//! The service decides *whether* a snapshot may be taken; a backend does the copying. The
//! default [`SimulatedBackend`] accepts every copy (its progress is derived from elapsed time);
//! a real data plane plugs in behind the same trait.

use async_trait::async_trait;

use crate::domain::Snapshot;

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct BackendError(pub String);

#[async_trait]
pub trait SnapshotBackend: Send + Sync + 'static {
    /// Starts copying `snapshot`'s source disk. Called inside the CreateSnapshot transaction,
    /// before it commits: an error answers `CreateSnapshot.Failed` and nothing is stored.
    async fn start_copy(&self, snapshot: &Snapshot) -> Result<(), BackendError>;
}

/// Accepts every copy; completion is derived from the snapshot's stored start time.
#[derive(Debug, Default, Clone, Copy)]
pub struct SimulatedBackend;

#[async_trait]
impl SnapshotBackend for SimulatedBackend {
    async fn start_copy(&self, _snapshot: &Snapshot) -> Result<(), BackendError> {
        Ok(())
    }
}
