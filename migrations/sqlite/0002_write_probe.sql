-- One row that readiness rewrites while the database's disk was full, to learn whether a write
-- can be committed again (see Service::storage_writable).
CREATE TABLE write_probe (
    id        INTEGER PRIMARY KEY CHECK (id = 1),
    probed_at TEXT NOT NULL,
    -- Rewritten by each probe, so that a probe needs room on the disk.
    padding   BLOB NOT NULL DEFAULT x''
);
INSERT INTO write_probe (id, probed_at) VALUES (1, '1970-01-01T00:00:00Z');
