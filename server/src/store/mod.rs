//! Runs and agents on Redis: submit, status, cancel, listing, watch and
//! results. Knows nothing of tonic; every Redis call has a deadline so a Redis
//! that is down or hung becomes [`Error::RedisTimeout`] or [`Error::Redis`],
//! never a hang.

use std::collections::{BTreeMap, HashMap};
use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use redis::aio::ConnectionManager;
use redis::streams::StreamReadReply;
use redis::{RedisResult, Value};
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;
use ttg_proto::chunking::{chunk_count, chunk_range};
use ttg_proto::keys::{new_run_id, valid_run_id, Keys, GROUP};
use ttg_proto::reclaim::{reclaim_consumer, Cause, Reclaimed};
use ttg_proto::records::{
    decode_event, decode_spec, encode, event_body, is_finished, is_terminal, parse_state,
    run_status_from_hash, unpack_values, ATTEMPT_FIELD, EVENT_FIELD, TASK_FIELD, TRACEPARENT_FIELD,
};
use ttg_proto::v1::{
    event, AgentInfo, DeadChunk, Event, KernelDecl, Progress, ResultChunk, RunCancelled, RunSpec,
    RunState, RunStatus, RunSubmitted, SubmitRequest, Task,
};
use ttg_proto::{kernels, now_ms, redis_conn};

use ttg_proto::scripts::Scripts;

use crate::config::Limits;
use crate::error::{Error, Result};

mod agents;
mod audit;
pub use audit::{missing_chunks, task_for};

/// Largest `params` a run may have.
pub const MAX_PARAMS: u64 = 10_000_000_000;
/// Largest `chunk_size`.
pub const MAX_CHUNK_SIZE: u64 = 1_000_000;
/// Most chunks one run may have.
pub const MAX_CHUNKS: u64 = 1_000_000;
/// Most attempts per chunk.
pub const MAX_ATTEMPTS: u32 = 100;
/// Longest run name.
pub const MAX_NAME: usize = 128;
/// Default parameters per chunk.
pub const DEFAULT_CHUNK_SIZE: u64 = 100;
/// Default attempts per chunk.
pub const DEFAULT_MAX_ATTEMPTS: u32 = 3;
/// Default fail-fast streak (failed attempts in a row with one error).
pub const DEFAULT_FAIL_FAST: u32 = 10;
/// Largest fail-fast streak.
pub const MAX_FAIL_FAST: u32 = 100_000;
/// Tasks written per pipelined, atomic batch at Submit.
const SUBMIT_BATCH: u64 = 2_000;
/// Longest a Watch blocks in XREAD before it checks the run and the client.
const WATCH_BLOCK: Duration = Duration::from_millis(1_000);
/// Most chunks fetched per HMGET when streaming results…
const RESULTS_BATCH: u64 = 256;
/// …and about this many bytes of values per HMGET, so a run of large chunks
/// (10^6 parameters = 8 MB each) does not make the server hold 256 of them.
const RESULTS_BATCH_BYTES: u64 = 2 * 1024 * 1024;
/// Tombstones of removed runs are kept this long…
const GONE_KEEP: Duration = Duration::from_secs(30 * 24 * 3_600);
/// …and at most this many (newest kept).
const GONE_MAX: u64 = 100_000;
/// Runs the janitor removes per Redis round trip.
const EXPIRE_BATCH: usize = 100;
/// Run records one ListRuns call reads at most while filtering; past it the
/// page ends early with a token to continue.
const LIST_SCAN: usize = 10_000;
/// Task entries read per XRANGE when purging a cancelled run's tasks.
const PURGE_SCAN: usize = 1_000;

/// What ListRuns selects.
#[derive(Debug, Clone, Default)]
pub struct RunFilter {
    /// Most runs to return.
    pub limit: usize,
    /// Only these states (empty: all).
    pub states: Vec<RunState>,
    /// Only names containing this, lower-cased (empty: all).
    pub name_contains: String,
    /// Only runs submitted at most this long ago.
    pub max_age: Option<Duration>,
    /// Only runs submitted at least this long ago.
    pub min_age: Option<Duration>,
    /// Continue after this run id (the previous page's token).
    pub after: Option<String>,
}

/// A Submit request that passed validation, defaults filled in.
#[derive(Debug, Clone, PartialEq)]
pub struct ValidSubmit {
    /// Parameters.
    pub params: u64,
    /// Parameters per chunk.
    pub chunk_size: u64,
    /// Number of chunks.
    pub chunks: u64,
    /// Kernel name.
    pub kernel: String,
    /// Arguments with defaults filled in.
    pub args: BTreeMap<String, String>,
    /// Attempts per chunk.
    pub max_attempts: u32,
    /// Run name.
    pub name: String,
    /// Milliseconds the run's data is kept after it ends.
    pub retention_ms: u64,
    /// Same-error failures in a row that stop the run (0: never).
    pub fail_fast: u32,
}

