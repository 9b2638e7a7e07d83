-- DescribeImages pages by (created_at, image_id), newest first, within an account, as
-- DescribeSnapshots does over snapshots_by_account_newest.
CREATE INDEX images_by_account_newest ON images (account_id, created_at DESC, image_id DESC);
