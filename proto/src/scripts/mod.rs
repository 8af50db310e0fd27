//! The atomic Redis scripts, and the only place their KEYS and ARGV are put
//! in order. Each script is a file in `proto/lua/` whose header states its
//! KEYS, ARGV, reply and the invariant it keeps; every script runs after
//! `prelude.lua` (shared helpers) in one EVAL. One typed builder per script
//! returns a ready [`redis::ScriptInvocation`]; callers only add a
//! connection. A unit test checks each builder's key and argument counts
//! against the counts in its file's header.

use redis::{Cmd, RedisResult, Script, ScriptInvocation, Value};

use crate::keys::{Keys, GROUP};
use crate::v1::Task;

mod chunk;
pub use chunk::{ChunkResult, Completion, Failure};

const PRELUDE: &str = include_str!("../../lua/prelude.lua");

/// The scripts, compiled once per process. `ScriptInvocation::invoke_async`
/// runs them with EVALSHA and reloads them on NOSCRIPT (after a Redis
/// restart).
pub struct Scripts {
    complete: Script,
    fail: Script,
    reclaim: Script,
    del_consumer: Script,
    retry: Script,
    cancel: Script,
    purge: Script,
    purge_tasks: Script,
    claim_gate: Script,
    requeue_missing: Script,
    claim_reap: Script,
    claim_agent_id: Script,
    claim: Script,
}

impl Default for Scripts {
    fn default() -> Self {
        Self::new()
    }
}

/// The body of each script (without the prelude), by file name, for the
/// header test and for tools that load them (scripts/bench.py reads the
/// files directly).
pub const SOURCES: &[(&str, &str)] = &[
    ("complete", include_str!("../../lua/complete.lua")),
    ("fail", include_str!("../../lua/fail.lua")),
    ("reclaim", include_str!("../../lua/reclaim.lua")),
    ("del_consumer", include_str!("../../lua/del_consumer.lua")),
    ("retry", include_str!("../../lua/retry.lua")),
    ("cancel", include_str!("../../lua/cancel.lua")),
    ("purge", include_str!("../../lua/purge.lua")),
    ("purge_tasks", include_str!("../../lua/purge_tasks.lua")),
    ("claim_gate", include_str!("../../lua/claim_gate.lua")),
    (
        "requeue_missing",
        include_str!("../../lua/requeue_missing.lua"),
    ),
    ("claim_reap", include_str!("../../lua/claim_reap.lua")),
    (
        "claim_agent_id",
        include_str!("../../lua/claim_agent_id.lua"),
    ),
    ("claim", include_str!("../../lua/claim.lua")),
];

/// Each script's name and SHA1 (what EVALSHA calls it), so a test can ask a
/// Redis node which of them ran there (`SCRIPT EXISTS`).
pub fn hashes() -> Vec<(&'static str, String)> {
    SOURCES
        .iter()
        .map(|(name, body)| {
            (
                *name,
                Script::new(&format!("{PRELUDE}\n{body}"))
                    .get_hash()
                    .to_string(),
            )
        })
        .collect()
}

fn source(name: &str) -> &'static str {
    SOURCES
        .iter()
        .find(|(n, _)| *n == name)
        .map(|(_, s)| *s)
        .unwrap_or_default()
}

/// KEYS and ARGV of claim.lua, in its header's order.
fn claim_keys_args(keys: &Keys, kernels: &[String], n: usize) -> (Vec<String>, Vec<String>) {
    let mut k = vec![keys.sched_ticks()];
    for kernel in kernels {
        k.push(keys.wake(kernel));
        k.push(keys.sched(kernel));
        k.push(keys.tasks(kernel));
    }
    let a = vec![n.clamp(1, 1000).to_string(), keys.prefix().to_string()];
    (k, a)
}

/// Arguments the completion script takes per chunk (its values go by HSETNX).
pub const COMPLETE_ARGS: usize = 5;

/// KEYS and ARGV of complete.lua, in its header's order.
fn complete_keys_args(
    keys: &Keys,
    run_id: &str,
    tasks: &str,
    consumer: &str,
    chunks: &[impl std::borrow::Borrow<ChunkResult>],
) -> (Vec<String>, Vec<Vec<u8>>) {
    let outputs = chunks.first().map_or(1, |c| c.borrow().outputs());
    let mut a: Vec<Vec<u8>> = vec![
        GROUP.into(),
        run_id.into(),
        consumer.into(),
        outputs.to_string().into(),
        chunks
            .iter()
            .map(|c| c.borrow().compute_us)
            .fold(0u64, u64::saturating_add)
            .to_string()
            .into(),
    ];
    for c in chunks {
        let c = c.borrow();
        debug_assert_eq!(c.outputs(), outputs, "one run, one number of outputs");
        a.push(c.entry_id.as_bytes().to_vec());
        a.push(c.chunk_index.to_string().into());
        a.push(c.count.to_string().into());
        a.push(c.event.clone());
        a.push(c.stats.clone());
    }
    (keys.complete_keys(run_id, tasks).to_vec(), a)
}

