//! What a test reads straight from Redis (events, pending entries, claims
//! as an agent makes them) and the books it checks against.

use super::*;

/// Every event of a run, read straight from Redis (works with no server up).
pub fn events_in_redis(redis: &Redis, prefix: &str, run_id: &str) -> Vec<Event> {
    let mut c = redis.conn();
    let reply: redis::streams::StreamRangeReply = redis::cmd("XRANGE")
        .arg(ttg_proto::keys::Keys::new(prefix).events(run_id))
        .arg("-")
        .arg("+")
        .query(&mut c)
        .expect("xrange events");
    reply
        .ids
        .iter()
        .flat_map(|e| ttg_proto::records::decode_events(&e.id, &e.map).expect("event entry"))
        .collect()
}

/// Every event of the run's stream, decoded strictly with prost alone, as
/// any client could: one Event (`e`), or a completion's events, each
/// length-delimited (`b`). Ids are not set (see `events_in_redis`).
pub fn raw_events(redis: &Redis, keys: &ttg_proto::keys::Keys, run_id: &str) -> Vec<Event> {
    use prost::Message;
    let page: redis::streams::StreamRangeReply = redis::cmd("XRANGE")
        .arg(keys.events(run_id))
        .arg("-")
        .arg("+")
        .query(&mut redis.conn())
        .expect("xrange");
    page.ids
        .iter()
        .flat_map(|e| match (e.map.get("e"), e.map.get("b")) {
            (Some(redis::Value::BulkString(b)), _) => {
                vec![Event::decode(b.as_slice()).expect("prost decodes it")]
            }
            // A completion's batch: its events, each length-delimited.
            (None, Some(redis::Value::BulkString(b))) => {
                let mut buf = b.as_slice();
                let mut out = Vec::new();
                while !buf.is_empty() {
                    out.push(Event::decode_length_delimited(&mut buf).expect("prost decodes it"));
                }
                out
            }
            other => panic!("event without payload: {other:?}"),
        })
        .collect()
}

/// Chunk indices of the ChunkCompleted events (one per chunk counted).
pub fn completed_chunks(events: &[Event]) -> Vec<u64> {
    events
        .iter()
        .filter_map(|e| match &e.kind {
            Some(ttg_proto::v1::event::Kind::ChunkCompleted(k)) => Some(k.chunk_index),
            _ => None,
        })
        .collect()
}

/// The ChunkReclaimed events.
pub fn reclaims(events: &[Event]) -> Vec<(ttg_proto::v1::ChunkReclaimed, i64)> {
    events
        .iter()
        .filter_map(|e| match &e.kind {
            Some(ttg_proto::v1::event::Kind::ChunkReclaimed(k)) => Some((k.clone(), e.time_ms)),
            _ => None,
        })
        .collect()
}

/// Entries of `consumer` pending in the placeholder tasks stream.
pub fn pending_of(redis: &Redis, prefix: &str, consumer: &str) -> usize {
    let mut c = redis.conn();
    let r: redis::streams::StreamPendingCountReply = redis::cmd("XPENDING")
        .arg(ttg_proto::keys::Keys::new(prefix).tasks("placeholder"))
        .arg(ttg_proto::keys::GROUP)
        .arg("-")
        .arg("+")
        .arg(1000)
        .arg(consumer)
        .query(&mut c)
        .unwrap_or(redis::streams::StreamPendingCountReply { ids: vec![] });
    r.ids.len()
}

/// Every entry pending in the placeholder tasks stream, and its length.
pub fn queue_state(redis: &Redis, prefix: &str) -> (usize, usize) {
    let mut c = redis.conn();
    let key = ttg_proto::keys::Keys::new(prefix).tasks("placeholder");
    let r: redis::streams::StreamPendingCountReply = redis::cmd("XPENDING")
        .arg(&key)
        .arg(ttg_proto::keys::GROUP)
        .arg("-")
        .arg("+")
        .arg(100_000)
        .query(&mut c)
        .unwrap_or(redis::streams::StreamPendingCountReply { ids: vec![] });
    let len: usize = redis::cmd("XLEN").arg(&key).query(&mut c).unwrap_or(0);
    (r.ids.len(), len)
}

