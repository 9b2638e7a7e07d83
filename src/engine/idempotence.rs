//! Idempotence (#9, #10): a client token binds an account's request parameters to the snapshot
//! it created. A replay with identical parameters gets the same snapshot id; any difference is
//! `IdempotentParameterMismatch`.

use super::RuleError;

/// What a successful creation stored for `(account, client_token)`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TokenBinding {
    pub fingerprint: String,
    pub snapshot_id: String,
}

/// `Ok(Some(id))`: replay, answer with `id`. `Ok(None)`: the token is fresh, go on.
pub fn check_token_binding(
    client_token: &str,
    binding: Option<&TokenBinding>,
    fingerprint: &str,
) -> Result<Option<String>, RuleError> {
    match binding {
        None => Ok(None),
        Some(bound) if bound.fingerprint == fingerprint => Ok(Some(bound.snapshot_id.clone())),
        Some(_) => Err(RuleError::IdempotentParameterMismatch {
            client_token: client_token.to_owned(),
        }),
    }
}
