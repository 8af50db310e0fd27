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
        let key = self.keys.results(run_id);
        let mut c = self.conn();
        let batch = (RESULTS_BATCH_BYTES / (spec.chunk_size.max(1) * 8)).clamp(1, RESULTS_BATCH);
        let mut first = 0;
        while first < spec.total_chunks {
            let last = (first + batch).min(spec.total_chunks);
            let idx: Vec<u64> = (first..last).collect();
            let vals: Vec<Option<Vec<u8>>> = self
                .timed(redis::cmd("HMGET").arg(&key).arg(&idx).query_async(&mut c))
                .await?;
            for (i, v) in idx.into_iter().zip(vals) {
                let Some(bytes) = v else { continue };
                let values = unpack_values(&bytes)?;
                let (start, _) = chunk_range(spec.params, spec.chunk_size, i);
                if tx
                    .send(Ok(ResultChunk {
                        chunk_index: i,
                        start,
                        values,
                    }))
                    .await
                    .is_err()
                {
                    return Ok(());
                }
            }
            first = last;
        }
        Ok(())
    }
}