/// What the fail and reclaim scripts need about one failed attempt.
pub struct FailedAttempt<'a> {
    /// Tasks stream entry id of the delivery.
    pub entry_id: &'a str,
    /// The task (re-queued as is, with attempt + 1).
    pub task: &'a Task,
    /// Attempt that failed.
    pub attempt: u32,
    /// The error (bounded by the caller).
    pub error: &'a str,
    /// The error's first line, bounded, for fail-fast.
    pub first_line: &'a str,
    /// W3C traceparent of the run.
    pub traceparent: &'a [u8],
    /// Event body if re-queued (ChunkFailed, dead = false; ChunkReclaimed
    /// for a reclaim).
    pub retry_body: &'a [u8],
    /// Event body if dead-lettered (ChunkFailed, dead = true).
    pub dead_body: &'a [u8],
}

impl FailedAttempt<'_> {
    /// The arguments fail.lua and reclaim.lua share, in their order: chunk,
    /// task, attempt, max attempts, error, traceparent, both bodies, run id.
    fn push(&self, inv: &mut ScriptInvocation<'_>, run_id: &str) {
        inv.arg(self.task.chunk_index)
            .arg(crate::records::encode(self.task))
            .arg(self.attempt)
            .arg(self.task.max_attempts.max(1))
            .arg(self.error)
            .arg(self.traceparent)
            .arg(self.retry_body)
            .arg(self.dead_body)
            .arg(run_id);
    }
}

impl Scripts {
    /// Build the scripts (prelude + body).
    pub fn new() -> Self {
        let s = |name: &str| Script::new(&format!("{PRELUDE}\n{}", source(name)));
        Self {
            complete: s("complete"),
            fail: s("fail"),
            reclaim: s("reclaim"),
            del_consumer: s("del_consumer"),
            retry: s("retry"),
            cancel: s("cancel"),
            purge: s("purge"),
            purge_tasks: s("purge_tasks"),
            claim_gate: s("claim_gate"),
            requeue_missing: s("requeue_missing"),
            claim_reap: s("claim_reap"),
            claim_agent_id: s("claim_agent_id"),
            claim: s("claim"),
        }
    }

    /// Complete `chunks` of `run_id` delivered from `tasks` to `consumer`
    /// (all with the run's number of outputs) in one MULTI: an `HSETNX` of
    /// each chunk's packed values into the run's results, then
    /// `complete.lua` (see its header: the values never pass through Lua).
    /// Loads the script and sends the MULTI again after a NOSCRIPT (what
    /// the first one wrote is this delivery's own, so HSETNX keeps it).
    /// Reply: see [`Completion::from_reply`].
    pub async fn complete<C: redis::aio::ConnectionLike>(
        &self,
        conn: &mut C,
        keys: &Keys,
        run_id: &str,
        tasks: &str,
        consumer: &str,
        chunks: &[impl std::borrow::Borrow<ChunkResult>],
    ) -> RedisResult<(Vec<i64>, String)> {
        let results = keys.results(run_id);
        let mut p = redis::pipe();
        p.atomic().ignore_errors();
        for c in chunks {
            let c = c.borrow();
            p.cmd("HSETNX")
                .arg(&results)
                .arg(c.chunk_index)
                .arg(&c.packed)
                .ignore();
        }
        let (k, a) = complete_keys_args(keys, run_id, tasks, consumer, chunks);
        p.cmd("EVALSHA")
            .arg(self.complete.get_hash())
            .arg(k.len())
            .arg(k)
            .arg(a);
        let mut reply: Vec<RedisResult<Value>> = p.query_async(conn).await?;
        if matches!(reply.last(), Some(Err(e)) if e.code() == Some("NOSCRIPT")) {
            self.complete.prepare_invoke().load_async(conn).await?;
            reply = p.query_async(conn).await?;
        }
        let script = reply.pop().ok_or_else(|| {
            redis::RedisError::from(redis::ParsingError::from(
                "complete: empty EXEC reply".to_string(),
            ))
        })??;
        Ok(redis::FromRedisValue::from_redis_value(script)?)
    }