/// Check a Submit request; errors name the field and the allowed range.
/// `offered` are the declarations live agents published (for kernels that
/// are not built in).
pub fn validate_submit(
    req: &SubmitRequest,
    offered: &[KernelDecl],
    limits: &Limits,
) -> Result<ValidSubmit> {
    let max_params = limits.max_params.min(MAX_PARAMS);
    if !(1..=max_params).contains(&req.params) {
        return Err(Error::invalid(
            "params",
            format!("must be in 1..={max_params}, got {}", req.params),
        ));
    }
    if req.args.len() > limits.max_args {
        return Err(Error::invalid(
            "args",
            format!(
                "at most {} arguments (--max-args), got {}",
                limits.max_args,
                req.args.len()
            ),
        ));
    }
    if let Some((k, _)) = req
        .args
        .iter()
        .find(|(k, v)| k.len() > 64 || v.len() > limits.max_arg_bytes)
    {
        let shown: String = k.chars().take(64).collect();
        return Err(Error::invalid(
            format!("args.{shown}"),
            format!(
                "names are at most 64 bytes and values at most {} bytes (--max-arg-bytes)",
                limits.max_arg_bytes
            ),
        ));
    }
    let chunk_size = req.chunk_size.unwrap_or(DEFAULT_CHUNK_SIZE);
    if !(1..=MAX_CHUNK_SIZE).contains(&chunk_size) {
        return Err(Error::invalid(
            "chunk_size",
            format!("must be in 1..={MAX_CHUNK_SIZE}, got {chunk_size}"),
        ));
    }
    let chunks = chunk_count(req.params, chunk_size);
    let max_chunks = limits.max_chunks.min(MAX_CHUNKS);
    if chunks > max_chunks {
        return Err(Error::invalid(
            "chunk_size",
            format!(
                "{} params in chunks of {chunk_size} make {chunks} chunks; at most {max_chunks} chunks per run are allowed (use chunk_size >= {})",
                req.params,
                req.params.div_ceil(max_chunks)
            ),
        ));
    }
    let kernel = if req.kernel.is_empty() {
        "placeholder"
    } else {
        req.kernel.as_str()
    };
    let decl = kernels::find(kernel)
        .map(|k| k.decl())
        .or_else(|| offered.iter().find(|d| d.name == kernel).cloned())
        .ok_or_else(|| {
            let mut known: Vec<String> = kernels::BUILTIN
                .iter()
                .map(|k| k.name.to_string())
                .collect();
            known.extend(offered.iter().map(|d| d.name.clone()));
            known.sort();
            known.dedup();
            Error::invalid(
                "kernel",
                format!("unknown kernel {kernel:?} (known: {})", known.join(", ")),
            )
        })?;
    let args =
        kernels::validate_args(&decl, &req.args).map_err(|e| Error::invalid(e.field, e.message))?;
    let max_attempts = req.max_attempts.unwrap_or(DEFAULT_MAX_ATTEMPTS);
    if !(1..=MAX_ATTEMPTS).contains(&max_attempts) {
        return Err(Error::invalid(
            "max_attempts",
            format!("must be in 1..={MAX_ATTEMPTS}, got {max_attempts}"),
        ));
    }
    if req.name.chars().count() > MAX_NAME {
        return Err(Error::invalid(
            "name",
            format!("must be at most {MAX_NAME} characters"),
        ));
    }
    if let Some(c) = req.name.chars().find(|&c| is_control_or_format(c)) {
        return Err(Error::invalid(
            "name",
            format!(
                "must not contain control or format characters (Unicode Cc, Cf), got U+{:04X}",
                c as u32
            ),
        ));
    }
    let fail_fast = req.fail_fast.unwrap_or(DEFAULT_FAIL_FAST);
    if fail_fast > MAX_FAIL_FAST {
        return Err(Error::invalid(
            "fail_fast",
            format!("must be in 0..={MAX_FAIL_FAST} (0 = never), got {fail_fast}"),
        ));
    }
    let max_keep = limits.max_run_retention.as_secs().max(1);
    let retention_s = req
        .retention_s
        .unwrap_or_else(|| limits.run_retention.as_secs().max(1));
    if !(1..=max_keep).contains(&retention_s) {
        return Err(Error::invalid(
            "retention_s",
            format!("must be in 1..={max_keep} seconds (--max-run-retention), got {retention_s}"),
        ));
    }
    Ok(ValidSubmit {
        retention_ms: retention_s * 1_000,
        params: req.params,
        chunk_size,
        chunks,
        kernel: kernel.to_string(),
        args,
        max_attempts,
        name: req.name.clone(),
        fail_fast,
    })
}

/// Unicode categories Cc (controls) and Cf (format characters: bidi
/// overrides such as U+202E, zero-width joiners, the BOM …), which can make
/// a name display as something else. Cf as of Unicode 15.1.
pub fn is_control_or_format(c: char) -> bool {
    const CF: &[(u32, u32)] = &[
        (0x00AD, 0x00AD),
        (0x0600, 0x0605),
        (0x061C, 0x061C),
        (0x06DD, 0x06DD),
        (0x070F, 0x070F),
        (0x0890, 0x0891),
        (0x08E2, 0x08E2),
        (0x180E, 0x180E),
        (0x200B, 0x200F),
        (0x202A, 0x202E),
        (0x2060, 0x2064),
        (0x2066, 0x206F),
        (0xFEFF, 0xFEFF),
        (0xFFF9, 0xFFFB),
        (0x110BD, 0x110BD),
        (0x110CD, 0x110CD),
        (0x13430, 0x1343F),
        (0x1BCA0, 0x1BCA3),
        (0x1D173, 0x1D17A),
        (0xE0001, 0xE0001),
        (0xE0020, 0xE007F),
    ];
    let u = c as u32;
    c.is_control() || CF.iter().any(|&(lo, hi)| (lo..=hi).contains(&u))
}

/// Check a run id from a request before it is used in a key.
pub fn check_run_id(run_id: &str) -> Result<()> {
    if valid_run_id(run_id) {
        Ok(())
    } else {
        Err(Error::invalid(
            "run_id",
            "must be 1..=64 characters of letters, digits and '-' (as printed by submit)",
        ))
    }
}

/// Runs and agents in Redis.
pub struct Store {
    limits: Limits,
    keys: Keys,
    client: redis::Client,
    conn: ConnectionManager,
    scripts: Arc<Scripts>,
    deadline: Duration,
}

