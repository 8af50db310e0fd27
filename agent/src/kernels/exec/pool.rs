//! The agent's worker programs (`mode=worker`): at most one per
//! concurrency slot, each serving one run.
//!
//! A chunk takes an idle program of its run (same program and arguments),
//! or starts one. Starting one when every slot already has a program evicts
//! the idle one that waited longest (another run's, since one of this run's
//! would have been taken). A program goes back to the idle list after a
//! chunk it served — result or a reported error — and is killed after
//! anything else (crash, protocol break, timeout, cancel). Idle programs
//! stop after `idle_after`; a run that ends stops its programs (the agent
//! calls [`Pool::run_ended`]); the agent's shutdown stops them all.

use std::collections::{HashSet, VecDeque};
use std::sync::{Arc, Mutex, Weak};
use std::time::Duration;

use tokio::time::Instant;

use super::program::{Key, Program};

/// How long a program told to stop (stdin closed) may take before its
/// process group is killed.
pub const GRACE: Duration = Duration::from_secs(2);

/// Ended runs remembered, so a program serving one when it ended is
/// stopped when it comes back rather than kept idle.
const ENDED_KEPT: usize = 1_024;

/// The worker programs of one agent.
pub struct Pool {
    slots: usize,
    idle_after: Duration,
    inner: Mutex<Inner>,
    reaper: std::sync::Once,
}

#[derive(Default)]
struct Inner {
    idle: Vec<(Worker, Instant)>,
    /// Programs alive or being started (idle, serving a chunk, starting).
    live: usize,
    ended: Ended,
}

/// The last [`ENDED_KEPT`] runs that ended, asked on every chunk: a set for
/// the question, a queue for which to forget first.
#[derive(Default)]
struct Ended {
    set: HashSet<String>,
    order: VecDeque<String>,
}

impl Ended {
    fn contains(&self, run_id: &str) -> bool {
        self.set.contains(run_id)
    }

    fn insert(&mut self, run_id: &str) {
        if self.set.contains(run_id) {
            return;
        }
        if self.order.len() >= ENDED_KEPT {
            if let Some(old) = self.order.pop_front() {
                self.set.remove(&old);
            }
        }
        self.set.insert(run_id.to_string());
        self.order.push_back(run_id.to_string());
    }

    /// Forget `run_id` (it is active again: retried).
    fn remove(&mut self, run_id: &str) {
        if self.set.remove(run_id) {
            self.order.retain(|r| r != run_id);
        }
    }
}

/// A program with its place in the pool's count.
pub struct Worker {
    /// The program.
    pub prog: Program,
    _live: Live,
}

/// One counted slot of the pool: a program alive or being started.
pub struct Live(Weak<Pool>);

impl Drop for Live {
    fn drop(&mut self) {
        if let Some(pool) = self.0.upgrade() {
            if let Ok(mut i) = pool.inner.lock() {
                i.live = i.live.saturating_sub(1);
                metrics::gauge!("ttg_agent_exec_workers_live").set(i.live as f64);
            }
        }
    }
}

impl Live {
    /// The started program, counted in this slot.
    pub fn with(self, prog: Program) -> Worker {
        Worker { prog, _live: self }
    }
}

/// What [`Pool::acquire`] found.
pub enum Acquired {
    /// An idle program of the run.
    Warm(Box<Worker>),
    /// None: a slot is reserved; start a program in it.
    Cold(Live),
}

impl Pool {
    /// A pool of at most `slots` programs, idle ones stopping after `idle_after`.
    pub fn new(slots: usize, idle_after: Duration) -> Arc<Self> {
        Arc::new(Self {
            slots: slots.max(1),
            idle_after,
            inner: Mutex::new(Inner::default()),
            reaper: std::sync::Once::new(),
        })
    }

