//! The claim loop: claim chunks with claim.lua (the scheduler chooses them,
//! fairly across runs, and delivers them to this agent) into free slots
//! (and, for short chunks, about 10 ms of work ahead per slot), each entry
//! handed to its own task; with nothing to claim, block on the kernels'
//! wake streams.

use std::sync::atomic::AtomicUsize;

use redis::streams::StreamKey;
use tokio::sync::OwnedSemaphorePermit;
use ttg_proto::sched::{self, ClaimReply};

use super::*;

/// Longest XREADGROUP BLOCK; also how soon a drain notices it should stop claiming.
const READ_BLOCK: Duration = Duration::from_millis(1_000);

/// With several slot groups, a group that had nothing to hand out is not
/// asked again for this long (unless the agent is about to wait): a busy
/// agent's claim stays one round trip while other groups are empty.
const EMPTY_GROUP_PAUSE: Duration = Duration::from_millis(50);

/// How often the claim loop re-reads the installation's slot groups (a
/// server may have set them since this agent started).
const LAYOUT_EVERY: Duration = Duration::from_secs(5);

/// Chunks an agent holds (claimed, not yet completed in Redis) beyond its
/// `concurrency`: a slot is free again as soon as its chunk is computed, so
/// the next chunk computes while the last one's completion is in flight and
/// completions batch up; this bounds what waits when Redis is slow or full.
const HOLD_EXTRA: usize = MAX_BATCH;

/// Chunks computing faster than this on average are worth prefetching: an
/// agent then claims, beyond its free slots, about this much work per slot
/// (at least `concurrency` chunks, at most HOLD_EXTRA), so a read brings
/// many and completions batch. Longer chunks are claimed only into free
/// slots, so none waits on a busy agent while another is idle.
const PREFETCH_BELOW: Duration = Duration::from_millis(10);

impl Worker {
    /// Every tasks stream this agent reads: each kernel's, in every slot
    /// group.
    pub(super) fn streams(&self) -> Vec<String> {
        let names = self.registry.names();
        self.layout()
            .groups()
            .iter()
            .flat_map(|g| names.iter().map(|k| g.tasks(k)).collect::<Vec<_>>())
            .collect()
    }

    pub(super) async fn ensure_groups(&self) -> RedisResult<()> {
        let mut c = self.conn.clone();
        for s in self.streams() {
            redis_conn::ensure_group(&mut c, &s).await?;
        }
        Ok(())
    }

    /// Claim and compute until `stop` is cancelled; chunks already claimed are
    /// handed to `tracker` and keep running after this returns.
    pub async fn claim_loop(self: Arc<Self>, stop: CancellationToken, tracker: TaskTracker) {
        let mut c = Claimer::new(&self);
        while !stop.is_cancelled() {
            // A share of the claim budget, then a slot, in that order
            // everywhere (entries waiting for a slot already have their
            // share), so neither waits forever.
            let Some(first_share) = acquire(&c.budget, &stop).await else {
                return;
            };
            // Claim only what we can start now (chunks held but not computing
            // would wait here instead of on an idle agent), unless chunks are
            // short and claimed ones already wait for slots: then claim ahead
            // without taking a slot, which a waiting chunk would otherwise
            // wait on through this read's round trip.
            let ahead = c.prefetch(&self) > 0
                && c.waiting.load(Ordering::Relaxed) > 0
                && !c.ahead_found_nothing;
            let mut permits = Vec::new();
            if !ahead {
                let Some(first) = acquire(&c.slots, &stop).await else {
                    return;
                };
                permits.push(first);
            }
            while let Ok(p) = c.slots.clone().try_acquire_owned() {
                permits.push(p);
            }
            if let Err(e) = c.ready(&self).await {
                tracing::warn!(error = %e, "redis unreachable or consumer groups missing; retrying");
                drop(permits);
                c.backoff.sleep_or(&stop).await;
                continue;
            }
            let mut shares = first_share;
            let want = permits.len() + c.prefetch(&self);
            if want > 1 {
                let more = (want - 1).min(c.budget.available_permits()) as u32;
                if let Ok(p) = c.budget.clone().try_acquire_many_owned(more) {
                    shares.merge(p);
                }
            }
            // While claimed entries wait for a slot, never block: a blocked
            // read would keep the slots it holds from them until it returns.
            let local_work = c.waiting.load(Ordering::Relaxed) > 0;
            let count = shares.num_permits();
            let read = if !local_work && count > permits.len() {
                // Prefetching: a batch if the queue has one now, else block
                // for what the free slots can start. A blocked read is
                // answered by whatever run comes next — maybe one of long
                // chunks, whose backlog a read sized for short ones would
                // take whole while other agents idle.
                match c.read(&self, count, false).await {
                    Ok(k) if k.iter().all(|k| k.ids.is_empty()) => {
                        c.read(&self, permits.len(), true).await
                    }
                    other => other,
                }
            } else {
                c.read(&self, count, !local_work).await
            };
            let keys = match read {
                Ok(k) => k,
                Err(e) => {
                    tracing::warn!(error = %e, "XREADGROUP failed; retrying");
                    drop(permits);
                    c.backoff.sleep_or(&stop).await;
                    continue;
                }
            };
            let found_nothing = keys.iter().all(|k| k.ids.is_empty());
            // An empty read ahead is not repeated until a slot frees up
            // (the next read waits for one): no busy loop on an empty queue.
            c.ahead_found_nothing = ahead && found_nothing;
            if local_work && found_nothing {
                // Nothing new: hand the slots to the waiting entries first.
                drop(permits);
                drop(shares);
                tokio::task::yield_now().await;
                continue;
            }
            c.dispatch(&self, keys, permits, shares, &tracker);
        }
    }
}

