-- The simulation controls (SimulationService, served only with --simulation-controls), shared by
-- every replica on the database: how far the service's clock has been moved forward, and how
-- the simulated data plane treats each steered disk's copies. Empty in production.
CREATE TABLE simulation_clock (
    id        smallint PRIMARY KEY CHECK (id = 1),
    offset_us bigint NOT NULL
);

CREATE TABLE simulated_disks (
    disk_id              text PRIMARY KEY,
    -- SetCopyRate: MiB/s from rate_since (NULL: the server's --copy-rate-mibps).
    rate_mibps           bigint,
    rate_since           timestamptz,
    -- The copy that ran when the rate last changed, and how far it had got (KiB).
    checkpoint_snapshot  text,
    checkpoint_kib       bigint,
    -- FailNextCopy: the disk's first snapshot started at or after fail_from fails; once seen,
    -- it is the doomed one.
    fail_from            timestamptz,
    doomed_snapshot_id   text
);
