//! Records two processes exchange through Redis: task entries, run hashes,
//! events and packed values — their encodings and the one decoder of each.
//! The scripts that write them atomically are in [`crate::scripts`].
//!
//! Layout (all keys from [`crate::keys::Keys`]):
//! - tasks stream entry: `t` = protobuf [`Task`], `a` = attempt (decimal;
//!   absent means 1). claim.lua writes `t` as the run's `task` template
//!   (which carries the run's traceparent and submit time) followed by the
//!   chunk's index, start and end fields, and for a re-queued chunk its
//!   re-queue time (concatenated protobuf merges, later fields win).
//!   Entries appended before #19 carry `tp` (traceparent) as a field; `q`
//!   (queued ms), when present, overrides the task's `queued_ms`.
//! - run hash: `spec` = protobuf [`RunSpec`]; `state` (enum name); `total`,
//!   `done`, `dead`, `count` (integers); `sum` (HINCRBYFLOAT, long double in
//!   Redis); `min`, `max` (the shortest decimal of an f64); `created_ms`,
//!   `started_ms`, `finished_ms`; the scheduler's fields (`task`, `tp`,
//!   `next`, `qn`, `inflight`, `cap`, `weight`, `class`, `sched`, `wake`,
//!   `claims`, `wait_sum`, `wait_max`; see prelude.lua and claim.lua).
//! - done bitmap: bit `i` set once chunk `i` is counted — "first result wins".
//! - results hash: chunk index → packed little-endian f64.
//! - events stream: `e` = protobuf [`Event`]. The Rust side encodes the event's
//!   body (`run_id` and its `kind`); the scripts append `time_ms` and `progress`
//!   (and whole terminal events) as extra protobuf fields, which is valid
//!   protobuf: fields may come in any order and concatenated messages merge.
//!   A completion's ChunkCompleted events go in as one entry instead: `b` =
//!   the events, each length-delimited; the entry's id is its last event's
//!   and the others take the sequence numbers just below (prelude.lua's
//!   `emit_batch`), so every event has an id of its own ([`decode_events`]).

use std::collections::HashMap;

use prost::Message;
use redis::Value;

use crate::v1::{
    event, Aggregate, Event, OutputSummary, Progress, RunSpec, RunState, RunStatus, Task,
};

/// Tasks stream entry field: when the chunk was queued, ms since the epoch.
pub const QUEUED_FIELD: &str = "q";
/// Tasks stream entry field holding the protobuf Task.
pub const TASK_FIELD: &str = "t";
/// Tasks stream entry field holding the attempt number.
pub const ATTEMPT_FIELD: &str = "a";
/// Tasks stream entry field holding the W3C traceparent.
pub const TRACEPARENT_FIELD: &str = "tp";
/// Events stream entry field holding the protobuf Event.
pub const EVENT_FIELD: &str = "e";
/// Events stream entry field holding several events, each length-delimited.
pub const EVENTS_FIELD: &str = "b";

/// A record read from Redis could not be decoded.
#[derive(Debug, thiserror::Error)]
pub enum DecodeError {
    /// Protobuf bytes were malformed.
    #[error("malformed {what}: {source}")]
    Protobuf {
        /// Which record.
        what: &'static str,
        /// Decoder's complaint.
        #[source]
        source: prost::DecodeError,
    },
    /// A field was missing or of the wrong shape.
    #[error("malformed {what}: {detail}")]
    Field {
        /// Which record.
        what: &'static str,
        /// What was wrong.
        detail: String,
    },
}

/// Encode a record.
pub fn encode<M: Message>(m: &M) -> Vec<u8> {
    m.encode_to_vec()
}

/// A tasks stream entry, decoded: the task, its attempt and traceparent.
#[derive(Debug, Clone, PartialEq)]
pub struct TaskEntry {
    /// The chunk to compute.
    pub task: Task,
    /// Attempt number, 1 for the first delivery.
    pub attempt: u32,
    /// W3C traceparent of the run's trace (bytes as stored; may be empty).
    pub traceparent: Vec<u8>,
    /// When the chunk was queued (ms since the epoch), if the entry says.
    pub queued_ms: Option<i64>,
}