/// A permit of `sem`, or None once `stop` is cancelled (or it is closed).
async fn acquire(sem: &Arc<Semaphore>, stop: &CancellationToken) -> Option<OwnedSemaphorePermit> {
    tokio::select! {
        p = sem.clone().acquire_owned() => p.ok(),
        _ = stop.cancelled() => None,
    }
}

/// The claim loop's state.
struct Claimer {
    /// Chunks computing at once (`concurrency`).
    slots: Arc<Semaphore>,
    /// Chunks held from claim to completion: computing, waiting for a slot
    /// (prefetched) or waiting for their completion script.
    budget: Arc<Semaphore>,
    /// Entries claimed and waiting for a free slot (see PREFETCH_BELOW).
    waiting: Arc<AtomicUsize>,
    /// The kernels this agent offers, in the order claim.lua is given them.
    kernels: Vec<String>,
    /// Its own connection: XREAD BLOCK holds it.
    blocking: Option<ttg_proto::redis_target::Conn>,
    groups_ready: bool,
    /// When the slot groups were last read from Redis.
    layout_read: Option<std::time::Instant>,
    /// With several slot groups: the group the next claim asks first
    /// (claims rotate over the groups), and per group when it may be asked
    /// again after it had nothing (see EMPTY_GROUP_PAUSE).
    next_group: usize,
    empty_until: Vec<std::time::Instant>,
    backoff: Backoff,
    /// The last read ahead (without a slot) found nothing.
    ahead_found_nothing: bool,
}

impl Claimer {
    fn new(w: &Worker) -> Self {
        Self {
            slots: Arc::new(Semaphore::new(w.concurrency as usize)),
            budget: Arc::new(Semaphore::new(2 * w.concurrency as usize + HOLD_EXTRA)),
            waiting: Arc::new(AtomicUsize::new(0)),
            kernels: w.registry.names(),
            blocking: None,
            groups_ready: false,
            layout_read: None,
            next_group: 0,
            empty_until: Vec::new(),
            backoff: redis_backoff(),
            ahead_found_nothing: false,
        }
    }

    /// Consumer groups exist and the blocking connection is open.
    async fn ready(&mut self, w: &Worker) -> RedisResult<()> {
        if self.layout_read.is_none_or(|t| t.elapsed() >= LAYOUT_EVERY) {
            if w.settle_layout().await? {
                self.groups_ready = false;
            }
            self.layout_read = Some(std::time::Instant::now());
        }
        if !self.groups_ready {
            w.ensure_groups().await?;
            self.groups_ready = true;
        }
        if self.blocking.is_none() {
            self.blocking = Some(w.target.blocking(READ_BLOCK).await?);
        }
        Ok(())
    }