impl Store {
    /// A store on `redis_url` under `prefix`; connects lazily.
    pub fn new(
        redis_url: &str,
        redis_ca: Option<&std::path::Path>,
        prefix: &str,
        deadline: Duration,
        limits: Limits,
    ) -> Result<Self> {
        let client = redis_conn::client(redis_url, redis_ca)?;
        let conn = redis_conn::manager(&client)?;
        Ok(Self {
            limits,
            keys: Keys::new(prefix),
            client,
            conn,
            scripts: Arc::new(Scripts::new()),
            deadline,
        })
    }

    /// Key names.
    pub fn keys(&self) -> &Keys {
        &self.keys
    }

    /// A clone of the shared connection.
    pub fn conn(&self) -> ConnectionManager {
        self.conn.clone()
    }

    async fn timed<T>(&self, fut: impl Future<Output = RedisResult<T>>) -> Result<T> {
        match tokio::time::timeout(self.deadline, fut).await {
            Ok(r) => Ok(r?),
            Err(_) => Err(Error::RedisTimeout(self.deadline)),
        }
    }

    /// Create the consumer group of a tasks stream if it is missing. Created at
    /// id 0, so tasks added before the group existed are still delivered.
    pub async fn ensure_group(&self, stream_key: &str) -> Result<()> {
        let mut c = self.conn();
        let mut cmd = redis::cmd("XGROUP");
        cmd.arg("CREATE")
            .arg(stream_key)
            .arg(GROUP)
            .arg("0")
            .arg("MKSTREAM");
        let fut = cmd.query_async::<()>(&mut c);
        match tokio::time::timeout(self.deadline, fut).await {
            Err(_) => Err(Error::RedisTimeout(self.deadline)),
            Ok(Err(e)) if e.code() == Some("BUSYGROUP") => Ok(()),
            Ok(r) => Ok(r?),
        }
    }

    /// Validate, store the run and queue its tasks. Returns the run id and
    /// the number of chunks once every task is in Redis. The `submit` span is
    /// the root of the run's trace: its traceparent goes into the run spec and
    /// every task entry, so agents' spans join it.
    pub async fn submit(&self, req: &SubmitRequest) -> Result<(String, u64)> {
        let span = tracing::info_span!("submit", run_id = tracing::field::Empty, params = req.params,
            chunks = tracing::field::Empty, kernel = %req.kernel);
        let started = std::time::Instant::now();
        let r = tracing::Instrument::instrument(self.submit_inner(req), span.clone()).await;
        match &r {
            Ok(_) => {
                metrics::histogram!("ttg_submit_seconds").record(started.elapsed().as_secs_f64())
            }
            Err(e) => ttg_proto::telemetry::set_error(&span, &e.to_string()),
        }
        r
    }

    async fn submit_inner(&self, req: &SubmitRequest) -> Result<(String, u64)> {
        let offered = if req.kernel.is_empty() || kernels::find(&req.kernel).is_some() {
            Vec::new()
        } else {
            self.offered_kernels()
                .await?
                .into_iter()
                .filter_map(|k| k.decl)
                .collect()
        };
        let v = validate_submit(req, &offered, &self.limits)?;
        let mut c0 = self.conn();
        let active: Option<i64> = self
            .timed(
                redis::cmd("HGET")
                    .arg(self.keys.stats())
                    .arg("active")
                    .query_async(&mut c0),
            )
            .await?;
        if active.unwrap_or(0).max(0) as u64 >= self.limits.max_runs_in_flight {
            return Err(Error::ResourceExhausted(format!(
                "runs in flight: {} QUEUED or RUNNING, the limit is {} (--max-runs-in-flight); wait for one to end or cancel one",
                active.unwrap_or(0),
                self.limits.max_runs_in_flight
            )));
        }
        let created = now_ms();
        let run_id = new_run_id(created, rand::random());
        let current = tracing::Span::current();
        current.record("run_id", run_id.as_str());
        current.record("chunks", v.chunks);
        let traceparent = ttg_proto::telemetry::current_traceparent();
        let spec = RunSpec {
            run_id: run_id.clone(),
            params: v.params,
            chunk_size: v.chunk_size,
            total_chunks: v.chunks,
            kernel: v.kernel.clone(),
            args: v.args.clone().into_iter().collect(),
            max_attempts: v.max_attempts,
            name: v.name.clone(),
            created_ms: created,
            traceparent: traceparent.clone(),
            retention_ms: v.retention_ms,
            fail_fast: v.fail_fast,
        };
        let tasks_key = self.keys.tasks(&v.kernel);
        self.ensure_group(&tasks_key).await?;

        let run_key = self.keys.run(&run_id);
        let submitted = Event {
            run_id: run_id.clone(),
            time_ms: created,
            progress: Some(Progress {
                chunks_total: v.chunks,
                ..Default::default()
            }),
            kind: Some(event::Kind::RunSubmitted(RunSubmitted {
                params: v.params,
                chunks: v.chunks,
                kernel: v.kernel.clone(),
            })),
            ..Default::default()
        };
        let mut p = redis::pipe();
        p.atomic()
            .hset_multiple(
                &run_key,
                &[
                    ("state", RunState::Queued.as_str_name().as_bytes().to_vec()),
                    ("spec", encode(&spec)),
                    ("total", v.chunks.to_string().into_bytes()),
                    ("done", b"0".to_vec()),
                    ("dead", b"0".to_vec()),
                    ("count", b"0".to_vec()),
                    ("sum", b"0".to_vec()),
                    ("created_ms", created.to_string().into_bytes()),
                    ("enqueued", b"0".to_vec()),
                    ("retention_ms", v.retention_ms.to_string().into_bytes()),
                    ("fail_fast", v.fail_fast.to_string().into_bytes()),
                ],
            )
            .ignore()
            .zadd(self.keys.runs(), &run_id, created)
            .ignore()
            .hincr(self.keys.stats(), "active", 1)
            .ignore()
            .xadd(
                self.keys.events(&run_id),
                "*",
                &[(EVENT_FIELD, encode(&submitted))],
            )
            .ignore();
        let mut c = self.conn();
        self.timed(p.query_async::<()>(&mut c)).await?;

        // One pipelined MULTI per batch: the tasks and the `enqueued` counter
        // land together, so the counter always says exactly what is queued.
        let mut task = Task {
            run_id: run_id.clone(),
            kernel: v.kernel.clone(),
            args: spec.args.clone(),
            max_attempts: v.max_attempts,
            ..Default::default()
        };
        let mut first = 0;
        while first < v.chunks {
            let last = (first + SUBMIT_BATCH).min(v.chunks);
            let mut p = redis::pipe();
            p.atomic();
            for i in first..last {
                let (start, end) = chunk_range(v.params, v.chunk_size, i);
                task.chunk_index = i;
                task.start = start;
                task.end = end;
                p.cmd("XADD")
                    .arg(&tasks_key)
                    .arg("*")
                    .arg(TASK_FIELD)
                    .arg(encode(&task))
                    .arg(ATTEMPT_FIELD)
                    .arg(1)
                    .arg(TRACEPARENT_FIELD)
                    .arg(&traceparent)
                    .ignore();
            }
            p.hset(&run_key, "enqueued", last).ignore();
            if let Err(e) = self.timed(p.query_async::<()>(&mut c)).await {
                // Never leave a half-queued run waiting forever: cancel it
                // (its queued tasks are then removed) and answer the error.
                let why = format!(
                    "submit failed after queuing {first} of {} chunks: {e}",
                    v.chunks
                );
                tracing::warn!(run = %run_id, error = %e, "{why}; cancelling the run");
                match self.cancel(&run_id, &why).await {
                    Ok(_) => self.remove_cancelled_tasks(&run_id).await,
                    Err(ce) => {
                        tracing::error!(run = %run_id, error = %ce, "half-submitted run not cancelled; cancel it with `ttgctl cancel {run_id}`")
                    }
                }
                return Err(e);
            }
            first = last;
        }
        tracing::info!(run = %run_id, params = v.params, chunks = v.chunks, kernel = %v.kernel, "run submitted");
        Ok((run_id, v.chunks))
    }

