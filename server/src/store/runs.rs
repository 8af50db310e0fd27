//! Runs: reading one (status, spec, dead chunks, why it is NotFound), listing them, and acting on one (retry, cancel).

use super::*;

/// Run records one ListRuns call reads at most while filtering; past it the
/// page ends early with a token to continue.
const LIST_SCAN: usize = 10_000;

/// Runs ListRuns reads from the index, and then by record, at a time.
const LIST_BATCH: usize = 200;

/// The runs indexes of every slot group merged, newest first (equal submit
/// times in reverse id order, as ZREVRANGEBYSCORE gives them): a k-way
/// merge that reads each group's index a batch at a time.
struct RunsIndex {
    groups: Vec<IndexCursor>,
    upper: String,
    lower: String,
}

/// One group's runs index as [`RunsIndex`] reads it.
struct IndexCursor {
    key: String,
    /// How far it was read.
    offset: usize,
    /// Read and not yet taken.
    buf: std::collections::VecDeque<(String, f64)>,
    /// Whether it has more.
    more: bool,
}

impl RunsIndex {
    fn new(layout: &Layout, upper: String, lower: String) -> Self {
        let groups = layout
            .groups()
            .iter()
            .map(|k| IndexCursor {
                key: k.runs(),
                offset: 0,
                buf: std::collections::VecDeque::new(),
                more: true,
            })
            .collect();
        Self {
            groups,
            upper,
            lower,
        }
    }

    /// The next (run id, submit time) in order, or None at the end.
    async fn next(&mut self, store: &Store, c: &mut Conn) -> Result<Option<(String, f64)>> {
        for IndexCursor {
            key,
            offset,
            buf,
            more,
        } in self.groups.iter_mut()
        {
            if buf.is_empty() && *more {
                let items: Vec<(String, f64)> = store
                    .timed(
                        redis::cmd("ZREVRANGEBYSCORE")
                            .arg(key.as_str())
                            .arg(&self.upper)
                            .arg(&self.lower)
                            .arg("WITHSCORES")
                            .arg("LIMIT")
                            .arg(*offset)
                            .arg(LIST_BATCH)
                            .query_async(c),
                    )
                    .await?;
                *offset += items.len();
                *more = items.len() == LIST_BATCH;
                buf.extend(items);
            }
        }
        let newest = self
            .groups
            .iter()
            .enumerate()
            .filter_map(|(g, cur)| cur.buf.front().map(|head| (g, head)))
            .max_by(|(_, a), (_, b)| a.1.total_cmp(&b.1).then_with(|| a.0.cmp(&b.0)))
            .map(|(g, _)| g);
        Ok(newest.and_then(|g| self.groups[g].buf.pop_front()))
    }
}

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