    /// Entries to claim beyond the free slots: about PREFETCH_BELOW of work
    /// per slot for short chunks (at least `concurrency`, at most
    /// HOLD_EXTRA, less what already waits), none for long ones.
    ///
    /// None either while no computation has ended lately: the average then
    /// describes an earlier run's chunks, and a new run's long chunks
    /// claimed on it would pile up on this agent while others idle.
    fn prefetch(&self, w: &Worker) -> usize {
        let avg = w.compute_avg_us.load(Ordering::Relaxed);
        let below = PREFETCH_BELOW.as_micros() as u64;
        let since = (w.epoch.elapsed().as_micros() as u64)
            .saturating_sub(w.computed_at_us.load(Ordering::Relaxed));
        if avg >= below || since > 2 * below {
            return 0;
        }
        let c = w.concurrency as u64;
        let depth = (c * below / avg.max(1)).clamp(c, HOLD_EXTRA as u64) as usize;
        depth.saturating_sub(self.waiting.load(Ordering::Relaxed))
    }

    /// One claim of up to `count` entries (claim.lua); with none to claim
    /// and `block`, wait on the wake streams up to READ_BLOCK and claim
    /// once more. Not raced against the stop: dropping a claim in flight
    /// could lose entries Redis already delivered to us.
    async fn read(&mut self, w: &Worker, count: usize, block: bool) -> RedisResult<Vec<StreamKey>> {
        let layout = w.layout();
        if !layout.is_single() {
            return self.read_groups(w, &layout, count, block).await;
        }
        let home = layout.home();
        let reply = self.claim(w, home, count).await?;
        if !reply.keys.is_empty() || !block || reply.wake_ids.len() != self.kernels.len() {
            return Ok(reply.keys);
        }
        let wakes: Vec<String> = self.kernels.iter().map(|k| home.wake(k)).collect();
        if self.wait_wake(&wakes, &reply.wake_ids).await? {
            Ok(self.claim(w, home, count).await?.keys)
        } else {
            Ok(Vec::new())
        }
    }

    /// [`Claimer::read`] over several slot groups: claims rotate over the
    /// groups (one round trip while the first asked has work), and with
    /// nothing anywhere and `block`, wait on the home group's wake streams,
    /// which servers ring after every Submit, Retry and re-queue (a
    /// blocking read cannot span the slots of several groups on a
    /// cluster). Their last ids are read before the groups are asked, so
    /// work queued after that wakes the read.
    async fn read_groups(
        &mut self,
        w: &Worker,
        layout: &Layout,
        count: usize,
        block: bool,
    ) -> RedisResult<Vec<StreamKey>> {
        let home = layout.home();
        let wakes: Vec<String> = self.kernels.iter().map(|k| home.wake(k)).collect();
        let since = if block {
            Some(self.last_ids(&wakes).await?)
        } else {
            None
        };
        let keys = self.claim_groups(w, layout, count, block).await?;
        let Some(since) = since.filter(|_| keys.iter().all(|k| k.ids.is_empty())) else {
            return Ok(keys);
        };
        if self.wait_wake(&wakes, &since).await? {
            self.claim_groups(w, layout, count, true).await
        } else {
            Ok(Vec::new())
        }
    }

    /// Ask the groups in turn, from the one after the last that gave work,
    /// until one hands out something; groups found empty lately are skipped
    /// unless `all`.
    async fn claim_groups(
        &mut self,
        w: &Worker,
        layout: &Layout,
        count: usize,
        all: bool,
    ) -> RedisResult<Vec<StreamKey>> {
        let n = layout.len();
        if self.empty_until.len() != n {
            self.empty_until = vec![std::time::Instant::now(); n];
        }
        let now = std::time::Instant::now();
        for i in 0..n {
            let g = (self.next_group + i) % n;
            if !all && self.empty_until[g] > now {
                continue;
            }
            let reply = self.claim(w, &layout.groups()[g], count).await?;
            if reply.keys.iter().any(|k| !k.ids.is_empty()) {
                self.next_group = (g + 1) % n;
                return Ok(reply.keys);
            }
            self.empty_until[g] = now + EMPTY_GROUP_PAUSE;
        }
        Ok(Vec::new())
    }

