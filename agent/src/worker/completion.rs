//! Settling a computed chunk: completions batched into one script call per run (first result wins, one atomic step), and failed attempts (re-queue, dead letter, fail-fast).

use super::*;

/// Most chunks in one completion script call.
pub(super) const MAX_BATCH: usize = 64;

/// A completion call stops taking chunks once it carries this many bytes of
/// packed values (big chunks go a few at a time).
const MAX_BATCH_BYTES: usize = 1 << 20;

/// A computed chunk waiting for its completion script.
pub(super) struct PendingCompletion {
    stream: String,
    run_id: String,
    chunk: ChunkResult,
    done: oneshot::Sender<Option<Completion>>,
}

/// Completions are sent in batches: whichever chunk finds nobody sending
/// becomes the sender and sends everything queued, again and again until the
/// queue is empty; chunks finishing meanwhile just queue. Under load that
/// makes one script call (one round trip, one read of the run's counters)
/// for several chunks; alone, a chunk is sent at once.
#[derive(Default)]
pub(super) struct Batch {
    queue: Vec<PendingCompletion>,
    sending: bool,
}

impl Worker {
    pub(super) async fn complete(
        &self,
        stream: &str,
        entry_id: &str,
        task: &Task,
        attempt: u32,
        (values, outputs): (&[f64], usize),
        took: Duration,
    ) {
        let run_id = &task.run_id;
        let compute_ms = took.as_millis().min(u64::MAX as u128) as u64;
        let body = |sum| {
            event_body(
                run_id,
                event::Kind::ChunkCompleted(ChunkCompleted {
                    chunk_index: task.chunk_index,
                    start: task.start,
                    end: task.end,
                    agent_id: self.agent_id.clone(),
                    attempt,
                    sum,
                    compute_ms,
                }),
            )
        };
        let (tx, rx) = oneshot::channel();
        let lead = {
            let Ok(mut b) = self.batch.lock() else { return };
            b.queue.push(PendingCompletion {
                stream: stream.to_string(),
                run_id: run_id.clone(),
                chunk: ChunkResult::build(
                    entry_id,
                    task.chunk_index,
                    task.start,
                    outputs,
                    values,
                    body,
                )
                .with_compute_us(took.as_micros().min(u64::MAX as u128) as u64),
                done: tx,
            });
            !std::mem::replace(&mut b.sending, true)
        };
        if lead {
            self.send_completions().await;
        }
        let Ok(Some(outcome)) = rx.await else { return };
        self.completed.fetch_add(1, Ordering::Relaxed);
        match outcome {
            Completion::Counted(s) => {
                tracing::debug!(run = %run_id, chunk = task.chunk_index, agent = %self.agent_id, attempt, compute_ms, "chunk completed");
                if s != RunState::Running {
                    tracing::info!(run = %run_id, agent = %self.agent_id, state = s.as_str_name(), "run finished");
                    self.mark_run(run_id, s);
                }
            }
            Completion::Duplicate => {
                metrics::counter!("ttg_agent_duplicates_total").increment(1);
                tracing::info!(run = %run_id, chunk = task.chunk_index, agent = %self.agent_id, "duplicate result ignored (first result wins)");
            }
            Completion::Inactive(s) => self.mark_run(run_id, s),
            Completion::UnknownRun => self.mark_run(run_id, RunState::Unspecified),
            Completion::NotHeld => {
                // Reclaimed from under us (we looked dead) before the result
                // landed: the re-queued copy is computed elsewhere.
                self.lost.fetch_add(1, Ordering::Relaxed);
                metrics::counter!("ttg_agent_chunks_lost_total").increment(1);
                tracing::warn!(run = %run_id, chunk = task.chunk_index, agent = %self.agent_id,
                    "result not stored: the chunk was reclaimed from this agent");
            }
        }
    }

