//! `placeholder`: the reference computation,
//! `value(p) = (7p + 13) mod 1000 + frac(p)` where `frac(p)` is the decimal
//! number `0.<p mod 100>` (5 → 0.5, 10 → 0.1, 99 → 0.99), with optional
//! simulated work of `work_ms` per parameter. 10,000 parameters sum to
//! 5,000,355.00; 1,000 to 500,035.50.
//!
//! Over a named space it reads each point's typed values: output 0 is still
//! `value(i)` of the point's index (so any 10,000-point space sums to
//! 5,000,355.00), and output k ≥ 1 is `value(i) + k · frac(s)` where `s` is
//! the sum of the point's numeric coordinates (text counts 0) — bounded and
//! not monotone in the index, like most measurements.

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
            let values = outputs(chunk);
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

/// The chunk's values, output after output.
fn outputs(chunk: &ChunkInput) -> Vec<f64> {
    let k = chunk.outputs();
    if k == 1 && chunk.named_space().is_none() {
        return (chunk.start..chunk.end).map(value).collect();
    }
    let n = chunk.len();
    let mut out = vec![0.0; n * k];
    chunk.for_each_point(|i, point| {
        let v = value(i);
        let s: f64 = point.iter().filter_map(|x| x.as_f64()).sum();
        let at = (i - chunk.start) as usize;
        for (o, col) in out.chunks_exact_mut(n).enumerate() {
            col[at] = v + o as f64 * (s - s.floor());
        }
    });
    out
}
