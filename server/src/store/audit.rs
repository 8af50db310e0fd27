//! The books of every run, checked and healed. At every atomic step, each
//! chunk of an active run is done, dead-lettered, queued in the scheduler
//! (at or past the run's `next`, or in its re-queue list) or has a task
//! entry in its kernel's tasks stream (held by an agent). A chunk with none
//! of these is lost: nothing would ever compute it and the run would stay
//! RUNNING for good. The audit finds such runs — active, quiet for a while,
//! chunks unaccounted for, nothing queued and not one task entry in the
//! stream — and re-queues the missing chunks from the run's own done and
//! dead bitmaps. A quiet run that still has chunks queued is put back in
//! its scheduler zset (a no-op unless it was missing from it).
//! Retry of a run stopped by fail-fast re-queues its purged chunks the same
//! way (`proto/lua/requeue_missing.lua`).

use std::collections::{HashMap, HashSet};
use std::time::Duration;

use redis::Value;
use ttg_proto::chunking::chunk_range;
use ttg_proto::keys::Keys;
use ttg_proto::now_ms;
use ttg_proto::records::{decode_task, encode, parse_state, TASK_FIELD};
use ttg_proto::v1::{RunSpec, RunState, Task};

use super::Store;
use crate::error::Result;

/// Chunks re-queued per script call (one call blocks Redis while it runs).
const REQUEUE_BATCH: usize = 1_000;
/// Task entries read per XREVRANGE while looking for a run's entries.
const SCAN_PAGE: usize = 1_000;

/// Whether chunk `i`'s bit is set in a Redis bitmap (bit 0 is the most
/// significant bit of the first byte, as SETBIT numbers them).
pub(super) fn bit(bitmap: &[u8], i: u64) -> bool {
    let byte = (i / 8) as usize;
    byte < bitmap.len() && bitmap[byte] & (0x80 >> (i % 8)) != 0
}

/// Chunks of `total` that are neither done nor dead.
pub fn missing_chunks(done: &[u8], dead: &[u8], total: u64) -> Vec<u64> {
    (0..total)
        .filter(|&i| !bit(done, i) && !bit(dead, i))
        .collect()
}

/// The task of chunk `chunk` of a run, as claim.lua hands it out.
pub fn task_for(spec: &RunSpec, chunk: u64) -> Task {
    let (start, end) = chunk_range(spec.params, spec.chunk_size, chunk);
    Task {
        chunk_index: chunk,
        start,
        end,
        ..super::submit::task_template(spec)
    }
}

impl Store {
    /// Ids of the active runs, per slot group: every ended run is in the
    /// expiry schedule, so this is each group's runs index without it (at
    /// most --max-runs-in-flight in all), computed inside Redis.
    pub(super) async fn active_runs_by_group(&self) -> Result<Vec<(Keys, Vec<String>)>> {
        let mut c = self.conn();
        let mut out = Vec::new();
        for keys in self.layout().groups() {
            let ids: Vec<String> = self
                .timed(
                    redis::cmd("ZDIFF")
                        .arg(2)
                        .arg(keys.runs())
                        .arg(keys.expiring())
                        .query_async(&mut c),
                )
                .await?;
            out.push((keys.clone(), ids));
        }
        Ok(out)
    }

    /// Queue again every chunk of `spec`'s run that is neither done nor dead,
    /// in `mode` `"audit"` or `"retry"` (see `requeue_missing.lua`; the
    /// audit calls it only for a run without a task entry). Returns
    /// how many were queued and the run's state after (None if the script
    /// refused: the run is unknown or not active). Chunks the scheduler has
    /// not handed out yet (at or past the run's `next`) are not missing.
    pub(super) async fn requeue_missing(
        &self,
        spec: &RunSpec,
        mode: &str,
    ) -> Result<(u64, Option<RunState>)> {
        let run_id = &spec.run_id;
        let mut c = self.conn();
        let (done, dead, next): (Option<Vec<u8>>, Option<Vec<u8>>, Option<u64>) = self
            .timed(
                redis::pipe()
                    .get(self.keys_of(run_id)?.done(run_id))
                    .get(self.keys_of(run_id)?.dead_bits(run_id))
                    .hget(self.keys_of(run_id)?.run(run_id), "next")
                    .query_async(&mut c),
            )
            .await?;
        let missing = missing_chunks(
            &done.unwrap_or_default(),
            &dead.unwrap_or_default(),
            next.unwrap_or(spec.total_chunks).min(spec.total_chunks),
        );
        self.requeue_missing_chunks(spec, mode, &missing).await
    }