    async fn run_hash(&self, run_id: &str) -> Result<HashMap<String, Vec<u8>>> {
        check_run_id(run_id)?;
        let mut c = self.conn();
        let h: HashMap<String, Vec<u8>> = self
            .timed(
                redis::cmd("HGETALL")
                    .arg(self.keys.run(run_id))
                    .query_async(&mut c),
            )
            .await?;
        if h.is_empty() {
            return Err(self.not_found(run_id).await);
        }
        Ok(h)
    }

    /// Spec of a run.
    pub async fn spec(&self, run_id: &str) -> Result<RunSpec> {
        check_run_id(run_id)?;
        let mut c = self.conn();
        let b: Option<Vec<u8>> = self
            .timed(
                redis::cmd("HGET")
                    .arg(self.keys.run(run_id))
                    .arg("spec")
                    .query_async(&mut c),
            )
            .await?;
        let Some(b) = b else {
            return Err(self.not_found(run_id).await);
        };
        Ok(decode_spec(&b)?)
    }

    /// State, counters, aggregate, chunks in flight and why it waits, if it does.
    pub async fn status(&self, run_id: &str) -> Result<RunStatus> {
        let h = self.run_hash(run_id).await?;
        let mut st = run_status_from_hash(&h, now_ms())?;
        let agents = self.live_agents().await?;
        self.annotate(&mut st, &agents);
        if st.progress.is_some_and(|p| p.chunks_dead > 0) {
            st.dead_chunks = self.dead_chunks(run_id, 100).await?;
        }
        Ok(st)
    }

    /// Up to `limit` dead-lettered chunks of a run, with their last error.
    pub async fn dead_chunks(&self, run_id: &str, limit: usize) -> Result<Vec<DeadChunk>> {
        let mut c = self.conn();
        let reply: redis::streams::StreamRangeReply = self
            .timed(
                redis::cmd("XRANGE")
                    .arg(self.keys.dead_letters(run_id))
                    .arg("-")
                    .arg("+")
                    .arg("COUNT")
                    .arg(limit)
                    .query_async(&mut c),
            )
            .await?;
        let text = |v: Option<&Value>| match v {
            Some(Value::BulkString(b)) => String::from_utf8_lossy(b).into_owned(),
            _ => String::new(),
        };
        Ok(reply
            .ids
            .iter()
            .map(|e| DeadChunk {
                chunk_index: text(e.map.get("c")).parse().unwrap_or(0),
                attempt: text(e.map.get("a")).parse().unwrap_or(0),
                error: text(e.map.get("err")),
            })
            .collect())
    }

