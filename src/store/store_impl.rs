//! The `Store` trait implementation, written once: each backend file defines its own
//! `in_write_tx!` (how a write transaction begins, commits and retries) and its transaction
//! traits, then invokes [`impl_store!`].

/// `impl Store for $store`, with `kind()` = `$kind`, migrations from `$migrations`, and `$sql`
/// turning the shared SQL into the backend's.
macro_rules! impl_store {
    ($store:ty, $db:ty, $kind:literal, $migrations:literal, $sql:expr) => {
        impl $store {
            /// Writes one batch of queued CreateSnapshot calls in one transaction and answers
            /// each (see `group_commit`); returns the cause when the database was unreachable.
            /// It owns all it uses: it runs in a task of its own, so that no caller's going
            /// away can drop it halfway and leave the others' answers unknown.
            async fn write_batch(
                pool: sqlx::Pool<$db>,
                batch: Vec<$crate::store::group_commit::Queued>,
                backend: std::sync::Arc<dyn SnapshotBackend>,
            ) -> Option<std::sync::Arc<sqlx::Error>> {
                use $crate::store::group_commit::{Verdict, all_gone};
                let written = async {
                    let mut attempt = 1;
                    loop {
                        let mut tx = begin_write(&pool).await?;
                        let decided = $crate::store::create_flow::decide_batch(
                            &mut tx,
                            &batch,
                            backend.as_ref(),
                        )
                        .await;
                        let decision = match decided {
                            Ok(decision) => decision,
                            Err(StoreError::Conflict(_))
                                if attempt < $crate::store::CONFLICT_ATTEMPTS =>
                            {
                                let _ = tx.rollback().await;
                                attempt += 1;
                                continue;
                            }
                            Err(err) => {
                                let _ = tx.rollback().await;
                                return Err(err);
                            }
                        };
                        // A caller whose snapshot was about to be committed went away: write
                        // the batch again without it, as its own transaction would have been
                        // rolled back.
                        if decision.abandoned_writes(&batch) {
                            let _ = tx.rollback().await;
                            decision.cancel_copies(backend.as_ref()).await;
                            continue;
                        }
                        tx.commit().await?;
                        return Ok::<_, StoreError>(decision);
                    }
                };
                let written = tokio::select! {
                    biased;
                    written = written => written,
                    // Nobody waits for this batch any more (say a slow copy outlasted every
                    // caller's deadline): stop, which rolls it back, and free the lane.
                    () = all_gone(&batch) => return None,
                };
                let failure = match written {
                    Ok(decision) => {
                        $crate::telemetry::metric::create_batch(batch.len());
                        decision.answer(batch);
                        return None;
                    }
                    Err(failure) => failure,
                };
                // The batch failed as a whole. An unreachable database is every call's answer
                // (each would wait for it again alone); otherwise a lone call gets the error, and
                // the calls of a larger batch each find their own answer alone.
                match failure {
                    StoreError::Unavailable(cause) => {
                        $crate::store::group_commit::answer_unreachable(batch, &cause);
                        Some(cause)
                    }
                    failure if batch.len() == 1 => {
                        let lone = batch.into_iter().next().expect("one call");
                        lone.answer(Verdict::Answer(Err(failure)));
                        None
                    }
                    _ => {
                        for queued in batch {
                            queued.answer(Verdict::RunAlone);
                        }
                        None
                    }
                }
            }
        }

        #[async_trait::async_trait]
        impl $crate::store::Store for $store {
            fn kind(&self) -> &'static str {
                $kind
            }

            async fn migrate(&self) -> Result<(), StoreError> {
                sqlx::migrate!($migrations).run(&self.pool).await?;
                Ok(())
            }

            async fn ping(&self) -> Result<(), StoreError> {
                sqlx::query("SELECT 1").execute(&self.pool).await?;
                Ok(())
            }

            async fn is_empty(&self) -> Result<bool, StoreError> {
                let mut tx = self.pool.begin().await?;
                let any = tx.any_account().await?;
                tx.commit().await?;
                Ok(!any)
            }

            async fn put_account(&self, account: &Account) -> Result<Account, StoreError> {
                in_write_tx!(self, tx, tx.upsert_account(account))
            }

            async fn put_instance(&self, instance: &Instance) -> Result<Instance, StoreError> {
                in_write_tx!(self, tx, inventory_flow::put_instance(&mut tx, instance))
            }

            async fn put_disk(&self, disk: &Disk) -> Result<Disk, StoreError> {
                in_write_tx!(self, tx, inventory_flow::put_disk(&mut tx, disk))
            }

            async fn get_disk(&self, disk_id: &str) -> Result<Disk, StoreError> {
                let mut tx = self.pool.begin().await?;
                let disk = tx.select_disk(disk_id).await?;
                tx.commit().await?;
                disk.ok_or_else(|| {
                    RuleError::InvalidDiskIdNotFound {
                        disk_id: disk_id.to_owned(),
                    }
                    .into()
                })
            }

            async fn create_snapshot(
                &self,
                command: &CreateSnapshotCommand,
                policy: &Policy,
                now: Timestamp,
                backend: &std::sync::Arc<dyn SnapshotBackend>,
            ) -> Result<CreateOutcome, StoreError> {
                let answer = self
                    .group_commit
                    .submit(command, policy, now, |batch| {
                        Self::write_batch(self.pool.clone(), batch, backend.clone())
                    })
                    .await;
                match answer {
                    Some(answer) => answer,
                    None => {
                        $crate::telemetry::metric::create_run_alone();
                        in_write_tx!(
                            self,
                            tx,
                            decide_and_write(&mut tx, command, policy, now, backend.as_ref())
                        )
                    }
                }
            }

            async fn describe_snapshots(
                &self,
                query: &SnapshotQuery,
            ) -> Result<SnapshotPage, StoreError> {
                describe_on!(&self.pool, DIALECT, query)
            }

            async fn delete_snapshot(
                &self,
                account_id: &str,
                snapshot_id: &str,
                force: bool,
                _now: Timestamp,
                backend: &dyn SnapshotBackend,
            ) -> Result<(), StoreError> {
                in_write_tx!(
                    self,
                    tx,
                    lifecycle_flow::delete(&mut tx, account_id, snapshot_id, force, backend)
                )
            }

            async fn create_image(
                &self,
                command: &CreateImageCommand,
                now: Timestamp,
            ) -> Result<CreateOutcome, StoreError> {
                in_write_tx!(
                    self,
                    tx,
                    lifecycle_flow::create_image(&mut tx, command, now)
                )
            }

            async fn advance_copies(
                &self,
                now: Timestamp,
                limit: u32,
                backend: &dyn SnapshotBackend,
            ) -> Result<WorkDone, StoreError> {
                in_write_tx!(
                    self,
                    tx,
                    lifecycle_flow::advance_copies(&mut tx, now, limit, backend)
                )
            }

            async fn release_expired(
                &self,
                now: Timestamp,
                limit: u32,
                backend: &dyn SnapshotBackend,
            ) -> Result<WorkDone, StoreError> {
                in_write_tx!(
                    self,
                    tx,
                    lifecycle_flow::release_expired(&mut tx, now, limit, backend)
                )
            }

            async fn check_invariants(
                &self,
                snapshot_quota: u32,
            ) -> Result<Vec<$crate::store::Violation>, StoreError> {
                let mut violations = Vec::new();
                for check in $crate::store::invariants_sql::CHECKS {
                    let statement = $sql(check.sql);
                    let mut query = sqlx::query_as::<_, (String, String)>(&statement);
                    if check.takes_quota {
                        query = query.bind(i64::from(snapshot_quota));
                    }
                    for (subject, detail) in query.fetch_all(&self.pool).await? {
                        violations.push($crate::store::Violation {
                            promise: check.promise,
                            subject,
                            detail,
                        });
                    }
                }
                Ok(violations)
            }

            async fn count_snapshots_by_status(&self) -> Result<Vec<(String, i64)>, StoreError> {
                let counts = sqlx::query_as(
                    "SELECT status, COUNT(*) FROM snapshots GROUP BY status ORDER BY status",
                )
                .fetch_all(&self.pool)
                .await?;
                Ok(counts)
            }

            fn pool_stats(&self) -> $crate::store::PoolStats {
                $crate::store::PoolStats {
                    connections: self.pool.size(),
                    idle: self.pool.num_idle(),
                    max_connections: self.pool.options().get_max_connections(),
                }
            }

            async fn close(&self) {
                self.pool.close().await;
            }
        }
    };
}
pub(crate) use impl_store;
