//! `placeholder`: the reference computation,
//! `value(p) = (7p + 13) mod 1000 + frac(p)` where `frac(p)` is the decimal
//! number `0.<p mod 100>` (5 → 0.5, 10 → 0.1, 99 → 0.99), with optional
//! simulated work of `work_ms` per parameter. 10,000 parameters sum to
//! 5,000,355.00; 1,000 to 500,035.50.

use std::time::Duration;

use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use ttg_proto::kernels::{int_arg, KernelSpec, PLACEHOLDER};

use super::{ChunkInput, ComputeFuture, Kernel, KernelError};

/// The placeholder kernel.
pub struct Placeholder;

pub use ttg_proto::kernels::placeholder_value as value;

impl Kernel for Placeholder {
    fn spec(&self) -> &'static KernelSpec {
        &PLACEHOLDER
    }

    fn compute<'a>(
        &'a self,
        chunk: &'a ChunkInput,
        cancel: &'a CancellationToken,
    ) -> ComputeFuture<'a> {
        Box::pin(async move {
            let began = Instant::now();
            let work_ms = int_arg(&PLACEHOLDER, &chunk.args, "work_ms")
                .map_err(|e| KernelError::Failed(e.to_string()))?;
            let values: Vec<f64> = (chunk.start..chunk.end).map(value).collect();
            if work_ms > 0 {
                // One deadline for the whole chunk: n × work_ms exactly, with no
                // per-parameter timer rounding accumulating into drift.
                let n = chunk.end - chunk.start;
                let deadline = began + Duration::from_millis(work_ms as u64 * n);
                tokio::select! {
                    _ = tokio::time::sleep_until(deadline) => {}
                    _ = cancel.cancelled() => return Err(KernelError::Cancelled),
                }
            }
            Ok(values)
        })
    }
}
