//! Housekeeping: retention and removal of finished runs, a cancelled run's queued tasks, and the check of Redis's eviction policy.

use super::*;

/// Tombstones of removed runs are kept this long…
const GONE_KEEP: Duration = Duration::from_secs(30 * 24 * 3_600);
/// …and at most this many (newest kept).
const GONE_MAX: u64 = 100_000;
/// Runs the janitor removes per Redis round trip.
const EXPIRE_BATCH: usize = 100;
/// Task entries read per XRANGE when purging a cancelled run's tasks.
const PURGE_SCAN: usize = 1_000;

impl Store {
    /// Run the purge script for one run; `why` is `expired` or `deleted`.
    async fn purge(&self, run_id: &str, why: &str) -> Result<(i64, String)> {
        let keys = self.keys_of(run_id)?;
        let inv = self.scripts.purge(
            &keys,
            run_id,
            why,
            now_ms(),
            GONE_KEEP.as_millis() as u64,
            GONE_MAX,
        );
        let mut c = self.writer();
        self.timed(inv.invoke_async(&mut c)).await
    }

    /// Remove a finished run's data now. A QUEUED or RUNNING run is
    /// [`Error::FailedPrecondition`]: it must be cancelled first.
    pub async fn delete(&self, run_id: &str) -> Result<RunState> {
        check_run_id(run_id)?;
        let (code, state) = self.purge(run_id, "deleted").await?;
        match code {
            1 => {
                tracing::info!(run = %run_id, "run deleted");
                self.replicated(&self.keys_of(run_id)?.run(run_id)).await;
                Ok(parse_state(&state))
            }
            -2 => Err(Error::FailedPrecondition(format!(
                "run {run_id} is {state}: cancel it first (ttgctl cancel {run_id}); only a finished run can be deleted"
            ))),
            _ => Err(self.not_found(run_id).await),
        }
    }

    /// Remove every run whose retention has ended. Safe on several replicas
    /// at once: the purge script re-checks each run's expiry time.
    pub async fn expire_due(&self) -> Result<usize> {
        let mut removed = 0;
        for keys in self.layout().groups() {
            removed += self.expire_due_in(keys).await?;
        }
        Ok(removed)
    }

    /// [`Store::expire_due`] in the group of `keys`.
    async fn expire_due_in(&self, keys: &Keys) -> Result<usize> {
        let mut removed = 0;
        loop {
            let mut c = self.conn();
            let due: Vec<String> = self
                .timed(
                    redis::cmd("ZRANGEBYSCORE")
                        .arg(keys.expiring())
                        .arg("-inf")
                        .arg(now_ms())
                        .arg("LIMIT")
                        .arg(0)
                        .arg(EXPIRE_BATCH)
                        .query_async(&mut c),
                )
                .await?;
            for id in &due {
                if !valid_run_id(id) {
                    self.timed(
                        redis::cmd("ZREM")
                            .arg(keys.expiring())
                            .arg(id)
                            .query_async::<()>(&mut c),
                    )
                    .await?;
                    continue;
                }
                let (code, _) = self.purge(id, "expired").await?;
                if code == 1 {
                    removed += 1;
                    tracing::info!(run = %id, "run expired: its data was removed");
                }
            }
            if due.len() < EXPIRE_BATCH {
                return Ok(removed);
            }
        }
    }

    /// Delete a cancelled run's task entries that no agent was delivered yet,
    /// so they do not wait in the stream for an agent to read and drop them
    /// (a run of a kernel no agent offers would keep them forever). A failure
    /// is logged, not returned: agents still drop such entries as they read
    /// them.
    pub async fn remove_cancelled_tasks(&self, run_id: &str) {
        match self.purge_cancelled_tasks(run_id).await {
            Ok(n) => {
                tracing::debug!(run = %run_id, tasks = n, "cancelled run's queued tasks removed")
            }
            Err(e) => {
                tracing::warn!(run = %run_id, error = %e, "cancelled run's queued tasks not removed; agents drop them as they read them")
            }
        }
    }

    /// See [`Store::remove_cancelled_tasks`]; returns how many were deleted.
    async fn purge_cancelled_tasks(&self, run_id: &str) -> Result<u64> {
        let spec = self.spec(run_id).await?;
        let stream = self.keys_of(run_id)?.tasks(&spec.kernel);
        let mut c = self.conn();
        let mut from = "-".to_string();
        let mut deleted = 0u64;
        loop {
            let page: redis::streams::StreamRangeReply = self
                .timed(
                    redis::cmd("XRANGE")
                        .arg(&stream)
                        .arg(&from)
                        .arg("+")
                        .arg("COUNT")
                        .arg(PURGE_SCAN)
                        .query_async(&mut c),
                )
                .await?;
            let mine: Vec<&str> = page
                .ids
                .iter()
                .filter(|e| match e.map.get(TASK_FIELD) {
                    Some(Value::BulkString(b)) => {
                        ttg_proto::records::decode_task(b).is_ok_and(|t| t.run_id == run_id)
                    }
                    _ => false,
                })
                .map(|e| e.id.as_str())
                .collect();
            if !mine.is_empty() {
                let inv = self.scripts.purge_tasks(&stream, &mine);
                let n: u64 = self.timed(inv.invoke_async(&mut c)).await?;
                deleted += n;
            }
            match page.ids.last() {
                Some(last) if page.ids.len() == PURGE_SCAN => from = format!("({}", last.id),
                _ => return Ok(deleted),
            }
        }
    }

    /// Warn when Redis may evict keys: TTG's streams, pending lists and
    /// results must never be evicted, so `maxmemory-policy` must be
    /// `noeviction`. Returns the policy, or None if Redis does not say
    /// (managed Redis often disables CONFIG).
    pub async fn check_eviction_policy(&self) -> Option<String> {
        let mut c = self.conn();
        let reply: Result<Vec<String>> = self
            .timed(c.query_at(
                &self.keys().runs(),
                redis::cmd("CONFIG").arg("GET").arg("maxmemory-policy"),
            ))
            .await;
        let policy = match reply {
            Ok(v) => v.get(1).cloned()?,
            Err(e) => {
                tracing::info!(error = %e, "cannot read Redis maxmemory-policy (CONFIG disabled?); make sure it is noeviction");
                return None;
            }
        };
        if policy != "noeviction" {
            tracing::warn!(policy = %policy,
                "Redis maxmemory-policy is {policy:?}, not \"noeviction\": under memory pressure Redis may evict TTG's tasks, pending entries or results and lose chunks; set `maxmemory-policy noeviction` (see docs/operations.md)");
        }
        Some(policy)
    }
}