impl TaskEntry {
    /// Decode an entry's fields. The one rule for bad entries, used by
    /// agents and reclaimers alike: the `t` field must decode to a task
    /// with a run id and a non-empty range, and `a`, when present, must be
    /// a positive integer (absent means 1). Anything else is an error
    /// naming what is wrong, for the corrupt-entries stream.
    pub fn decode(fields: &HashMap<String, Value>) -> Result<TaskEntry, DecodeError> {
        let bulk = |k: &str| match fields.get(k) {
            Some(Value::BulkString(b)) => Some(b.as_slice()),
            _ => None,
        };
        let field = |detail: &str| DecodeError::Field {
            what: "task entry",
            detail: detail.to_string(),
        };
        let task =
            decode_task(bulk(TASK_FIELD).ok_or_else(|| field("entry without a `t` field"))?)?;
        if task.run_id.is_empty() || task.end <= task.start {
            return Err(field("task with an empty range or no run id"));
        }
        let attempt = match fields.get(ATTEMPT_FIELD) {
            None => 1,
            Some(_) => bulk(ATTEMPT_FIELD)
                .and_then(|b| std::str::from_utf8(b).ok())
                .and_then(|s| s.parse::<u32>().ok())
                .filter(|a| *a >= 1)
                .ok_or_else(|| field("attempt field is not a positive integer"))?,
        };
        Ok(TaskEntry {
            attempt,
            traceparent: bulk(TRACEPARENT_FIELD)
                .map(<[u8]>::to_vec)
                .unwrap_or_else(|| task.traceparent.clone().into_bytes()),
            queued_ms: bulk(QUEUED_FIELD)
                .and_then(|b| std::str::from_utf8(b).ok())
                .and_then(|s| s.parse::<i64>().ok())
                .or((task.queued_ms > 0).then_some(task.queued_ms)),
            task,
        })
    }
}

/// Decode a task record.
pub fn decode_task(bytes: &[u8]) -> Result<Task, DecodeError> {
    Task::decode(bytes).map_err(|source| DecodeError::Protobuf {
        what: "task",
        source,
    })
}

/// Decode a run spec.
pub fn decode_spec(bytes: &[u8]) -> Result<RunSpec, DecodeError> {
    RunSpec::decode(bytes).map_err(|source| DecodeError::Protobuf {
        what: "run spec",
        source,
    })
}

/// Decode an event read from the events stream, setting its id.
pub fn decode_event(id: &str, bytes: &[u8]) -> Result<Event, DecodeError> {
    let mut e = Event::decode(bytes).map_err(|source| DecodeError::Protobuf {
        what: "event",
        source,
    })?;
    e.id = id.to_string();
    Ok(e)
}

/// A stream id `<ms>-<seq>` as numbers (None if it is not one).
pub fn parse_stream_id(id: &str) -> Option<(u64, u64)> {
    let (ms, seq) = id.split_once('-')?;
    Some((ms.parse().ok()?, seq.parse().ok()?))
}

/// The events an events-stream entry holds, in order, each with its id:
/// the entry's own for a single event (`e`); for a batch (`b`, n events),
/// the entry's id is the last event's and event `k` has sequence number
/// `seq - (n - 1 - k)` in the same ms. An entry with neither field is an
/// error, as is a batch whose ids would not fit below its own.
pub fn decode_events(id: &str, fields: &HashMap<String, Value>) -> Result<Vec<Event>, DecodeError> {
    let bulk = |k: &str| match fields.get(k) {
        Some(Value::BulkString(b)) => Some(b.as_slice()),
        _ => None,
    };
    if let Some(b) = bulk(EVENT_FIELD) {
        return Ok(vec![decode_event(id, b)?]);
    }
    let field = |detail: String| DecodeError::Field {
        what: "events entry",
        detail,
    };
    let mut buf = bulk(EVENTS_FIELD)
        .ok_or_else(|| field(format!("entry {id} without an `e` or `b` field")))?;
    let (ms, seq) =
        parse_stream_id(id).ok_or_else(|| field(format!("entry id {id:?} is not <ms>-<seq>")))?;
    let mut events = Vec::new();
    while !buf.is_empty() {
        events.push(Event::decode_length_delimited(&mut buf).map_err(|source| {
            DecodeError::Protobuf {
                what: "event",
                source,
            }
        })?);
    }
    let n = events.len() as u64;
    let first = (seq + 1).checked_sub(n).ok_or_else(|| {
        field(format!(
            "entry {id} holds {n} events, more than its id has room for"
        ))
    })?;
    for (k, e) in events.iter_mut().enumerate() {
        e.id = format!("{ms}-{}", first + k as u64);
    }
    Ok(events)
}

