-- DescribeSnapshots' total for a listing filtered by nothing but the account (a first page, an
-- ECS `PageNumber` page): the sum of at most 16 rows here instead of a count of every snapshot
-- the account holds, which grew with the account (bench/README.md, "First pages: the account's
-- kept count"). Triggers keep it, so every statement that adds or removes snapshot rows counts
-- them in its own transaction, whichever code runs it: a replica of an older version during a
-- rolling upgrade, an operator's hand-written fix. An account's rows sum to the number of its
-- snapshots (a promise that `snapshotd check` verifies).
--
-- An account's count is spread over 16 slots: one row per account would make every write of a
-- busy account wait for the previous one's commit, across the lanes and the replicas. A
-- statement adds to the slot its transaction names in `snapshotd.count_slot` (each lane of a
-- server its own: `begin_batch_sql` in src/store/postgres), else to one picked at random. A
-- slot's own number means nothing and can be negative (a snapshot counted in one slot and
-- uncounted in another). The triggers run at the end of their statement and lock accounts in
-- order; the store inserts and deletes snapshot rows only after every disk its transaction
-- locks, so that it never holds a count while it waits for a disk (docs/architecture.md).
CREATE TABLE account_snapshot_counts (
    account_id     text NOT NULL REFERENCES accounts (account_id),
    slot           integer NOT NULL,
    snapshot_count bigint NOT NULL,
    PRIMARY KEY (account_id, slot)
);

-- The transaction's slot, else a random one (an older replica's, an operator's statement).
CREATE FUNCTION account_count_slot() RETURNS integer
LANGUAGE sql VOLATILE AS $$
    SELECT COALESCE(NULLIF(current_setting('snapshotd.count_slot', true), '')::integer,
                    floor(random() * 16)::integer)
$$;

-- One function per event: PostgreSQL binds transition tables only to a trigger of one event.
CREATE FUNCTION count_added_snapshots() RETURNS trigger
LANGUAGE plpgsql AS $$
BEGIN
    INSERT INTO account_snapshot_counts AS c (account_id, slot, snapshot_count)
    SELECT account_id, account_count_slot(), count(*)
    FROM added GROUP BY account_id ORDER BY account_id
    ON CONFLICT (account_id, slot) DO UPDATE
    SET snapshot_count = c.snapshot_count + EXCLUDED.snapshot_count;
    RETURN NULL;
END
$$;

CREATE FUNCTION count_removed_snapshots() RETURNS trigger
LANGUAGE plpgsql AS $$
BEGIN
    INSERT INTO account_snapshot_counts AS c (account_id, slot, snapshot_count)
    SELECT account_id, account_count_slot(), -count(*)
    FROM removed GROUP BY account_id ORDER BY account_id
    ON CONFLICT (account_id, slot) DO UPDATE
    SET snapshot_count = c.snapshot_count + EXCLUDED.snapshot_count;
    RETURN NULL;
END
$$;

-- The triggers before the count of the rows already there: creating them waits for every
-- transaction writing snapshots to end and holds off new ones until this migration commits, so
-- each row is counted once, by the count below or by a trigger.
CREATE TRIGGER snapshots_counted_in AFTER INSERT ON snapshots
    REFERENCING NEW TABLE AS added
    FOR EACH STATEMENT EXECUTE FUNCTION count_added_snapshots();
CREATE TRIGGER snapshots_counted_out AFTER DELETE ON snapshots
    REFERENCING OLD TABLE AS removed
    FOR EACH STATEMENT EXECUTE FUNCTION count_removed_snapshots();

INSERT INTO account_snapshot_counts (account_id, slot, snapshot_count)
SELECT account_id, 0, count(*) FROM snapshots GROUP BY account_id;
