//! The agent's work side: one [`Worker`], its methods split by concern:
//! - `claim`: the claim loop (XREADGROUP into free slots, prefetch for short chunks).
//! - `chunk`: one entry's path — decode, claim gate, compute, check, settle.
//! - `completion`: batched completion scripts and failed attempts.
//! - `runs`: what the agent believes of runs, and the claim gate that asks Redis.
//! - `sweeps`: runs' named spaces and outputs (read once).
//! - `lease`: lease renewal, chunks reclaimed from under it, the sweep.
//!
//! Redis trouble never loses a chunk: a completion is retried until Redis
//! answers (it is idempotent: first result wins, XACK of an acked entry is a
//! no-op), and an entry this agent cannot finish stays pending in its name,
//! for the server to reclaim. This file holds the shared state and
//! [`Worker::retry_redis`] (retry until Redis answers); its imports are the
//! shared prelude of the files above (`use super::*`).

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use redis::{RedisResult, Value};
use tokio::sync::{oneshot, Semaphore};
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use ttg_proto::keys::{Keys, Layout, GROUP};
use ttg_proto::records::{event_body, TaskEntry, TASK_FIELD};
use ttg_proto::redis_conn::{self, is_transient};
use ttg_proto::redis_target::{Conn, Target};
use ttg_proto::runtime::Backoff;
use ttg_proto::scripts::{ChunkResult, Completion, FailedAttempt, Failure, Scripts};
use ttg_proto::v1::{event, ChunkCompleted, ChunkFailed, HeldChunk, RunState, Task};

use crate::kernels::{ChunkInput, KernelError, Registry};

use completion::{Batch, MAX_BATCH};

mod chunk;
mod claim;
mod completion;
mod lease;
mod runs;
mod sweeps;

/// Back-off for Redis retries: 50 ms doubling to 2 s.
fn redis_backoff() -> Backoff {
    Backoff::new(Duration::from_millis(50), Duration::from_secs(2))
}

/// A delivery this agent holds.
struct HeldEntry {
    stream: String,
    info: HeldChunk,
    /// Aborts this chunk alone (it was reclaimed from under us).
    abort: CancellationToken,
    /// Computed: its completion may already have acked it in Redis, so an
    /// entry XCLAIM no longer returns is no sign it was taken from us.
    computed: bool,
}

/// The agent's work side.
pub struct Worker {
    agent_id: String,
    /// This process's secret for its Hello (see `Hello.instance`): the same
    /// on every reconnect, so the server lets only this process take its
    /// agent id back.
    instance: String,
    /// The installation's slot groups, as Redis says (see
    /// [`Worker::settle_layout`]); one until it has.
    layout: std::sync::RwLock<Arc<Layout>>,
    /// The home group's keys: the installation's prefix in every layout,
    /// so they never change (the groups derive from it).
    home: Keys,
    target: Target,
    conn: Conn,
    /// --redis-wait-replicas and its timeout, when set.
    wait: Option<(u32, Duration)>,
    /// The connection completions go through: `conn`, or with
    /// --redis-wait-replicas one of their own, so the WAIT after each
    /// (which covers what its connection wrote) holds no other command.
    completions: Conn,
    scripts: Scripts,
    registry: Registry,
    concurrency: u32,
    held: Mutex<HashMap<String, HeldEntry>>,
    /// Lease from the server's Welcome (ms); the keeper refreshes every half.
    lease_ms: AtomicU64,
    /// Chunks reclaimed from under this agent (it looked dead, then woke).
    lost: AtomicU64,
    /// Claim-to-ack latencies (ms) since the last heartbeat, for the server's
    /// fleet-wide histogram.
    ack_latencies: Mutex<Vec<u32>>,
    runs: Mutex<HashMap<String, runs::RunLocal>>,
    /// Named spaces and outputs of runs.
    sweeps: sweeps::Sweeps,
    completed: AtomicU64,
    /// Completions waiting to be sent, and whether a task is sending them.
    batch: Mutex<Batch>,
    /// Moving average of compute time per chunk, µs (u64::MAX: none yet).
    compute_avg_us: AtomicU64,
    /// When the last computation ended, µs since `epoch`: an average is
    /// only trusted while computations keep ending (see `claim.rs`).
    computed_at_us: AtomicU64,
    /// Origin of `computed_at_us`.
    epoch: Instant,
    /// Hard stop: abandons in-flight chunks (left pending, to be reclaimed).
    abort: CancellationToken,
}

fn bulk(v: Option<&Value>) -> Option<&[u8]> {
    match v {
        Some(Value::BulkString(b)) => Some(b.as_slice()),
        _ => None,
    }
}

impl Worker {
    /// A worker for `agent_id`; connects to Redis lazily.
    pub fn new(
        agent_id: String,
        target: Target,
        prefix: &str,
        registry: Registry,
        concurrency: u32,
    ) -> RedisResult<Self> {
        let conn = target.shared()?;
        Ok(Self {
            agent_id,
            instance: format!("{:032x}", rand::random::<u128>()),
            layout: std::sync::RwLock::new(Arc::new(Layout::new(&target.prefix(prefix), 1))),
            home: Keys::new(target.prefix(prefix)),
            target,
            completions: conn.clone(),
            conn,
            wait: None,
            scripts: Scripts::new(),
            registry,
            concurrency,
            held: Mutex::new(HashMap::new()),
            lease_ms: AtomicU64::new(3_000),
            lost: AtomicU64::new(0),
            ack_latencies: Mutex::new(Vec::new()),
            runs: Mutex::new(HashMap::new()),
            sweeps: sweeps::Sweeps::default(),
            completed: AtomicU64::new(0),
            batch: Mutex::new(Batch::default()),
            compute_avg_us: AtomicU64::new(u64::MAX),
            computed_at_us: AtomicU64::new(0),
            epoch: Instant::now(),
            abort: CancellationToken::new(),
        })
    }

