//! Access keys and signature nonces: what the ECS-compatible edge needs from the store to know
//! who signed a request and that it was not sent before.
//!
//! Keys are kept in memory for [`KEY_CACHE_TTL`] after they are read, which saves a read of the
//! database on every signed request. A cached secret is never trusted alone: the statement that
//! spends a request's nonce also checks that the key still holds the secret and account the
//! signature was verified with ([`NonceSpend::KeyChanged`] otherwise), so a rotated secret stops
//! working at once on every replica, whatever it cached.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use super::{Service, ServiceError};
use crate::domain::{AccessKey, Timestamp};
use crate::engine::{check_access_key_owner, check_account_exists};
use crate::store::Transaction;

pub use crate::store::NonceSpend;

/// How far a signed request's timestamp may be from the service's clock (ECS's 15 minutes).
/// A nonce is remembered for twice this from its first use: a replay's timestamp can be one
/// window old at the first use and is still accepted for one more window.
pub const NONCE_WINDOW: Duration = Duration::from_secs(15 * 60);

/// How long a key read from the database is used before it is read again. The nonce's
/// statement keeps a rotated secret from running anything; what a replica that cached the old
/// secret still lets it do, for this long, is reach the account's rate limit (and be answered
/// `Throttling` rather than `SignatureDoesNotMatch` when the budget is spent).
pub const KEY_CACHE_TTL: Duration = Duration::from_secs(5);

/// Keys cached at most; past it the cache starts again (keys are put by the operator, so
/// this is far more than a deployment has).
const KEY_CACHE_MAX: usize = 10_000;

/// The keys read lately, by id, with when they were read. Unknown ids are not cached: a key
/// put a moment ago works at once.
#[derive(Default)]
pub(super) struct KeyCache(Mutex<HashMap<String, (Arc<AccessKey>, Instant)>>);

impl KeyCache {
    fn get(&self, access_key_id: &str) -> Option<Arc<AccessKey>> {
        let cache = self.lock();
        let (key, read_at) = cache.get(access_key_id)?;
        (read_at.elapsed() < KEY_CACHE_TTL).then(|| Arc::clone(key))
    }

    fn put(&self, key: &Arc<AccessKey>) {
        let mut cache = self.lock();
        if cache.len() >= KEY_CACHE_MAX {
            cache.clear();
        }
        cache.insert(key.access_key_id.clone(), (Arc::clone(key), Instant::now()));
    }

    fn forget(&self, access_key_id: &str) {
        self.lock().remove(access_key_id);
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<String, (Arc<AccessKey>, Instant)>> {
        // A map changed in single calls: a panic elsewhere cannot leave it half-changed.
        self.0
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }
}

impl Service {
    /// Stores a key pair for an existing account (a new key, or a new secret for a key of the
    /// same account); the answer carries no secret.
    pub async fn put_access_key(&self, key: &AccessKey) -> Result<AccessKey, ServiceError> {
        let mut tx = self.store.begin().await?;
        let result = put_access_key(tx.as_mut(), key).await;
        self.finish(tx, result).await?;
        // This replica reads the new secret at once; the others learn it from the nonce's
        // statement (`NonceSpend::KeyChanged`).
        self.keys.forget(&key.access_key_id);
        Ok(AccessKey {
            access_key_secret: String::new(),
            ..key.clone()
        })
    }

    /// The key pair `access_key_id` names, if any: as read within [`KEY_CACHE_TTL`], else
    /// from the database.
    pub async fn access_key(
        &self,
        access_key_id: &str,
    ) -> Result<Option<Arc<AccessKey>>, ServiceError> {
        match self.keys.get(access_key_id) {
            Some(key) => Ok(Some(key)),
            None => self.stored_access_key(access_key_id).await,
        }
    }

    /// The key pair `access_key_id` names, if any, read from the database (when a cached one
    /// did not verify a signature, or is no longer the stored one).
    pub async fn stored_access_key(
        &self,
        access_key_id: &str,
    ) -> Result<Option<Arc<AccessKey>>, ServiceError> {
        let mut read = self.store.read().await?;
        let key = read.select_access_key(access_key_id).await?;
        read.commit().await?;
        let key = key.map(Arc::new);
        match &key {
            Some(key) => self.keys.put(key),
            None => self.keys.forget(access_key_id),
        }
        Ok(key)
    }

    /// Spends `nonce` for `key`, the key its request's signature was verified with: `Replayed`
    /// when it was spent within the window, `KeyChanged` when the key no longer holds that
    /// secret and account (nothing is spent then). Remembered in the database before this
    /// returns, so every replica refuses a replay; spent in a batch with the nonces of the
    /// requests that arrive meanwhile.
    pub async fn spend_nonce(
        &self,
        key: &AccessKey,
        nonce: &str,
    ) -> Result<NonceSpend, ServiceError> {
        let spent = self.nonces.spend(key, nonce).await;
        if let Ok(NonceSpend::KeyChanged) = spent {
            self.keys.forget(&key.access_key_id);
        }
        spent
    }

    /// Signed requests whose nonces wait for the next batch right now (tests wait on it
    /// instead of sleeping).
    pub fn nonce_backlog(&self) -> usize {
        self.nonces.queued()
    }

    /// What a signed request's timestamp is compared with: the real time, which clients sign
    /// with, even where the simulation controls moved the service's clock ahead.
    pub fn signing_time(&self) -> Timestamp {
        self.clock.wall()
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
