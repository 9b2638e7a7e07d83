-- SQLite twin of migrations/postgres/0001: timestamps are RFC 3339 TEXT, booleans INTEGER.
-- Inventory pushed by the upstream control plane, the snapshots created from it, and the client
-- tokens that make CreateSnapshot idempotent.

CREATE TABLE accounts (
    account_id                 TEXT PRIMARY KEY,
    snapshot_service_activated INTEGER NOT NULL,
    insufficient_balance       INTEGER NOT NULL
);

CREATE TABLE instances (
    instance_id     TEXT PRIMARY KEY,
    account_id      TEXT NOT NULL REFERENCES accounts (account_id),
    status          TEXT NOT NULL,
    created_at      TEXT NOT NULL,
    last_started_at TEXT,
    -- OperationLocks reasons, comma separated (each is validated to hold no comma).
    lock_reasons    TEXT NOT NULL DEFAULT ''
);

CREATE TABLE disks (
    disk_id       TEXT PRIMARY KEY,
    account_id    TEXT NOT NULL REFERENCES accounts (account_id),
    category      TEXT NOT NULL,
    disk_type     TEXT NOT NULL,
    status        TEXT NOT NULL,
    instance_id   TEXT REFERENCES instances (instance_id),
    size_gib      INTEGER NOT NULL,
    created_at    TEXT NOT NULL,
    expires_at    TEXT,
    ever_attached INTEGER NOT NULL,
    -- Snapshot bookkeeping, kept by the store in every transaction that adds, finishes or removes a
    -- snapshot of this disk. It lives on the disk row so that CreateSnapshot reads all it needs in
    -- the one statement that takes the row lock: under READ COMMITTED, other tables read in that
    -- statement could be older than the lock it waited for.
    snapshot_count          INTEGER NOT NULL DEFAULT 0 CHECK (snapshot_count >= 0),
    progressing_snapshot_id TEXT,
    progressing_since       TEXT
);

CREATE INDEX disks_by_account ON disks (account_id);

CREATE TABLE snapshots (
    snapshot_id          TEXT PRIMARY KEY,
    account_id           TEXT NOT NULL REFERENCES accounts (account_id),
    source_disk_id       TEXT NOT NULL REFERENCES disks (disk_id),
    snapshot_name        TEXT,
    description          TEXT NOT NULL,
    source_disk_size_gib INTEGER NOT NULL,
    source_disk_type     TEXT NOT NULL,
    status               TEXT NOT NULL,
    created_at           TEXT NOT NULL,
    -- The copy's start: progress is derived from it, so it survives restarts.
    started_at           TEXT NOT NULL,
    -- When the backend expects the copy to be done: the worker looks at it from then on.
    copy_due_at          TEXT NOT NULL,
    last_modified_at     TEXT NOT NULL,
    -- 0 keeps the snapshot forever; else it is released at release_at (unless an image uses it).
    retention_days       INTEGER NOT NULL DEFAULT 0,
    release_at           TEXT,
    -- 'none' or 'image': an image pins its snapshot.
    usage                TEXT NOT NULL DEFAULT 'none'
);

CREATE INDEX snapshots_by_disk ON snapshots (source_disk_id);
-- DescribeSnapshots pages by (created_at, snapshot_id), newest first, within an account.
CREATE INDEX snapshots_by_account_newest ON snapshots (account_id, created_at DESC, snapshot_id DESC);
-- The worker's two queues.
CREATE INDEX snapshots_copies_due ON snapshots (copy_due_at) WHERE status = 'progressing';
CREATE INDEX snapshots_releases_due ON snapshots (release_at) WHERE release_at IS NOT NULL;

CREATE TABLE snapshot_tags (
    snapshot_id TEXT NOT NULL REFERENCES snapshots (snapshot_id) ON DELETE CASCADE,
    key         TEXT NOT NULL,
    value       TEXT NOT NULL,
    PRIMARY KEY (snapshot_id, key)
);

CREATE INDEX snapshot_tags_by_key ON snapshot_tags (key, value);

CREATE TABLE images (
    image_id    TEXT PRIMARY KEY,
    account_id  TEXT NOT NULL REFERENCES accounts (account_id),
    snapshot_id TEXT NOT NULL REFERENCES snapshots (snapshot_id),
    image_name  TEXT,
    created_at  TEXT NOT NULL
);

CREATE INDEX images_by_snapshot ON images (snapshot_id);
-- A second guard, under the disk lock's: never two snapshots of one disk in progress.
CREATE UNIQUE INDEX snapshots_one_progressing_per_disk
    ON snapshots (source_disk_id) WHERE status = 'progressing';

-- (account, token) -> the request it created. Kept when the snapshot is deleted, so a late retry
-- still gets its original answer.
CREATE TABLE client_tokens (
    account_id   TEXT NOT NULL,
    client_token TEXT NOT NULL,
    fingerprint  TEXT NOT NULL,
    snapshot_id  TEXT NOT NULL,
    created_at   TEXT NOT NULL,
    PRIMARY KEY (account_id, client_token)
);

-- The same for CreateImage.
CREATE TABLE image_client_tokens (
    account_id   TEXT NOT NULL,
    client_token TEXT NOT NULL,
    fingerprint  TEXT NOT NULL,
    image_id     TEXT NOT NULL,
    created_at   TEXT NOT NULL,
    PRIMARY KEY (account_id, client_token)
);