    /// An idle program for `key`, or a reserved slot to start one in
    /// (after evicting the longest-idle program if every slot has one).
    pub fn acquire(self: &Arc<Self>, key: &Key) -> Acquired {
        self.reaper.call_once(|| {
            tokio::spawn(reap(Arc::downgrade(self)));
        });
        let mut evicted = Vec::new();
        let got = {
            let Ok(mut i) = self.inner.lock() else {
                return Acquired::Cold(Live(Weak::new()));
            };
            // A chunk of the run came through the claim gate: it is active.
            i.ended.remove(&key.run_id);
            if let Some(pos) = i.idle.iter().rposition(|(w, _)| w.prog.key == *key) {
                Acquired::Warm(Box::new(i.idle.remove(pos).0))
            } else {
                // Each evicted program stops counting when it is stopped,
                // just below, outside the lock.
                while i.live.saturating_sub(evicted.len()) >= self.slots && !i.idle.is_empty() {
                    // The idle list is in order of return: the first waited longest.
                    evicted.push(i.idle.remove(0).0);
                }
                i.live += 1;
                metrics::gauge!("ttg_agent_exec_workers_live").set(i.live as f64);
                Acquired::Cold(Live(Arc::downgrade(self)))
            }
        };
        for w in evicted {
            tracing::debug!(run = %w.prog.key.run_id, pid = w.prog.pid(), "worker evicted for another run's chunk");
            stop(w);
        }
        got
    }

    /// A program that served its chunk goes back to the idle list (or is
    /// stopped, if its run ended meanwhile).
    pub fn release(&self, w: Worker) {
        let Ok(mut i) = self.inner.lock() else { return };
        if i.ended.contains(&w.prog.key.run_id) {
            drop(i);
            stop(w);
            return;
        }
        i.idle.push((w, Instant::now()));
    }

    /// A program that failed is killed at once (dropping it kills its
    /// process group); the next chunk starts a fresh one.
    pub fn discard(&self, w: Worker, reason: &'static str) {
        tracing::debug!(run = %w.prog.key.run_id, pid = w.prog.pid(), reason, "worker killed");
        metrics::counter!("ttg_agent_exec_worker_restarts_total", "reason" => reason).increment(1);
        drop(w);
    }

    /// The runs that have programs idle here.
    pub fn runs(&self) -> Vec<String> {
        let Ok(i) = self.inner.lock() else {
            return Vec::new();
        };
        let mut v: Vec<String> = i
            .idle
            .iter()
            .map(|(w, _)| w.prog.key.run_id.clone())
            .collect();
        v.sort();
        v.dedup();
        v
    }

    /// `run_id` ended: stop its idle programs now, and those serving a
    /// chunk when they come back.
    pub fn run_ended(&self, run_id: &str) {
        let gone = {
            let Ok(mut i) = self.inner.lock() else { return };
            i.ended.insert(run_id);
            take_where(&mut i.idle, |w, _| w.prog.key.run_id == run_id)
        };
        if !gone.is_empty() {
            tracing::debug!(run = %run_id, workers = gone.len(), "run ended: stopping its workers");
        }
        gone.into_iter().for_each(stop);
    }

    /// Stop every idle program and wait for them (at most [`GRACE`]).
    pub async fn shutdown(&self) {
        let all = match self.inner.lock() {
            Ok(mut i) => std::mem::take(&mut i.idle),
            Err(_) => return,
        };
        let stops: Vec<_> = all
            .into_iter()
            .map(|(w, _)| {
                let Worker { prog, _live } = w;
                drop(_live);
                tokio::spawn(prog.stop(GRACE))
            })
            .collect();
        for s in stops {
            let _ = s.await;
        }
    }
}

/// Stop a program gracefully in the background; it no longer counts.
fn stop(w: Worker) {
    let Worker { prog, _live } = w;
    drop(_live);
    tokio::spawn(prog.stop(GRACE));
}

/// Remove and return the elements matching `f`, keeping the others in order.
fn take_where<T, U>(v: &mut Vec<(T, U)>, f: impl Fn(&T, &U) -> bool) -> Vec<T> {
    let mut out = Vec::new();
    let mut keep = Vec::with_capacity(v.len());
    for (t, u) in v.drain(..) {
        if f(&t, &u) {
            out.push(t);
        } else {
            keep.push((t, u));
        }
    }
    *v = keep;
    out
}

/// Stop programs idle for longer than the pool's `idle_after`, until the
/// pool is dropped.
async fn reap(pool: Weak<Pool>) {
    loop {
        let every = match pool.upgrade() {
            Some(p) => (p.idle_after / 4).clamp(Duration::from_millis(50), Duration::from_secs(1)),
            None => return,
        };
        tokio::time::sleep(every).await;
        let Some(p) = pool.upgrade() else { return };
        let old = match p.inner.lock() {
            Ok(mut i) => take_where(&mut i.idle, |_, since| since.elapsed() >= p.idle_after),
            Err(_) => return,
        };
        for w in old {
            tracing::debug!(run = %w.prog.key.run_id, pid = w.prog.pid(), "idle worker stopped (--exec-idle-s)");
            stop(w);
        }
    }
}

