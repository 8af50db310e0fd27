//! What an agent knows of each run's sweep: its named space and outputs,
//! read from the run's spec once (only for tasks that say the run has
//! them).

use super::*;
use ttg_proto::space::Sweep;

/// Runs whose sweep is remembered before they are all forgotten (a
/// forgotten one costs one HGET).
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
        let key = self.keys_of(run_id).run(run_id);
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
}