    /// requeue_missing.lua over `missing`, in batches (one call at least:
    /// it also puts a run with chunks to hand out back in its zset).
    async fn requeue_missing_chunks(
        &self,
        spec: &RunSpec,
        mode: &str,
        missing: &[u64],
    ) -> Result<(u64, Option<RunState>)> {
        let run_id = &spec.run_id;
        let keys = self.keys_of(run_id)?;
        let mut c = self.writer();
        let tasks = keys.tasks(&spec.kernel);
        self.ensure_group(&tasks).await?;
        let mut queued = 0u64;
        let mut state = None;
        let mut batches: Vec<&[u64]> = missing.chunks(REQUEUE_BATCH).collect();
        if batches.is_empty() {
            batches.push(&[]);
        }
        for batch in batches {
            let chunks: Vec<(u64, Vec<u8>)> = batch
                .iter()
                .map(|&i| (i, encode(&task_for(spec, i))))
                .collect();
            let inv = self.scripts.requeue_missing(
                &keys,
                run_id,
                &tasks,
                mode,
                &spec.traceparent,
                &chunks,
            );
            let (n, s): (i64, String) = self.timed(inv.invoke_async(&mut c)).await?;
            if n < 0 {
                return Ok((queued, None));
            }
            queued += n as u64;
            state = Some(parse_state(&s));
        }
        if queued > 0 {
            self.ring_home(&spec.kernel, run_id).await;
        }
        Ok((queued, state))
    }

    /// One audit pass over the active runs: a run with chunks unaccounted
    /// for, no event for `quiet` and no task entry in its kernel's stream
    /// gets its missing chunks re-queued (logged, and counted in
    /// `ttg_chunks_requeued_by_audit_total`). Returns how many were queued.
    /// Safe on several replicas at once: the script re-checks every chunk's
    /// bits, and a chunk queued twice is counted once.
    pub async fn audit(&self, quiet: Duration) -> Result<u64> {
        let candidates = self.audit_candidates(quiet).await?;
        if candidates.is_empty() {
            return Ok(0);
        }
        let mut by_stream: HashMap<String, Vec<RunSpec>> = HashMap::new();
        for (spec, queued) in candidates {
            if queued > 0 {
                // Chunks still to hand out, yet quiet: make sure the run is
                // in its scheduler zset (the script re-adds it if it is not;
                // nothing is queued twice).
                self.requeue_missing_chunks(&spec, "sched", &[]).await?;
                continue;
            }
            by_stream
                .entry(self.keys_of(&spec.run_id)?.tasks(&spec.kernel))
                .or_default()
                .push(spec);
        }
        let mut requeued = 0;
        for (stream, runs) in by_stream {
            let wanted: HashSet<&str> = runs.iter().map(|s| s.run_id.as_str()).collect();
            let present = self.runs_with_entries(&stream, &wanted).await?;
            for spec in runs.iter().filter(|s| !present.contains(&s.run_id)) {
                let (n, _) = self.requeue_missing(spec, "audit").await?;
                if n > 0 {
                    tracing::warn!(run = %spec.run_id, chunks = n,
                        "audit: run had chunks neither done, dead nor queued; re-queued them from its bitmaps");
                }
                requeued += n;
            }
        }
        Ok(requeued)
    }

    /// Active runs with chunks unaccounted for and no event for `quiet`,
    /// with how many chunks their scheduler queue still holds.
    async fn audit_candidates(&self, quiet: Duration) -> Result<Vec<(RunSpec, u64)>> {
        let mut out = Vec::new();
        for (keys, active) in self.active_runs_by_group().await? {
            out.extend(self.audit_candidates_in(&keys, active, quiet).await?);
        }
        Ok(out)
    }

