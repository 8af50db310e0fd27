//! Reclaiming the deliveries of an agent that died: each pending entry is
//! re-queued with attempt + 1 (or dead-lettered at max attempts) in one atomic
//! script that first checks the entry is still pending for that agent, so any
//! number of reclaimers — the replica that held the session, another
//! replica's reaper, a sweeping agent — can race and a chunk is reclaimed at
//! most once. Shared by the server and the agents.

use std::time::Duration;

use redis::aio::ConnectionLike;
use redis::streams::{StreamPendingCountReply, StreamRangeReply};
use redis::{RedisResult, Value};

use crate::keys::{Keys, GROUP};
use crate::records::{event_body, TaskEntry, TASK_FIELD};
use crate::scripts::{FailedAttempt, Failure, Scripts};
use crate::v1::{event, ChunkFailed, ChunkReclaimed};

/// Why an agent's deliveries are being reclaimed.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Cause {
    /// Its session ended without Bye (process killed, connection reset).
    SessionLost,
    /// No heartbeat within the lease (frozen, network cut).
    LeaseExpired,
    /// Found idle for several leases by a sweep (no server noticed).
    Sweep,
}

impl Cause {
    /// Name used in events and logs.
    pub fn as_str(self) -> &'static str {
        match self {
            Cause::SessionLost => "session-lost",
            Cause::LeaseExpired => "lease-expired",
            Cause::Sweep => "sweep",
        }
    }
}

/// One delivery that was reclaimed.
#[derive(Clone, Debug)]
pub struct Reclaimed {
    /// Run id.
    pub run_id: String,
    /// Chunk index.
    pub chunk_index: u64,
    /// Attempt that was lost.
    pub attempt: u32,
    /// What happened to it.
    pub outcome: Failure,
}

fn bulk(v: Option<&Value>) -> Option<&[u8]> {
    match v {
        Some(Value::BulkString(b)) => Some(b),
        _ => None,
    }
}

/// Reclaim one pending entry of `stream`, owned by consumer `owner`, on
/// behalf of agent `agent` (the same as `owner` except for a sweep, where the
/// sweeper owns it by then). `after` is how long ago the agent was known dead.
#[allow(clippy::too_many_arguments)]
pub async fn reclaim_entry<C: ConnectionLike>(
    conn: &mut C,
    keys: &Keys,
    scripts: &Scripts,
    stream: &str,
    entry_id: &str,
    owner: &str,
    agent: &str,
    cause: Cause,
    after: Duration,
    lost_span: &str,
) -> RedisResult<Option<Reclaimed>> {
    let Some(TaskEntry {
        task,
        attempt,
        traceparent: tp,
        ..
    }) = read_entry(conn, keys, stream, entry_id).await?
    else {
        return Ok(None);
    };
    let run_id = task.run_id.clone();
    // The reclaim is part of the run's trace, linked to the attempt it ends.
    let span = tracing::info_span!("reclaim", run_id = %run_id, chunk = task.chunk_index,
        params.start = task.start, params.end = task.end, attempt, agent_id = %agent,
        kernel = %task.kernel, cause = cause.as_str());
    crate::telemetry::set_parent(&span, &String::from_utf8_lossy(&tp));
    if let Some(sc) = crate::telemetry::span_context_from_traceparent(lost_span) {
        tracing_opentelemetry::OpenTelemetrySpanExt::add_link(&span, sc);
    }
    let error = format!("agent {agent} died holding it ({})", cause.as_str());
    let (retry_body, dead_body) = reclaim_bodies(&task, attempt, agent, cause, after, &error);
    let inv = scripts.reclaim(
        keys,
        &run_id,
        stream,
        owner,
        &FailedAttempt {
            entry_id,
            task: &task,
            attempt,
            error: &error,
            first_line: &error,
            traceparent: &tp,
            retry_body: &retry_body,
            dead_body: &dead_body,
        },
    );
    let (code, state): (i64, String) =
        tracing::Instrument::instrument(inv.invoke_async(conn), span).await?;
    Ok(Some(Reclaimed {
        run_id,
        chunk_index: task.chunk_index,
        attempt,
        outcome: Failure::from_reply(code, &state),
    }))
}