    /// Re-queue a run's dead chunks with fresh attempts. Returns how many and
    /// the state after.
    pub async fn retry(&self, run_id: &str) -> Result<(u64, RunState)> {
        let spec = self.spec(run_id).await?;
        let tasks = self.keys.tasks(&spec.kernel);
        self.ensure_group(&tasks).await?;
        const BATCH: usize = 1_000;
        let mut c = self.conn();
        // A run stopped by fail-fast has purged chunks (neither done nor
        // dead): queue them first, while the dead bits still tell them apart
        // from the dead-lettered ones re-queued below.
        let purged: Option<u64> = self
            .timed(
                redis::cmd("HGET")
                    .arg(self.keys.run(run_id))
                    .arg("purged")
                    .query_async(&mut c),
            )
            .await?;
        let mut total = 0u64;
        if purged.unwrap_or(0) > 0 {
            total += self.requeue_missing(&spec, "retry").await?.0;
        }
        loop {
            let inv = self.scripts.retry(&self.keys, run_id, &tasks, BATCH);
            let (n, state, read): (i64, String, usize) =
                self.timed(inv.invoke_async(&mut c)).await?;
            match n {
                -1 => return Err(self.not_found(run_id).await),
                -2 => {
                    return Err(Error::FailedPrecondition(format!(
                        "run {run_id} is {state}: only a FAILED or RUNNING run has dead chunks to retry"
                    )))
                }
                _ => total += n as u64,
            }
            if read < BATCH {
                tracing::info!(run = %run_id, chunks = total, "dead chunks re-queued");
                return Ok((total, parse_state(&state)));
            }
        }
    }

    /// Tell every replica (this one included) that a run was cancelled.
    /// The message is `cancel <server id> <run id>`; a replica ignores its own.
    pub async fn publish_cancel(&self, run_id: &str, server_id: &str) -> Result<()> {
        let mut c = self.conn();
        self.timed(
            redis::cmd("PUBLISH")
                .arg(self.keys.control_channel())
                .arg(format!("cancel {server_id} {run_id}"))
                .query_async::<()>(&mut c),
        )
        .await
    }

    /// The Redis client, for connections of their own (pub/sub).
    pub fn client(&self) -> &redis::Client {
        &self.client
    }

    /// Reclaim everything `agent_id` holds in the tasks streams of `kernels`.
    /// On success the agent's record is removed; on failure it stays, with an
    /// expired lease, for a reaper to retry.
    pub async fn reclaim_agent(
        &self,
        agent_id: &str,
        kernels: &[String],
        cause: Cause,
        died: std::time::Instant,
        held: &[ttg_proto::v1::HeldChunk],
    ) -> Result<Vec<Reclaimed>> {
        let mut c = self.conn();
        let mut out = Vec::new();
        // The claim span of each lost delivery, for the reclaim span's link.
        let links: HashMap<String, String> = held
            .iter()
            .map(|h| (h.entry_id.clone(), h.traceparent.clone()))
            .collect();
        for k in kernels {
            let stream = self.keys.tasks(k);
            let fut = reclaim_consumer(
                &mut c,
                &self.keys,
                &self.scripts,
                &stream,
                agent_id,
                cause,
                died,
                &links,
            );
            // Several round trips per chunk held: allow more than one call's deadline.
            match tokio::time::timeout(self.deadline * 4, fut).await {
                Ok(r) => out.extend(r?),
                Err(_) => return Err(Error::RedisTimeout(self.deadline * 4)),
            }
        }
        for r in &out {
            metrics::histogram!("ttg_reclaim_seconds").record(died.elapsed().as_secs_f64());
            tracing::info!(run = %r.run_id, chunk = r.chunk_index, agent = %agent_id, attempt = r.attempt,
                cause = cause.as_str(), after_ms = died.elapsed().as_millis() as u64, outcome = ?r.outcome, "chunk reclaimed");
        }
        self.remove_agent(agent_id).await?;
        Ok(out)
    }

