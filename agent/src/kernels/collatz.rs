//! `collatz`: the Collatz stopping time of each parameter — a CPU-bound
//! built-in for benchmarks, whose values a test can check independently.

use tokio_util::sync::CancellationToken;
use ttg_proto::kernels::{collatz_steps, KernelSpec, COLLATZ};

use super::{ChunkInput, ComputeFuture, Kernel, KernelError};

/// The collatz kernel.
pub struct Collatz;

/// Parameters computed between cancellation checks.
const BATCH: u64 = 4_096;

impl Kernel for Collatz {
    fn spec(&self) -> &'static KernelSpec {
        &COLLATZ
    }

    fn compute<'a>(
        &'a self,
        chunk: &'a ChunkInput,
        cancel: &'a CancellationToken,
    ) -> ComputeFuture<'a> {
        let (start, end, cancel) = (chunk.start, chunk.end, cancel.clone());
        Box::pin(async move {
            // CPU-bound: off the async threads, checking for cancellation
            // between batches so a cancel stops it promptly.
            tokio::task::spawn_blocking(move || {
                let mut out = Vec::with_capacity((end - start) as usize);
                let mut p = start;
                while p < end {
                    if cancel.is_cancelled() {
                        return Err(KernelError::Cancelled);
                    }
                    let stop = (p + BATCH).min(end);
                    out.extend((p..stop).map(|p| collatz_steps(p) as f64));
                    p = stop;
                }
                Ok(out)
            })
            .await
            .map_err(|e| KernelError::Failed(format!("collatz worker failed: {e}")))?
        })
    }
}
