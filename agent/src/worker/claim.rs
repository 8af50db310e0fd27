//! The claim loop: read tasks with XREADGROUP into free slots (and, for short chunks, about 10 ms of work ahead per slot), each entry handed to its own task.

use super::*;

/// Longest XREADGROUP BLOCK; also how soon a drain notices it should stop claiming.
const READ_BLOCK: Duration = Duration::from_millis(1_000);

/// Chunks an agent holds (claimed, not yet completed in Redis) beyond its
/// `concurrency`: a slot is free again as soon as its chunk is computed, so
/// the next chunk computes while the last one's completion is in flight and
/// completions batch up; this bounds what waits when Redis is slow or full.
const HOLD_EXTRA: usize = MAX_BATCH;

/// Chunks computing faster than this on average are worth prefetching: an
/// agent then claims, beyond its free slots, about this much work per slot
/// (at least `concurrency` chunks, at most HOLD_EXTRA), so a read brings
/// many and completions batch. Longer chunks are claimed only into free
/// slots, so none waits on a busy agent while another is idle.
const PREFETCH_BELOW: Duration = Duration::from_millis(10);

impl Worker {
    pub(super) fn streams(&self) -> Vec<String> {
        self.registry
            .names()
            .iter()
            .map(|k| self.keys.tasks(k))
            .collect()
    }

    pub(super) async fn ensure_groups(&self) -> RedisResult<()> {
        let mut c = self.conn.clone();
        for s in self.streams() {
            redis_conn::ensure_group(&mut c, &s).await?;
        }
        Ok(())
    }

    /// Claim and compute until `stop` is cancelled; chunks already claimed are
    /// handed to `tracker` and keep running after this returns.
    pub async fn claim_loop(self: Arc<Self>, stop: CancellationToken, tracker: TaskTracker) {
        let slots = Arc::new(Semaphore::new(self.concurrency as usize));
        // Chunks held from claim to completion: computing, waiting for a
        // slot (prefetched) or waiting for their completion script.
        let holds = Arc::new(Semaphore::new(2 * self.concurrency as usize + HOLD_EXTRA));
        // Entries claimed and waiting for a free slot (see PREFETCH_BELOW).
        let waiting = Arc::new(std::sync::atomic::AtomicUsize::new(0));
        let streams = self.streams();
        let mut blocking: Option<MultiplexedConnection> = None;
        let mut groups_ready = false;
        let mut backoff = redis_backoff();
        while !stop.is_cancelled() {
            // A hold, then a slot, in that order everywhere (entries waiting
            // for a slot already have their hold), so neither waits forever.
            let first_hold = tokio::select! {
                p = holds.clone().acquire_owned() => match p { Ok(p) => p, Err(_) => return },
                _ = stop.cancelled() => return,
            };
            // Claim only what we can start now: chunks held but not computing
            // would wait here instead of on an idle agent.
            let first = tokio::select! {
                p = slots.clone().acquire_owned() => match p { Ok(p) => p, Err(_) => return },
                _ = stop.cancelled() => return,
            };
            let mut permits = vec![first];
            while let Ok(p) = slots.clone().try_acquire_owned() {
                permits.push(p);
            }
            if !groups_ready {
                match self.ensure_groups().await {
                    Ok(()) => groups_ready = true,
                    Err(e) => {
                        tracing::warn!(error = %e, "cannot create consumer groups; retrying");
                        drop(permits);
                        backoff.sleep_or(&stop).await;
                        continue;
                    }
                }
            }
            if blocking.is_none() {
                match redis_conn::blocking(&self.client, READ_BLOCK).await {
                    Ok(c) => blocking = Some(c),
                    Err(e) => {
                        tracing::warn!(error = %e, "redis unreachable; retrying");
                        drop(permits);
                        backoff.sleep_or(&stop).await;
                        continue;
                    }
                }
            }
            let Some(conn) = blocking.as_mut() else {
                continue;
            };
            let avg = self.compute_avg_us.load(Ordering::Relaxed);
            let below = PREFETCH_BELOW.as_micros() as u64;
            let prefetch = if avg < below {
                // About PREFETCH_BELOW of work queued per slot: at least
                // `concurrency` chunks, at most HOLD_EXTRA.
                let c = self.concurrency as u64;
                let depth = (c * below / avg.max(1)).clamp(c, HOLD_EXTRA as u64) as usize;
                depth.saturating_sub(waiting.load(Ordering::Relaxed))
            } else {
                0
            };
            let want = permits.len() + prefetch;
            let mut hold = first_hold;
            if want > 1 {
                let more = (want - 1).min(holds.available_permits()) as u32;
                if let Ok(p) = holds.clone().try_acquire_many_owned(more) {
                    hold.merge(p);
                }
            }
            // While claimed entries wait for a slot, never block: a blocked
            // read would keep the slots it holds from them until it returns.
            let local_work = waiting.load(Ordering::Relaxed) > 0;
            let mut cmd = redis::cmd("XREADGROUP");
            cmd.arg("GROUP")
                .arg(GROUP)
                .arg(&self.agent_id)
                .arg("COUNT")
                .arg(hold.num_permits());
            if !local_work {
                cmd.arg("BLOCK").arg(READ_BLOCK.as_millis() as u64);
            }
            cmd.arg("STREAMS").arg(&streams);
            for _ in &streams {
                cmd.arg(">");
            }
            // Not raced against `stop`: dropping a read in flight could lose
            // entries Redis already delivered to us. A read lasts ≤ READ_BLOCK.
            let reply: RedisResult<Option<StreamReadReply>> = cmd.query_async(conn).await;
            let reply = match reply {
                Ok(r) => {
                    backoff.reset();
                    r
                }
                Err(e) => {
                    if e.code() == Some("NOGROUP") {
                        // Redis lost its data (restart without AOF) or a stream was deleted.
                        groups_ready = false;
                    } else if is_transient(&e) {
                        blocking = None;
                    }
                    tracing::warn!(error = %e, "XREADGROUP failed; retrying");
                    drop(permits);
                    backoff.sleep_or(&stop).await;
                    continue;
                }
            };
            let keys = reply.map(|r| r.keys).unwrap_or_default();
            if local_work && keys.iter().all(|k| k.ids.is_empty()) {
                // Nothing new: hand the slots to the waiting entries first.
                drop(permits);
                drop(hold);
                tokio::task::yield_now().await;
                continue;
            }
            for key in keys {
                for entry in key.ids {
                    // Prefetched entries, and extras from several kernels'
                    // streams (COUNT applies per stream), wait for a slot.
                    let permit = permits.pop();
                    // Each entry carries one hold (COUNT was the holds taken;
                    // extras from other kernels' streams wait for one).
                    let held = hold.split(1);
                    let holds = holds.clone();
                    let slots = slots.clone();
                    let w = self.clone();
                    let stream = key.key.clone();
                    let waiting = waiting.clone();
                    if permit.is_none() {
                        waiting.fetch_add(1, Ordering::Relaxed);
                    }
                    tracker.spawn(async move {
                        let _held = match held {
                            Some(h) => h,
                            None => match holds.acquire_owned().await {
                                Ok(h) => h,
                                Err(_) => return,
                            },
                        };
                        let permit = match permit {
                            Some(p) => p,
                            None => {
                                let p = slots.acquire_owned().await;
                                waiting.fetch_sub(1, Ordering::Relaxed);
                                match p {
                                    Ok(p) => p,
                                    Err(_) => return,
                                }
                            }
                        };
                        w.process(stream, entry.id, entry.map, permit).await;
                    });
                }
            }
        }
    }
}