    /// `fail.lua`: a kernel error of a delivery `consumer` holds. Reply
    /// `(i64, String)`: see [`Failure::from_reply`].
    pub fn fail<'a>(
        &'a self,
        keys: &Keys,
        run_id: &str,
        tasks: &str,
        consumer: &str,
        f: &FailedAttempt<'_>,
    ) -> ScriptInvocation<'a> {
        let mut inv = self.fail.prepare_invoke();
        for k in keys.fail_keys(run_id, tasks) {
            inv.key(k);
        }
        inv.arg(GROUP).arg(f.entry_id);
        f.push(&mut inv, run_id);
        inv.arg(consumer).arg(f.first_line);
        inv
    }

    /// `reclaim.lua`: take back a delivery `owner` held (it died). Reply as
    /// [`Scripts::fail`], -2 if no longer pending for `owner`.
    pub fn reclaim<'a>(
        &'a self,
        keys: &Keys,
        run_id: &str,
        tasks: &str,
        owner: &str,
        f: &FailedAttempt<'_>,
    ) -> ScriptInvocation<'a> {
        let mut inv = self.reclaim.prepare_invoke();
        for k in keys.fail_keys(run_id, tasks) {
            inv.key(k);
        }
        inv.arg(GROUP).arg(f.entry_id).arg(owner);
        f.push(&mut inv, run_id);
        inv
    }

    /// `del_consumer.lua`: remove `consumer` from `tasks`' group if it holds
    /// nothing. Reply `i64`: 1 removed.
    pub fn del_consumer<'a>(&'a self, tasks: &str, consumer: &str) -> ScriptInvocation<'a> {
        let mut inv = self.del_consumer.prepare_invoke();
        inv.key(tasks).arg(GROUP).arg(consumer);
        inv
    }

    /// `retry.lua`: re-queue up to `batch` dead letters. Reply
    /// `(i64, String, usize)`.
    pub fn retry<'a>(
        &'a self,
        keys: &Keys,
        run_id: &str,
        tasks: &str,
        batch: usize,
    ) -> ScriptInvocation<'a> {
        let mut inv = self.retry.prepare_invoke();
        inv.key(keys.run(run_id))
            .key(keys.dead_bits(run_id))
            .key(keys.dead_letters(run_id))
            .key(keys.events(run_id))
            .key(tasks)
            .key(keys.stats())
            .key(keys.expiring())
            .arg(run_id)
            .arg(batch);
        inv
    }

    /// `cancel.lua` with the RunCancelled event `body`. Reply `(i64, String)`.
    pub fn cancel<'a>(
        &'a self,
        keys: &Keys,
        run_id: &str,
        body: &[u8],
        message: &str,
    ) -> ScriptInvocation<'a> {
        let mut inv = self.cancel.prepare_invoke();
        inv.key(keys.run(run_id))
            .key(keys.events(run_id))
            .key(keys.stats())
            .key(keys.expiring())
            .arg(body)
            .arg(run_id)
            .arg(message);
        inv
    }

    /// `purge.lua`: remove a finished run (`why`: `expired` or `deleted`),
    /// keeping tombstones `keep_ms` and at most `keep_n`. Reply `(i64, String)`.
    pub fn purge<'a>(
        &'a self,
        keys: &Keys,
        run_id: &str,
        why: &str,
        now_ms: i64,
        keep_ms: u64,
        keep_n: u64,
    ) -> ScriptInvocation<'a> {
        let mut inv = self.purge.prepare_invoke();
        for k in keys.purge_keys(run_id) {
            inv.key(k);
        }
        inv.arg(run_id)
            .arg(why)
            .arg(now_ms)
            .arg(keep_ms)
            .arg(keep_n);
        inv
    }

    /// `purge_tasks.lua`: delete the undelivered ones of `ids`. Reply `u64`.
    pub fn purge_tasks<'a>(&'a self, tasks: &str, ids: &[&str]) -> ScriptInvocation<'a> {
        let mut inv = self.purge_tasks.prepare_invoke();
        inv.key(tasks).arg(GROUP).arg(ids);
        inv
    }

    /// `claim_gate.lua` for entry `entry_id` of `run_id` claimed by
    /// `consumer`; `started` is its RunStarted body. Reply `(i64, String)`.
    pub fn claim_gate<'a>(
        &'a self,
        keys: &Keys,
        run_id: &str,
        tasks: &str,
        entry_id: &str,
        consumer: &str,
        started: &[u8],
    ) -> ScriptInvocation<'a> {
        let mut inv = self.claim_gate.prepare_invoke();
        inv.key(keys.run(run_id))
            .key(keys.events(run_id))
            .key(tasks)
            .arg(GROUP)
            .arg(entry_id)
            .arg(consumer)
            .arg(started);
        inv
    }

    /// `requeue_missing.lua` in `mode` (`audit` or `retry`) for `chunks`
    /// (index, encoded task). Reply `(i64, String)`.
    pub fn requeue_missing<'a>(
        &'a self,
        keys: &Keys,
        run_id: &str,
        tasks: &str,
        mode: &str,
        traceparent: &str,
        chunks: &[(u64, Vec<u8>)],
    ) -> ScriptInvocation<'a> {
        let mut inv = self.requeue_missing.prepare_invoke();
        inv.key(keys.run(run_id))
            .key(keys.done(run_id))
            .key(keys.dead_bits(run_id))
            .key(tasks)
            .key(keys.events(run_id))
            .key(keys.stats())
            .key(keys.expiring())
            .arg(run_id)
            .arg(mode)
            .arg(traceparent);
        for (i, task) in chunks {
            inv.arg(*i).arg(task);
        }
        inv
    }

    /// `claim.lua`: hand up to `n` chunks of `kernels` out. Reply
    /// `(Vec<i64>, Vec<String>)`: see [`crate::sched::claim`], which runs
    /// it with the read that delivers them to a consumer, in one MULTI.
    pub fn claim<'a>(&'a self, keys: &Keys, kernels: &[String], n: usize) -> ScriptInvocation<'a> {
        let mut inv = self.claim.prepare_invoke();
        let (k, a) = claim_keys_args(keys, kernels, n);
        for key in k {
            inv.key(key);
        }
        for arg in a {
            inv.arg(arg);
        }
        inv
    }

    /// The same call as [`Scripts::claim`] as an `EVALSHA` command, to run
    /// inside a MULTI; [`Scripts::load_claim`] loads it after NOSCRIPT.
    pub fn claim_cmd(&self, keys: &Keys, kernels: &[String], n: usize) -> Cmd {
        let (k, a) = claim_keys_args(keys, kernels, n);
        let mut cmd = redis::cmd("EVALSHA");
        cmd.arg(self.claim.get_hash()).arg(k.len()).arg(k).arg(a);
        cmd
    }

    /// Load claim.lua (after a NOSCRIPT: Redis restarted or flushed).
    pub async fn load_claim<C: redis::aio::ConnectionLike>(
        &self,
        conn: &mut C,
    ) -> RedisResult<String> {
        self.claim.prepare_invoke().load_async(conn).await
    }

    /// `claim_reap.lua`: reap `agent_id` if its lease expired before
    /// `now_ms`, holding the job `hold_ms`. Reply `i64`: 1 ours.
    pub fn claim_reap<'a>(
        &'a self,
        keys: &Keys,
        agent_id: &str,
        now_ms: i64,
        hold_ms: u64,
    ) -> ScriptInvocation<'a> {
        let mut inv = self.claim_reap.prepare_invoke();
        inv.key(keys.agents())
            .arg(agent_id)
            .arg(now_ms)
            .arg(hold_ms);
        inv
    }

    /// `claim_agent_id.lua`: take `agent_id` for the instance whose secret
    /// has digest `digest_hex`. Reply `i64`: 1 taken.
    pub fn claim_agent_id<'a>(
        &'a self,
        keys: &Keys,
        agent_id: &str,
        digest_hex: &str,
        now_ms: i64,
        ttl_ms: u64,
    ) -> ScriptInvocation<'a> {
        let mut inv = self.claim_agent_id.prepare_invoke();
        inv.key(keys.agent_owner(agent_id))
            .key(keys.agents())
            .arg(agent_id)
            .arg(digest_hex)
            .arg(now_ms)
            .arg(ttl_ms);
        inv
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use redis::{ConnectionLike, RedisResult, Value};

    /// Captures the command a script invocation sends instead of sending it.
    #[derive(Default)]
    struct Capture(Vec<Vec<u8>>);

    impl ConnectionLike for Capture {
        fn req_packed_command(&mut self, cmd: &[u8]) -> RedisResult<Value> {
            self.0.push(cmd.to_vec());
            Ok(Value::Nil)
        }
        fn req_packed_commands(&mut self, _: &[u8], _: usize, _: usize) -> RedisResult<Vec<Value>> {
            Ok(Vec::new())
        }
        fn get_db(&self) -> i64 {
            0
        }
        fn check_connection(&mut self) -> bool {
            true
        }
        fn is_open(&self) -> bool {
            true
        }
    }

    /// (keys, args) of the EVALSHA an invocation sends.
    fn counts(inv: &ScriptInvocation<'_>) -> (usize, usize) {
        let mut c = Capture::default();
        let _: RedisResult<Value> = inv.invoke(&mut c);
        let cmd = String::from_utf8_lossy(&c.0[0]).into_owned();
        let mut lines = cmd.split("\r\n");
        let total: usize = lines.next().unwrap()[1..].parse().unwrap();
        // EVALSHA, sha, numkeys: every bulk is a "$len" line then the data.
        let items: Vec<&str> = lines.skip(1).step_by(2).collect();
        assert_eq!(items[0], "EVALSHA");
        let keys: usize = items[2].parse().unwrap();
        (keys, total - 3 - keys)
    }

    /// `KEYS (n)` and `ARGV (n [+ k per …])` from a script's header: the
    /// fixed count and the count per repeated item (0 if none).
    fn header(name: &str) -> (usize, usize, usize, usize) {
        let src = source(name);
        let grab = |tag: &str| {
            let line = src
                .lines()
                .find(|l| l.starts_with(&format!("-- {tag} (")))
                .unwrap_or_else(|| panic!("{name}.lua has no `-- {tag} (…)` header line"));
            let inner = &line[line.find('(').unwrap() + 1..line.find(')').unwrap()];
            let mut words = inner.split_whitespace();
            let fixed: usize = words.next().unwrap().parse().unwrap();
            let per = match (words.next(), words.next()) {
                (Some("+"), Some(n)) => n.parse().unwrap(),
                _ => 0,
            };
            (fixed, per)
        };
        let (k, kper) = grab("KEYS");
        let (a, per) = grab("ARGV");
        (k, kper, a, per)
    }

    #[test]
    fn every_builder_matches_its_scripts_header() {
        let s = Scripts::new();
        let keys = Keys::new("t:");
        let chunk = ChunkResult::new("1-0", 0, 0, &[1.0], vec![1]);
        let task = Task::default();
        let f = FailedAttempt {
            entry_id: "1-0",
            task: &task,
            attempt: 1,
            error: "e",
            first_line: "e",
            traceparent: b"",
            retry_body: b"r",
            dead_body: b"d",
        };
        let two = [(0u64, vec![1u8]), (1, vec![2])];
        let cases: Vec<(&str, ScriptInvocation<'_>, usize)> = vec![
            (
                "complete",
                {
                    let mut inv = s.complete.prepare_invoke();
                    let (k, a) = complete_keys_args(&keys, "r", "q", "c", &[chunk.clone(), chunk]);
                    for key in k {
                        inv.key(key);
                    }
                    for arg in a {
                        inv.arg(arg);
                    }
                    inv
                },
                2,
            ),
            ("fail", s.fail(&keys, "r", "q", "c", &f), 0),
            ("reclaim", s.reclaim(&keys, "r", "q", "o", &f), 0),
            ("del_consumer", s.del_consumer("q", "c"), 0),
            ("retry", s.retry(&keys, "r", "q", 10), 0),
            ("cancel", s.cancel(&keys, "r", b"b", "m"), 0),
            ("purge", s.purge(&keys, "r", "deleted", 1, 2, 3), 0),
            ("purge_tasks", s.purge_tasks("q", &["1-0", "2-0"]), 2),
            (
                "claim_gate",
                s.claim_gate(&keys, "r", "q", "1-0", "c", b"b"),
                0,
            ),
            (
                "requeue_missing",
                s.requeue_missing(&keys, "r", "q", "audit", "", &two),
                2,
            ),
            ("claim_reap", s.claim_reap(&keys, "a", 1, 2), 0),
            ("claim_agent_id", s.claim_agent_id(&keys, "a", "d", 1, 2), 0),
            (
                "claim",
                s.claim(&keys, &["k1".to_string(), "k2".to_string()], 8),
                2,
            ),
        ];
        assert_eq!(
            cases.len(),
            SOURCES.len(),
            "a script without a builder test"
        );
        for (name, inv, repeated) in cases {
            let (k, kper, a, per) = header(name);
            assert_eq!(
                counts(&inv),
                (k + kper * repeated, a + per * repeated),
                "{name}: builder vs header"
            );
        }
        assert_eq!(header("complete").3, COMPLETE_ARGS);
    }
}
