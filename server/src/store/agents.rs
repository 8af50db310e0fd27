//! Agents in Redis: their records (what ListAgents and Status read), their
//! leases (the `agents` sorted set, scored by lease expiry) and who owns a
//! live agent id (the session whose Hello carried its instance secret).

use std::collections::BTreeMap;

use ttg_proto::v1::OfferedKernel;

use super::*;

/// Most agent records one ListAgents or Status call reads.
pub const MAX_AGENTS_READ: usize = 2_000;
/// See [`ttg_proto::keys::OWNER_LEASES`].
const RECORD_LEASES: u32 = ttg_proto::keys::OWNER_LEASES;

impl Store {
    /// Kernels live agents offer, with their declarations and who offers them.
    pub async fn offered_kernels(&self) -> Result<Vec<OfferedKernel>> {
        let mut by_name: BTreeMap<String, OfferedKernel> = BTreeMap::new();
        for a in self.live_agents().await? {
            for d in &a.kernel_decls {
                let k = by_name
                    .entry(d.name.clone())
                    .or_insert_with(|| OfferedKernel {
                        decl: Some(d.clone()),
                        agent_ids: Vec::new(),
                    });
                k.agent_ids.push(a.agent_id.clone());
            }
        }
        Ok(by_name.into_values().collect())
    }

    /// Agents whose lease has not expired.
    pub async fn live_agents(&self) -> Result<Vec<AgentInfo>> {
        let now = now_ms();
        let mut c = self.conn();
        let ids: Vec<String> = self
            .timed(
                redis::cmd("ZRANGEBYSCORE")
                    .arg(self.keys().agents())
                    .arg(now)
                    .arg("+inf")
                    .arg("LIMIT")
                    .arg(0)
                    .arg(MAX_AGENTS_READ)
                    .query_async(&mut c),
            )
            .await?;
        if ids.is_empty() {
            return Ok(Vec::new());
        }
        let keys: Vec<String> = ids.iter().map(|id| self.keys().agent(id)).collect();
        let raw: Vec<Option<Vec<u8>>> = self
            .timed(redis::cmd("MGET").arg(&keys).query_async(&mut c))
            .await?;
        Ok(raw
            .into_iter()
            .flatten()
            .filter_map(|b| prost::Message::decode(b.as_slice()).ok())
            .collect())
    }

    /// Record an agent's session and extend its lease to now + `lease`.
    pub async fn put_agent(&self, info: &AgentInfo, lease: Duration) -> Result<()> {
        let lease_ms = lease.as_millis() as i64;
        let keep_ms = lease_ms * RECORD_LEASES as i64;
        let mut p = redis::pipe();
        p.cmd("SET")
            .arg(self.keys().agent(&info.agent_id))
            .arg(encode(info))
            // Kept past the lease: a reaper reads it to know which streams
            // a dead agent read; removed on Bye or once reclaimed.
            .arg("PX")
            .arg(keep_ms)
            .ignore()
            .zadd(self.keys().agents(), &info.agent_id, now_ms() + lease_ms)
            .ignore()
            // The id stays owned by this session's process while it beats:
            // without this, a long session's ownership would lapse and any
            // agent token could take the id over.
            .cmd("PEXPIRE")
            .arg(self.keys().agent_owner(&info.agent_id))
            .arg(keep_ms)
            .ignore()
            // Entries of agents gone for a long while are garbage; drop them here
            // so the set stays the size of the fleet.
            .cmd("ZREMRANGEBYSCORE")
            .arg(self.keys().agents())
            .arg("-inf")
            .arg(now_ms() - 3_600_000)
            .ignore();
        let mut c = self.conn();
        self.timed(p.query_async::<()>(&mut c)).await
    }

    /// Forget an agent (it said Bye, or its session ended).
    pub async fn remove_agent(&self, agent_id: &str) -> Result<()> {
        let mut p = redis::pipe();
        p.del(self.keys().agent(agent_id))
            .ignore()
            .del(self.keys().agent_owner(agent_id))
            .ignore()
            .zrem(self.keys().agents(), agent_id)
            .ignore();
        let mut c = self.conn();
        self.timed(p.query_async::<()>(&mut c)).await
    }

    /// Take `agent_id` for the agent process whose Hello carried `instance`:
    /// refused (false) while another process owns it and its lease is live.
    /// Only a digest of the instance secret is stored.
    pub async fn claim_agent_id(
        &self,
        agent_id: &str,
        instance: &str,
        lease: Duration,
    ) -> Result<bool> {
        let d = ring::digest::digest(&ring::digest::SHA256, instance.as_bytes());
        let hex: String = d.as_ref().iter().map(|b| format!("{b:02x}")).collect();
        let keep_ms = lease.as_millis() as u64 * RECORD_LEASES as u64;
        let mut c = self.conn();
        let inv = self
            .scripts
            .claim_agent_id(self.keys(), agent_id, &hex, now_ms(), keep_ms);
        let taken: i64 = self.timed(inv.invoke_async(&mut c)).await?;
        Ok(taken == 1)
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
        let layout = self.layout();
        for keys in layout.groups() {
            for k in kernels {
                let stream = keys.tasks(k);
                let fut = reclaim_consumer(
                    &mut c,
                    keys,
                    &self.scripts,
                    &stream,
                    agent_id,
                    cause,
                    died,
                    &links,
                );
                // Several round trips per chunk held: allow more than one call's deadline.
                let found = match tokio::time::timeout(self.deadline * 4, fut).await {
                    Ok(r) => r?,
                    Err(_) => return Err(Error::RedisTimeout(self.deadline * 4)),
                };
                if let Some(r) = found.first() {
                    self.ring_home(k, &r.run_id).await;
                }
                out.extend(found);
            }
        }
        for r in &out {
            ::metrics::histogram!("ttg_reclaim_seconds").record(died.elapsed().as_secs_f64());
            tracing::info!(run = %r.run_id, chunk = r.chunk_index, agent = %agent_id, attempt = r.attempt,
                cause = cause.as_str(), after_ms = died.elapsed().as_millis() as u64, outcome = ?r.outcome, "chunk reclaimed");
        }
        self.remove_agent(agent_id).await?;
        Ok(out)
    }

    /// Agents whose lease in Redis has expired.
    pub async fn expired_agents(&self) -> Result<Vec<String>> {
        let mut c = self.conn();
        self.timed(
            redis::cmd("ZRANGEBYSCORE")
                .arg(self.keys().agents())
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
            .claim_reap(self.keys(), agent_id, now_ms(), hold.as_millis() as u64);
        let won: i64 = self.timed(inv.invoke_async(&mut c)).await?;
        if won != 1 {
            return Ok(None);
        }
        let raw: Option<Vec<u8>> = self
            .timed(
                redis::cmd("GET")
                    .arg(self.keys().agent(agent_id))
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
}
