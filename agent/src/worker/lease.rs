//! The lease: renew this agent's lease and its held entries every half lease, notice entries reclaimed from under it, and sweep dead agents' entries when no server does.

use super::*;

impl Worker {
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

    pub(super) async fn refresh_once(&self) -> RedisResult<()> {
        let mut c = self.conn.clone();
        let lease_ms = self.lease().as_millis() as i64;
        let mut p = redis::pipe();
        p.cmd("ZADD")
            .arg(self.home().agents())
            .arg(ttg_proto::now_ms() + lease_ms)
            .arg(&self.agent_id)
            .ignore()
            // Keep this process's ownership of the id while no server is
            // there to renew it (a no-op if the key is gone).
            .cmd("PEXPIRE")
            .arg(self.home().agent_owner(&self.agent_id))
            .arg(lease_ms * ttg_proto::keys::OWNER_LEASES as i64)
            .ignore();
        p.query_async::<()>(&mut c).await?;
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

    pub(super) async fn sweep_stream(
        &self,
        stream: &str,
        min_idle: Duration,
    ) -> RedisResult<usize> {
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
                &self.keys_of_stream(stream),
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
}

fn rand_jitter(max_ms: u64) -> u64 {
    use std::hash::{BuildHasher, Hasher};
    let mut h = std::collections::hash_map::RandomState::new().build_hasher();
    h.write_u64(ttg_proto::now_ms() as u64);
    h.finish() % max_ms.max(1)
}