impl Store {
    pub(super) async fn run_hash(&self, run_id: &str) -> Result<HashMap<String, Vec<u8>>> {
        check_run_id(run_id)?;
        let keys = self.keys_of(run_id)?;
        let mut c = self.conn();
        let h: HashMap<String, Vec<u8>> = self
            .timed(
                redis::cmd("HGETALL")
                    .arg(keys.run(run_id))
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
        let keys = self.keys_of(run_id)?;
        let mut c = self.conn();
        let b: Option<Vec<u8>> = self
            .timed(
                redis::cmd("HGET")
                    .arg(keys.run(run_id))
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
        let keys = self.keys_of(run_id)?;
        let mut c = self.conn();
        let reply: redis::streams::StreamRangeReply = self
            .timed(
                redis::cmd("XRANGE")
                    .arg(keys.dead_letters(run_id))
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

    fn annotate(&self, st: &mut RunStatus, agents: &[AgentInfo]) {
        let Some(spec) = st.spec.as_ref() else { return };
        let state = RunState::try_from(st.state).unwrap_or(RunState::Unspecified);
        if matches!(state, RunState::Queued | RunState::Running)
            && !agents.iter().any(|a| a.kernels.contains(&spec.kernel))
        {
            st.message = format!("waiting for an agent offering {}", spec.kernel);
        }
    }

    /// The error for a run that is not in Redis: [`Error::RunGone`] if its
    /// tombstone says it expired or was deleted, else [`Error::RunNotFound`].
    pub async fn not_found(&self, run_id: &str) -> Error {
        let Ok(keys) = self.keys_of(run_id) else {
            return Error::RunNotFound(run_id.to_string());
        };
        let mut c = self.conn();
        let scores: Result<Vec<Option<f64>>> = self
            .timed(
                redis::cmd("ZMSCORE")
                    .arg(keys.gone())
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
        let mut scanned = 0usize;
        let mut last_seen: Option<String> = None;
        let mut index = RunsIndex::new(&self.layout(), upper, lower);
        loop {
            let mut items = Vec::new();
            while items.len() < LIST_BATCH {
                match index.next(self, &mut c).await? {
                    Some(item) => items.push(item),
                    None => break,
                }
            }
            let batch_full = items.len() == LIST_BATCH;
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
            let hashes = self.run_hashes(&mut c, &ids).await?;
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
                if !f.name_contains.is_empty() && !name.to_lowercase().contains(&f.name_contains) {
                    continue;
                }
                self.annotate(&mut st, &agents);
                out.push(st);
                if out.len() == f.limit {
                    // More may follow: the client asks with this token.
                    return Ok((out, id.clone()));
                }
            }
            if !batch_full {
                return Ok((out, String::new()));
            }
            if scanned >= LIST_SCAN {
                return Ok((out, last_seen.unwrap_or_default()));
            }
        }
    }

    /// The run hashes of `ids` (empty for a run removed meanwhile), one
    /// pipeline per slot group.
    async fn run_hashes(
        &self,
        c: &mut Conn,
        ids: &[String],
    ) -> Result<Vec<HashMap<String, Vec<u8>>>> {
        let layout = self.layout();
        let mut out = vec![HashMap::new(); ids.len()];
        for (g, keys) in layout.groups().iter().enumerate() {
            let mine: Vec<usize> = (0..ids.len())
                .filter(|&i| ttg_proto::keys::run_group(&ids[i]) as usize == g)
                .collect();
            if mine.is_empty() {
                continue;
            }
            let mut p = redis::pipe();
            for &i in &mine {
                p.cmd("HGETALL").arg(keys.run(&ids[i]));
            }
            let hashes: Vec<HashMap<String, Vec<u8>>> = self.timed(p.query_async(c)).await?;
            for (i, h) in mine.into_iter().zip(hashes) {
                out[i] = h;
            }
        }
        Ok(out)
    }

    /// Re-queue a run's dead chunks with fresh attempts. Returns how many and
    /// the state after.
    pub async fn retry(&self, run_id: &str) -> Result<(u64, RunState)> {
        let spec = self.spec(run_id).await?;
        let keys = self.keys_of(run_id)?;
        let tasks = keys.tasks(&spec.kernel);
        self.ensure_group(&tasks).await?;
        const BATCH: usize = 1_000;
        let mut c = self.writer();
        // A run stopped by fail-fast has purged chunks (neither done nor
        // dead): queue them first, while the dead bits still tell them apart
        // from the dead-lettered ones re-queued below.
        let purged: Option<u64> = self
            .timed(
                redis::cmd("HGET")
                    .arg(keys.run(run_id))
                    .arg("purged")
                    .query_async(&mut c),
            )
            .await?;
        let mut total = 0u64;
        if purged.unwrap_or(0) > 0 {
            total += self.requeue_missing(&spec, "retry").await?.0;
        }
        loop {
            let inv = self.scripts.retry(&keys, run_id, &tasks, BATCH);
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
                self.replicated(&keys.run(run_id)).await;
                if total > 0 {
                    self.ring_home(&spec.kernel, run_id).await;
                }
                return Ok((total, parse_state(&state)));
            }
        }
    }

    /// Cancel an active run. Returns the state after; a run that already
    /// ended is [`Error::FailedPrecondition`].
    pub async fn cancel(&self, run_id: &str, reason: &str) -> Result<RunState> {
        check_run_id(run_id)?;
        let keys = self.keys_of(run_id)?;
        let reason: String = reason.chars().take(256).collect();
        let message = match reason.trim() {
            "" => "cancelled".to_string(),
            r => format!("cancelled: {r}"),
        };
        let body = event_body(run_id, event::Kind::RunCancelled(RunCancelled { reason }));
        let mut c = self.writer();
        let inv = self.scripts.cancel(&keys, run_id, &body, &message);
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
        self.replicated(&keys.run(run_id)).await;
        Ok(s)
    }

    /// Tell every replica (this one included) that a run was cancelled.
    /// The message is `cancel <server id> <run id>`; a replica ignores its own.
    pub async fn publish_cancel(&self, run_id: &str, server_id: &str) -> Result<()> {
        let mut c = self.conn();
        self.timed(
            redis::cmd("PUBLISH")
                .arg(self.keys().control_channel())
                .arg(format!("cancel {server_id} {run_id}"))
                .query_async::<()>(&mut c),
        )
        .await
    }
}