    /// The last entry id of each of `streams` ('0-0' when empty).
    async fn last_ids(&mut self, streams: &[String]) -> RedisResult<Vec<String>> {
        let Some(conn) = self.blocking.as_mut() else {
            return Ok(vec!["0-0".to_string(); streams.len()]);
        };
        let mut out = Vec::with_capacity(streams.len());
        for s in streams {
            let r: redis::streams::StreamRangeReply = redis::cmd("XREVRANGE")
                .arg(s)
                .arg("+")
                .arg("-")
                .arg("COUNT")
                .arg(1)
                .query_async(conn)
                .await?;
            out.push(
                r.ids
                    .first()
                    .map_or_else(|| "0-0".to_string(), |e| e.id.clone()),
            );
        }
        Ok(out)
    }

    /// Block (up to READ_BLOCK) until one of `wakes` gets an entry past
    /// `since`; whether one did.
    async fn wait_wake(&mut self, wakes: &[String], since: &[String]) -> RedisResult<bool> {
        let Some(conn) = self.blocking.as_mut() else {
            return Ok(false);
        };
        let mut cmd = redis::cmd("XREAD");
        cmd.arg("COUNT")
            .arg(1)
            .arg("BLOCK")
            .arg(READ_BLOCK.as_millis() as u64)
            .arg("STREAMS");
        cmd.arg(wakes).arg(since);
        let woke: RedisResult<Option<redis::streams::StreamReadReply>> =
            cmd.query_async(conn).await;
        match woke {
            Ok(r) => Ok(r.is_some()),
            Err(e) => {
                if is_transient(&e) {
                    self.blocking = None;
                }
                Err(e)
            }
        }
    }

    async fn claim(&mut self, w: &Worker, keys: &Keys, count: usize) -> RedisResult<ClaimReply> {
        let Some(conn) = self.blocking.as_mut() else {
            return Ok(ClaimReply::default());
        };
        match sched::claim(conn, &w.scripts, keys, &self.kernels, &w.agent_id, count).await {
            Ok(r) => {
                self.backoff.reset();
                Ok(r)
            }
            Err(e) => {
                if e.code() == Some("NOGROUP") || e.to_string().contains("NOGROUP") {
                    // Redis lost its data (restart without AOF) or a stream was deleted.
                    self.groups_ready = false;
                } else if is_transient(&e) {
                    self.blocking = None;
                }
                Err(e)
            }
        }
    }

    /// Hand each entry to a task of its own with one share of the budget and, if one is
    /// left, a slot; prefetched entries (and extras from several kernels'
    /// streams, as COUNT applies per stream) wait for theirs.
    fn dispatch(
        &self,
        w: &Arc<Worker>,
        keys: Vec<StreamKey>,
        mut permits: Vec<OwnedSemaphorePermit>,
        mut shares: OwnedSemaphorePermit,
        tracker: &TaskTracker,
    ) {
        for key in keys {
            for entry in key.ids {
                let permit = permits.pop();
                let share = shares.split(1);
                let (budget, slots, waiting) = (
                    self.budget.clone(),
                    self.slots.clone(),
                    self.waiting.clone(),
                );
                let w = w.clone();
                let stream = key.key.clone();
                if permit.is_none() {
                    waiting.fetch_add(1, Ordering::Relaxed);
                }
                tracker.spawn(async move {
                    let _share = match share {
                        Some(h) => h,
                        None => match budget.acquire_owned().await {
                            Ok(h) => h,
                            Err(_) => return,
                        },
                    };
                    let permit = async move {
                        match permit {
                            Some(p) => Some(p),
                            None => {
                                let p = slots.acquire_owned().await;
                                waiting.fetch_sub(1, Ordering::Relaxed);
                                p.ok()
                            }
                        }
                    };
                    w.process(stream, entry.id, entry.map, permit).await;
                });
            }
        }
    }
}
