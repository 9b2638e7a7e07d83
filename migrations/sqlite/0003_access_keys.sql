-- Access keys for the ECS-compatible HTTP edge: a key id names exactly one account, whose
-- identity a request signed with the key's secret carries. The secret is kept as given: an HMAC
-- is verified by computing it again, so the server needs the secret itself (never logged, never
-- returned).
CREATE TABLE access_keys (
    access_key_id     TEXT PRIMARY KEY,
    account_id        TEXT NOT NULL REFERENCES accounts (account_id),
    access_key_secret TEXT NOT NULL
);

-- Signature nonces seen within their window (15 minutes): a request whose (key, nonce) is here
-- and not yet expired is a replay.
CREATE TABLE signature_nonces (
    access_key_id TEXT NOT NULL,
    nonce         TEXT NOT NULL,
    expires_at    TEXT NOT NULL,
    PRIMARY KEY (access_key_id, nonce)
);
CREATE INDEX signature_nonces_by_expiry ON signature_nonces (expires_at);
