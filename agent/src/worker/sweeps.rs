//! What an agent knows of each run's sweep: its named space and outputs,
//! read from the run's spec once (only for tasks that say the run has
//! them), and its top-K thresholds, as the last completion reply gave them.

use super::*;
use ttg_proto::scripts::Thresholds;
use ttg_proto::space::Sweep;

/// Runs whose sweep and thresholds are remembered before they are
/// forgotten (a forgotten one costs one HGET, or candidates the script
/// drops).
const KEPT: usize = 4_096;

/// Encoded spec bytes of the sweeps remembered at most: a space may be up
/// to 1 MiB, and runs are submitted by others — the cache must not grow
/// with them.
const KEPT_BYTES: usize = 64 << 20;

/// Run → its sweep and the size of its spec; and the sizes' total.
type Known = (HashMap<String, (Arc<Sweep>, usize)>, usize);

/// Per-run knowledge shared by the chunks of a run.
#[derive(Default)]
pub(super) struct Sweeps {
    sweeps: Mutex<Known>,
    thresholds: Mutex<HashMap<String, Thresholds>>,
}

fn remember<V>(map: &Mutex<HashMap<String, V>>, run_id: &str, v: V) {
    if let Ok(mut m) = map.lock() {
        if m.len() >= KEPT && !m.contains_key(run_id) {
            m.clear();
        }
        m.insert(run_id.to_string(), v);
    }
}

impl Worker {
    /// The run's sweep if its task says it has one; read from the run's
    /// spec the first time. An error (no spec: the run is gone, or a spec
    /// this agent cannot read) fails the attempt with the reason.
    pub(super) async fn sweep_of(&self, task: &Task) -> Result<Option<Arc<Sweep>>, KernelError> {
        if !task.sweep {
            return Ok(None);
        }
        let run_id = &task.run_id;
        if let Some(s) = self
            .sweeps
            .sweeps
            .lock()
            .ok()
            .and_then(|m| m.0.get(run_id).map(|(s, _)| s.clone()))
        {
            return Ok(Some(s));
        }
        let key = self.keys.run(run_id);
        let spec: Option<Option<Vec<u8>>> = self
            .retry_redis("read run spec", |mut c| {
                let key = key.clone();
                async move {
                    redis::cmd("HGET")
                        .arg(key)
                        .arg("spec")
                        .query_async(&mut c)
                        .await
                }
            })
            .await;
        if spec.is_none() && self.abort.is_cancelled() {
            return Err(KernelError::Cancelled);
        }
        let spec = spec.flatten().ok_or_else(|| {
            KernelError::Failed(format!("run {run_id} has no spec in Redis (deleted?)"))
        })?;
        let sweep = ttg_proto::records::decode_spec(&spec)
            .map_err(|e| e.to_string())
            .and_then(|s| Sweep::of(&s).map_err(|e| e.to_string()))
            .map_err(|e| KernelError::Failed(format!("cannot read run {run_id}'s space: {e}")))?;
        let sweep = Arc::new(sweep);
        if let Ok(mut m) = self.sweeps.sweeps.lock() {
            let (map, bytes) = &mut *m;
            if map.len() >= KEPT || *bytes + spec.len() > KEPT_BYTES {
                map.clear();
                *bytes = 0;
            }
            *bytes += spec.len();
            map.insert(run_id.to_string(), (sweep.clone(), spec.len()));
        }
        Ok(Some(sweep))
    }

    /// The run's top-K thresholds as last reported (none yet: all
    /// candidates go).
    pub(super) fn thresholds(&self, run_id: &str) -> Thresholds {
        self.sweeps
            .thresholds
            .lock()
            .ok()
            .and_then(|m| m.get(run_id).cloned())
            .unwrap_or_default()
    }

    /// Remember the thresholds a completion reply carried.
    pub(super) fn set_thresholds(&self, run_id: &str, packed: &[u8]) {
        if !packed.is_empty() {
            remember(&self.sweeps.thresholds, run_id, Thresholds::decode(packed));
        }
    }
}
