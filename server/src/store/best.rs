//! Best: a run's k best points by one output — from the top-K lists the
//! completion script keeps, or, for k beyond them, a scan of the results
//! with a bounded heap.

use std::cmp::Ordering;
use std::collections::{BTreeSet, BinaryHeap};

use ttg_proto::scripts::TOP_K;
use ttg_proto::space::Sweep;
use ttg_proto::v1::{BestResponse, Point};

use super::*;

/// Most points one Best returns.
pub const MAX_BEST: u32 = 10_000;
/// Points Best returns when k is 0.
pub const DEFAULT_BEST: u32 = 10;

/// A candidate in the scan's heap: the worst kept on top.
struct Ranked {
    key: f64,
    index: u64,
}

impl PartialEq for Ranked {
    fn eq(&self, o: &Self) -> bool {
        self.cmp(o) == Ordering::Equal
    }
}
impl Eq for Ranked {}
impl PartialOrd for Ranked {
    fn partial_cmp(&self, o: &Self) -> Option<Ordering> {
        Some(self.cmp(o))
    }
}
impl Ord for Ranked {
    /// Better = smaller key, then smaller index; the heap's top is the worst.
    fn cmp(&self, o: &Self) -> Ordering {
        self.key.total_cmp(&o.key).then(self.index.cmp(&o.index))
    }
}

impl Store {
    /// The `k` best points of a run by `output` ("" = the first), smallest
    /// first or, with `max`, largest first; each with every output.
    pub async fn best(
        &self,
        run_id: &str,
        output: &str,
        max: bool,
        k: u32,
    ) -> Result<BestResponse> {
        let k = if k == 0 { DEFAULT_BEST } else { k };
        if k > MAX_BEST {
            return Err(Error::invalid(
                "k",
                format!("must be in 1..={MAX_BEST} (0 = {DEFAULT_BEST}), got {k}"),
            ));
        }
        let spec = self.spec(run_id).await?;
        let sweep = Sweep::of(&spec).map_err(|e| {
            Error::Corrupt(ttg_proto::records::DecodeError::Field {
                what: "run spec",
                detail: e.to_string(),
            })
        })?;
        let o = if output.is_empty() {
            0
        } else {
            sweep
                .outputs
                .iter()
                .position(|n| n == output)
                .ok_or_else(|| {
                    Error::invalid(
                        "output",
                        format!(
                            "run {run_id} has no output {output:?}; its outputs are {}",
                            sweep.outputs.join(", ")
                        ),
                    )
                })?
        };
        let (ranked, scanned) = if k as usize <= TOP_K {
            (self.kept_best(&spec, o, max, k as usize).await?, false)
        } else {
            (
                self.scan_best(&spec, sweep.outputs.len(), o, max, k as usize)
                    .await?,
                true,
            )
        };
        let outputs = self.outputs_of(&spec, sweep.outputs.len(), &ranked).await?;
        let points = ranked
            .iter()
            .zip(outputs)
            .map(|(&i, outs)| Point {
                outputs: outs,
                ..sweep.space.wire_point(i)
            })
            .collect();
        Ok(BestResponse {
            points,
            outputs: sweep.outputs,
            scanned,
        })
    }

    /// From the completion script's top-K list (see `complete.lua`).
    async fn kept_best(&self, spec: &RunSpec, o: usize, max: bool, k: usize) -> Result<Vec<u64>> {
        let mut c = self.conn();
        let field = 2 * o + usize::from(max);
        let packed: Option<Vec<u8>> = self
            .timed(
                redis::cmd("HGET")
                    .arg(self.keys.top(&spec.run_id))
                    .arg(field)
                    .query_async(&mut c),
            )
            .await?;
        let pairs = unpack_values(&packed.unwrap_or_default())?;
        Ok(pairs
            .chunks_exact(2)
            .take(k)
            .map(|p| p[1] as u64)
            .filter(|&i| i < spec.params)
            .collect())
    }

    /// Scan every stored value of output `o`, keeping the best `k`.
    async fn scan_best(
        &self,
        spec: &RunSpec,
        outputs: usize,
        o: usize,
        max: bool,
        k: usize,
    ) -> Result<Vec<u64>> {
        let sign = if max { -1.0 } else { 1.0 };
        let mut heap: BinaryHeap<Ranked> = BinaryHeap::with_capacity(k + 1);
        self.scan_results(spec, |_, start, values| {
            let n = values.len() / outputs.max(1);
            for (i, v) in values[o * n..(o + 1) * n].iter().enumerate() {
                let r = Ranked {
                    key: sign * v,
                    index: start + i as u64,
                };
                if heap.len() < k {
                    heap.push(r);
                } else if heap.peek().is_some_and(|w| r < *w) {
                    heap.pop();
                    heap.push(r);
                }
            }
            std::future::ready(true)
        })
        .await?;
        Ok(heap
            .into_sorted_vec()
            .into_iter()
            .map(|r| r.index)
            .collect())
    }

    /// Every output of each point, read from its chunk's stored values.
    async fn outputs_of(
        &self,
        spec: &RunSpec,
        outputs: usize,
        points: &[u64],
    ) -> Result<Vec<Vec<f64>>> {
        let size = spec.chunk_size.max(1);
        let chunks: Vec<u64> = points
            .iter()
            .map(|i| i / size)
            .collect::<BTreeSet<_>>()
            .into_iter()
            .collect();
        let mut stored = HashMap::new();
        let mut c = self.conn();
        for batch in chunks.chunks(256) {
            let vals: Vec<Option<Vec<u8>>> = self
                .timed(
                    redis::cmd("HMGET")
                        .arg(self.keys.results(&spec.run_id))
                        .arg(batch)
                        .query_async(&mut c),
                )
                .await?;
            for (ch, v) in batch.iter().zip(vals) {
                if let Some(b) = v {
                    stored.insert(*ch, unpack_values(&b)?);
                }
            }
        }
        Ok(points
            .iter()
            .map(|&i| {
                let ch = i / size;
                let (start, end) = chunk_range(spec.params, spec.chunk_size, ch);
                let n = (end - start) as usize;
                let at = (i - start) as usize;
                stored
                    .get(&ch)
                    .filter(|v| v.len() == n * outputs)
                    .map(|v| (0..outputs).map(|k| v[k * n + at]).collect())
                    .unwrap_or_default()
            })
            .collect())
    }
}
