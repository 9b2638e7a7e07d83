-- SQLite twin of migrations/postgres/0011: DescribeSnapshots' total for a listing filtered by
-- nothing but the account, kept by every transaction that adds or removes snapshot rows. SQLite
-- has one writer at a time, so the store counts in slot 0 only.
CREATE TABLE account_snapshot_counts (
    account_id     TEXT NOT NULL REFERENCES accounts (account_id),
    slot           INTEGER NOT NULL,
    snapshot_count INTEGER NOT NULL,
    PRIMARY KEY (account_id, slot)
);

INSERT INTO account_snapshot_counts (account_id, slot, snapshot_count)
SELECT account_id, 0, count(*) FROM snapshots GROUP BY account_id;