/// Wait (≤ `within`) until the placeholder tasks stream holds nothing and
/// nothing is pending in it. Not at once when a run ends: if a chunk was
/// reclaimed from a live agent (frozen, cut off) and that agent's late result
/// won, the chunk's re-queued copy is still queued or computing when the run
/// ends; an agent then drops it (run finished). It must go, just not
/// instantly.
pub async fn assert_queue_drains(redis: &Redis, prefix: &str, within: Duration) {
    wait_for("tasks stream drained, nothing pending", within, || {
        let q = queue_state(redis, prefix);
        async move {
            match q {
                (0, 0) => Ok(()),
                (pending, len) => Err(format!("{pending} pending, stream length {len}")),
            }
        }
    })
    .await
}

/// Check a finished run counted every chunk exactly once with the exact sum.
pub fn assert_exactly_once(events: &[Event], params: u64, chunks: u64) {
    let done = completed_chunks(events);
    let distinct: std::collections::BTreeSet<_> = done.iter().collect();
    assert_eq!(done.len(), distinct.len(), "a chunk was counted twice");
    assert_eq!(distinct.len() as u64, chunks, "every chunk counted");
    let last = events.last().expect("events");
    let Some(ttg_proto::v1::event::Kind::RunCompleted(c)) = &last.kind else {
        panic!("run did not complete: {last:?}")
    };
    assert_eq!(c.state, ttg_proto::v1::RunState::Succeeded as i32);
    let a = c.aggregate.expect("aggregate");
    assert_eq!(a.count, params);
    assert_eq!(cents(a.sum), cents(expected_sum(params)), "exact aggregate");
}

/// Up to `n` chunks of `kernel` the scheduler hands to `consumer`
/// (claim.lua, as an agent claims), in XREADGROUP's reply shape.
pub async fn claim_read(
    conn: &mut redis::aio::MultiplexedConnection,
    keys: &ttg_proto::keys::Keys,
    kernel: &str,
    consumer: &str,
    n: usize,
) -> redis::streams::StreamReadReply {
    let scripts = ttg_proto::scripts::Scripts::new();
    let reply = ttg_proto::sched::claim(conn, &scripts, keys, &[kernel.to_string()], consumer, n)
        .await
        .expect("claim");
    redis::streams::StreamReadReply { keys: reply.keys }
}

/// Up to `n` chunks claimed from the tasks stream `tasks` (`<prefix>tasks:<kernel>`)
/// for `consumer`, decoded: `(entry id, task entry)`.
pub async fn read_group(
    conn: &mut redis::aio::MultiplexedConnection,
    tasks: &str,
    consumer: &str,
    n: usize,
) -> Vec<(String, ttg_proto::records::TaskEntry)> {
    let (prefix, kernel) = tasks.rsplit_once("tasks:").expect("a tasks stream key");
    let keys = ttg_proto::keys::Keys::new(prefix);
    let r = claim_read(conn, &keys, kernel, consumer, n).await;
    r.keys
        .into_iter()
        .flat_map(|k| k.ids)
        .map(|e| {
            let entry = ttg_proto::records::TaskEntry::decode(&e.map).expect("task entry");
            (e.id, entry)
        })
        .collect()
}

/// A completion of `task`, delivered as `entry`, with `values`, as an agent
/// named "tester" sends it (a ChunkCompleted event with the values' sum).
pub fn tester_chunk(
    run_id: &str,
    entry: &str,
    task: &ttg_proto::v1::Task,
    values: &[f64],
) -> ttg_proto::scripts::ChunkResult {
    use ttg_proto::v1::{event, ChunkCompleted};
    let body = ttg_proto::records::event_body(
        run_id,
        event::Kind::ChunkCompleted(ChunkCompleted {
            chunk_index: task.chunk_index,
            start: task.start,
            end: task.end,
            agent_id: "tester".into(),
            attempt: 1,
            sum: values.iter().sum(),
            compute_ms: 0,
        }),
    );
    ttg_proto::scripts::ChunkResult::new(entry, task.chunk_index, task.start, values, body)
}
