-- PutInstance refuses to move an instance to another account while a disk of the old account is
-- attached to it (`SELECT disk_id FROM disks WHERE instance_id = $1 AND account_id <> $2`), and
-- DescribeSnapshots' InstanceId filter reads the disks attached to an instance. Without an index
-- on the attachment both read every disk: with bench/bigdata.sh's 1 M disks each PutInstance
-- took 0.16 s alone and over 2 s under load, and the bench's inventory set-up timed out.
CREATE INDEX disks_by_instance ON disks (instance_id) WHERE instance_id IS NOT NULL;
