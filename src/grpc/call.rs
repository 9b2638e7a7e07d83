//! What every tenant call does around its handler: find the request id the layer assigned,
//! identify the caller, apply the account's rate limit, and map the handler's error.

use tonic::{Extensions, Request, Response, Status};

use super::ApiError;
use super::identity::caller_account;
use super::layer::{RequestId, new_request_id, note_account};
use super::throttle::Throttle;
use crate::config::RateLimit;

/// Checks shared by the tenant services (snapshots and images).
pub struct Gate {
    throttle: Option<Throttle>,
}

impl Gate {
    pub fn new(rate_limit: Option<RateLimit>) -> Self {
        Self {
            throttle: rate_limit.map(Throttle::new),
        }
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

/// Runs one tenant call: identify, throttle, then `call(caller, message)`.
pub async fn handle<M, T, F, Fut>(
    gate: &Gate,
    request: Request<M>,
    call: F,
) -> Result<Response<T>, Status>
where
    F: FnOnce(Caller, M) -> Fut,
    Fut: Future<Output = Result<T, ApiError>>,
{
    let (metadata, extensions, message) = request.into_parts();
    let request_id = request_id(&extensions);
    let result = async {
        let account_id = caller_account(&metadata, &extensions)?;
        note_account(&account_id);
        if let Some(throttle) = &gate.throttle {
            throttle.admit(&account_id)?;
        }
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
