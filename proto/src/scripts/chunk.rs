//! What one chunk's completion sends to its script ([`ChunkResult`]: the
//! values packed, and the summaries the script keeps), and what the
//! completion and failure scripts answer about it.

use crate::records::{pack_values, parse_state};
use crate::v1::RunState;

/// One chunk's result, as the completion script takes it.
#[derive(Debug, Clone)]
pub struct ChunkResult {
    /// Tasks stream entry id of the delivery.
    pub entry_id: String,
    /// Chunk index.
    pub chunk_index: u64,
    /// Number of points.
    pub count: usize,
    /// Values, packed (see [`pack_values`]), output after output.
    pub packed: Vec<u8>,
    /// The ChunkCompleted event's body (see [`crate::records::event_body`]).
    pub event: Vec<u8>,
    /// Per output, packed little-endian f64: K (min, max) pairs (the
    /// chunk's extremes, stored as they are), then K (sum, index of the
    /// first min, index of the first max) triples. Binary: the script
    /// unpacks it without parsing decimals.
    pub stats: Vec<u8>,
    /// Microseconds the agent computed the chunk for: charged to its run's
    /// agent time, which the scheduler shares (docs/scheduling.md).
    pub compute_us: u64,
}

impl ChunkResult {
    /// A one-output chunk's values (first point `start`) and event body.
    pub fn new(
        entry_id: &str,
        chunk_index: u64,
        start: u64,
        values: &[f64],
        event: Vec<u8>,
    ) -> Self {
        Self::build(entry_id, chunk_index, start, 1, values, |_| event)
    }

    /// A chunk's values for `outputs` outputs (output after output, each
    /// `values.len() / outputs` long, first point `start`), summarised for
    /// the script (one pass per output), with the event body built from
    /// the first output's sum.
    pub fn build(
        entry_id: &str,
        chunk_index: u64,
        start: u64,
        outputs: usize,
        values: &[f64],
        event: impl FnOnce(f64) -> Vec<u8>,
    ) -> Self {
        let outputs = outputs.max(1);
        let n = values.len() / outputs;
        let mut extremes = Vec::with_capacity(outputs * 40);
        let mut rest = Vec::with_capacity(outputs * 24);
        let mut first_sum = 0.0;
        for k in 0..outputs {
            let col = &values[k * n..(k + 1) * n];
            let (mut sum, mut min, mut max, mut amin, mut amax) =
                (0.0, f64::INFINITY, f64::NEG_INFINITY, 0, 0);
            for (i, &v) in col.iter().enumerate() {
                sum += v;
                if v < min {
                    min = v;
                    amin = i;
                }
                if v > max {
                    max = v;
                    amax = i;
                }
            }
            if k == 0 {
                first_sum = sum;
            }
            let at = |i: usize| (start + i as u64) as f64;
            for x in [min, max] {
                extremes.extend_from_slice(&x.to_le_bytes());
            }
            for x in [sum, at(amin), at(amax)] {
                rest.extend_from_slice(&x.to_le_bytes());
            }
        }
        extremes.extend_from_slice(&rest);
        Self {
            entry_id: entry_id.to_string(),
            chunk_index,
            count: n,
            packed: pack_values(values),
            event: event(first_sum),
            stats: extremes,
            compute_us: 0,
        }
    }

    /// The same, with the time the agent computed it for.
    pub fn with_compute_us(mut self, us: u64) -> Self {
        self.compute_us = us;
        self
    }

    /// Number of outputs the chunk carries.
    pub fn outputs(&self) -> usize {
        self.stats.len() / 40
    }
}

/// Outcome of the failure script.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Failure {
    /// Re-queued with attempt + 1.
    Requeued,
    /// No attempts left: dead-lettered; the run's state after.
    DeadLettered(RunState),
    /// The failure ended the run's fail-fast streak: the run is FAILED.
    StoppedByFailFast,
    /// The chunk already had a result: nothing to do.
    AlreadyDone,
    /// The run is not active (or unknown): dropped.
    Inactive,
    /// (Reclaim only) the entry was no longer pending for that agent.
    NotOwned,
}

impl Failure {
    /// Interpret the script's `{code, state}` reply.
    pub fn from_reply(code: i64, state: &str) -> Self {
        match code {
            1 => Failure::Requeued,
            3 => Failure::DeadLettered(parse_state(state)),
            4 => Failure::StoppedByFailFast,
            0 => Failure::AlreadyDone,
            -2 => Failure::NotOwned,
            _ => Failure::Inactive,
        }
    }
}

/// Outcome of the completion script.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Completion {
    /// Values stored and counted; the run's state after.
    Counted(RunState),
    /// The chunk already had a result: nothing changed but the ack.
    Duplicate,
    /// The run is no longer active (cancelled or finished): acked, dropped.
    Inactive(RunState),
    /// No such run (deleted or expired): acked, dropped.
    UnknownRun,
    /// The delivery is not pending for the caller (it was reclaimed from
    /// it, or never was its): nothing changed.
    NotHeld,
}

impl Completion {
    /// Interpret one chunk's code and the run's state from the script's
    /// `{codes, state}` reply.
    pub fn from_reply(code: i64, state: &str) -> Self {
        match code {
            1 => Completion::Counted(parse_state(state)),
            0 => Completion::Duplicate,
            2 => Completion::Inactive(parse_state(state)),
            -3 => Completion::NotHeld,
            _ => Completion::UnknownRun,
        }
    }
}
