-- SQLite twin of migrations/postgres/0011: DescribeSnapshots' total for a listing filtered by
-- nothing but the account, kept by triggers on every row added or removed. SQLite has one
-- writer at a time, so each account is counted in slot 0 only.
CREATE TABLE account_snapshot_counts (
    account_id     TEXT NOT NULL REFERENCES accounts (account_id),
    slot           INTEGER NOT NULL,
    snapshot_count INTEGER NOT NULL,
    PRIMARY KEY (account_id, slot)
);

CREATE TRIGGER snapshots_counted_in AFTER INSERT ON snapshots
BEGIN
    INSERT INTO account_snapshot_counts (account_id, slot, snapshot_count)
    VALUES (NEW.account_id, 0, 1)
    ON CONFLICT (account_id, slot) DO UPDATE SET snapshot_count = snapshot_count + 1;
END;

CREATE TRIGGER snapshots_counted_out AFTER DELETE ON snapshots
BEGIN
    INSERT INTO account_snapshot_counts (account_id, slot, snapshot_count)
    VALUES (OLD.account_id, 0, -1)
    ON CONFLICT (account_id, slot) DO UPDATE SET snapshot_count = snapshot_count - 1;
END;

INSERT INTO account_snapshot_counts (account_id, slot, snapshot_count)
SELECT account_id, 0, count(*) FROM snapshots GROUP BY account_id;
