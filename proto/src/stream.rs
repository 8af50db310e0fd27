//! Record encodings and the atomic Redis scripts.
//!
//! Layout (all keys from [`crate::keys::Keys`]):
//! - tasks stream entry: `t` = protobuf [`Task`], `a` = attempt (decimal),
//!   `tp` = W3C traceparent. The attempt is outside the protobuf so a script
//!   can re-queue with `attempt + 1` by copying `t` as is.
//! - run hash: `spec` = protobuf [`RunSpec`]; `state` (enum name); `total`,
//!   `done`, `dead`, `count` (integers); `sum` (HINCRBYFLOAT, long double in
//!   Redis); `min`, `max` (the shortest decimal of an f64); `created_ms`,
//!   `started_ms`, `finished_ms`; `enqueued` (tasks written so far).
//! - done bitmap: bit `i` set once chunk `i` is counted — "first result wins".
//! - results hash: chunk index → packed little-endian f64.
//! - events stream: `e` = protobuf [`Event`]. The Rust side encodes the event's
//!   body (`run_id` and its `kind`); the scripts append `time_ms` and `progress`
//!   (and whole terminal events) as extra protobuf fields, which is valid
//!   protobuf: fields may come in any order and concatenated messages merge.

use std::collections::HashMap;

use prost::Message;
use redis::Script;

use crate::v1::{event, Aggregate, Event, Progress, RunSpec, RunState, RunStatus, Task};

/// Tasks stream entry field holding the protobuf Task.
pub const TASK_FIELD: &str = "t";
/// Tasks stream entry field holding the attempt number.
pub const ATTEMPT_FIELD: &str = "a";
/// Tasks stream entry field holding the W3C traceparent.
pub const TRACEPARENT_FIELD: &str = "tp";
/// Events stream entry field holding the protobuf Event.
pub const EVENT_FIELD: &str = "e";

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
/// dead-entries stream with `error`, and ack and delete it, in one MULTI.
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
        .arg(keys.dead_entries())
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
    Ok(RunStatus {
        state: state as i32,
        progress: Some(Progress {
            chunks_total: int("total").max(0) as u64,
            chunks_done: int("done").max(0) as u64,
            chunks_dead: int("dead").max(0) as u64,
            params_done: count,
            chunks_purged: int("purged").max(0) as u64,
        }),
        chunks_in_flight: 0,
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
        spec: Some(spec),
    })
}

/// Lua shared by every script: protobuf field encoders, the clock, event
/// emission and the end-of-run check. Redis's Lua 5.1 numbers are doubles,
/// exact for the integers used here (< 2^53).
const PRELUDE: &str = r#"
local char, floor = string.char, math.floor
-- Unrolled for the sizes the hot path sees: each string.char call and table
-- costs the completion script more than the rest of its Lua together.
local function varint(n)
  n = floor(n)
  if n < 128 then return char(n) end
  if n < 16384 then return char(n % 128 + 128, floor(n / 128)) end
  if n < 2097152 then
    return char(n % 128 + 128, floor(n / 128) % 128 + 128, floor(n / 16384))
  end
  local out, i = {}, 0
  while n >= 128 do
    i = i + 1
    out[i] = n % 128 + 128
    n = floor(n / 128)
  end
  out[i + 1] = n
  return char(unpack(out))
