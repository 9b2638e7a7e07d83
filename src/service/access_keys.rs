//! Access keys and signature nonces: what the ECS-compatible edge needs from the store to know
//! who signed a request and that it was not sent before.

use std::time::Duration;

use super::{Service, ServiceError};
use crate::domain::{AccessKey, Timestamp, later};
use crate::engine::{check_access_key_owner, check_account_exists};
use crate::store::Transaction;

/// How far a signed request's timestamp may be from the service's clock (ECS's 15 minutes).
/// A nonce is remembered for twice this from its first use: a replay's timestamp can be one
/// window old at the first use and is still accepted for one more window.
pub const NONCE_WINDOW: Duration = Duration::from_secs(15 * 60);

impl Service {
    /// Stores a key pair for an existing account (a new key, or a new secret for a key of the
    /// same account); the answer carries no secret.
    pub async fn put_access_key(&self, key: &AccessKey) -> Result<AccessKey, ServiceError> {
        let mut tx = self.store.begin().await?;
        let result = put_access_key(tx.as_mut(), key).await;
        self.finish(tx, result).await?;
        Ok(AccessKey {
            access_key_secret: String::new(),
            ..key.clone()
        })
    }

    /// The key pair `access_key_id` names, if any.
    pub async fn access_key(&self, access_key_id: &str) -> Result<Option<AccessKey>, ServiceError> {
        let mut read = self.store.read().await?;
        let key = read.select_access_key(access_key_id).await?;
        read.commit().await?;
        Ok(key)
    }

    /// Spends `nonce` for `access_key_id`: false when it was spent within the window (a
    /// replay). Remembered in the database, so every replica refuses the replay.
    ///
    /// The one statement is atomic by itself, so it runs on a session outside a transaction
    /// (autocommit): one round trip instead of three (`BEGIN`, the insert, `COMMIT`), on a path
    /// every signed request takes.
    pub async fn spend_nonce(
        &self,
        access_key_id: &str,
        nonce: &str,
    ) -> Result<bool, ServiceError> {
        let now = self.clock.now();
        let mut session = self.store.read().await?;
        let spent = async {
            let spent = session
                .remember_nonce(access_key_id, nonce, now, later(now, 2 * NONCE_WINDOW))
                .await?;
            // Nothing to commit, unless the store is behind a transaction pooler.
            session.commit().await?;
            Ok::<_, crate::store::StoreError>(spent)
        };
        let result = spent.await.map_err(ServiceError::from);
        self.storage.note(&result);
        result
    }

    /// The service's clock: what a signed request's timestamp is compared with.
    pub fn now(&self) -> Timestamp {
        self.clock.now()
    }
}

async fn put_access_key(tx: &mut dyn Transaction, key: &AccessKey) -> Result<(), ServiceError> {
    let account_known = tx.account_exists(&key.account_id).await?;
    check_account_exists(&key.account_id, account_known)?;
    // Held until commit: a concurrent put of the same key id waits, then sees this owner.
    let owner = tx.lock_access_key_owner(&key.access_key_id).await?;
    check_access_key_owner(&key.access_key_id, owner.as_deref(), &key.account_id)?;
    Ok(tx.upsert_access_key(key).await?)
}