    /// [`Store::audit_candidates`] among `active`, runs of the group of `keys`.
    async fn audit_candidates_in(
        &self,
        keys: &Keys,
        active: Vec<String>,
        quiet: Duration,
    ) -> Result<Vec<(RunSpec, u64)>> {
        let mut c = self.conn();
        if active.is_empty() {
            return Ok(Vec::new());
        }
        let mut p = redis::pipe();
        for id in &active {
            p.cmd("HMGET")
                .arg(keys.run(id))
                .arg(&["state", "total", "done", "dead", "spec", "next", "qn"]);
            p.cmd("XREVRANGE")
                .arg(keys.events(id))
                .arg("+")
                .arg("-")
                .arg("COUNT")
                .arg(1);
        }
        let replies: Vec<Value> = self.timed(p.query_async(&mut c)).await?;
        let now = now_ms();
        let mut out = Vec::new();
        for (id, pair) in active.iter().zip(replies.chunks(2)) {
            let (Ok(fields), Ok(last)) = (
                redis::from_redis_value::<Vec<Option<Vec<u8>>>>(pair[0].clone()),
                redis::from_redis_value::<redis::streams::StreamRangeReply>(pair[1].clone()),
            ) else {
                continue;
            };
            let text = |i: usize| {
                fields
                    .get(i)
                    .cloned()
                    .flatten()
                    .map(|b| String::from_utf8_lossy(&b).into_owned())
            };
            let int = |i: usize| text(i).and_then(|s| s.parse::<i64>().ok()).unwrap_or(0);
            let state = parse_state(&text(0).unwrap_or_default());
            if !matches!(state, RunState::Queued | RunState::Running) {
                continue;
            }
            if int(2) + int(3) >= int(1) {
                continue;
            }
            let last_ms = last
                .ids
                .first()
                .and_then(|e| e.id.split('-').next()?.parse::<i64>().ok())
                .unwrap_or(0);
            if now - last_ms < quiet.as_millis() as i64 {
                continue;
            }
            let Some(spec) = fields
                .get(4)
                .cloned()
                .flatten()
                .and_then(|b| ttg_proto::records::decode_spec(&b).ok())
            else {
                tracing::warn!(run = %id, "audit: run without a readable spec skipped");
                continue;
            };
            let queued = if text(5).is_some() {
                (int(1) - int(5)).max(0) as u64 + int(6).max(0) as u64
            } else {
                0
            };
            out.push((spec, queued));
        }
        Ok(out)
    }

    /// Which of `wanted` have at least one entry in `stream` (queued or held
    /// by an agent: entries leave the stream only when their chunk is
    /// settled). Reads newest first and stops once all are found: a run
    /// waiting behind a long queue was usually submitted last.
    async fn runs_with_entries(
        &self,
        stream: &str,
        wanted: &HashSet<&str>,
    ) -> Result<HashSet<String>> {
        let mut c = self.conn();
        let mut found = HashSet::new();
        let mut from = "+".to_string();
        loop {
            let page: redis::streams::StreamRangeReply = self
                .timed(
                    redis::cmd("XREVRANGE")
                        .arg(stream)
                        .arg(&from)
                        .arg("-")
                        .arg("COUNT")
                        .arg(SCAN_PAGE)
                        .query_async(&mut c),
                )
                .await?;
            for e in &page.ids {
                if let Some(Value::BulkString(b)) = e.map.get(TASK_FIELD) {
                    if let Ok(t) = decode_task(b) {
                        if wanted.contains(t.run_id.as_str()) {
                            found.insert(t.run_id);
                        }
                    }
                }
            }
            if found.len() == wanted.len() {
                return Ok(found);
            }
            match page.ids.last() {
                Some(last) if page.ids.len() == SCAN_PAGE => from = format!("({}", last.id),
                _ => return Ok(found),
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn missing_chunks_follow_redis_bit_order() {
        // SETBIT k 0 1 → 0x80; SETBIT k 9 1 → second byte 0x40.
        let done = [0x80, 0x40];
        let dead = [0x20];
        assert_eq!(
            missing_chunks(&done, &dead, 12),
            vec![1, 3, 4, 5, 6, 7, 8, 10, 11]
        );
        assert_eq!(missing_chunks(&[], &[], 3), vec![0, 1, 2]);
        assert!(missing_chunks(&[0xff], &[], 8).is_empty());
    }
}
