//! What an agent knows of the runs it has seen, and the claim gate.
//!
//! The cache only ever lets work through without asking Redis: a run it
//! believes active is computed at once, and if the belief was stale the
//! completion script (which reads the run's state itself) stores nothing. A
//! run it believes ended — or has not seen — is asked about in the
//! `claim_gate` script, which drops the entry only in the same atomic step
//! that finds the run ended. So a retried (reopened) run's chunks are never
//! dropped on a belief formed before the retry.

use tokio_util::sync::CancellationToken;
use ttg_proto::records::{event_body, parse_state};
use ttg_proto::v1::{event, RunStarted, RunState, Task};

use super::Worker;

/// Runs remembered before the ended ones are forgotten.
const RUNS_KEPT: usize = 4_096;

/// What this agent believes of a run.
pub(super) struct RunLocal {
    state: RunState,
    /// Cancelled when the run is cancelled: aborts its in-flight chunks.
    cancel: CancellationToken,
}

fn is_active(s: RunState) -> bool {
    matches!(s, RunState::Queued | RunState::Running)
}

/// What the claim gate decided for one entry.
enum Gate {
    /// The run is active: compute.
    Active(RunState),
    /// The run has ended or is unknown: Redis acked and deleted the entry.
    Dropped(RunState),
    /// The entry is no longer pending for this agent.
    NotHeld,
}

impl Worker {
    /// The server says `run_id` was cancelled: abort its chunks at once.
    /// Further chunks of it go through the claim gate, which drops them
    /// only if Redis agrees.
    pub fn cancel_run(&self, run_id: &str) {
        if let Ok(mut runs) = self.runs.lock() {
            let r = runs.entry(run_id.to_string()).or_insert_with(|| RunLocal {
                state: RunState::Cancelled,
                cancel: self.abort.child_token(),
            });
            r.state = RunState::Cancelled;
            r.cancel.cancel();
        }
        self.registry.run_ended(run_id);
        tracing::info!(run = %run_id, agent = %self.agent_id, "run cancelled: aborting its chunks");
    }

    /// The run's cancel token if `entry_id` is work to compute; None if it
    /// is not (dropped by Redis because the run ended, or no longer ours).
    pub(super) async fn run_gate(
        &self,
        run_id: &str,
        stream: &str,
        entry_id: &str,
    ) -> Option<CancellationToken> {
        if let Some(token) = self.active_token(run_id) {
            return Some(token);
        }
        match self.ask_gate(run_id, stream, entry_id).await? {
            Gate::Active(state) => Some(self.believe_active(run_id, state)),
            Gate::Dropped(state) => {
                tracing::debug!(run = %run_id, entry = %entry_id, agent = %self.agent_id,
                    state = state.as_str_name(), "run not active in Redis: entry dropped");
                self.mark_run(run_id, state);
                None
            }
            Gate::NotHeld => {
                tracing::debug!(run = %run_id, entry = %entry_id, agent = %self.agent_id,
                    "entry reclaimed from this agent before it started");
                None
            }
        }
    }

    /// A chunk's computation was aborted because its run was cancelled: drop
    /// the entry if Redis agrees the run has ended. If it does not (a cancel
    /// this agent believed, but Redis never made), hand the chunk back to
    /// the queue as a failed attempt rather than sit on it.
    pub(super) async fn settle_cancelled(
        &self,
        stream: &str,
        entry_id: &str,
        task: &Task,
        traceparent: &[u8],
    ) {
        if let Some(Gate::Active(state)) = self.ask_gate(&task.run_id, stream, entry_id).await {
            tracing::warn!(run = %task.run_id, chunk = task.chunk_index, agent = %self.agent_id,
                "chunk aborted for a cancel Redis does not know of: re-queued");
            self.believe_active(&task.run_id, state);
            let keys = self.keys_of_stream(stream);
            let tp = String::from_utf8_lossy(traceparent).into_owned();
            self.retry_redis("re-queue", |mut c| {
                let keys = keys.clone();
                let tp = tp.clone();
                async move {
                    ttg_proto::reclaim::reclaim_entry(
                        &mut c,
                        &keys,
                        &self.scripts,
                        stream,
                        entry_id,
                        &self.agent_id,
                        &self.agent_id,
                        ttg_proto::reclaim::Cause::Sweep,
                        std::time::Duration::ZERO,
                        &tp,
                    )
                    .await
                }
            })
            .await;
        }
    }

