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

/// The value of parameter `p`.
pub fn value(p: u64) -> f64 {
    let m = p % 100;
    // "0.<m>": one decimal digit for m < 10 (0.5), two otherwise (0.25, 0.1 for 10).
    let frac = if m < 10 {
        m as f64 / 10.0
    } else {
        m as f64 / 100.0
    };
    ((7 * (p % 1000) + 13) % 1000) as f64 + frac
}

/// Exact sum of `value(p)` for `p` in `0..n`, in hundredths (every value has
/// at most two decimals), computed in closed form per 1000-block; for tests
/// and `ttgctl demo`'s check.
pub fn expected_sum_hundredths(n: u64) -> u128 {
    // The integer part cycles with period 1000, the fraction with period 100.
    let int_part = |k: u64| -> u128 { (0..k).map(|p| ((7 * p + 13) % 1000) as u128).sum() };
    let frac_part = |k: u64| -> u128 {
        (0..k)
            .map(|m| if m < 10 { (m * 10) as u128 } else { m as u128 })
            .sum()
    };
    let ints = (n / 1000) as u128 * int_part(1000) * 100 + int_part(n % 1000) * 100;
    let fracs = (n / 100) as u128 * frac_part(100) + frac_part(n % 100);
    ints + fracs
}

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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn values_follow_the_definition() {
        assert_eq!(value(0), 13.0);
        assert_eq!(value(5), 48.5);
        assert_eq!(value(10), 83.1);
        assert_eq!(value(99), ((7 * 99 + 13) % 1000) as f64 + 0.99);
        assert_eq!(value(1000), 13.0);
    }

    #[test]
    fn known_sums() {
        assert_eq!(expected_sum_hundredths(10_000), 500_035_500);
        assert_eq!(expected_sum_hundredths(1_000), 50_003_550);
        let direct: f64 = (0..12_345).map(value).sum();
        assert!((direct - expected_sum_hundredths(12_345) as f64 / 100.0).abs() < 1e-6);
    }
}
