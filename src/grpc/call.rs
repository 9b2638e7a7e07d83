//! Who may take a slot: the checks a call passes on its headers alone, before it takes one of
//! the server's slots and before its body is read (`layer.rs` runs them), and what the handlers
//! then learn from them.
//!
//! A tenant call (SnapshotService, ImageService) is identified and throttled; an admin call
//! (InventoryService, SimulationService) must bear the admin token. A handler finds the outcome in the request's
//! extensions ([`Admitted`]) and refuses a call that does not carry it, so a service mounted
//! without the layer fails closed.

use std::sync::Arc;

use tonic::codegen::http::Extensions as HttpExtensions;
use tonic::metadata::MetadataMap;
use tonic::{Extensions, Request, Response, Status};

use super::ApiError;
use super::identity::{caller_account, require_admin};
use super::layer::{RequestId, new_request_id};
use crate::throttle::Throttle;

/// The checks on a call's headers: the per-account rate limit and the admin token.
pub struct Gate {
    throttle: Option<Arc<Throttle>>,
    admin_token: Option<String>,
}

/// Who a call was admitted as, in the request's extensions for the handlers.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Admitted {
    /// A tenant call, from this account.
    Account(String),
    /// An InventoryService or SimulationService call that bore the admin token.
    Admin,
}

impl Gate {
    /// `throttle` is shared with the ECS edge: an account has one budget.
    pub fn new(throttle: Option<Arc<Throttle>>, admin_token: Option<String>) -> Self {
        Self {
            throttle,
            admin_token,
        }
    }

    /// A tenant call: the caller's account, once its rate limit admits one more call.
    pub fn admit_tenant(
        &self,
        metadata: &MetadataMap,
        extensions: &HttpExtensions,
        on_identified: impl FnOnce(&str),
    ) -> Result<Admitted, ApiError> {
        let account_id = caller_account(metadata, extensions)?;
        on_identified(&account_id);
        if let Some(throttle) = &self.throttle {
            throttle.admit(&account_id)?;
        }
        Ok(Admitted::Account(account_id))
    }

    /// An admin call: the bearer token must be the configured one.
    pub fn admit_admin(&self, metadata: &MetadataMap) -> Result<Admitted, ApiError> {
        require_admin(metadata, self.admin_token.as_deref())?;
        Ok(Admitted::Admin)
    }

    /// Housekeeping for the rate limiter; the app calls it now and then.
    pub fn forget_idle_accounts(&self) {
        if let Some(throttle) = &self.throttle {
            throttle.forget_idle_accounts();
        }
    }
}

/// The call's request id: the one the layer assigned (and returns in `x-request-id`).
pub fn request_id(extensions: &Extensions) -> String {
    match extensions.get::<RequestId>() {
        Some(id) => id.as_str().to_owned(),
        // Only when a service is used without the layer (not in the server).
        None => new_request_id(),
    }
}

/// Who makes a tenant call, and the id it is answered under.
pub struct Caller {
    pub account_id: String,
    pub request_id: String,
}

/// Runs one tenant call: `call(caller, message)` as the account the layer admitted.
pub async fn handle<M, T, F, Fut>(request: Request<M>, call: F) -> Result<Response<T>, Status>
where
    F: FnOnce(Caller, M) -> Fut,
    Fut: Future<Output = Result<T, ApiError>>,
{
    let (_metadata, extensions, message) = request.into_parts();
    let request_id = request_id(&extensions);
    let result = async {
        let Some(Admitted::Account(account_id)) = extensions.get::<Admitted>().cloned() else {
            // Only without the layer, which identifies every tenant call: fail closed.
            return Err(ApiError::MissingIdentity);
        };
        let caller = Caller {
            account_id,
            request_id: request_id.clone(),
        };
        call(caller, message).await
    }
    .await;
    result
        .map(Response::new)
        .map_err(|err| err.into_status(&request_id))
}

/// Runs one admin call (InventoryService, SimulationService): `call(message)` once the layer
/// admitted it as the admin (it checked the bearer token before the call took a slot), its
/// error mapped with the call's request id.
pub async fn handle_admin<M, T, F, Fut>(request: Request<M>, call: F) -> Result<Response<T>, Status>
where
    F: FnOnce(M) -> Fut,
    Fut: Future<Output = Result<T, ApiError>>,
{
    let (_metadata, extensions, message) = request.into_parts();
    let request_id = request_id(&extensions);
    async {
        if extensions.get::<Admitted>() != Some(&Admitted::Admin) {
            // Only without the layer, which checks the token of every admin call: fail
            // closed.
            return Err(ApiError::InvalidAdminToken);
        }
        call(message).await
    }
    .await
    .map(Response::new)
    .map_err(|err| err.into_status(&request_id))
}
