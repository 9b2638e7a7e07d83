-- One row that readiness rewrites while the database's disk was full, to learn whether a write
-- can be committed again (see Service::storage_writable).
CREATE TABLE write_probe (
    id        integer PRIMARY KEY CHECK (id = 1),
    probed_at timestamptz NOT NULL,
    -- Rewritten by each probe, so that a probe needs room on the disk.
    padding   bytea NOT NULL DEFAULT ''::bytea
);
INSERT INTO write_probe (id, probed_at) VALUES (1, now());
