//! Metrics kept in Redis, published to Prometheus as one consistent snapshot.

use super::*;

/// A kernel's queue: its name, entries, and the group's (pending, lag).
type Queue = (&'static str, u64, Option<(f64, f64)>);

impl Store {
    /// How many of the newest 1,000 runs (of each slot group) are in each
    /// state.
    async fn runs_by_state(&self) -> Result<HashMap<String, u64>> {
        let mut c = self.conn();
        let mut by_state: HashMap<String, u64> = HashMap::new();
        for keys in self.layout().groups() {
            let ids: Vec<String> = self
                .timed(
                    redis::cmd("ZREVRANGE")
                        .arg(keys.runs())
                        .arg(0)
                        .arg(999)
                        .query_async(&mut c),
                )
                .await?;
            if ids.is_empty() {
                continue;
            }
            let mut p = redis::pipe();
            for id in &ids {
                p.cmd("HGET").arg(keys.run(id)).arg("state");
            }
            let states: Vec<Option<String>> = self.timed(p.query_async(&mut c)).await?;
            for s in states.into_iter().flatten() {
                *by_state.entry(s).or_default() += 1;
            }
        }
        Ok(by_state)
    }

    /// Per built-in kernel, over every slot group: entries, and the
    /// consumer group's pending and lag (entries not yet delivered to any
    /// agent: what autoscaling watches).
    async fn queue_depths(&self) -> Result<Vec<Queue>> {
        let mut c = self.conn();
        let mut queues = Vec::new();
        let layout = self.layout();
        for k in ttg_proto::kernels::BUILTIN {
            let (mut len, mut group): (u64, Option<(f64, f64)>) = (0, None);
            for keys in layout.groups() {
                let key = keys.tasks(k.name);
                let n: u64 = self
                    .timed(redis::cmd("XLEN").arg(&key).query_async(&mut c))
                    .await?;
                len += n;
                let groups: RedisResult<Vec<HashMap<String, Value>>> = redis::cmd("XINFO")
                    .arg("GROUPS")
                    .arg(&key)
                    .query_async(&mut c)
                    .await;
                if let Some(g) = groups.unwrap_or_default().into_iter().next() {
                    let num = |f: &str| match g.get(f) {
                        Some(Value::Int(n)) => *n as f64,
                        _ => 0.0,
                    };
                    let (p, l) = group.unwrap_or_default();
                    group = Some((p + num("pending"), l + num("lag")));
                }
            }
            queues.push((k.name, len, group));
        }
        Ok(queues)
    }

    /// Per (kernel, class) of the active runs: chunks queued in the
    /// scheduler (not yet handed to an agent) and chunks in flight.
    async fn sched_books(&self) -> Result<HashMap<(String, String), (u64, u64)>> {
        let mut c = self.conn();
        let mut out: HashMap<(String, String), (u64, u64)> = HashMap::new();
        for (keys, active) in self.active_runs_by_group().await? {
            if active.is_empty() {
                continue;
            }
            let mut p = redis::pipe();
            for id in &active {
                p.cmd("HMGET")
                    .arg(keys.run(id))
                    .arg(&["sched", "total", "next", "qn", "inflight", "class"]);
            }
            let rows: Vec<Vec<Option<String>>> = self.timed(p.query_async(&mut c)).await?;
            let sched_prefix = format!("{}sched:", keys.prefix());
            for row in rows {
                let int = |i: usize| {
                    row.get(i)
                        .cloned()
                        .flatten()
                        .and_then(|v| v.parse::<i64>().ok())
                        .unwrap_or(0)
                        .max(0) as u64
                };
                let Some(Some(key)) = row.first() else {
                    continue;
                };
                let Some(kernel) = key.strip_prefix(&sched_prefix) else {
                    continue;
                };
                let class = match int(5) {
                    0 => "high",
                    2 => "low",
                    _ => "normal",
                };
                let e = out
                    .entry((kernel.to_string(), class.to_string()))
                    .or_default();
                e.0 += int(1).saturating_sub(int(2)) + int(3);
                e.1 += int(4);
            }
        }
        Ok(out)
    }

    /// Refresh the Prometheus gauges and counters that live in Redis: the
    /// installation-wide chunk counters the scripts keep, runs by state
    /// (among the newest 1,000), per kernel the stream's entries, those
    /// pending and the lag (chunks no agent has been given yet), and per
    /// kernel and priority the scheduler's queued and in-flight chunks.
    /// The fleet's counters (chunks completed, failed, reclaimed, dead, …
    /// since the prefix was first used), as the scripts keep them, summed
    /// over the slot groups.
    pub async fn counters(&self) -> Result<HashMap<String, i64>> {
        let mut c = self.conn();
        let mut sum: HashMap<String, i64> = HashMap::new();
        for keys in self.layout().groups() {
            let one: HashMap<String, i64> = self
                .timed(redis::cmd("HGETALL").arg(keys.stats()).query_async(&mut c))
                .await?;
            for (k, v) in one {
                *sum.entry(k).or_default() += v;
            }
        }
        Ok(sum)
    }

    pub async fn collect_metrics(&self) -> Result<()> {
        // Everything is read first and published at the end, with no await
        // in between: a scrape used to land between two Redis round trips
        // and see half of this refresh beside half of the last (every chunk
        // completed, the run still RUNNING). Publishing takes microseconds.
        let mut c = self.conn();
        let stats = self.counters().await?;
        let by_state = self.runs_by_state().await?;
        let queues = self.queue_depths().await?;
        let books = self.sched_books().await?;
        // Redis memory, for sizing and alerting (see docs/operations.md):
        // the home group's node (with slot groups on a cluster, each
        // primary's own INFO says its share).
        let home = self.keys();
        let info: String = self
            .timed(c.query_at(&home.runs(), redis::cmd("INFO").arg("memory")))
            .await?;
        let mut runs = 0u64;
        for keys in self.layout().groups() {
            let n: u64 = self
                .timed(redis::cmd("ZCARD").arg(keys.runs()).query_async(&mut c))
                .await?;
            runs += n;
        }

        for (field, name) in [
            ("completed", "ttg_chunks_completed_total"),
            ("duplicates", "ttg_chunks_duplicate_total"),
            ("failed", "ttg_chunk_attempts_failed_total"),
            ("reclaimed", "ttg_chunks_reclaimed_total"),
            ("dead", "ttg_chunks_dead_lettered_total"),
            ("requeued_by_audit", "ttg_chunks_requeued_by_audit_total"),
            ("requeued_by_retry", "ttg_chunks_requeued_by_retry_total"),
        ] {
            ::metrics::counter!(name)
                .absolute(stats.get(field).copied().unwrap_or(0).max(0) as u64);
        }
        ::metrics::gauge!("ttg_runs_in_flight")
            .set(stats.get("active").copied().unwrap_or(0) as f64);
        for s in ["QUEUED", "RUNNING", "SUCCEEDED", "FAILED", "CANCELLED"] {
            ::metrics::gauge!("ttg_runs", "state" => s)
                .set(by_state.get(s).copied().unwrap_or(0) as f64);
        }
        for (kernel, len, group) in queues {
            ::metrics::gauge!("ttg_queue_entries", "kernel" => kernel).set(len as f64);
            // Chunks no agent has been given: the scheduler's queues (and
            // any entry not yet delivered). What autoscaling watches.
            let queued: u64 = ["high", "normal", "low"]
                .iter()
                .map(|c| {
                    books
                        .get(&(kernel.to_string(), c.to_string()))
                        .map_or(0, |b| b.0)
                })
                .sum();
            let (pending, lag) = group.unwrap_or((0.0, 0.0));
            ::metrics::gauge!("ttg_queue_pending", "kernel" => kernel).set(pending);
            ::metrics::gauge!("ttg_queue_lag", "kernel" => kernel).set(lag + queued as f64);
        }
        for k in ttg_proto::kernels::BUILTIN {
            for class in ["high", "normal", "low"] {
                let (queued, inflight) = books
                    .get(&(k.name.to_string(), class.to_string()))
                    .copied()
                    .unwrap_or_default();
                ::metrics::gauge!("ttg_chunks_queued", "kernel" => k.name, "priority" => class)
                    .set(queued as f64);
                ::metrics::gauge!("ttg_chunks_in_flight", "kernel" => k.name, "priority" => class)
                    .set(inflight as f64);
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
                ::metrics::gauge!(name).set(v);
            }
        }
        ::metrics::gauge!("ttg_runs_stored").set(runs as f64);
        Ok(())
    }
}