/// Whether event id `id` comes after `cursor`: a stream id, or `<ms>` (as
/// Redis reads it, `<ms>-0`); anything else, such as `$` or empty, is
/// before every id.
pub fn event_after(id: &str, cursor: &str) -> bool {
    let cursor = parse_stream_id(cursor).or_else(|| Some((cursor.parse().ok()?, 0)));
    match (parse_stream_id(id), cursor) {
        (Some(a), Some(c)) => a > c,
        _ => true,
    }
}

/// Body of an event (run id and kind); the scripts add time and progress.
pub fn event_body(run_id: &str, kind: event::Kind) -> Vec<u8> {
    Event {
        run_id: run_id.to_string(),
        kind: Some(kind),
        ..Default::default()
    }
    .encode_to_vec()
}

/// Whether an event ends its run's event stream.
pub fn is_terminal(e: &Event) -> bool {
    matches!(
        e.kind,
        Some(event::Kind::RunCompleted(_)) | Some(event::Kind::RunCancelled(_))
    )
}

/// Commands that move an undecodable task entry to the installation's
/// corrupt-entries stream with `error`, and ack and delete it, in one MULTI.
pub fn quarantine(
    keys: &crate::keys::Keys,
    stream: &str,
    entry_id: &str,
    error: &str,
    raw: &[u8],
) -> redis::Pipeline {
    let mut p = redis::pipe();
    p.atomic()
        .cmd("XADD")
        .arg(keys.corrupt_entries())
        .arg("MAXLEN")
        .arg("~")
        .arg(100_000)
        .arg("*")
        .arg("stream")
        .arg(stream)
        .arg("entry")
        .arg(entry_id)
        .arg("err")
        .arg(error)
        .arg("t")
        .arg(&raw[..raw.len().min(65_536)])
        .ignore()
        .cmd("XACK")
        .arg(stream)
        .arg(crate::keys::GROUP)
        .arg(entry_id)
        .ignore()
        .cmd("XDEL")
        .arg(stream)
        .arg(entry_id)
        .ignore();
    p
}

/// Pack values as little-endian f64.
pub fn pack_values(values: &[f64]) -> Vec<u8> {
    let mut out = Vec::with_capacity(values.len() * 8);
    for v in values {
        out.extend_from_slice(&v.to_le_bytes());
    }
    out
}

/// Unpack little-endian f64 values.
pub fn unpack_values(bytes: &[u8]) -> Result<Vec<f64>, DecodeError> {
    if !bytes.len().is_multiple_of(8) {
        return Err(DecodeError::Field {
            what: "result",
            detail: format!("{} bytes is not a whole number of f64", bytes.len()),
        });
    }
    Ok(bytes
        .chunks_exact(8)
        .map(|c| {
            let mut b = [0u8; 8];
            b.copy_from_slice(c);
            f64::from_le_bytes(b)
        })
        .collect())
}

/// Parse a run state name as stored in the run hash.
pub fn parse_state(s: &str) -> RunState {
    RunState::from_str_name(s).unwrap_or(RunState::Unspecified)
}

/// Whether a state is final.
pub fn is_finished(s: RunState) -> bool {
    matches!(
        s,
        RunState::Succeeded | RunState::Failed | RunState::Cancelled
    )
}