/// The entry `entry_id` of `stream`, decoded; None if there is nothing to
/// reclaim: it is gone from the stream (its pending record is cleared) or
/// corrupt (moved to the corrupt-entries stream).
async fn read_entry<C: ConnectionLike>(
    conn: &mut C,
    keys: &Keys,
    stream: &str,
    entry_id: &str,
) -> RedisResult<Option<TaskEntry>> {
    let range: StreamRangeReply = redis::cmd("XRANGE")
        .arg(stream)
        .arg(entry_id)
        .arg(entry_id)
        .query_async(conn)
        .await?;
    let Some(entry) = range.ids.into_iter().next() else {
        redis::cmd("XACK")
            .arg(stream)
            .arg(GROUP)
            .arg(entry_id)
            .query_async::<()>(conn)
            .await?;
        return Ok(None);
    };
    match TaskEntry::decode(&entry.map) {
        Ok(e) => Ok(Some(e)),
        Err(e) => {
            let error = e.to_string();
            let raw = bulk(entry.map.get(TASK_FIELD)).unwrap_or_default();
            tracing::error!(stream, entry = entry_id, error = %error, "corrupt task entry moved to the corrupt-entries stream");
            crate::records::quarantine(keys, stream, entry_id, &error, raw)
                .query_async::<()>(conn)
                .await?;
            Ok(None)
        }
    }
}

/// The events of a reclaim: ChunkReclaimed if re-queued, ChunkFailed
/// (dead) if no attempts are left.
fn reclaim_bodies(
    task: &crate::v1::Task,
    attempt: u32,
    agent: &str,
    cause: Cause,
    after: Duration,
    error: &str,
) -> (Vec<u8>, Vec<u8>) {
    let retry = event_body(
        &task.run_id,
        event::Kind::ChunkReclaimed(ChunkReclaimed {
            chunk_index: task.chunk_index,
            agent_id: agent.to_string(),
            attempt: attempt + 1,
            after_ms: after.as_millis() as u64,
            cause: cause.as_str().to_string(),
        }),
    );
    let dead = event_body(
        &task.run_id,
        event::Kind::ChunkFailed(ChunkFailed {
            chunk_index: task.chunk_index,
            agent_id: agent.to_string(),
            attempt,
            error: error.to_string(),
            dead: true,
        }),
    );
    (retry, dead)
}

/// Reclaim everything consumer `agent` holds in `stream`, then remove the
/// consumer from the group (only if it then holds nothing).
#[allow(clippy::too_many_arguments)]
pub async fn reclaim_consumer<C: ConnectionLike>(
    conn: &mut C,
    keys: &Keys,
    scripts: &Scripts,
    stream: &str,
    agent: &str,
    cause: Cause,
    died: std::time::Instant,
    links: &std::collections::HashMap<String, String>,
) -> RedisResult<Vec<Reclaimed>> {
    let mut out = Vec::new();
    loop {
        let pending: RedisResult<StreamPendingCountReply> = redis::cmd("XPENDING")
            .arg(stream)
            .arg(GROUP)
            .arg("-")
            .arg("+")
            .arg(100)
            .arg(agent)
            .query_async(conn)
            .await;
        let pending = match pending {
            // No such stream or group (a kernel nobody ever queued a task
            // for): the agent cannot hold anything there.
            Err(e) if e.code() == Some("NOGROUP") => return Ok(out),
            other => other?,
        };
        if pending.ids.is_empty() {
            break;
        }
        let mut progressed = false;
        for p in pending.ids {
            let lost = links.get(&p.id).map(String::as_str).unwrap_or("");
            let r = reclaim_entry(
                conn,
                keys,
                scripts,
                stream,
                &p.id,
                agent,
                agent,
                cause,
                died.elapsed(),
                lost,
            )
            .await?;
            progressed = true;
            out.extend(r);
        }
        if !progressed {
            break;
        }
    }
    let _: i64 = scripts
        .del_consumer(stream, agent)
        .invoke_async(conn)
        .await?;
    Ok(out)
}