    /// Refresh the Prometheus gauges and counters that live in Redis: the
    /// installation-wide chunk counters the scripts keep, runs by state
    /// (among the newest 1,000), and per kernel the queue's entries, those
    /// pending and the consumer group's lag.
    pub async fn collect_metrics(&self) -> Result<()> {
        // Everything is read first and published at the end, with no await
        // in between: a scrape used to land between two Redis round trips
        // and see half of this refresh beside half of the last (every chunk
        // completed, the run still RUNNING). Publishing takes microseconds.
        let mut c = self.conn();
        let stats: HashMap<String, i64> = self
            .timed(
                redis::cmd("HGETALL")
                    .arg(self.keys.stats())
                    .query_async(&mut c),
            )
            .await?;
        let ids: Vec<String> = self
            .timed(
                redis::cmd("ZREVRANGE")
                    .arg(self.keys.runs())
                    .arg(0)
                    .arg(999)
                    .query_async(&mut c),
            )
            .await?;
        let mut by_state: HashMap<String, u64> = HashMap::new();
        if !ids.is_empty() {
            let mut p = redis::pipe();
            for id in &ids {
                p.cmd("HGET").arg(self.keys.run(id)).arg("state");
            }
            let states: Vec<Option<String>> = self.timed(p.query_async(&mut c)).await?;
            for s in states.into_iter().flatten() {
                *by_state.entry(s).or_default() += 1;
            }
        }
        // Per kernel: entries, and the group's pending and lag (entries not
        // yet delivered to any agent: what autoscaling watches).
        let mut queues = Vec::new();
        for k in ttg_proto::kernels::BUILTIN {
            let key = self.keys.tasks(k.name);
            let len: u64 = self
                .timed(redis::cmd("XLEN").arg(&key).query_async(&mut c))
                .await?;
            let groups: RedisResult<Vec<HashMap<String, Value>>> = redis::cmd("XINFO")
                .arg("GROUPS")
                .arg(&key)
                .query_async(&mut c)
                .await;
            let group = groups.unwrap_or_default().into_iter().next().map(|g| {
                let num = |f: &str| match g.get(f) {
                    Some(Value::Int(n)) => *n as f64,
                    _ => 0.0,
                };
                (num("pending"), num("lag"))
            });
            queues.push((k.name, len, group));
        }
        // Redis memory, for sizing and alerting (see docs/operations.md).
        let info: String = self
            .timed(redis::cmd("INFO").arg("memory").query_async(&mut c))
            .await?;
        let runs: u64 = self
            .timed(
                redis::cmd("ZCARD")
                    .arg(self.keys.runs())
                    .query_async(&mut c),
            )
            .await?;

        for (field, name) in [
            ("completed", "ttg_chunks_completed_total"),
            ("duplicates", "ttg_chunks_duplicate_total"),
            ("failed", "ttg_chunk_attempts_failed_total"),
            ("reclaimed", "ttg_chunks_reclaimed_total"),
            ("dead", "ttg_chunks_dead_lettered_total"),
            ("requeued_by_audit", "ttg_chunks_requeued_by_audit_total"),
            ("requeued_by_retry", "ttg_chunks_requeued_by_retry_total"),
        ] {
            metrics::counter!(name).absolute(stats.get(field).copied().unwrap_or(0).max(0) as u64);
        }
        metrics::gauge!("ttg_runs_in_flight").set(stats.get("active").copied().unwrap_or(0) as f64);
        for s in ["QUEUED", "RUNNING", "SUCCEEDED", "FAILED", "CANCELLED"] {
            metrics::gauge!("ttg_runs", "state" => s)
                .set(by_state.get(s).copied().unwrap_or(0) as f64);
        }
        for (kernel, len, group) in queues {
            metrics::gauge!("ttg_queue_entries", "kernel" => kernel).set(len as f64);
            if let Some((pending, lag)) = group {
                metrics::gauge!("ttg_queue_pending", "kernel" => kernel).set(pending);
                metrics::gauge!("ttg_queue_lag", "kernel" => kernel).set(lag);
            }
        }
        for line in info.lines() {
            let (k, v) = line.split_once(':').unwrap_or_default();
            let name = match k {
                "used_memory" => "ttg_redis_used_memory_bytes",
                "maxmemory" => "ttg_redis_maxmemory_bytes",
                _ => continue,
            };
            if let Ok(v) = v.trim().parse::<f64>() {
                metrics::gauge!(name).set(v);
            }
        }
        metrics::gauge!("ttg_runs_stored").set(runs as f64);
        Ok(())
    }

    /// Agents whose lease in Redis has expired.
    pub async fn expired_agents(&self) -> Result<Vec<String>> {
        let mut c = self.conn();
        self.timed(
            redis::cmd("ZRANGEBYSCORE")
                .arg(self.keys.agents())
                .arg("-inf")
                .arg(format!("({}", now_ms()))
                .arg("LIMIT")
                .arg(0)
                .arg(100)
                .query_async(&mut c),
        )
        .await
    }

    /// Take the job of reaping an expired agent: succeeds for one caller only
    /// (its lease is pushed `hold` into the future so others skip it; if this
    /// reaper dies, another takes over when that passes).
    pub async fn claim_reap(&self, agent_id: &str, hold: Duration) -> Result<Option<AgentInfo>> {
        let mut c = self.conn();
        let inv = self
            .scripts
            .claim_reap(&self.keys, agent_id, now_ms(), hold.as_millis() as u64);
        let won: i64 = self.timed(inv.invoke_async(&mut c)).await?;
        if won != 1 {
            return Ok(None);
        }
        let raw: Option<Vec<u8>> = self
            .timed(
                redis::cmd("GET")
                    .arg(self.keys.agent(agent_id))
                    .query_async(&mut c),
            )
            .await?;
        Ok(Some(
            raw.and_then(|b| prost::Message::decode(b.as_slice()).ok())
                .unwrap_or_else(|| AgentInfo {
                    agent_id: agent_id.to_string(),
                    ..Default::default()
                }),
        ))
    }

    fn annotate(&self, st: &mut RunStatus, agents: &[AgentInfo]) {
        let Some(spec) = st.spec.as_ref() else { return };
        st.chunks_in_flight = agents
            .iter()
            .flat_map(|a| a.held.iter())
            .filter(|h| h.run_id == spec.run_id)
            .count() as u64;
        let state = RunState::try_from(st.state).unwrap_or(RunState::Unspecified);
        if matches!(state, RunState::Queued | RunState::Running)
            && !agents.iter().any(|a| a.kernels.contains(&spec.kernel))
        {
            st.message = format!("waiting for an agent offering {}", spec.kernel);
        }
    }

    /// Cancel an active run. Returns the state after; a run that already
    /// ended is [`Error::FailedPrecondition`].
    pub async fn cancel(&self, run_id: &str, reason: &str) -> Result<RunState> {
        check_run_id(run_id)?;
        let body = event_body(
            run_id,
            event::Kind::RunCancelled(RunCancelled {
                reason: reason.chars().take(256).collect(),
            }),
        );
        let mut c = self.conn();
        let inv = self.scripts.cancel(&self.keys, run_id, &body);
        let (changed, state): (i64, String) = self.timed(inv.invoke_async(&mut c)).await?;
        if state.is_empty() {
            return Err(self.not_found(run_id).await);
        }
        let s = parse_state(&state);
        if changed != 1 {
            return Err(Error::FailedPrecondition(format!(
                "run {run_id} already ended {}; only QUEUED or RUNNING runs can be cancelled",
                s.as_str_name()
            )));
        }
        tracing::info!(run = %run_id, "run cancelled");
        Ok(s)
    }