#[cfg(test)]
mod tests {
    //! The pool with real worker programs (a POSIX sh worker speaking the
    //! protocol): idle programs stop after `idle_after`, a full pool evicts
    //! the longest-idle program, an ended run's programs stop.
    use super::*;
    use std::path::PathBuf;

    const WORKER: &str = "#!/bin/sh\nread -r hello || exit 0\necho '{\"type\":\"ready\",\"protocol\":1}'\nwhile read -r line; do :; done\n";

    fn worker(dir: &std::path::Path) -> PathBuf {
        use std::os::unix::fs::PermissionsExt;
        let p = dir.join("w.sh");
        std::fs::write(&p, WORKER).expect("write");
        std::fs::set_permissions(&p, std::fs::Permissions::from_mode(0o755)).expect("chmod");
        p
    }

    fn key(run: &str, path: &std::path::Path) -> Key {
        Key {
            run_id: run.into(),
            program: path.display().to_string(),
            args: String::new(),
        }
    }

    fn alive(pid: u32) -> bool {
        std::fs::read_to_string(format!("/proc/{pid}/stat"))
            .map(|s| !s.contains(") Z "))
            .unwrap_or(false)
    }

    async fn gone(pid: u32) {
        for _ in 0..100 {
            if !alive(pid) {
                return;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        panic!("process {pid} still runs");
    }

    async fn start(pool: &Arc<Pool>, k: &Key) -> Worker {
        match pool.acquire(k) {
            Acquired::Cold(slot) => slot.with(
                Program::start(
                    k.clone(),
                    PathBuf::from(&k.program),
                    &[],
                    Duration::from_secs(5),
                    &crate::kernels::ChunkInput {
                        run_id: k.run_id.clone(),
                        chunk_index: 0,
                        start: 0,
                        end: 1,
                        args: Default::default(),
                        attempt: 1,
                        sweep: None,
                    },
                )
                .await
                .expect("start"),
            ),
            Acquired::Warm(_) => panic!("expected no idle program"),
        }
    }

    #[tokio::test]
    async fn idle_programs_stop_and_a_full_pool_evicts_the_longest_idle() {
        let dir = tempfile::tempdir().expect("tmp");
        let path = worker(dir.path());
        let pool = Pool::new(2, Duration::from_millis(400));
        let (a, b, c) = (key("a", &path), key("b", &path), key("c", &path));
        let wa = start(&pool, &a).await;
        let pa = wa.prog.pid();
        pool.release(wa);
        // Taken again: the same process.
        let Acquired::Warm(wa) = pool.acquire(&a) else {
            panic!("expected the idle program of run a")
        };
        assert_eq!(wa.prog.pid(), pa);
        pool.release(*wa);
        let wb = start(&pool, &b).await;
        let pb = wb.prog.pid();
        pool.release(wb);
        // Two slots, two programs: run c's start evicts a (idle longest).
        let wc = start(&pool, &c).await;
        gone(pa).await;
        assert!(alive(pb));
        // b idles past idle_after and stops; c, held, does not.
        gone(pb).await;
        assert!(alive(wc.prog.pid()));
        let pc = wc.prog.pid();
        pool.release(wc);
        pool.run_ended("c");
        gone(pc).await;
        assert!(pool.runs().is_empty());
    }

    #[tokio::test]
    async fn a_program_serving_when_its_run_ends_is_stopped_on_return() {
        let dir = tempfile::tempdir().expect("tmp");
        let path = worker(dir.path());
        let pool = Pool::new(1, Duration::from_secs(60));
        let w = start(&pool, &key("r", &path)).await;
        let pid = w.prog.pid();
        pool.run_ended("r");
        pool.release(w);
        gone(pid).await;
        // The run came back (retried): its chunk starts a program again.
        let w = start(&pool, &key("r", &path)).await;
        pool.release(w);
        assert_eq!(pool.runs(), vec!["r".to_string()]);
        pool.shutdown().await;
        assert!(pool.runs().is_empty());
    }
}
