//! The claim loop: read tasks with XREADGROUP as this agent's consumer, compute
//! them with `concurrency` chunks in flight, and complete each with ONE atomic
//! script (result + counters + event + ack). Redis trouble never loses a
//! chunk: a completion is retried until Redis answers (it is idempotent: first
//! result wins, XACK of an acked entry is a no-op), and an entry this agent
//! cannot finish stays pending in its name, for the server to reclaim.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use redis::aio::{ConnectionManager, MultiplexedConnection};
use redis::streams::StreamReadReply;
use redis::{RedisResult, Value};
use tokio::sync::{oneshot, Semaphore};
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use ttg_proto::keys::{Keys, GROUP};
use ttg_proto::records::{event_body, TaskEntry, TASK_FIELD};
use ttg_proto::redis_conn::{self, is_transient};
use ttg_proto::scripts::{ChunkResult, Completion, FailedAttempt, Failure, Scripts};
use ttg_proto::v1::{event, ChunkCompleted, ChunkFailed, HeldChunk, RunState, Task};

use crate::kernels::{ChunkInput, KernelError, Registry};

mod runs;

/// Longest XREADGROUP BLOCK; also how soon a drain notices it should stop claiming.
const READ_BLOCK: Duration = Duration::from_millis(1_000);
/// Back-off bounds for Redis retries.
const BACKOFF_MIN: Duration = Duration::from_millis(50);
const BACKOFF_MAX: Duration = Duration::from_secs(2);

/// A delivery this agent holds.
struct Held {
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
    keys: Keys,
    client: redis::Client,
    conn: ConnectionManager,
    scripts: Scripts,
    registry: Registry,
    concurrency: u32,
    held: Mutex<HashMap<String, Held>>,
    /// Lease from the server's Welcome (ms); the keeper refreshes every half.
    lease_ms: AtomicU64,
    /// Chunks reclaimed from under this agent (it looked dead, then woke).
    lost: AtomicU64,
    /// Claim-to-ack latencies (ms) since the last heartbeat, for the server's
    /// fleet-wide histogram.
    ack_latencies: Mutex<Vec<u32>>,
    runs: Mutex<HashMap<String, runs::RunLocal>>,
    completed: AtomicU64,
    /// Completions waiting to be sent, and whether a task is sending them.
    batch: Mutex<Batch>,
    /// Moving average of compute time per chunk, µs (u64::MAX: none yet).
    compute_avg_us: AtomicU64,
    /// Hard stop: abandons in-flight chunks (left pending, to be reclaimed).
    abort: CancellationToken,
}

