-- WatchSnapshots: every change to a snapshot row (create, status, attributes, tags, which touch
-- last_modified_at, usage, delete) is logged here in its own transaction, so a rolled-back
-- change is never seen. The one server on this file reads the log after each commit, tells its
-- watchers, and deletes what it read: the table holds only what is not yet read.
CREATE TABLE snapshot_changes (
    seq            INTEGER PRIMARY KEY AUTOINCREMENT,
    snapshot_id    TEXT NOT NULL,
    source_disk_id TEXT NOT NULL,
    account_id     TEXT NOT NULL
);

CREATE TRIGGER snapshots_log_insert AFTER INSERT ON snapshots
BEGIN
    INSERT INTO snapshot_changes (snapshot_id, source_disk_id, account_id)
    VALUES (NEW.snapshot_id, NEW.source_disk_id, NEW.account_id);
END;

CREATE TRIGGER snapshots_log_update AFTER UPDATE ON snapshots
BEGIN
    INSERT INTO snapshot_changes (snapshot_id, source_disk_id, account_id)
    VALUES (NEW.snapshot_id, NEW.source_disk_id, NEW.account_id);
END;

CREATE TRIGGER snapshots_log_delete AFTER DELETE ON snapshots
BEGIN
    INSERT INTO snapshot_changes (snapshot_id, source_disk_id, account_id)
    VALUES (OLD.snapshot_id, OLD.source_disk_id, OLD.account_id);
END;