    /// Ask Redis about a run in the claim gate script (see
    /// `proto/lua/claim_gate.lua`). None if Redis could not be asked (the
    /// entry then stays pending in our name, for a reclaim).
    async fn ask_gate(&self, run_id: &str, stream: &str, entry_id: &str) -> Option<Gate> {
        let body = event_body(
            run_id,
            event::Kind::RunStarted(RunStarted {
                agent_id: self.agent_id.clone(),
            }),
        );
        let (code, state): (i64, String) = self
            .retry_redis("claim gate", |mut c| {
                let inv = self.scripts.claim_gate(
                    &self.keys_of_stream(stream),
                    run_id,
                    stream,
                    entry_id,
                    &self.agent_id,
                    &body,
                );
                async move { inv.invoke_async(&mut c).await }
            })
            .await?;
        let state = if state.is_empty() {
            RunState::Unspecified
        } else {
            parse_state(&state)
        };
        Some(match code {
            0 => Gate::Active(state),
            1 => Gate::Dropped(state),
            _ => Gate::NotHeld,
        })
    }

    /// The cancel token of a run believed active.
    fn active_token(&self, run_id: &str) -> Option<CancellationToken> {
        let runs = self.runs.lock().ok()?;
        runs.get(run_id)
            .filter(|r| is_active(r.state))
            .map(|r| r.cancel.clone())
    }

    /// Believe what Redis just said: the run is active. A token cancelled by
    /// an earlier belief is replaced, so the reopened run's chunks run.
    fn believe_active(&self, run_id: &str, state: RunState) -> CancellationToken {
        let fresh = || RunLocal {
            state,
            cancel: self.abort.child_token(),
        };
        let Ok(mut runs) = self.runs.lock() else {
            return self.abort.child_token();
        };
        if runs.len() > RUNS_KEPT {
            runs.retain(|_, r| is_active(r.state));
        }
        let r = runs.entry(run_id.to_string()).or_insert_with(fresh);
        if r.cancel.is_cancelled() {
            *r = fresh();
        }
        r.state = state;
        r.cancel.clone()
    }

    /// Remember a run's state as a completion, a failure or the claim gate
    /// reported it; an ended run's worker programs are stopped.
    pub(super) fn mark_run(&self, run_id: &str, state: RunState) {
        if let Ok(mut runs) = self.runs.lock() {
            if let Some(r) = runs.get_mut(run_id) {
                r.state = state;
            }
        }
        if !is_active(state) {
            self.registry.run_ended(run_id);
        }
    }

    /// Until `stop`: every `every`, ask Redis the state of the runs the
    /// kernels keep something for (worker programs) and tell them which
    /// ended — finished, or gone (deleted, expired). One pipelined HGET per
    /// such run (at most one per slot); only ever stops programs, so a
    /// stale answer costs a restart, never a chunk.
    pub async fn watch_kept_runs(
        self: std::sync::Arc<Self>,
        every: std::time::Duration,
        stop: CancellationToken,
    ) {
        loop {
            tokio::select! {
                _ = stop.cancelled() => return,
                _ = tokio::time::sleep(every) => {}
            }
            let runs = self.registry.runs_kept();
            if runs.is_empty() {
                continue;
            }
            // One read per run: on a cluster, runs of several slot
            // groups cannot share a pipeline.
            let mut conn = self.conn.clone();
            let mut states = Vec::with_capacity(runs.len());
            for r in &runs {
                let s: redis::RedisResult<Option<String>> = redis::cmd("HGET")
                    .arg(self.keys_of(r).run(r))
                    .arg("state")
                    .query_async(&mut conn)
                    .await;
                match s {
                    Ok(s) => states.push(s),
                    Err(_) => break,
                }
            }
            if states.len() < runs.len() {
                continue;
            }
            for (run, state) in runs.iter().zip(states) {
                let state = state
                    .as_deref()
                    .map(parse_state)
                    .unwrap_or(RunState::Unspecified);
                if !is_active(state) {
                    self.mark_run(run, state);
                }
            }
        }
    }

    /// Whether this agent believes `run_id` was cancelled.
    pub(super) fn run_cancelled(&self, run_id: &str) -> bool {
        self.runs
            .lock()
            .ok()
            .and_then(|r| r.get(run_id).map(|r| r.state == RunState::Cancelled))
            .unwrap_or(false)
    }
}