    /// Runs matching `f`, newest first, and the token of the next page ("" if
    /// none). The runs index is scored by submit time, which is also the
    /// prefix of every run id, so a page token is just the last run id seen:
    /// pages stay stable while runs are added or removed.
    pub async fn list_runs(&self, f: &RunFilter) -> Result<(Vec<RunStatus>, String)> {
        let now = now_ms();
        let upper_ms = f.min_age.map(|a| now - a.as_millis() as i64);
        let lower = match f.max_age {
            Some(a) => (now - a.as_millis() as i64).to_string(),
            None => "-inf".to_string(),
        };
        let after = match &f.after {
            Some(id) => {
                let ms = ttg_proto::keys::run_id_ms(id)
                    .filter(|_| valid_run_id(id))
                    .ok_or_else(|| {
                        Error::invalid("page_token", "not a token from a previous ListRuns")
                    })?;
                Some((ms, id.clone()))
            }
            None => None,
        };
        let upper = match (upper_ms, &after) {
            (Some(u), Some((a, _))) => u.min(*a).to_string(),
            (Some(u), None) => u.to_string(),
            (None, Some((a, _))) => a.to_string(),
            (None, None) => "+inf".to_string(),
        };
        let agents = self.live_agents().await?;
        let mut c = self.conn();
        let mut out = Vec::new();
        let (mut offset, mut scanned) = (0usize, 0usize);
        let mut last_seen: Option<String> = None;
        const BATCH: usize = 200;
        loop {
            let items: Vec<(String, f64)> = self
                .timed(
                    redis::cmd("ZREVRANGEBYSCORE")
                        .arg(self.keys.runs())
                        .arg(&upper)
                        .arg(&lower)
                        .arg("WITHSCORES")
                        .arg("LIMIT")
                        .arg(offset)
                        .arg(BATCH)
                        .query_async(&mut c),
                )
                .await?;
            offset += items.len();
            // Equal scores come in reverse id order: those not below the
            // token were on earlier pages.
            let ids: Vec<String> = items
                .iter()
                .filter(|(id, score)| match &after {
                    Some((ms, tok)) => !(*score as i64 == *ms && id >= tok),
                    None => true,
                })
                .map(|(id, _)| id.clone())
                .collect();
            if !ids.is_empty() {
                let mut p = redis::pipe();
                for id in &ids {
                    p.cmd("HGETALL").arg(self.keys.run(id));
                }
                let hashes: Vec<HashMap<String, Vec<u8>>> =
                    self.timed(p.query_async(&mut c)).await?;
                for (id, h) in ids.iter().zip(hashes) {
                    scanned += 1;
                    last_seen = Some(id.clone());
                    if h.is_empty() {
                        continue; // removed since the index was read
                    }
                    let mut st = match run_status_from_hash(&h, now) {
                        Ok(st) => st,
                        Err(e) => {
                            tracing::warn!(run = %id, error = %e, "skipping corrupt run record");
                            continue;
                        }
                    };
                    let state = RunState::try_from(st.state).unwrap_or(RunState::Unspecified);
                    if !f.states.is_empty() && !f.states.contains(&state) {
                        continue;
                    }
                    let name = st.spec.as_ref().map(|s| s.name.as_str()).unwrap_or("");
                    if !f.name_contains.is_empty()
                        && !name.to_lowercase().contains(&f.name_contains)
                    {
                        continue;
                    }
                    self.annotate(&mut st, &agents);
                    out.push(st);
                    if out.len() == f.limit {
                        // More may follow: the client asks with this token.
                        return Ok((out, id.clone()));
                    }
                }
            }
            if items.len() < BATCH {
                return Ok((out, String::new()));
            }
            if scanned >= LIST_SCAN {
                return Ok((out, last_seen.unwrap_or_default()));
            }
        }
    }

    /// The error for a run that is not in Redis: [`Error::RunGone`] if its
    /// tombstone says it expired or was deleted, else [`Error::RunNotFound`].
    pub async fn not_found(&self, run_id: &str) -> Error {
        let mut c = self.conn();
        let scores: Result<Vec<Option<f64>>> = self
            .timed(
                redis::cmd("ZMSCORE")
                    .arg(self.keys.gone())
                    .arg(format!("{run_id}:expired"))
                    .arg(format!("{run_id}:deleted"))
                    .query_async(&mut c),
            )
            .await;
        let (expired, deleted) = match scores.as_deref() {
            Ok([e, d]) => (*e, *d),
            _ => (None, None),
        };
        match (expired, deleted) {
            (Some(at), _) => Error::RunGone {
                run_id: run_id.to_string(),
                why: "expired".into(),
                at_ms: at as u64,
            },
            (None, Some(at)) => Error::RunGone {
                run_id: run_id.to_string(),
                why: "deleted".into(),
                at_ms: at as u64,
            },
            _ => Error::RunNotFound(run_id.to_string()),
        }
    }

