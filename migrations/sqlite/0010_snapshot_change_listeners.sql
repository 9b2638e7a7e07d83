-- WatchSnapshots, only when someone watches (as on PostgreSQL, its migration 0010): the triggers
-- of 0005 log a change only while this table has its row, which the one server on the file
-- inserts when its change feed starts and deletes (with the log) when it stops, so a write
-- nobody watches costs no log row. Starting is race-free because SQLite has one writer at a
-- time: a write that committed before the row is in what the first watcher then reads, and
-- every write after it is logged.
CREATE TABLE snapshot_change_listeners (
    id INTEGER PRIMARY KEY CHECK (id = 1)
);

DROP TRIGGER snapshots_log_insert;
DROP TRIGGER snapshots_log_update;
DROP TRIGGER snapshots_log_delete;

CREATE TRIGGER snapshots_log_insert AFTER INSERT ON snapshots
WHEN EXISTS (SELECT 1 FROM snapshot_change_listeners)
BEGIN
    INSERT INTO snapshot_changes (snapshot_id, source_disk_id, account_id)
    VALUES (NEW.snapshot_id, NEW.source_disk_id, NEW.account_id);
END;

CREATE TRIGGER snapshots_log_update AFTER UPDATE ON snapshots
WHEN EXISTS (SELECT 1 FROM snapshot_change_listeners)
BEGIN
    INSERT INTO snapshot_changes (snapshot_id, source_disk_id, account_id)
    VALUES (NEW.snapshot_id, NEW.source_disk_id, NEW.account_id);
END;

CREATE TRIGGER snapshots_log_delete AFTER DELETE ON snapshots
WHEN EXISTS (SELECT 1 FROM snapshot_change_listeners)
BEGIN
    INSERT INTO snapshot_changes (snapshot_id, source_disk_id, account_id)
    VALUES (OLD.snapshot_id, OLD.source_disk_id, OLD.account_id);
END;
