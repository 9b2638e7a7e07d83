-- The `snapshotd_snapshots{status}` gauge counts the failed snapshots at every scrape from this
-- index (few: bench/bigdata.sh's 10 M snapshots hold 50,000), as it counts the progressing ones
-- from `snapshots_copies_due`; the accomplished are the rest of the disks' `snapshot_count`. A
-- `GROUP BY status` over the table read all 10 M rows, 3.5 s, past the scrape's 2 s bound.
CREATE INDEX snapshots_failed ON snapshots (snapshot_id) WHERE status = 'failed';