/// A computed chunk waiting for its completion script.
struct PendingCompletion {
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
struct Batch {
    queue: Vec<PendingCompletion>,
    sending: bool,
}

/// Most chunks in one completion script call.
const MAX_BATCH: usize = 64;
/// A completion call stops taking chunks once it carries this many bytes of
/// packed values (big chunks go a few at a time).
const MAX_BATCH_BYTES: usize = 1 << 20;
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

/// Next back-off delay.
fn next_backoff(d: Duration) -> Duration {
    (d * 2).min(BACKOFF_MAX)
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
        redis_url: &str,
        redis_ca: Option<&std::path::Path>,
        prefix: &str,
        registry: Registry,
        concurrency: u32,
    ) -> RedisResult<Self> {
        let client = redis_conn::client(redis_url, redis_ca)?;
        let conn = redis_conn::manager(&client)?;
        Ok(Self {
            agent_id,
            instance: format!("{:032x}", rand::random::<u128>()),
            keys: Keys::new(prefix),
            client,
            conn,
            scripts: Scripts::new(),
            registry,
            concurrency,
            held: Mutex::new(HashMap::new()),
            lease_ms: AtomicU64::new(3_000),
            lost: AtomicU64::new(0),
            ack_latencies: Mutex::new(Vec::new()),
            runs: Mutex::new(HashMap::new()),
            completed: AtomicU64::new(0),
            batch: Mutex::new(Batch::default()),
            compute_avg_us: AtomicU64::new(u64::MAX),
            abort: CancellationToken::new(),
        })
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

    fn lease(&self) -> Duration {
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

    /// Every half lease, until `stop`: renew this agent's lease in Redis
    /// itself (so a server outage does not make it look dead), and reset the
    /// idle time of every entry it holds with `XCLAIM … JUSTID` to itself, so
    /// the sweep never takes a chunk from a live agent however long it
    /// computes. An entry that XCLAIM no longer returns was reclaimed from
    /// under us (we looked dead): its computation is aborted.
    pub async fn keep_lease(self: Arc<Self>, stop: CancellationToken) {
        loop {
            tokio::select! {
                _ = stop.cancelled() => return,
                _ = tokio::time::sleep(self.lease() / 2) => {}
            }
            if let Err(e) = self.refresh_once().await {
                tracing::debug!(agent = %self.agent_id, error = %e, "lease refresh failed");
            }
        }
    }

    async fn refresh_once(&self) -> RedisResult<()> {
        let mut c = self.conn.clone();
        let expiry = ttg_proto::now_ms() + self.lease().as_millis() as i64;
        redis::cmd("ZADD")
            .arg(self.keys.agents())
            .arg(expiry)
            .arg(&self.agent_id)
            .query_async::<()>(&mut c)
            .await?;
        let mut by_stream: HashMap<String, Vec<String>> = HashMap::new();
        if let Ok(held) = self.held.lock() {
            for (id, h) in held.iter() {
                by_stream
                    .entry(h.stream.clone())
                    .or_default()
                    .push(id.clone());
            }
        }
        for (stream, ids) in by_stream {
            let kept: Vec<String> = redis::cmd("XCLAIM")
                .arg(&stream)
                .arg(GROUP)
                .arg(&self.agent_id)
                .arg(0)
                .arg(&ids)
                .arg("JUSTID")
                .query_async(&mut c)
                .await?;
            let Ok(held) = self.held.lock() else { continue };
            for id in ids.iter().filter(|id| !kept.contains(id)) {
                if let Some(h) = held.get(id).filter(|h| !h.computed) {
                    tracing::warn!(run = %h.info.run_id, chunk = h.info.chunk_index, agent = %self.agent_id,
                        "chunk was reclaimed from this agent (it looked dead); abandoning it");
                    self.lost.fetch_add(1, Ordering::Relaxed);
                    metrics::counter!("ttg_agent_chunks_lost_total").increment(1);
                    h.abort.cancel();
                }
            }
        }
        Ok(())
    }

    /// Backstop for when no server notices a death: every two leases, take
    /// entries idle for more than `idle_leases` leases (no live agent lets its
    /// entries idle that long, see [`Worker::keep_lease`]) with XAUTOCLAIM and
    /// reclaim them: re-queue with attempt + 1, or dead-letter.
    pub async fn sweep(self: Arc<Self>, idle_leases: u32, stop: CancellationToken) {
        loop {
            let jitter = Duration::from_millis(rand_jitter(self.lease().as_millis() as u64));
            tokio::select! {
                _ = stop.cancelled() => return,
                _ = tokio::time::sleep(self.lease() * 2 + jitter) => {}
            }
            let min_idle = self.lease() * idle_leases;
            for stream in self.streams() {
                match self.sweep_stream(&stream, min_idle).await {
                    Ok(0) => {}
                    Ok(n) => tracing::warn!(agent = %self.agent_id, stream = %stream, chunks = n,
                        "sweep reclaimed idle chunks of dead agents"),
                    Err(e) => tracing::debug!(agent = %self.agent_id, error = %e, "sweep failed"),
                }
            }
        }
    }

    async fn sweep_stream(&self, stream: &str, min_idle: Duration) -> RedisResult<usize> {
        use redis::streams::{StreamAutoClaimReply, StreamPendingCountReply};
        let mut c = self.conn.clone();
        let idle_ms = min_idle.as_millis() as u64;
        // Who held them, for the events: XAUTOCLAIM makes the sweeper the owner.
        let before: StreamPendingCountReply = redis::cmd("XPENDING")
            .arg(stream)
            .arg(GROUP)
            .arg("IDLE")
            .arg(idle_ms)
            .arg("-")
            .arg("+")
            .arg(100)
            .query_async(&mut c)
            .await?;
        if before.ids.is_empty() {
            return Ok(0);
        }
        let owners: HashMap<String, (String, usize)> = before
            .ids
            .into_iter()
            .map(|p| (p.id, (p.consumer, p.last_delivered_ms)))
            .collect();
        let claimed: StreamAutoClaimReply = redis::cmd("XAUTOCLAIM")
            .arg(stream)
            .arg(GROUP)
            .arg(&self.agent_id)
            .arg(idle_ms)
            .arg("0-0")
            .arg("COUNT")
            .arg(100)
            .arg("JUSTID")
            .query_async(&mut c)
            .await?;
        let mut n = 0;
        for e in claimed.claimed {
            if self
                .held
                .lock()
                .map(|h| h.contains_key(&e.id))
                .unwrap_or(true)
            {
                // Our own, idle only because Redis was away: keep computing it.
                continue;
            }
            let (who, idle) = owners
                .get(&e.id)
                .cloned()
                .unwrap_or_else(|| ("unknown".into(), idle_ms as usize));
            let r = ttg_proto::reclaim::reclaim_entry(
                &mut c,
                &self.keys,
                &self.scripts,
                stream,
                &e.id,
                &self.agent_id,
                &who,
                ttg_proto::reclaim::Cause::Sweep,
                Duration::from_millis(idle as u64),
                "",
            )
            .await?;
            if let Some(r) = r {
                tracing::warn!(run = %r.run_id, chunk = r.chunk_index, agent = %who, attempt = r.attempt,
                    outcome = ?r.outcome, "swept chunk of a dead agent");
                n += 1;
            }
        }
        Ok(n)
    }

    /// Chunks completed (counted or duplicate) since start.
    pub fn completed_total(&self) -> u64 {
        self.completed.load(Ordering::Relaxed)
    }

    /// Abandon every in-flight chunk now (after a drain timeout).
    pub fn abort(&self) {
        self.abort.cancel();
    }

    fn streams(&self) -> Vec<String> {
        self.registry
            .names()
            .iter()
            .map(|k| self.keys.tasks(k))
            .collect()
    }

    async fn ensure_groups(&self) -> RedisResult<()> {
        let mut c = self.conn.clone();
        for s in self.streams() {
            let r: RedisResult<()> = redis::cmd("XGROUP")
                .arg("CREATE")
                .arg(&s)
                .arg(GROUP)
                .arg("0")
                .arg("MKSTREAM")
                .query_async(&mut c)
                .await;
            match r {
                Err(e) if e.code() == Some("BUSYGROUP") => {}
                other => other?,
            }
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
        let mut backoff = BACKOFF_MIN;
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
                        sleep_or_stop(&mut backoff, &stop).await;
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
                        sleep_or_stop(&mut backoff, &stop).await;
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
                    backoff = BACKOFF_MIN;
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
                    sleep_or_stop(&mut backoff, &stop).await;
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

    /// Run `op` until Redis answers, backing off on transient errors. Gives up
    /// (None) on a non-transient error or once the agent aborts.
    async fn persist<T, F, Fut>(&self, what: &str, mut op: F) -> Option<T>
    where
        F: FnMut(ConnectionManager) -> Fut,
        Fut: std::future::Future<Output = RedisResult<T>>,
    {
        let mut backoff = BACKOFF_MIN;
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
                _ = tokio::time::sleep(backoff) => {}
                _ = self.abort.cancelled() => return None,
            }
            backoff = next_backoff(backoff);
        }
    }

    /// Compute one claimed entry and complete it; `slot` is given back as
    /// soon as the computation ends.
    async fn process(
        self: Arc<Self>,
        stream: String,
        entry_id: String,
        fields: HashMap<String, Value>,
        slot: tokio::sync::OwnedSemaphorePermit,
    ) {
        let TaskEntry {
            task,
            attempt,
            traceparent,
        } = match TaskEntry::decode(&fields) {
            Ok(e) => e,
            Err(e) => {
                // Never retried, never a panic: the entry goes to the
                // dead-entries stream with the reason, and the loop moves on.
                let error = e.to_string();
                let raw = bulk(fields.get(TASK_FIELD)).unwrap_or_default();
                tracing::error!(agent = %self.agent_id, stream = %stream, entry = %entry_id, error = %error,
                    "corrupt task entry moved to the dead-entries stream");
                let keys = self.keys.clone();
                self.persist("quarantine", |mut c| {
                    let p = ttg_proto::records::quarantine(&keys, &stream, &entry_id, &error, raw);
                    async move { p.query_async::<()>(&mut c).await }
                })
                .await;
                return;
            }
        };
        let (run_id, chunk) = (task.run_id.clone(), task.chunk_index);
        let tp = String::from_utf8_lossy(&traceparent).into_owned();
        // claim → compute → ack, each a child of the run's `submit` span
        // through the traceparent carried in the task entry.
        let chunk_span = |name: &'static str| {
            let span = tracing::info_span!("chunk", otel.name = name, run_id = %run_id, chunk,
                params.start = task.start, params.end = task.end, attempt, agent_id = %self.agent_id,
                kernel = %task.kernel);
            ttg_proto::telemetry::set_parent(&span, &tp);
            span
        };
        let claimed = Instant::now();

        let claim = chunk_span("claim");
        let gate = self.run_gate(&run_id, &stream, &entry_id);
        let Some(run_cancel) = tracing::Instrument::instrument(gate, claim.clone()).await else {
            return;
        };
        let chunk_abort = run_cancel.child_token();
        let claim_tp = ttg_proto::telemetry::traceparent_of(
            &tracing_opentelemetry::OpenTelemetrySpanExt::context(&claim),
        );
        drop(claim);
        if let Ok(mut h) = self.held.lock() {
            h.insert(
                entry_id.clone(),
                Held {
                    stream: stream.clone(),
                    info: HeldChunk {
                        run_id: run_id.clone(),
                        chunk_index: chunk,
                        entry_id: entry_id.clone(),
                        attempt,
                        traceparent: claim_tp,
                    },
                    abort: chunk_abort.clone(),
                    computed: false,
                },
            );
        }
        metrics::gauge!("ttg_agent_in_flight").increment(1.0);
        let input = ChunkInput {
            run_id: run_id.clone(),
            chunk_index: chunk,
            start: task.start,
            end: task.end,
            args: task.args.clone(),
            attempt,
        };
        let compute = chunk_span("compute");
        let began = Instant::now();
        let outcome = tracing::Instrument::instrument(
            async {
                match self.registry.get(&task.kernel) {
                    Some(k) => k.compute(&input, &chunk_abort).await,
                    None => Err(KernelError::Failed(format!(
                        "agent does not offer kernel {:?}",
                        task.kernel
                    ))),
                }
            },
            compute.clone(),
        )
        .await
        .and_then(|v| check_values(&task, v));
        let compute_ms = began.elapsed().as_millis() as u64;
        let us = began.elapsed().as_micros().min(u64::MAX as u128 - 1) as u64;
        let _ = self
            .compute_avg_us
            .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |avg| {
                Some(if avg == u64::MAX {
                    us
                } else {
                    avg - avg / 8 + us / 8
                })
            });
        metrics::histogram!("ttg_agent_compute_seconds").record(began.elapsed().as_secs_f64());
        match &outcome {
            Err(KernelError::Failed(msg)) => {
                ttg_proto::telemetry::set_error(&compute, msg);
                metrics::counter!("ttg_agent_kernel_errors_total").increment(1);
            }
            Err(KernelError::Cancelled) => ttg_proto::telemetry::set_error(&compute, "cancelled"),
            Ok(_) => {}
        }
        drop(compute);
        drop(slot);
        if let Ok(mut h) = self.held.lock() {
            if let Some(h) = h.get_mut(&entry_id) {
                h.computed = true;
            }
        }
        let ack = chunk_span("ack");
        match outcome {
            Ok(values) => {
                let done = self.complete(&stream, &entry_id, &task, attempt, &values, compute_ms);
                tracing::Instrument::instrument(done, ack.clone()).await;
                metrics::counter!("ttg_agent_chunks_computed_total").increment(1);
                if let Ok(mut v) = self.ack_latencies.lock() {
                    if v.len() < 4096 {
                        v.push(claimed.elapsed().as_millis().min(u32::MAX as u128) as u32);
                    }
                }
            }
            Err(KernelError::Cancelled) if self.run_cancelled(&run_id) => {
                let settle = self.settle_cancelled(&stream, &entry_id, &task, &traceparent);
                tracing::Instrument::instrument(settle, ack.clone()).await;
            }
            Err(KernelError::Cancelled) if !self.abort.is_cancelled() => {
                // Reclaimed from under us: the reclaimer already acked it.
            }
            Err(KernelError::Cancelled) => {
                // Agent aborting: leave the entry pending in our name; it is
                // reclaimed when our session ends without Bye.
                tracing::warn!(run = %run_id, chunk, agent = %self.agent_id, "chunk abandoned");
            }
            Err(KernelError::Failed(msg)) => {
                let failed = self.fail(&stream, &entry_id, &task, attempt, &msg, &traceparent);
                tracing::Instrument::instrument(failed, ack.clone()).await;
                ttg_proto::telemetry::set_error(&ack, &msg);
            }
        }
        metrics::gauge!("ttg_agent_in_flight").decrement(1.0);
        if let Ok(mut h) = self.held.lock() {
            h.remove(&entry_id);
        }
    }

