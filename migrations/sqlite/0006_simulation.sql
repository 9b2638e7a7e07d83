-- The simulation controls (SimulationService, served only with --simulation-controls), shared by
-- every replica on the database: how far the service's clock has been moved forward, and how
-- the simulated data plane treats each steered disk's copies. Empty in production.
CREATE TABLE simulation_clock (
    id        INTEGER PRIMARY KEY CHECK (id = 1),
    offset_us INTEGER NOT NULL
);

CREATE TABLE simulated_disks (
    disk_id              TEXT PRIMARY KEY,
    -- SetCopyRate: MiB/s from rate_since (NULL: the server's --copy-rate-mibps).
    rate_mibps           INTEGER,
    rate_since           TEXT,
    -- The copy that ran when the rate last changed, and how far it had got (KiB).
    checkpoint_snapshot  TEXT,
    checkpoint_kib       INTEGER,
    -- FailNextCopy: the disk's first snapshot started at or after fail_from fails; once seen,
    -- it is the doomed one.
    fail_from            TEXT,
    doomed_snapshot_id   TEXT
);
