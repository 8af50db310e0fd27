//! Runs and agents on Redis. Knows nothing of tonic; every Redis call has a
//! deadline so a Redis that is down or hung becomes [`Error::RedisTimeout`]
//! or [`Error::Redis`], never a hang.
//!
//! One [`Store`] type, its methods split by concern, one file each:
//! - `submit`: validate (see [`crate::validate`]), store, queue the tasks.
//! - `runs`: status, listing, retry, cancel, and why a run is NotFound.
//! - `watch`: a run's events, resumable from any event id.
//! - `results`: a run's values, streamed in chunk order.
//! - `best`: a run's best points by one output (kept top-K, or a scan).
//! - `charts`: what the dashboard draws (histogram, heatmap, a sample), bounded.
//! - `export`: a run's points as a CSV or Parquet download, streamed.
//! - `agents`: agent records, leases, id ownership, reclaim of the dead.
//! - `housekeeping`: retention, delete, a cancelled run's queued tasks.
//! - `audit`: the books of active runs, and re-queueing lost chunks.
//! - `metrics`: the Redis-kept counters and gauges for Prometheus.
//!
//! This file holds the connection plumbing; its imports are the shared
//! prelude of the files above (`use super::*`).

use std::collections::HashMap;
use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use redis::streams::StreamReadReply;
use redis::{RedisResult, Value};
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;
use ttg_proto::chunking::chunk_range;
use ttg_proto::keys::{new_run_id_in, valid_run_id, Keys, Layout};
use ttg_proto::reclaim::{reclaim_consumer, Cause, Reclaimed};
use ttg_proto::records::{
    decode_events, decode_spec, encode, event_after, event_body, is_finished, is_terminal,
    parse_state, run_status_from_hash, unpack_values, EVENT_FIELD, TASK_FIELD,
};
use ttg_proto::redis_target::{Conn, Target};
use ttg_proto::v1::{
    event, AgentInfo, DeadChunk, Event, Priority, Progress, ResultChunk, RunCancelled, RunSpec,
    RunState, RunStatus, RunSubmitted, SubmitRequest, Task,
};
use ttg_proto::{kernels, now_ms, redis_conn};

use ttg_proto::scripts::Scripts;

use crate::config::Limits;
use crate::error::{Error, Result};

mod agents;
mod audit;
mod best;
mod charts;
mod export;
mod housekeeping;
mod layout;
mod metrics;
mod results;
mod runs;
mod submit;
mod watch;
pub use crate::validate::*;
pub use audit::{missing_chunks, task_for};
pub use best::{DEFAULT_BEST, MAX_BEST};
pub use charts::{Heatmap, Histogram, PointSample, MAX_BINS, MAX_SAMPLE};
pub use export::{FileFormat, Pieces};
pub use runs::RunFilter;

/// Runs and agents in Redis.
pub struct Store {
    limits: Limits,
    /// The installation's slot groups (see [`Layout`]): one until the
    /// layout stored in Redis says otherwise (see `layout.rs`).
    layout: std::sync::RwLock<Arc<Layout>>,
    /// The home group's keys: the installation's prefix in every layout,
    /// so they never change (the groups derive from it).
    home: Keys,
    target: Target,
    conn: Conn,
    /// The connection Submit, Cancel, Retry and Delete write through:
    /// `conn`, or with --redis-wait-replicas one of their own, so the WAIT
    /// after each (which covers what its connection wrote, and blocks it
    /// meanwhile) holds up no read.
    writes: Conn,
    /// --redis-wait-replicas and its timeout, when set.
    wait: Option<(u32, Duration)>,
    scripts: Arc<Scripts>,
    deadline: Duration,
}

impl Store {
    /// A store on `target` under `prefix` (hash-tagged on a cluster, see
    /// [`Target::prefix`]); connects lazily.
    pub fn new(target: Target, prefix: &str, deadline: Duration, limits: Limits) -> Result<Self> {
        let conn = target.shared()?;
        let prefix = target.prefix(prefix);
        Ok(Self {
            limits,
            layout: std::sync::RwLock::new(Arc::new(Layout::new(&prefix, 1))),
            home: Keys::new(prefix),
            target,
            writes: conn.clone(),
            conn,
            wait: None,
            scripts: Arc::new(Scripts::new()),
            deadline,
        })
    }

    /// Wait for `replicas` replicas (at most `timeout`) after each Submit,
    /// Cancel, Retry and Delete, on a connection of their own; 0 does not
    /// wait.
    pub fn with_wait_replicas(mut self, replicas: u32, timeout: Duration) -> Result<Self> {
        if replicas > 0 {
            self.wait = Some((replicas, timeout));
            self.writes = self.target.shared()?;
        }
        Ok(self)
    }

    /// The connection of the writes a client's request makes (see `writes`).
    fn writer(&self) -> Conn {
        self.writes.clone()
    }

    /// With --redis-wait-replicas: wait (Redis WAIT, on the writes'
    /// connection, at the node holding `key`) until that many replicas hold
    /// what was written. Short or failed waits are counted and logged; the
    /// request still succeeds, because its write stands on the primary
    /// (retrying a Submit would make a second run). What a failover can
    /// still lose is said in docs/architecture.md, "Redis Cluster".
    async fn replicated(&self, key: &str) {
        let Some((want, timeout)) = self.wait else {
            return;
        };
        let mut c = self.writer();
        match self.timed(c.wait_replicas(key, want, timeout)).await {
            Ok(n) if n >= want => {}
            Ok(n) => {
                ::metrics::counter!("ttg_server_writes_unreplicated_total").increment(1);
                tracing::warn!(
                    replicas = n,
                    want,
                    "write not on enough replicas within --redis-wait-timeout"
                );
            }
            Err(e) => {
                ::metrics::counter!("ttg_server_writes_unreplicated_total").increment(1);
                tracing::warn!(error = %e, "WAIT after a write failed");
            }
        }
    }

    /// The current layout.
    pub fn layout(&self) -> Arc<Layout> {
        self.layout
            .read()
            .map(|l| l.clone())
            .unwrap_or_else(|e| e.into_inner().clone())
    }

    /// The home group's key names (agents, the layout, the control
    /// channel).
    pub fn keys(&self) -> &Keys {
        &self.home
    }

    /// The key names of `run_id`'s group; NotFound for an id naming a
    /// group the installation does not have.
    pub fn keys_of(&self, run_id: &str) -> Result<Keys> {
        self.layout()
            .of_run(run_id)
            .cloned()
            .ok_or_else(|| Error::RunNotFound(run_id.to_string()))
    }

    /// A clone of the shared connection.
    pub fn conn(&self) -> Conn {
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
        self.timed(redis_conn::ensure_group(&mut c, stream_key))
            .await
    }

    /// Where Redis is, for connections of their own (pub/sub, blocking reads).
    pub fn target(&self) -> &Target {
        &self.target
    }
}

/// Re-exported for tests that inspect state names.
pub use ttg_proto::records::is_finished as state_is_finished;