    async fn complete(
        &self,
        stream: &str,
        entry_id: &str,
        task: &Task,
        attempt: u32,
        values: &[f64],
        compute_ms: u64,
    ) {
        let run_id = &task.run_id;
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
                chunk: ChunkResult::with_event(entry_id, task.chunk_index, values, body),
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
    async fn send_completions(&self) {
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
                let (group, rest): (Vec<_>, Vec<_>) = round
                    .into_iter()
                    .partition(|p| p.run_id == run_id && p.stream == stream);
                round = rest;
                let chunks: Vec<ChunkResult> = group.iter().map(|p| p.chunk.clone()).collect();
                let keys = &self.keys;
                let reply: Option<(Vec<i64>, String)> = self
                    .persist("complete", |mut c| {
                        let inv =
                            self.scripts
                                .complete(keys, &run_id, &stream, &self.agent_id, &chunks);
                        async move { inv.invoke_async(&mut c).await }
                    })
                    .await;
                for (i, p) in group.into_iter().enumerate() {
                    let outcome = reply.as_ref().map(|(codes, state)| {
                        Completion::from_reply(codes.get(i).copied().unwrap_or(-1), state)
                    });
                    let _ = p.done.send(outcome);
                }
            }
        }
    }

    async fn fail(
        &self,
        stream: &str,
        entry_id: &str,
        task: &Task,
        attempt: u32,
        error: &str,
        traceparent: &[u8],
    ) {
        let run_id = &task.run_id;
        // Bound what a failing kernel can write into Redis and events.
        let error: String = error
            .chars()
            .rev()
            .take(2_000)
            .collect::<Vec<_>>()
            .into_iter()
            .rev()
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
        // What fail-fast compares: the first line, at most 200 characters.
        let first_line: String = error
            .lines()
            .next()
            .unwrap_or("")
            .chars()
            .take(200)
            .collect();
        let task_bytes = ttg_proto::records::encode(task);
        let failed = FailedAttempt {
            entry_id,
            task_bytes: &task_bytes,
            chunk_index: task.chunk_index,
            attempt,
            max_attempts: task.max_attempts,
            error: &error,
            first_line: &first_line,
            traceparent,
            retry_body: &retry_body,
            dead_body: &dead_body,
        };
        let reply: Option<(i64, String)> = self
            .persist("fail", |mut c| {
                let inv = self
                    .scripts
                    .fail(&self.keys, run_id, stream, &self.agent_id, &failed);
                async move { inv.invoke_async(&mut c).await }
            })
            .await;
        if let Some((code, state)) = reply {
            let f = Failure::from_reply(code, &state);
            tracing::warn!(run = %run_id, chunk = task.chunk_index, agent = %self.agent_id, attempt, error = %error, outcome = ?f, "chunk attempt failed");
            match f {
                Failure::DeadLettered(s) => self.mark_run(run_id, s),
                // The run ended meanwhile: believe it, so its other queued
                // chunks go through the claim gate instead of computing.
                Failure::Inactive => self.mark_run(run_id, ttg_proto::records::parse_state(&state)),
                Failure::StoppedByFailFast => {
                    tracing::error!(run = %run_id, agent = %self.agent_id, error = %first_line,
                        "run stopped by fail-fast: its chunks keep failing with the same error");
                    self.mark_run(run_id, RunState::Failed)
                }
                _ => {}
            }
        }
    }
}

/// A kernel must give one finite value per parameter.
fn check_values(task: &Task, values: Vec<f64>) -> Result<Vec<f64>, KernelError> {
    let n = (task.end - task.start) as usize;
    if values.len() != n {
        return Err(KernelError::Failed(format!(
            "kernel returned {} values for {n} parameters",
            values.len()
        )));
    }
    if let Some(i) = values.iter().position(|v| !v.is_finite()) {
        return Err(KernelError::Failed(format!(
            "kernel returned {} for parameter {}; values must be finite",
            values[i],
            task.start + i as u64
        )));
    }
    Ok(values)
}

fn rand_jitter(max_ms: u64) -> u64 {
    use std::hash::{BuildHasher, Hasher};
    let mut h = std::collections::hash_map::RandomState::new().build_hasher();
    h.write_u64(ttg_proto::now_ms() as u64);
    h.finish() % max_ms.max(1)
}

async fn sleep_or_stop(backoff: &mut Duration, stop: &CancellationToken) {
    tokio::select! {
        _ = tokio::time::sleep(*backoff) => {}
        _ = stop.cancelled() => {}
    }
    *backoff = next_backoff(*backoff);
}