    /// Run the purge script for one run; `why` is `expired` or `deleted`.
    async fn purge(&self, run_id: &str, why: &str) -> Result<(i64, String)> {
        let inv = self.scripts.purge(
            &self.keys,
            run_id,
            why,
            now_ms(),
            GONE_KEEP.as_millis() as u64,
            GONE_MAX,
        );
        let mut c = self.conn();
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
        loop {
            let mut c = self.conn();
            let due: Vec<String> = self
                .timed(
                    redis::cmd("ZRANGEBYSCORE")
                        .arg(self.keys.expiring())
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
                            .arg(self.keys.expiring())
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
        let stream = self.keys.tasks(&spec.kernel);
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
            .timed(
                redis::cmd("CONFIG")
                    .arg("GET")
                    .arg("maxmemory-policy")
                    .query_async(&mut c),
            )
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

    /// Stream a run's events after `after` into `tx` until the run ends, the
    /// receiver goes away or `stop` is cancelled. The first error ends it.
    pub async fn watch(
        &self,
        run_id: &str,
        after: &str,
        tx: mpsc::Sender<Result<Event>>,
        stop: CancellationToken,
    ) {
        if let Err(e) = self.watch_inner(run_id, after, &tx, &stop).await {
            let _ = tx.send(Err(e)).await;
        }
    }

    async fn watch_inner(
        &self,
        run_id: &str,
        after: &str,
        tx: &mpsc::Sender<Result<Event>>,
        stop: &CancellationToken,
    ) -> Result<()> {
        let events_key = self.keys.events(run_id);
        let run_key = self.keys.run(run_id);
        let mut last = if after.is_empty() {
            "0-0".to_string()
        } else {
            after.to_string()
        };
        // XREAD BLOCK holds its connection: give each watcher its own so it
        // never stalls the shared one.
        let mut blocking = self
            .timed(redis_conn::blocking(&self.client, WATCH_BLOCK))
            .await?;
        let mut c = self.conn();
        loop {
            if stop.is_cancelled() {
                return Err(Error::ShuttingDown);
            }
            if tx.is_closed() {
                return Ok(());
            }
            let reply: Option<StreamReadReply> = self
                .timed(
                    redis::cmd("XREAD")
                        .arg("COUNT")
                        .arg(1000)
                        .arg("BLOCK")
                        .arg(WATCH_BLOCK.as_millis() as u64)
                        .arg("STREAMS")
                        .arg(&events_key)
                        .arg(&last)
                        .query_async(&mut blocking),
                )
                .await?;
            let entries = reply.map(|r| r.keys).unwrap_or_default();
            let mut got_any = false;
            for key in entries {
                for entry in key.ids {
                    got_any = true;
                    last = entry.id.clone();
                    let Some(Value::BulkString(bytes)) = entry.map.get(EVENT_FIELD) else {
                        tracing::warn!(run = %run_id, id = %entry.id, "event without payload skipped");
                        continue;
                    };
                    let ev = match decode_event(&entry.id, bytes) {
                        Ok(ev) => ev,
                        Err(e) => {
                            tracing::warn!(run = %run_id, id = %entry.id, error = %e, "corrupt event skipped");
                            continue;
                        }
                    };
                    let terminal = is_terminal(&ev);
                    if tx.send(Ok(ev)).await.is_err() {
                        return Ok(());
                    }
                    // A FAILED run that was retried goes on: end only if the
                    // run is still finished now.
                    if terminal {
                        let state: Option<String> = self
                            .timed(
                                redis::cmd("HGET")
                                    .arg(&run_key)
                                    .arg("state")
                                    .query_async(&mut c),
                            )
                            .await?;
                        if state.is_none_or(|s| is_finished(parse_state(&s))) {
                            return Ok(());
                        }
                    }
                }
            }
            if !got_any {
                // Nothing new: the run may have ended before `after`, or been
                // deleted. Otherwise keep waiting.
                let state: Option<String> = self
                    .timed(
                        redis::cmd("HGET")
                            .arg(&run_key)
                            .arg("state")
                            .query_async(&mut c),
                    )
                    .await?;
                match state {
                    None => return Err(self.not_found(run_id).await),
                    Some(s) if is_finished(parse_state(&s)) => {
                        // The terminal event may have landed between XREAD and
                        // HGET: read once more without blocking before ending.
                        let more: Option<StreamReadReply> = self
                            .timed(
                                redis::cmd("XREAD")
                                    .arg("COUNT")
                                    .arg(1)
                                    .arg("STREAMS")
                                    .arg(&events_key)
                                    .arg(&last)
                                    .query_async(&mut c),
                            )
                            .await?;
                        if more
                            .map(|r| r.keys.iter().all(|k| k.ids.is_empty()))
                            .unwrap_or(true)
                        {
                            return Ok(());
                        }
                    }
                    Some(_) => {}
                }
            }
        }
    }

    /// Stream every stored chunk result of a run, in chunk order.
    pub async fn results(&self, run_id: &str, tx: mpsc::Sender<Result<ResultChunk>>) {
        if let Err(e) = self.results_inner(run_id, &tx).await {
            let _ = tx.send(Err(e)).await;
        }
    }

    async fn results_inner(
        &self,
        run_id: &str,
        tx: &mpsc::Sender<Result<ResultChunk>>,
    ) -> Result<()> {
        let spec = self.spec(run_id).await?;
        let key = self.keys.results(run_id);
        let mut c = self.conn();
        let batch = (RESULTS_BATCH_BYTES / (spec.chunk_size.max(1) * 8)).clamp(1, RESULTS_BATCH);
        let mut first = 0;
        while first < spec.total_chunks {
            let last = (first + batch).min(spec.total_chunks);
            let idx: Vec<u64> = (first..last).collect();
            let vals: Vec<Option<Vec<u8>>> = self
                .timed(redis::cmd("HMGET").arg(&key).arg(&idx).query_async(&mut c))
                .await?;
            for (i, v) in idx.into_iter().zip(vals) {
                let Some(bytes) = v else { continue };
                let values = unpack_values(&bytes)?;
                let (start, _) = chunk_range(spec.params, spec.chunk_size, i);
                if tx
                    .send(Ok(ResultChunk {
                        chunk_index: i,
                        start,
                        values,
                    }))
                    .await
                    .is_err()
                {
                    return Ok(());
                }
            }
            first = last;
        }
        Ok(())
    }
}

/// Re-exported for tests that inspect state names.
pub use ttg_proto::records::is_finished as state_is_finished;
