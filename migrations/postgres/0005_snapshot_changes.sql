-- WatchSnapshots: every committed change to a snapshot row (create, status, attributes, tags,
-- which touch last_modified_at, usage, delete) is announced on the channel `snapshot_changes`
-- to every replica that LISTENs. PostgreSQL delivers a notification only when its transaction
-- commits, and never one of a rolled-back transaction. The payload names the row, the watcher
-- reads it: "snapshot_id disk_id account_id" (the account last: the only free-form part).
CREATE FUNCTION notify_snapshot_change() RETURNS trigger
LANGUAGE plpgsql AS $$
DECLARE
    changed snapshots%ROWTYPE;
BEGIN
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

CREATE TRIGGER snapshots_notify_change
    AFTER INSERT OR UPDATE OR DELETE ON snapshots
    FOR EACH ROW EXECUTE FUNCTION notify_snapshot_change();