    /// Send queued completions until the queue is empty (see [`Batch`]): one
    /// script call per run and stream in each round. Each chunk's outcome goes
    /// back to its waiting task; None if Redis refused for good or the agent
    /// aborted (the entry stays pending in our name, to be reclaimed).
    pub(super) async fn send_completions(&self) {
        /// Lets another chunk take over sending if this future is dropped.
        struct Release<'a>(&'a Mutex<Batch>);
        impl Drop for Release<'_> {
            fn drop(&mut self) {
                if let Ok(mut b) = self.0.lock() {
                    b.sending = false;
                }
            }
        }
        let release = Release(&self.batch);
        loop {
            let mut round = {
                let Ok(mut b) = self.batch.lock() else { return };
                if b.queue.is_empty() {
                    b.sending = false;
                    std::mem::forget(release);
                    return;
                }
                // At most MAX_BATCH chunks and MAX_BATCH_BYTES of values (at
                // least one chunk): one script call blocks Redis while it runs.
                let mut n = 0;
                let mut bytes = 0;
                while n < b.queue.len().min(MAX_BATCH) && (n == 0 || bytes < MAX_BATCH_BYTES) {
                    bytes += b.queue[n].chunk.packed.len();
                    n += 1;
                }
                b.queue.drain(..n).collect::<Vec<_>>()
            };
            while !round.is_empty() {
                let (run_id, stream) = (round[0].run_id.clone(), round[0].stream.clone());
                let (mut group, rest): (Vec<_>, Vec<_>) = round
                    .into_iter()
                    .partition(|p| p.run_id == run_id && p.stream == stream);
                round = rest;
                // In entry id order: the script checks that the batch is
                // ours with one XPENDING over its id range (complete.lua).
                group.sort_by_key(|p| ttg_proto::records::parse_stream_id(&p.chunk.entry_id));
                let chunks: Vec<&ChunkResult> = group.iter().map(|p| &p.chunk).collect();
                let keys = &self.keys_of(&run_id);
                let reply: Option<(Vec<i64>, String)> = self
                    .retry_redis("complete", |_| {
                        let (run_id, stream, chunks) = (&run_id, &stream, &chunks);
                        let mut c = self.completions.clone();
                        async move {
                            self.scripts
                                .complete(&mut c, keys, run_id, stream, &self.agent_id, chunks)
                                .await
                        }
                    })
                    .await;
                if reply.is_some() {
                    self.wait_replicas(&run_id).await;
                }
                for (i, p) in group.into_iter().enumerate() {
                    let outcome = reply.as_ref().map(|(codes, state)| {
                        Completion::from_reply(codes.get(i).copied().unwrap_or(-1), state)
                    });
                    let _ = p.done.send(outcome);
                }
            }
        }
    }

    /// With --redis-wait-replicas: wait (Redis WAIT, on the connection the
    /// completion went through, at the node holding the run) until that many
    /// replicas hold what this agent wrote. Short or failed waits are
    /// counted and logged, never retried: the completion stands on the
    /// primary either way, and a failover before it reached a replica costs
    /// a recomputation (docs/architecture.md, "Redis Cluster").
    async fn wait_replicas(&self, run_id: &str) {
        let Some((want, timeout)) = self.wait else {
            return;
        };
        let mut c = self.completions.clone();
        let key = self.keys_of(run_id).run(run_id);
        match c.wait_replicas(&key, want, timeout).await {
            Ok(n) if n >= want => {}
            Ok(n) => {
                metrics::counter!("ttg_agent_completions_unreplicated_total").increment(1);
                tracing::warn!(
                    replicas = n,
                    want,
                    "completion not on enough replicas within --redis-wait-timeout"
                );
            }
            Err(e) => {
                metrics::counter!("ttg_agent_completions_unreplicated_total").increment(1);
                tracing::warn!(error = %e, "WAIT after a completion failed");
            }
        }
    }

    /// Record a failed attempt with the `fail` script: re-queued, dead-lettered,
    /// or the run stopped by fail-fast.
    pub(super) async fn fail(
        &self,
        stream: &str,
        entry_id: &str,
        task: &Task,
        attempt: u32,
        error: &str,
        traceparent: &[u8],
    ) {
        let run_id = &task.run_id;
        let error = last_chars(error, 2_000);
        // What fail-fast compares: the first line, at most 200 characters.
        let first_line: String = error
            .lines()
            .next()
            .unwrap_or("")
            .chars()
            .take(200)
            .collect();
        let body = |dead: bool| {
            event_body(
                run_id,
                event::Kind::ChunkFailed(ChunkFailed {
                    chunk_index: task.chunk_index,
                    agent_id: self.agent_id.clone(),
                    attempt,
                    error: error.clone(),
                    dead,
                }),
            )
        };
        let (retry_body, dead_body) = (body(false), body(true));
        let failed = FailedAttempt {
            entry_id,
            task,
            attempt,
            error: &error,
            first_line: &first_line,
            traceparent,
            retry_body: &retry_body,
            dead_body: &dead_body,
        };
        let reply: Option<(i64, String)> = self
            .retry_redis("fail", |mut c| {
                let inv = self.scripts.fail(
                    &self.keys_of(run_id),
                    run_id,
                    stream,
                    &self.agent_id,
                    &failed,
                );
                async move { inv.invoke_async(&mut c).await }
            })
            .await;
        if let Some((code, state)) = reply {
            let f = Failure::from_reply(code, &state);
            tracing::warn!(run = %run_id, chunk = task.chunk_index, agent = %self.agent_id, attempt, error = %error, outcome = ?f, "chunk attempt failed");
            self.believe_failure(run_id, f, &state, &first_line);
        }
    }

    /// What a failure's outcome says about its run.
    fn believe_failure(&self, run_id: &str, f: Failure, state: &str, first_line: &str) {
        match f {
            Failure::DeadLettered(s) => self.mark_run(run_id, s),
            // The run ended meanwhile: believe it, so its other queued
            // chunks go through the claim gate instead of computing.
            Failure::Inactive => self.mark_run(run_id, ttg_proto::records::parse_state(state)),
            Failure::StoppedByFailFast => {
                tracing::error!(run = %run_id, agent = %self.agent_id, error = %first_line,
                    "run stopped by fail-fast: its chunks keep failing with the same error");
                self.mark_run(run_id, RunState::Failed)
            }
            _ => {}
        }
    }
}

/// The last `n` characters of `s`: what a failing kernel may write into
/// Redis and events is bounded (the end of an error says the most).
fn last_chars(s: &str, n: usize) -> String {
    let skip = s.chars().count().saturating_sub(n);
    s.chars().skip(skip).collect()
}
