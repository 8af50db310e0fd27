//! Best: a run's k best points by one output, exactly, reading few chunks.
//! The completion script stores every counted chunk's minimum and maximum
//! per output (`run:<id>:ext`, one column per output and direction); Best
//! reads that column and the done bitmap, orders the done chunks by their
//! extreme, and reads chunks in that order into a bounded heap until the
//! next chunk's extreme is worse than the k-th best point so far — no unread
//! chunk can then hold a better one.

use std::cmp::Ordering;
use std::collections::BinaryHeap;

use ttg_proto::v1::{BestResponse, Point};

use super::audit::bit;
use super::*;

/// Most points one Best returns.
pub const MAX_BEST: u32 = 10_000;
/// Points Best returns when k is 0.
pub const DEFAULT_BEST: u32 = 10;
/// Chunks read per HMGET.
const BATCH: usize = 16;
/// Bytes of chunk extremes read per GETRANGE.
const EXTREMES_WINDOW: u64 = 4 << 20;

/// A point in the heap, ranked by `key` (the value, negated for largest
/// first), then index: the heap's top is the worst kept.
struct Ranked {
    key: f64,
    index: u64,
    outputs: Vec<f64>,
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
    fn cmp(&self, o: &Self) -> Ordering {
        self.key.total_cmp(&o.key).then(self.index.cmp(&o.index))
    }
}

impl Store {
    /// The `k` best points of a run by `output` ("" = the first), smallest
    /// first or, with `max`, largest first; each with every output. Equal
    /// values rank by index.
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
        let (spec, sweep, o) = self.sweep_output(run_id, output).await?;
        let sign = if max { -1.0 } else { 1.0 };
        let outputs = sweep.outputs.len();
        let order = self.chunk_order(&spec, outputs, o, max).await?;
        let (k, key) = (k as usize, self.keys_of(run_id)?.results(run_id));
        let mut heap: BinaryHeap<Ranked> = BinaryHeap::with_capacity(k + 1);
        let mut c = self.conn();
        let mut read = 0u64;
        let mut next = 0;
        // Whether a chunk (its extreme, its index) may hold a point that
        // beats the k-th best so far. Chunks come by extreme, then index,
        // so the first that cannot ends the search: a worse extreme cannot,
        // nor can an equal one whose first point comes after the k-th best
        // (equal values rank by index).
        let may_beat = |h: &BinaryHeap<Ranked>, (ext, ch): (f64, u64)| match h.peek() {
            Some(w) if h.len() >= k => {
                ext < w.key || (ext == w.key && ch * spec.chunk_size.max(1) < w.index)
            }
            _ => true,
        };
        while next < order.len() {
            if !may_beat(&heap, order[next]) {
                break;
            }
            let batch: Vec<u64> = order[next..(next + BATCH).min(order.len())]
                .iter()
                .take_while(|e| may_beat(&heap, **e))
                .map(|(_, ch)| *ch)
                .collect();
            next += batch.len().max(1);
            let vals: Vec<Option<Vec<u8>>> = self
                .timed(
                    redis::cmd("HMGET")
                        .arg(&key)
                        .arg(&batch)
                        .query_async(&mut c),
                )
                .await?;
            for (ch, v) in batch.iter().zip(vals) {
                let Some(bytes) = v else { continue };
                read += 1;
                let values = unpack_values(&bytes)?;
                let (start, _) = chunk_range(spec.params, spec.chunk_size, *ch);
                let n = values.len() / outputs.max(1);
                for i in 0..n {
                    let r = Ranked {
                        key: sign * values[o * n + i],
                        index: start + i as u64,
                        outputs: Vec::new(),
                    };
                    if heap.len() < k || heap.peek().is_some_and(|w| r < *w) {
                        let outs = (0..outputs).map(|j| values[j * n + i]).collect();
                        heap.push(Ranked { outputs: outs, ..r });
                        if heap.len() > k {
                            heap.pop();
                        }
                    }
                }
            }
        }
        let points = heap
            .into_sorted_vec()
            .into_iter()
            .map(|r| Point {
                outputs: r.outputs,
                ..sweep.space.wire_point(r.index)
            })
            .collect();
        Ok(BestResponse {
            points,
            outputs: sweep.outputs,
            chunks_read: read,
        })
    }

    /// The run's done chunks with their minimum (or, with `max`, their
    /// negated maximum) of output `o` of `outputs`, best first. The
    /// extremes are read a window at a time: the server holds one window
    /// and 16 bytes per chunk.
    async fn chunk_order(
        &self,
        spec: &RunSpec,
        outputs: usize,
        o: usize,
        max: bool,
    ) -> Result<Vec<(f64, u64)>> {
        let total = spec.total_chunks;
        let sign = if max { -1.0 } else { 1.0 };
        let row = 16 * outputs as u64;
        let mut c = self.conn();
        let done: Vec<u8> = self
            .timed(
                redis::cmd("GET")
                    .arg(self.keys_of(&spec.run_id)?.done(&spec.run_id))
                    .query_async(&mut c),
            )
            .await?;
        let per_window = (EXTREMES_WINDOW / row).max(1);
        let mut ext = Vec::with_capacity(total as usize * 16);
        let mut first = 0;
        while first < total {
            let last = (first + per_window).min(total);
            let part: Vec<u8> = self
                .timed(
                    redis::cmd("GETRANGE")
                        .arg(self.keys_of(&spec.run_id)?.extremes(&spec.run_id))
                        .arg(first * row)
                        .arg(last * row - 1)
                        .query_async(&mut c),
                )
                .await?;
            // Keep only output o's (min, max) of each chunk.
            for ch in first..last {
                let at = ((ch - first) * row) as usize + 16 * o;
                ext.extend_from_slice(part.get(at..at + 16).unwrap_or(&[0; 16]));
            }
            first = last;
        }
        let mut order: Vec<(f64, u64)> = (0..total)
            .filter(|&ch| bit(&done, ch))
            .map(|ch| {
                let at = (ch * 16) as usize + if max { 8 } else { 0 };
                // A chunk counted past the string's end has no extremes
                // stored (not expected): it sorts first, so it is read.
                let v = ext
                    .get(at..at + 8)
                    .and_then(|b| b.try_into().ok())
                    .map(f64::from_le_bytes)
                    .unwrap_or(f64::NEG_INFINITY * sign);
                (sign * v, ch)
            })
            .collect();
        order.sort_by(|a, b| a.0.total_cmp(&b.0).then(a.1.cmp(&b.1)));
        Ok(order)
    }
}