end
local function f_varint(field, n) return varint(field * 8) .. varint(n) end
local function f_bytes(field, s) return varint(field * 8 + 2) .. varint(#s) .. s end
local function f_double(field, x) return varint(field * 8 + 1) .. struct.pack('<d', x) end
local function num(v) return tonumber(v) or 0 end
local function now_ms()
  local t = redis.call('TIME')
  return tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
end
-- The event's `progress` field (4) from the run's counters.
-- Tags written out (fields 1-4 varint: 8, 16, 24, 32; field 4 bytes: 34);
-- the message is under 128 bytes, so its length is one byte.
local function progress_of(total, done, dead, count)
  local m = '\8' .. varint(total) .. '\16' .. varint(done) .. '\24' .. varint(dead) .. '\32' .. varint(count)
  return '\34' .. char(#m) .. m
end
local function progress(run)
  local v = redis.call('HMGET', run, 'total', 'done', 'dead', 'count')
  return progress_of(num(v[1]), num(v[2]), num(v[3]), num(v[4]))
end
local function emit(run, events, body, ts)
  redis.call('XADD', events, '*', 'e', body .. f_varint(3, ts) .. progress(run))
end
local function aggregate(run)
  local v = redis.call('HMGET', run, 'count', 'sum', 'min', 'max')
  local c, s = num(v[1]), num(v[2])
  local mean = 0
  if c > 0 then mean = s / c end
  return f_varint(1, c) .. f_double(2, s) .. f_double(3, num(v[3])) .. f_double(4, num(v[4])) .. f_double(5, mean)
end
local function active(state) return state == 'QUEUED' or state == 'RUNNING' end
-- A run that just ended starts its retention: it expires at ts + its
-- retention_ms, when the server's janitor removes all of its keys at once.
local function start_retention(run, expiring, run_id, ts)
  local keep = num(redis.call('HGET', run, 'retention_ms'))
  if keep <= 0 then return end
  redis.call('HSET', run, 'expires_ms', ts + keep)
  redis.call('ZADD', expiring, ts + keep, run_id)
end
-- Ends the run once every chunk is done or dead; returns the state after.
-- `stats` counts active runs installation-wide (for --max-runs-in-flight).
local function finish_if_done(run, events, run_id, ts, stats, expiring)
  local v = redis.call('HMGET', run, 'total', 'done', 'dead', 'state')
  local state = v[4]
  if not active(state) then return state end
  if num(v[2]) + num(v[3]) < num(v[1]) then return state end
  local code = 3
  state = 'SUCCEEDED'
  if num(v[3]) > 0 then state = 'FAILED'; code = 4 end
  redis.call('HSET', run, 'state', state, 'finished_ms', ts)
  redis.call('HINCRBY', stats, 'active', -1)
  start_retention(run, expiring, run_id, ts)
  emit(run, events, f_bytes(2, run_id) .. f_bytes(13, f_varint(1, code) .. f_bytes(2, aggregate(run))), ts)
  return state
end
-- End an active run as FAILED before every chunk is done or dead (fail-fast).
-- The chunks neither done nor dead are counted as purged, so the books
-- balance (done + dead + purged = total); retry re-queues them from the
-- run's bitmaps. `why` is valid UTF-8 of bounded length (the caller's).
local function stop_failed(run, events, run_id, ts, stats, expiring, why)
  local v = redis.call('HMGET', run, 'total', 'done', 'dead')
  redis.call('HSET', run, 'state', 'FAILED', 'finished_ms', ts, 'error', why,
    'purged', num(v[1]) - num(v[2]) - num(v[3]))
  redis.call('HINCRBY', stats, 'active', -1)
  start_retention(run, expiring, run_id, ts)
  emit(run, events, f_bytes(2, run_id) .. f_bytes(13, f_varint(1, 4) .. f_bytes(2, aggregate(run)) .. f_bytes(3, why)), ts)
end
-- One failed attempt at a chunk (kernel error, or its agent died): re-queue
-- the task with attempt + 1, or at max attempts dead-letter it, count it dead
-- and end the run if it was the last chunk. The caller has already acked and
-- deleted the delivery. K: run, done, deadbits, dead stream, events, tasks,
-- stats, expiring.
-- Returns {code, state}: 1 re-queued, 3 dead-lettered, 0 chunk already has a
-- result, 2 run not active, -1 run unknown.
local function fail_attempt(K, chunk, task, attempt, max, err, tp, body_retry, body_dead, run_id)
  local run = K[1]
  local state = redis.call('HGET', run, 'state')
  if not state then return {-1, ''} end
  if not active(state) then return {2, state} end
  if redis.call('GETBIT', K[2], chunk) == 1 then return {0, state} end
  local ts = now_ms()
  redis.call('HINCRBY', K[7], 'failed', 1)
  if tonumber(attempt) < tonumber(max) then
    redis.call('XADD', K[6], '*', 't', task, 'a', tonumber(attempt) + 1, 'tp', tp)
    emit(run, K[5], body_retry, ts)
    return {1, state}
  end
  if redis.call('GETBIT', K[3], chunk) == 0 then
    redis.call('SETBIT', K[3], chunk, 1)
    redis.call('HINCRBY', run, 'dead', 1)
    redis.call('HINCRBY', K[7], 'dead', 1)
    redis.call('XADD', K[4], '*', 'c', chunk, 'a', attempt, 'err', err, 't', task, 'tp', tp)
  end
  emit(run, K[5], body_dead, ts)
  return {3, finish_if_done(run, K[5], run_id, ts, K[7], K[8])}
end
"#;

/// Complete a batch of chunks of one run (one or many: an agent sends what
/// finished while its previous completion was in flight), atomically: ack
/// and delete every delivery; if the run is active, for each chunk without a
/// result yet store its values, count them and emit its ChunkCompleted; end
/// the run if that was the last chunk. One round trip and one read of the
/// run's counters per batch instead of per chunk: the counters are read once
/// and written back once (safe: a script runs alone).
///
/// Only a delivery still pending for the calling consumer is completed (one
/// XPENDING lookup per entry): a made-up entry id, or a delivery reclaimed
/// from the caller, stores nothing. A chunk that was dead-lettered and then
/// completes by a delivery the caller still holds is rescued: it stops
/// counting as dead. A counted chunk ends the run's fail-fast streak.
///
/// KEYS: [`Keys::complete_keys`](crate::keys::Keys::complete_keys): run,
/// done, results, events, tasks, dead bitmap, stats, expiring.
/// ARGV: group, run id, consumer, then per chunk [`COMPLETE_ARGS`] values:
/// entry id, chunk index, value count, sum, min, max, packed values,
/// ChunkCompleted event body.
/// Returns `{codes, state}`: one code per chunk, 1 counted, 0 duplicate (a
/// result was already stored; for a delivery the caller no longer holds,
/// nothing else changed), 2 run not active, -1 run unknown, -3 not held by
/// the caller and no result stored (nothing changed for it); and the run's
/// state after ('' if no chunk was held).
const COMPLETE: &str = r#"
local run = KEYS[1]
local n = (#ARGV - 3) / 8
local ids, held, codes = {}, {}, {}
for i = 0, n - 1 do
  local id = ARGV[4 + i * 8]
  codes[i + 1] = -3
  if #redis.call('XPENDING', KEYS[5], ARGV[1], id, id, 1, ARGV[3]) > 0 then
    held[i] = true
    ids[#ids + 1] = id
  elseif redis.call('GETBIT', KEYS[2], ARGV[5 + i * 8]) == 1 then
    -- Already counted (e.g. this very call, retried after its reply was
    -- lost): a duplicate, and nothing to change.
    codes[i + 1] = 0
  end
end
if #ids == 0 then return {codes, ''} end
redis.call('XACK', KEYS[5], ARGV[1], unpack(ids))
redis.call('XDEL', KEYS[5], unpack(ids))
local v = redis.call('HMGET', run, 'state', 'total', 'done', 'dead', 'count', 'min', 'max', 'ff_n')
local state = v[1]
if not state or not active(state) then
  local code = 2
  if not state then code = -1; state = '' end
  for i = 0, n - 1 do if held[i] then codes[i + 1] = code end end
  return {codes, state}
end
local total, done, dead, count = num(v[2]), num(v[3]), num(v[4]), num(v[5])
local mn, mx = tonumber(v[6]), tonumber(v[7])
local mn_s, mx_s = nil, nil
local ts = now_ms()
local ts_f = f_varint(3, ts)
local fields = {}
local counted, dups, sum = 0, 0, 0
for i = 0, n - 1 do
  local b = 4 + i * 8
  local chunk = ARGV[b + 1]
  if not held[i] then
    -- not ours: code stays -3
  elseif redis.call('SETBIT', KEYS[2], chunk, 1) == 1 then
    codes[i + 1] = 0
    dups = dups + 1
  else
    codes[i + 1] = 1
    counted = counted + 1
    if dead > 0 and redis.call('GETBIT', KEYS[6], chunk) == 1 then
      redis.call('SETBIT', KEYS[6], chunk, 0)
      dead = dead - 1
    end
    fields[#fields + 1] = chunk
    fields[#fields + 1] = ARGV[b + 6]
    done = done + 1
    count = count + tonumber(ARGV[b + 2])
    sum = sum + tonumber(ARGV[b + 3])
    local lo, hi = tonumber(ARGV[b + 4]), tonumber(ARGV[b + 5])
    if not mn or lo < mn then mn = lo; mn_s = ARGV[b + 4] end
    if not mx or hi > mx then mx = hi; mx_s = ARGV[b + 5] end
    redis.call('XADD', KEYS[4], '*', 'e', ARGV[b + 7] .. ts_f .. progress_of(total, done, dead, count))
  end
end
if dups > 0 then redis.call('HINCRBY', KEYS[7], 'duplicates', dups) end
if counted == 0 then return {codes, state} end
redis.call('HSET', KEYS[3], unpack(fields))
redis.call('HINCRBY', KEYS[7], 'completed', counted)
-- One addition per batch (each costs a decimal parse and print in Redis).
redis.call('HINCRBYFLOAT', run, 'sum', string.format('%.17g', sum))
local upd = {'done', done, 'count', count, 'dead', dead}
if num(v[8]) > 0 then upd[#upd + 1] = 'ff_n'; upd[#upd + 1] = 0 end
if mn_s then upd[#upd + 1] = 'min'; upd[#upd + 1] = mn_s end
if mx_s then upd[#upd + 1] = 'max'; upd[#upd + 1] = mx_s end
if state == 'QUEUED' then
  upd[#upd + 1] = 'state'; upd[#upd + 1] = 'RUNNING'
  upd[#upd + 1] = 'started_ms'; upd[#upd + 1] = ts
end
redis.call('HSET', run, unpack(upd))
return {codes, finish_if_done(run, KEYS[4], ARGV[2], ts, KEYS[7], KEYS[8])}
"#;

/// Arguments the completion script takes per chunk.
pub const COMPLETE_ARGS: usize = 8;

/// One chunk's result, as the completion script takes it.
#[derive(Debug, Clone)]
pub struct ChunkResult {
    /// Tasks stream entry id of the delivery.
    pub entry_id: String,
    /// Chunk index.
    pub chunk_index: u64,
    /// Number of values.
    pub count: usize,
    /// Sum, min and max as exact decimals (see [`exact_decimal`]).
    pub sum: String,
    /// Smallest value.
    pub min: String,
    /// Largest value.
    pub max: String,
    /// Values, packed (see [`pack_values`]).
    pub packed: Vec<u8>,
    /// The ChunkCompleted event's body (see [`event_body`]).
    pub event: Vec<u8>,
}

impl ChunkResult {
    /// A chunk's values and event body, summarised for the script.
    pub fn new(entry_id: &str, chunk_index: u64, values: &[f64], event: Vec<u8>) -> Self {
        Self::with_event(entry_id, chunk_index, values, |_| event)
    }

    /// As [`ChunkResult::new`], with the event body built from the chunk's
    /// sum (one pass over the values for sum, min and max).
    pub fn with_event(
        entry_id: &str,
        chunk_index: u64,
        values: &[f64],
        event: impl FnOnce(f64) -> Vec<u8>,
    ) -> Self {
        let (mut sum, mut min, mut max) = (0.0, f64::INFINITY, f64::NEG_INFINITY);
        for &v in values {
            sum += v;
            min = min.min(v);
            max = max.max(v);
        }
        let event = event(sum);
        Self {
            entry_id: entry_id.to_string(),
            chunk_index,
            count: values.len(),
            sum: exact_decimal(sum),
            min: exact_decimal(min),
            max: exact_decimal(max),
            packed: pack_values(values),
            event,
        }
    }
}

/// The completion script's invocation for `chunks` of `run_id`, delivered
/// from `tasks_stream` to `consumer`. Its reply is `(Vec<i64>, String)`: see
/// [`Completion::from_reply`].
pub fn complete_invocation<'a>(
    scripts: &'a Scripts,
    keys: &crate::keys::Keys,
    run_id: &str,
    tasks_stream: &str,
    consumer: &str,
    chunks: &[ChunkResult],
) -> redis::ScriptInvocation<'a> {
    let mut inv = scripts.complete.prepare_invoke();
    for k in keys.complete_keys(run_id, tasks_stream) {
        inv.key(k);
    }
    inv.arg(crate::keys::GROUP).arg(run_id).arg(consumer);
    for c in chunks {
        inv.arg(&c.entry_id)
            .arg(c.chunk_index)
            .arg(c.count)
            .arg(&c.sum)
            .arg(&c.min)
            .arg(&c.max)
            .arg(&c.packed)
            .arg(&c.event);
    }
    inv
}

/// Record a failed attempt (a kernel error), atomically, only if the
/// delivery is still pending for the calling consumer: ack and delete it; if
/// the run is active and the chunk has no result, either re-queue the task
/// with attempt + 1 or, when no attempts are left, put it in the run's
/// dead-letter stream, count it dead and end the run if it was the last
/// chunk. Then fail-fast: the run's streak of failures with the same first
/// line grows (or restarts at 1 with a new line); once it reaches the run's
/// `fail_fast` the run ends FAILED with that line, its other chunks purged.
///
/// KEYS: [`Keys::fail_keys`](crate::keys::Keys::fail_keys): run, done, dead
/// bitmap, dead-letter stream, events, tasks, stats, expiring.
/// ARGV: group, entry id, chunk index, task bytes, attempt, max attempts,
/// error, traceparent, ChunkFailed body (dead = false), ChunkFailed body
/// (dead = true), run id, consumer, the error's first line (bounded, UTF-8).
/// Returns `{code, state}`: 1 re-queued, 3 dead-lettered, 4 the run was
/// stopped by fail-fast, 0 chunk already has a result, 2 run not active, -1
/// run unknown, -2 the delivery is not pending for the caller.
const FAIL: &str = r#"
if #redis.call('XPENDING', KEYS[6], ARGV[1], ARGV[2], ARGV[2], 1, ARGV[12]) == 0 then
  return {-2, ''}
end
redis.call('XACK', KEYS[6], ARGV[1], ARGV[2])
redis.call('XDEL', KEYS[6], ARGV[2])
local r = fail_attempt(KEYS, ARGV[3], ARGV[4], ARGV[5], ARGV[6], ARGV[7], ARGV[8], ARGV[9], ARGV[10], ARGV[11])
if r[1] ~= 1 and r[1] ~= 3 then return r end
local v = redis.call('HMGET', KEYS[1], 'fail_fast', 'ff_line', 'ff_n', 'state')
local limit = num(v[1])
if limit <= 0 then return r end
local streak = 1
if v[2] == ARGV[13] then streak = num(v[3]) + 1 end
redis.call('HSET', KEYS[1], 'ff_line', ARGV[13], 'ff_n', streak)
if streak < limit or not active(v[4]) then return r end
stop_failed(KEYS[1], KEYS[5], ARGV[11], now_ms(), KEYS[7], KEYS[8],
  'stopped by fail-fast: ' .. streak .. ' attempts in a row failed with: ' .. ARGV[13])
return {4, 'FAILED'}
"#;

/// Reclaim one delivery held by an agent that died (or froze past its lease,
/// or was swept): only if the entry is still pending for `owner` — so two
/// reclaimers (replicas, reapers, sweeping agents) can never both act — ack
/// and delete it, and count a failed attempt: re-queue with attempt + 1, or
/// dead-letter at max attempts.
///
/// KEYS: as [`FAIL`]. ARGV: group, entry id, owner consumer, chunk index, task
/// bytes, attempt, max attempts, error, traceparent, ChunkReclaimed event body,
/// ChunkFailed body (dead = true), run id.
/// Returns `{code, state}` as [`FAIL`], or -2 when the entry is no longer
/// pending for `owner` (someone else reclaimed it, or it completed).
const RECLAIM: &str = r#"
local p = redis.call('XPENDING', KEYS[6], ARGV[1], ARGV[2], ARGV[2], 1, ARGV[3])
if #p == 0 then return {-2, ''} end
redis.call('XACK', KEYS[6], ARGV[1], ARGV[2])
redis.call('XDEL', KEYS[6], ARGV[2])
redis.call('HINCRBY', KEYS[7], 'reclaimed', 1)
return fail_attempt(KEYS, ARGV[4], ARGV[5], ARGV[6], ARGV[7], ARGV[8], ARGV[9], ARGV[10], ARGV[11], ARGV[12])
"#;

/// Remove a consumer from the group, but only if it holds nothing: DELCONSUMER
/// would silently drop its pending entries, i.e. lose chunks.
/// KEYS: tasks stream. ARGV: group, consumer. Returns 1 if removed, 0 if not.
const DEL_CONSUMER: &str = r#"
local p = redis.call('XPENDING', KEYS[1], ARGV[1], '-', '+', 1, ARGV[2])
if #p > 0 then return 0 end
redis.call('XGROUP', 'DELCONSUMER', KEYS[1], ARGV[1], ARGV[2])
return 1
"#;

/// Re-queue up to ARGV[2] of a run's dead letters with attempt 1; a FAILED
/// run becomes RUNNING again (and its retention stops). KEYS: run, deadbits,
/// dead stream, events, tasks, stats, expiring. ARGV: run id, batch size. Returns `{requeued, state, letters read}`.
const RETRY: &str = r#"
local state = redis.call('HGET', KEYS[1], 'state')
if not state then return {-1, '', 0} end
if state == 'CANCELLED' or state == 'SUCCEEDED' then return {-2, state, 0} end
local entries = redis.call('XRANGE', KEYS[3], '-', '+', 'COUNT', ARGV[2])
local n = 0
for _, e in ipairs(entries) do
  local f = {}
  for i = 1, #e[2], 2 do f[e[2][i]] = e[2][i + 1] end
  if f['c'] and f['t'] and redis.call('GETBIT', KEYS[2], f['c']) == 1 then
    redis.call('SETBIT', KEYS[2], f['c'], 0)
    redis.call('HINCRBY', KEYS[1], 'dead', -1)
    redis.call('XADD', KEYS[5], '*', 't', f['t'], 'a', 1, 'tp', f['tp'] or '')
    n = n + 1
  end
  redis.call('XDEL', KEYS[3], e[1])
end
if n > 0 then
  local ts = now_ms()
  if state == 'FAILED' then
    redis.call('HSET', KEYS[1], 'state', 'RUNNING')
    redis.call('HDEL', KEYS[1], 'finished_ms', 'expires_ms', 'purged', 'error', 'ff_line', 'ff_n')
    redis.call('ZREM', KEYS[7], ARGV[1])
    redis.call('HINCRBY', KEYS[6], 'active', 1)
    state = 'RUNNING'
  end
  emit(KEYS[1], KEYS[4], f_bytes(2, ARGV[1]) .. f_bytes(17, f_varint(1, n)), ts)
end
return {n, state, #entries}
"#;

/// Cancel a run if it is still active; its retention starts.
/// KEYS: run, events, stats, expiring. ARGV: RunCancelled event body, run id.
/// Returns `{changed, state}`: changed 1 if this call cancelled it; state ''
/// if the run is unknown.
const CANCEL: &str = r#"
local state = redis.call('HGET', KEYS[1], 'state')
if not state then return {0, ''} end
if not active(state) then return {0, state} end
local ts = now_ms()
-- A first write that adds no data: Redis refuses a script at its first
-- write that adds data when maxmemory is reached, and only then, so this
-- lets a user cancel (and then delete) runs to free a full Redis.
redis.call('HDEL', KEYS[1], 'expires_ms')
local c = redis.call('HMGET', KEYS[1], 'total', 'done', 'dead')
-- No chunk is counted after this (completions of an ended run store
-- nothing), so the books balance: done + dead + purged = total.
redis.call('HSET', KEYS[1], 'state', 'CANCELLED', 'finished_ms', ts,
  'purged', num(c[1]) - num(c[2]) - num(c[3]))
redis.call('HINCRBY', KEYS[3], 'active', -1)
start_retention(KEYS[1], KEYS[4], ARGV[2], ts)
emit(KEYS[1], KEYS[2], ARGV[1], ts)
return {1, 'CANCELLED'}
"#;

/// Remove a finished run's data, atomically, so no reader ever sees half a
/// run: its hash, done and dead bitmaps, dead letters, results and events go,
/// it leaves the runs index and the expiry schedule, and a tombstone
/// `<run id>:<why>` is kept in the `gone` set (so Status can say "expired"
/// rather than "never existed"). Tombstones older than ARGV[4] ms, or beyond
/// the newest ARGV[5], are trimmed: the set stays bounded.
///
/// KEYS: [`Keys::purge_keys`](crate::keys::Keys::purge_keys): run, done,
/// deadbits, dead stream, results, events, runs, expiring, gone.
/// ARGV: run id, why (`expired`: only if its expiry time has come; `deleted`:
/// now), now ms, tombstone age ms, tombstone count.
/// Returns `{code, state}`: 1 removed, 0 not due yet, -2 run still active,
/// -1 no such run (its index entries are cleaned up anyway).
const PURGE: &str = r#"
local state = redis.call('HGET', KEYS[1], 'state')
if not state then
  redis.call('ZREM', KEYS[7], ARGV[1])
  redis.call('ZREM', KEYS[8], ARGV[1])
  return {-1, ''}
end
if active(state) then return {-2, state} end
if ARGV[2] == 'expired' then
  local at = num(redis.call('HGET', KEYS[1], 'expires_ms'))
  if at <= 0 or at > tonumber(ARGV[3]) then return {0, state} end
end
redis.call('UNLINK', KEYS[1], KEYS[2], KEYS[3], KEYS[4], KEYS[5], KEYS[6])
redis.call('ZREM', KEYS[7], ARGV[1])
redis.call('ZREM', KEYS[8], ARGV[1])
redis.call('ZADD', KEYS[9], ARGV[3], ARGV[1] .. ':' .. ARGV[2])
redis.call('ZREMRANGEBYSCORE', KEYS[9], '-inf', tonumber(ARGV[3]) - tonumber(ARGV[4]))
local n = redis.call('ZCARD', KEYS[9])
if n > tonumber(ARGV[5]) then redis.call('ZREMRANGEBYRANK', KEYS[9], 0, n - tonumber(ARGV[5]) - 1) end
return {1, state}
"#;

/// Delete the given task entries of a cancelled run that no agent has been
/// delivered yet (not in the group's pending list), so a cancelled run's
/// undelivered tasks do not sit in the stream until an agent drops them.
/// Pending entries are left to their holders, which ack and delete them.
/// KEYS: tasks stream. ARGV: group, entry ids…. Returns the number deleted.
const PURGE_TASKS: &str = r#"
local n = 0
for i = 2, #ARGV do
  local p = redis.call('XPENDING', KEYS[1], ARGV[1], ARGV[i], ARGV[i], 1)
  if #p == 0 then n = n + redis.call('XDEL', KEYS[1], ARGV[i]) end
end
return n
"#;

/// The scripts, compiled once per process. `Script::invoke_async` runs them
/// with EVALSHA and reloads them on NOSCRIPT (after a Redis restart).
pub struct Scripts {
    /// See [`COMPLETE`].
    pub complete: Script,
    /// See [`FAIL`].
    pub fail: Script,
    /// See [`RECLAIM`].
    pub reclaim: Script,
    /// See [`DEL_CONSUMER`].
    pub del_consumer: Script,
    /// See [`RETRY`].
    pub retry: Script,
    /// See `proto/lua/claim_gate.lua`.
    pub claim_gate: Script,
    /// See `proto/lua/requeue_missing.lua`.
    pub requeue_missing: Script,
    /// See [`CANCEL`].
    pub cancel: Script,
    /// See [`PURGE`].
    pub purge: Script,
    /// See [`PURGE_TASKS`].
    pub purge_tasks: Script,
}

impl Default for Scripts {
    fn default() -> Self {
        Self::new()
    }
}

impl Scripts {
    /// Build the scripts (prelude + body).
    pub fn new() -> Self {
        let s = |body: &str| Script::new(&format!("{PRELUDE}\n{body}"));
        Self {
            complete: s(COMPLETE),
            fail: s(FAIL),
            reclaim: s(RECLAIM),
            del_consumer: s(DEL_CONSUMER),
            retry: s(RETRY),
            claim_gate: s(include_str!("../lua/claim_gate.lua")),
            requeue_missing: s(include_str!("../lua/requeue_missing.lua")),
            cancel: s(CANCEL),
            purge: s(PURGE),
            purge_tasks: s(PURGE_TASKS),
        }
    }
}

/// Outcome of the failure script.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Failure {
    /// Re-queued with attempt + 1.
    Requeued,
    /// No attempts left: dead-lettered; the run's state after.
    DeadLettered(RunState),
    /// The failure ended the run's fail-fast streak: the run is FAILED.
    StoppedByFailFast,
    /// The chunk already had a result: nothing to do.
    AlreadyDone,
    /// The run is not active (or unknown): dropped.
    Inactive,
    /// (Reclaim only) the entry was no longer pending for that agent.
    NotOwned,
}

impl Failure {
    /// Interpret the script's `{code, state}` reply.
    pub fn from_reply(code: i64, state: &str) -> Self {
        match code {
            1 => Failure::Requeued,
            3 => Failure::DeadLettered(parse_state(state)),
            4 => Failure::StoppedByFailFast,
            0 => Failure::AlreadyDone,
            -2 => Failure::NotOwned,
            _ => Failure::Inactive,
        }
    }
}

/// Outcome of the completion script.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Completion {
    /// Values stored and counted; the run's state after.
    Counted(RunState),
    /// The chunk already had a result: nothing changed but the ack.
    Duplicate,
    /// The run is no longer active (cancelled or finished): acked, dropped.
    Inactive(RunState),
    /// No such run (deleted or expired): acked, dropped.
    UnknownRun,
    /// The delivery is not pending for the caller (it was reclaimed from
    /// it, or never was its): nothing changed.
    NotHeld,
}

impl Completion {
    /// Interpret one chunk's code and the run's state from the script's
    /// `{codes, state}` reply.
    pub fn from_reply(code: i64, state: &str) -> Self {
        match code {
            1 => Completion::Counted(parse_state(state)),
            0 => Completion::Duplicate,
            2 => Completion::Inactive(parse_state(state)),
            -3 => Completion::NotHeld,
            _ => Completion::UnknownRun,
        }
    }
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
    fn garbage_is_an_error_not_a_panic() {
        assert!(decode_task(&[0xff, 0xff, 0xff]).is_err());
        assert!(decode_event("1-0", &[0x0a, 0x05, 0x01]).is_err());
    }
}
