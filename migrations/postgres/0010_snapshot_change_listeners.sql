-- WatchSnapshots, only when someone listens: PostgreSQL serializes the commits of every
-- transaction that called pg_notify, cluster-wide, until each is flushed, whether or not any
-- session LISTENs (from 8 writers on, a third to a fifth of the commits per second). So the
-- trigger of 0005 notifies only while a replica's change feed is started: each listening
-- session has a row here (its backend pid), inserted before it starts reading and deleted when
-- it stops. A row left by a replica that died costs notifications only; the next replica
-- starting its feed deletes the rows of sessions that are gone.
--
-- The start is race-free because writers run at READ COMMITTED (the trigger's EXISTS sees every
-- row committed before its statement) and the starting replica, after its row is committed and
-- its LISTEN returned, takes `LOCK TABLE snapshots IN SHARE MODE`: that waits for every
-- transaction that wrote a snapshot row, the only ones that may have checked the table before
-- the row was there, to end before the replica reads what it follows.
CREATE TABLE snapshot_change_listeners (
    pid        INTEGER PRIMARY KEY,
    started_at TIMESTAMPTZ NOT NULL DEFAULT now()
);

CREATE OR REPLACE FUNCTION notify_snapshot_change() RETURNS trigger
LANGUAGE plpgsql AS $$
DECLARE
    changed snapshots%ROWTYPE;
BEGIN
    IF NOT EXISTS (SELECT 1 FROM snapshot_change_listeners) THEN
        RETURN NULL;
    END IF;
    IF TG_OP = 'DELETE' THEN
        changed := OLD;
    ELSE
        changed := NEW;
    END IF;
    PERFORM pg_notify('snapshot_changes',
        changed.snapshot_id || ' ' || changed.source_disk_id || ' ' || changed.account_id);
    RETURN NULL;
END;
$$;