/// The run hash as a [`RunStatus`] (chunks in flight and message left empty:
/// they come from agents' heartbeats, not from the hash).
pub fn run_status_from_hash(
    h: &HashMap<String, Vec<u8>>,
    now_ms: i64,
) -> Result<RunStatus, DecodeError> {
    let spec_bytes = h.get("spec").ok_or(DecodeError::Field {
        what: "run",
        detail: "no spec".into(),
    })?;
    let spec = decode_spec(spec_bytes)?;
    let text = |k: &str| h.get(k).map(|v| String::from_utf8_lossy(v).into_owned());
    let int = |k: &str| text(k).and_then(|s| s.parse::<i64>().ok()).unwrap_or(0);
    let float = |k: &str| text(k).and_then(|s| s.parse::<f64>().ok()).unwrap_or(0.0);
    let state = parse_state(&text("state").unwrap_or_default());
    let count = int("count").max(0) as u64;
    let sum = float("sum");
    let started = int("started_ms");
    let finished = int("finished_ms");
    let end = if finished > 0 { finished } else { now_ms };
    let secs = (end - started) as f64 / 1000.0;
    let rate = if started > 0 && secs > 0.0 {
        count as f64 / secs
    } else {
        0.0
    };
    // The scheduler's books (claim.lua): chunks not yet handed out are the
    // fresh ones past `next` and the re-queued ones; none once ended.
    let live = matches!(state, RunState::Queued | RunState::Running);
    let queued = if live && h.contains_key("next") {
        (int("total") - int("next")).max(0) as u64 + int("qn").max(0) as u64
    } else {
        0
    };
    let claims = int("claims").max(0) as u64;
    Ok(RunStatus {
        state: state as i32,
        progress: Some(Progress {
            chunks_total: int("total").max(0) as u64,
            chunks_done: int("done").max(0) as u64,
            chunks_dead: int("dead").max(0) as u64,
            params_done: count,
            chunks_purged: int("purged").max(0) as u64,
        }),
        chunks_in_flight: int("inflight").max(0) as u64,
        chunks_queued: queued,
        claims,
        queue_wait_mean_ms: if claims > 0 {
            int("wait_sum").max(0) as f64 / claims as f64
        } else {
            0.0
        },
        queue_wait_max_ms: int("wait_max").max(0) as u64,
        agent_ms: int("served").max(0) as u64 / 1000,
        aggregate: Some(Aggregate {
            count,
            sum,
            min: float("min"),
            max: float("max"),
            mean: if count > 0 { sum / count as f64 } else { 0.0 },
        }),
        created_ms: spec.created_ms,
        started_ms: started,
        finished_ms: finished,
        params_per_second: rate,
        // Why the run ended early (fail-fast), if it did; otherwise filled
        // in later with why it is waiting.
        message: text("error").unwrap_or_default(),
        dead_chunks: Vec::new(),
        expires_ms: int("expires_ms"),
        outputs: output_summaries(h, &spec),
        spec: Some(spec),
    })
}

/// The run hash's field for output `k`'s statistic `name` (`sum`, `min`,
/// `max`, `amin`, `amax`): the first output's are the plain names (so a
/// one-output run's hash is as before), the others' are `name:k`.
pub fn output_field(name: &str, k: usize) -> String {
    if k == 0 {
        name.to_string()
    } else {
        format!("{name}:{k}")
    }
}

/// Per output: aggregate and the points of its extremes, from the run hash.
pub fn output_summaries(h: &HashMap<String, Vec<u8>>, spec: &RunSpec) -> Vec<OutputSummary> {
    let Ok(sweep) = crate::space::Sweep::of(spec) else {
        return Vec::new();
    };
    let text = |k: &str| h.get(k).map(|v| String::from_utf8_lossy(v).into_owned());
    let float = |k: &str| text(k).and_then(|s| s.parse::<f64>().ok()).unwrap_or(0.0);
    let count = text("count")
        .and_then(|s| s.parse::<u64>().ok())
        .unwrap_or(0);
    let point = |k: &str| {
        let i = text(k)?.parse::<u64>().ok()?;
        (count > 0 && i < sweep.space.len()).then(|| sweep.space.wire_point(i))
    };
    sweep
        .outputs
        .iter()
        .enumerate()
        .map(|(k, name)| {
            let sum = float(&output_field("sum", k));
            OutputSummary {
                name: name.clone(),
                aggregate: Some(Aggregate {
                    count,
                    sum,
                    min: float(&output_field("min", k)),
                    max: float(&output_field("max", k)),
                    mean: if count > 0 { sum / count as f64 } else { 0.0 },
                }),
                argmin: point(&output_field("amin", k)),
                argmax: point(&output_field("amax", k)),
            }
        })
        .collect()
}

