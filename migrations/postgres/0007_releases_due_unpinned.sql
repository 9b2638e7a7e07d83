-- The retention sweep's queue holds only what it may release. A snapshot an image uses stays
-- past its release_at for as long as the image lives, and the sweep (`release_at <= now AND
-- usage = 'none'`) read every such row again at each step through the old index, which held
-- every snapshot with a release_at: on bench/bigdata.sh's database (10 M snapshots, 50,000 of
-- them pinned past their retention) that was 50,000 rows read per step with nothing to release.
DROP INDEX snapshots_releases_due;
CREATE INDEX snapshots_releases_due ON snapshots (release_at)
    WHERE release_at IS NOT NULL AND usage = 'none';
