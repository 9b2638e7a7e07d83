-- DescribeSnapshots' total for a listing filtered by nothing but the account (a first page, an
-- ECS `PageNumber` page): the sum of at most a few rows here instead of a count of every
-- snapshot the account holds, which grew with the account (bench/README.md, "Cost as the data
-- grows"). Every transaction that adds or removes snapshot rows adds their number here in the
-- same transaction, so an account's rows sum to the number of its snapshots (a promise that
-- `snapshotd check` verifies).
--
-- An account's count is spread over slots, each write adding to one slot picked at random: one
-- row per account would make every write of a busy account wait for the previous one's commit,
-- across the lanes and the replicas. A slot's own number means nothing and can be negative (a
-- snapshot counted in one slot and uncounted in another). A transaction updates these rows last,
-- after every disk it locks, so that it never holds a count while it waits for a disk.
CREATE TABLE account_snapshot_counts (
    account_id     text NOT NULL REFERENCES accounts (account_id),
    slot           integer NOT NULL,
    snapshot_count bigint NOT NULL,
    PRIMARY KEY (account_id, slot)
);

INSERT INTO account_snapshot_counts (account_id, slot, snapshot_count)
SELECT account_id, 0, count(*) FROM snapshots GROUP BY account_id;