/// Shortest decimal that parses back to `v` exactly (what Rust's Display
/// prints for f64), for HINCRBYFLOAT and the min/max fields.
pub fn exact_decimal(v: f64) -> String {
    format!("{v}")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn values_round_trip() {
        let v = vec![0.0, -1.5, 13.99, f64::MAX];
        assert_eq!(unpack_values(&pack_values(&v)).unwrap(), v);
        assert!(unpack_values(&[1, 2, 3]).is_err());
    }

    #[test]
    fn decimals_round_trip() {
        for v in [0.1, 5000355.0, 1e300, -2.5e-300, 999.99] {
            assert_eq!(exact_decimal(v).parse::<f64>().unwrap(), v);
        }
    }

    #[test]
    fn task_entries_have_one_rule() {
        let task = Task {
            run_id: "r".into(),
            start: 0,
            end: 10,
            ..Default::default()
        };
        let entry = |t: &Task, a: Option<&str>| {
            let mut m = HashMap::new();
            m.insert(TASK_FIELD.to_string(), Value::BulkString(encode(t)));
            if let Some(a) = a {
                m.insert(
                    ATTEMPT_FIELD.to_string(),
                    Value::BulkString(a.as_bytes().to_vec()),
                );
            }
            m
        };
        assert_eq!(TaskEntry::decode(&entry(&task, None)).unwrap().attempt, 1);
        assert_eq!(
            TaskEntry::decode(&entry(&task, Some("3"))).unwrap().attempt,
            3
        );
        for bad in ["0", "-1", "x", ""] {
            assert!(
                TaskEntry::decode(&entry(&task, Some(bad))).is_err(),
                "{bad}"
            );
        }
        let empty = Task {
            end: 0,
            ..task.clone()
        };
        assert!(TaskEntry::decode(&entry(&empty, None)).is_err());
        let anonymous = Task {
            run_id: String::new(),
            ..task
        };
        assert!(TaskEntry::decode(&entry(&anonymous, None)).is_err());
        assert!(TaskEntry::decode(&HashMap::new()).is_err());
    }

    #[test]
    fn garbage_is_an_error_not_a_panic() {
        assert!(decode_task(&[0xff, 0xff, 0xff]).is_err());
        assert!(decode_event("1-0", &[0x0a, 0x05, 0x01]).is_err());
        let batch =
            |b: &[u8]| HashMap::from([(EVENTS_FIELD.to_string(), Value::BulkString(b.to_vec()))]);
        assert!(decode_events("1-5", &batch(&[0x05, 0x0a])).is_err());
        assert!(decode_events("1-5", &HashMap::new()).is_err());
    }

    #[test]
    fn a_batch_entry_gives_each_event_its_own_id() {
        let ev = |chunk: u64| Event {
            run_id: "r".into(),
            kind: Some(event::Kind::ChunkCompleted(crate::v1::ChunkCompleted {
                chunk_index: chunk,
                ..Default::default()
            })),
            ..Default::default()
        };
        let mut b = Vec::new();
        for c in 0..3 {
            ev(c).encode_length_delimited(&mut b).expect("encode");
        }
        let fields = HashMap::from([(EVENTS_FIELD.to_string(), Value::BulkString(b))]);
        let got = decode_events("1700-12", &fields).expect("decodes");
        let ids: Vec<&str> = got.iter().map(|e| e.id.as_str()).collect();
        assert_eq!(ids, ["1700-10", "1700-11", "1700-12"]);
        let chunks: Vec<u64> = got
            .iter()
            .map(|e| match &e.kind {
                Some(event::Kind::ChunkCompleted(c)) => c.chunk_index,
                _ => u64::MAX,
            })
            .collect();
        assert_eq!(chunks, [0, 1, 2]);
        // Three events cannot end at sequence number 1.
        assert!(decode_events("1700-1", &fields).is_err());
        let single = HashMap::from([(EVENT_FIELD.to_string(), Value::BulkString(encode(&ev(7))))]);
        assert_eq!(decode_events("5-0", &single).expect("single")[0].id, "5-0");
        assert!(event_after("1700-11", "1700-10"));
        assert!(!event_after("1700-10", "1700-10"));
        assert!(event_after("1700-0", "999-99"));
        assert!(event_after("1-0", "$"));
        assert!(event_after("1-0", ""));
        assert!(event_after("7-1", "7") && !event_after("7-0", "7"));
    }
}
