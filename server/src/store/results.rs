//! Results: every stored value of a run, streamed in chunk order.

use super::*;

/// Most chunks fetched per HMGET when streaming results…
const RESULTS_BATCH: u64 = 256;
/// …and about this many bytes of values per HMGET, so a run of large chunks
/// (10^6 parameters = 8 MB each) does not make the server hold 256 of them.
const RESULTS_BATCH_BYTES: u64 = 2 * 1024 * 1024;

impl Store {
    /// Stream every stored chunk result of a run, in chunk order.
    pub async fn results(&self, run_id: &str, tx: mpsc::Sender<Result<ResultChunk>>) {
        if let Err(e) = self.results_inner(run_id, &tx).await {
            let _ = tx.send(Err(e)).await;
        }
    }

    async fn results_inner(
        &self,
        run_id: &str,
        tx: &mpsc::Sender<Result<ResultChunk>>,
    ) -> Result<()> {
        let spec = self.spec(run_id).await?;
        let outputs = spec.outputs.len().max(1) as u32;
        self.scan_results(&spec, 1, |chunk_index, start, values| {
            let tx = tx.clone();
            async move {
                tx.send(Ok(ResultChunk {
                    chunk_index,
                    start,
                    values,
                    outputs,
                }))
                .await
                .is_ok()
            }
        })
        .await
    }

    /// Call `each(chunk, start, values)` for every stored chunk of the run
    /// in chunk order (values output after output) — or, with `stride` k >
    /// 1, for every k-th chunk (a sample) — a bounded batch of chunks in
    /// memory at a time, until it answers false.
    pub(super) async fn scan_results<F, Fut>(
        &self,
        spec: &RunSpec,
        stride: u64,
        mut each: F,
    ) -> Result<()>
    where
        F: FnMut(u64, u64, Vec<f64>) -> Fut,
        Fut: Future<Output = bool>,
    {
        let key = self.keys_of(&spec.run_id)?.results(&spec.run_id);
        let done_key = self.keys_of(&spec.run_id)?.done(&spec.run_id);
        let mut c = self.conn();
        let per_chunk = spec.chunk_size.max(1) * 8 * spec.outputs.len().max(1) as u64;
        let stride = stride.max(1);
        let batch = (RESULTS_BATCH_BYTES / per_chunk).clamp(1, RESULTS_BATCH) * stride;
        let mut first = 0;
        while first < spec.total_chunks {
            let last = (first + batch).min(spec.total_chunks);
            let idx: Vec<u64> = (first..last).step_by(stride as usize).collect();
            // The values with the done bits of their chunks, read together:
            // a field without its done bit is a completion's whose script
            // has not run (see complete.lua), not a result.
            let (vals, done): (Vec<Option<Vec<u8>>>, Vec<u8>) = self
                .timed(
                    redis::pipe()
                        .cmd("HMGET")
                        .arg(&key)
                        .arg(&idx)
                        .cmd("GETRANGE")
                        .arg(&done_key)
                        .arg(first / 8)
                        .arg((last - 1) / 8)
                        .query_async(&mut c),
                )
                .await?;
            let is_done = |i: u64| {
                done.get((i / 8 - first / 8) as usize)
                    .is_some_and(|b| b & (0x80 >> (i % 8)) != 0)
            };
            for (i, v) in idx.into_iter().zip(vals) {
                let Some(bytes) = v.filter(|_| is_done(i)) else {
                    continue;
                };
                let values = unpack_values(&bytes)?;
                let (start, _) = chunk_range(spec.params, spec.chunk_size, i);
                if !each(i, start, values).await {
                    return Ok(());
                }
            }
            first = last;
        }
        Ok(())
    }
}