    /// The current layout.
    pub(super) fn layout(&self) -> Arc<Layout> {
        self.layout
            .read()
            .map(|l| l.clone())
            .unwrap_or_else(|e| e.into_inner().clone())
    }

    /// The home group's keys (the agent registry, the layout).
    pub(super) fn home(&self) -> &Keys {
        &self.home
    }

    /// The keys of `run_id`'s group (home for an id naming a group the
    /// layout does not have: its keys are then found empty, and the run
    /// unknown).
    pub(super) fn keys_of(&self, run_id: &str) -> Keys {
        let l = self.layout();
        l.of_run(run_id).unwrap_or(l.home()).clone()
    }

    /// The keys of the group holding `stream`.
    pub(super) fn keys_of_stream(&self, stream: &str) -> Keys {
        self.layout().of_key(stream).clone()
    }

    /// Read the installation's slot groups from Redis (the home group's
    /// `layout` key, which the first server sets; none means one) and use
    /// them. Returns whether they changed.
    pub(super) async fn settle_layout(&self) -> RedisResult<bool> {
        let mut c = self.conn.clone();
        let stored: Option<u32> = redis::cmd("GET")
            .arg(self.home().layout())
            .query_async(&mut c)
            .await?;
        let groups = stored.unwrap_or(1).clamp(1, ttg_proto::keys::MAX_GROUPS);
        if groups as usize == self.layout().len() {
            return Ok(false);
        }
        tracing::info!(groups, "runs are spread over slot groups");
        if let Ok(mut l) = self.layout.write() {
            *l = Arc::new(Layout::new(self.home.prefix(), groups));
        }
        Ok(true)
    }

    /// Agent id (its consumer name).
    pub fn agent_id(&self) -> &str {
        &self.agent_id
    }

    /// This process's session secret (never logged).
    pub fn instance(&self) -> &str {
        &self.instance
    }

    /// Kernels offered.
    pub fn kernel_names(&self) -> Vec<String> {
        self.registry.names()
    }

    /// Declarations of the kernels offered.
    pub fn kernel_decls(&self) -> Vec<ttg_proto::v1::KernelDecl> {
        self.registry.decls()
    }

    /// Wait for `replicas` replicas (at most `timeout`) after each
    /// completion, on a connection of the completions' own; 0 does not wait.
    pub fn with_wait_replicas(mut self, replicas: u32, timeout: Duration) -> RedisResult<Self> {
        if replicas > 0 {
            self.wait = Some((replicas, timeout));
            self.completions = self.target.shared()?;
        }
        Ok(self)
    }

    /// Where Redis is (passwords redacted), for logs.
    pub fn redis(&self) -> String {
        self.target.describe()
    }

    /// Chunks computed at once.
    pub fn concurrency(&self) -> u32 {
        self.concurrency
    }

    /// Chunks held right now, for heartbeats.
    pub fn held(&self) -> Vec<HeldChunk> {
        self.held
            .lock()
            .map(|h| h.values().map(|h| h.info.clone()).collect())
            .unwrap_or_default()
    }

    /// Set the lease the server announced.
    pub fn set_lease(&self, lease: Duration) {
        self.lease_ms
            .store(lease.as_millis().max(100) as u64, Ordering::Relaxed);
    }

    pub(super) fn lease(&self) -> Duration {
        Duration::from_millis(self.lease_ms.load(Ordering::Relaxed))
    }

    /// Take the claim-to-ack latencies recorded since the last call.
    pub fn take_ack_latencies(&self) -> Vec<u32> {
        self.ack_latencies
            .lock()
            .map(|mut v| std::mem::take(&mut *v))
            .unwrap_or_default()
    }

    /// Chunks reclaimed from under this agent since start.
    pub fn lost_total(&self) -> u64 {
        self.lost.load(Ordering::Relaxed)
    }

    /// Chunks completed (counted or duplicate) since start.
    pub fn completed_total(&self) -> u64 {
        self.completed.load(Ordering::Relaxed)
    }

    /// Release what kernels keep (worker programs); call when nothing computes.
    pub async fn shutdown_kernels(&self) {
        self.registry.shutdown().await;
    }

    /// Abandon every in-flight chunk now (after a drain timeout).
    pub fn abort(&self) {
        self.abort.cancel();
    }

    /// Run `op` until Redis answers, backing off on transient errors. Gives up
    /// (None) on a non-transient error or once the agent aborts.
    pub(super) async fn retry_redis<T, F, Fut>(&self, what: &str, mut op: F) -> Option<T>
    where
        F: FnMut(Conn) -> Fut,
        Fut: std::future::Future<Output = RedisResult<T>>,
    {
        let mut backoff = redis_backoff();
        loop {
            match op(self.conn.clone()).await {
                Ok(v) => return Some(v),
                Err(e) if is_transient(&e) => {
                    tracing::warn!(agent = %self.agent_id, error = %e, "{what}: redis unavailable; retrying");
                }
                // Nothing was written: wait for room (runs expiring or
                // deleted, maxmemory raised) rather than drop a result.
                Err(e) if redis_conn::is_oom(&e) => {
                    tracing::warn!(agent = %self.agent_id, error = %e, "{what}: redis is out of memory (maxmemory); retrying");
                }
                Err(e) => {
                    tracing::error!(agent = %self.agent_id, error = %e, "{what} failed");
                    return None;
                }
            }
            tokio::select! {
                _ = tokio::time::sleep(backoff.next_delay()) => {}
                _ = self.abort.cancelled() => return None,
            }
        }
    }
}
