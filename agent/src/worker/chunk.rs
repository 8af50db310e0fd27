//! One claimed entry's path: decode it, pass the claim gate, compute it with its kernel, check the values, and hand it to completion or failure.

use super::*;

/// A claimed entry, decoded.
struct Claimed {
    stream: String,
    entry_id: String,
    task: Task,
    attempt: u32,
    /// W3C traceparent of the run, as stored in the entry.
    traceparent: Vec<u8>,
}

impl Claimed {
    /// A span of the chunk's trace (claim → compute → ack), a child of the
    /// run's `submit` span through the traceparent carried in the entry.
    fn span(&self, name: &'static str, agent_id: &str) -> tracing::Span {
        let t = &self.task;
        let span = tracing::info_span!("chunk", otel.name = name, run_id = %t.run_id,
            chunk = t.chunk_index, params.start = t.start, params.end = t.end,
            attempt = self.attempt, agent_id = %agent_id, kernel = %t.kernel);
        ttg_proto::telemetry::set_parent(&span, &String::from_utf8_lossy(&self.traceparent));
        span
    }
}

impl Worker {
    /// Compute one claimed entry and settle it. The entry is decoded and
    /// through the claim gate before `slot` (a free computing slot) is
    /// awaited, so a chunk that waited for one starts at once; the slot is
    /// given back as soon as the computation ends.
    pub(super) async fn process(
        self: Arc<Self>,
        stream: String,
        entry_id: String,
        fields: HashMap<String, Value>,
        slot: impl std::future::Future<Output = Option<tokio::sync::OwnedSemaphorePermit>>,
    ) {
        let decoded = self.decode_or_quarantine(stream, entry_id, &fields).await;
        let gate = match &decoded {
            Some(c) => {
                let claim = c.span("claim", &self.agent_id);
                let gate = self.run_gate(&c.task.run_id, &c.stream, &c.entry_id);
                tracing::Instrument::instrument(gate, claim.clone())
                    .await
                    .map(|token| (token, claim))
            }
            None => None,
        };
        // Awaited even for an entry that is not computed: the wait is what
        // counts it out of the entries waiting for a slot.
        let Some(slot) = slot.await else { return };
        let (Some(c), Some((run_cancel, claim))) = (decoded, gate) else {
            return;
        };
        let claimed_at = Instant::now();
        let abort = run_cancel.child_token();
        self.hold(&c, &claim, abort.clone());
        drop(claim);
        let (outcome, took) = self.compute(&c, &abort).await;
        // Computed before the slot is free: a reclaim the lease check finds
        // from now on no longer aborts it (see lease.rs).
        if let Ok(mut h) = self.held.lock() {
            if let Some(h) = h.get_mut(&c.entry_id) {
                h.computed = true;
            }
        }
        drop(slot);
        // The next chunk (waiting for this slot) starts before this one's
        // completion is sent: its start is on the slot's critical path, the
        // completion is not.
        tokio::task::yield_now().await;
        self.settle(&c, outcome, took, claimed_at).await;
        metrics::gauge!("ttg_agent_in_flight").decrement(1.0);
        if let Ok(mut h) = self.held.lock() {
            h.remove(&c.entry_id);
        }
    }

    /// The decoded entry, or None after moving a corrupt one to the
    /// corrupt-entries stream (never retried, never a panic).
    async fn decode_or_quarantine(
        &self,
        stream: String,
        entry_id: String,
        fields: &HashMap<String, Value>,
    ) -> Option<Claimed> {
        match TaskEntry::decode(fields) {
            Ok(TaskEntry {
                task,
                attempt,
                traceparent,
                queued_ms,
            }) => {
                if let Some(q) = queued_ms {
                    let wait = (ttg_proto::now_ms() - q).max(0) as f64 / 1000.0;
                    metrics::histogram!("ttg_agent_queue_wait_seconds", "kernel" => task.kernel.clone())
                        .record(wait);
                }
                Some(Claimed {
                    stream,
                    entry_id,
                    task,
                    attempt,
                    traceparent,
                })
            }
            Err(e) => {
                let error = e.to_string();
                let raw = bulk(fields.get(TASK_FIELD)).unwrap_or_default();
                tracing::error!(agent = %self.agent_id, stream = %stream, entry = %entry_id, error = %error,
                    "corrupt task entry moved to the corrupt-entries stream");
                let keys = self.keys_of_stream(&stream);
                self.retry_redis("quarantine", |mut c| {
                    let p = ttg_proto::records::quarantine(&keys, &stream, &entry_id, &error, raw);
                    async move { p.query_async::<()>(&mut c).await }
                })
                .await;
                None
            }
        }
    }

    /// Record the entry as held (heartbeats report it; the lease keeper
    /// keeps it fresh; `abort` stops it if it is reclaimed from us).
    fn hold(&self, c: &Claimed, claim: &tracing::Span, abort: CancellationToken) {
        let claim_tp = ttg_proto::telemetry::traceparent_of(
            &tracing_opentelemetry::OpenTelemetrySpanExt::context(claim),
        );
        if let Ok(mut h) = self.held.lock() {
            h.insert(
                c.entry_id.clone(),
                HeldEntry {
                    stream: c.stream.clone(),
                    info: HeldChunk {
                        run_id: c.task.run_id.clone(),
                        chunk_index: c.task.chunk_index,
                        entry_id: c.entry_id.clone(),
                        attempt: c.attempt,
                        traceparent: claim_tp,
                    },
                    abort,
                    computed: false,
                },
            );
        }
        metrics::gauge!("ttg_agent_in_flight").increment(1.0);
    }

    /// Compute the chunk with its kernel and check the values; returns the
    /// outcome and the time it took (ms).
    async fn compute(
        &self,
        c: &Claimed,
        abort: &CancellationToken,
    ) -> (Result<(Vec<f64>, usize), KernelError>, Duration) {
        let t = &c.task;
        let span = c.span("compute", &self.agent_id);
        let began = Instant::now();
        let sweep = match self.sweep_of(t).await {
            Ok(s) => s,
            Err(e) => return (Err(e), Duration::ZERO),
        };
        let input = ChunkInput {
            run_id: t.run_id.clone(),
            chunk_index: t.chunk_index,
            start: t.start,
            end: t.end,
            args: t.args.clone(),
            attempt: c.attempt,
            sweep,
        };
        let work = async {
            match self.registry.get(&t.kernel) {
                Some(k) => k.compute(&input, abort).await,
                None => Err(KernelError::Failed(format!(
                    "agent does not offer kernel {:?}",
                    t.kernel
                ))),
            }
        };
        let outcome = tracing::Instrument::instrument(work, span.clone())
            .await
            .and_then(|v| check_values(&input, v));
        self.record_compute_time(began.elapsed());
        match &outcome {
            Err(KernelError::Failed(msg)) => {
                ttg_proto::telemetry::set_error(&span, msg);
                metrics::counter!("ttg_agent_kernel_errors_total").increment(1);
            }
            Err(KernelError::Cancelled) => ttg_proto::telemetry::set_error(&span, "cancelled"),
            Ok(_) => {}
        }
        (outcome, began.elapsed())
    }

    /// Keep the moving average of compute time that sets the prefetch depth.
    fn record_compute_time(&self, took: Duration) {
        self.computed_at_us
            .store(self.epoch.elapsed().as_micros() as u64, Ordering::Relaxed);
        let us = took.as_micros().min(u64::MAX as u128 - 1) as u64;
        let _ = self
            .compute_avg_us
            .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |avg| {
                Some(if avg == u64::MAX {
                    us
                } else {
                    avg - avg / 8 + us / 8
                })
            });
        metrics::histogram!("ttg_agent_compute_seconds").record(took.as_secs_f64());
    }

    /// Complete, fail, drop or abandon the entry after its computation.
    async fn settle(
        &self,
        c: &Claimed,
        outcome: Result<(Vec<f64>, usize), KernelError>,
        took: Duration,
        claimed_at: Instant,
    ) {
        let (run_id, task, attempt) = (&c.task.run_id, &c.task, c.attempt);
        let ack = c.span("ack", &self.agent_id);
        match outcome {
            Ok((values, outputs)) => {
                let done = self.complete(
                    &c.stream,
                    &c.entry_id,
                    task,
                    attempt,
                    (&values, outputs),
                    took,
                );
                tracing::Instrument::instrument(done, ack.clone()).await;
                metrics::counter!("ttg_agent_chunks_computed_total").increment(1);
                if let Ok(mut v) = self.ack_latencies.lock() {
                    if v.len() < 4096 {
                        v.push(claimed_at.elapsed().as_millis().min(u32::MAX as u128) as u32);
                    }
                }
            }
            Err(KernelError::Cancelled) if self.run_cancelled(run_id) => {
                let settle = self.settle_cancelled(&c.stream, &c.entry_id, task, &c.traceparent);
                tracing::Instrument::instrument(settle, ack.clone()).await;
            }
            Err(KernelError::Cancelled) if !self.abort.is_cancelled() => {
                // Reclaimed from under us: the reclaimer already acked it.
            }
            Err(KernelError::Cancelled) => {
                // Agent aborting: leave the entry pending in our name; it is
                // reclaimed when our session ends without Bye.
                tracing::warn!(run = %run_id, chunk = task.chunk_index, agent = %self.agent_id, "chunk abandoned");
            }
            Err(KernelError::Failed(msg)) => {
                let failed = self.fail(&c.stream, &c.entry_id, task, attempt, &msg, &c.traceparent);
                tracing::Instrument::instrument(failed, ack.clone()).await;
                ttg_proto::telemetry::set_error(&ack, &msg);
            }
        }
    }
}

/// A kernel must give one finite value per point and output: the values
/// and the number of outputs, or an error naming the output and point.
fn check_values(c: &ChunkInput, values: Vec<f64>) -> Result<(Vec<f64>, usize), KernelError> {
    let (n, k) = (c.len(), c.outputs());
    if values.len() != n * k {
        return Err(KernelError::Failed(if k == 1 {
            format!("kernel returned {} values for {n} parameters", values.len())
        } else {
            format!(
                "kernel returned {} values for {n} points × {k} outputs ({})",
                values.len(),
                c.output_names().join(", ")
            )
        }));
    }
    if let Some(i) = values.iter().position(|v| !v.is_finite()) {
        let point = c.start + (i % n.max(1)) as u64;
        return Err(KernelError::Failed(if k == 1 {
            format!(
                "kernel returned {} for parameter {point}; values must be finite",
                values[i]
            )
        } else {
            format!(
                "kernel returned {} for output {} of point {point}; values must be finite",
                values[i],
                c.output_names()[i / n.max(1)]
            )
        }));
    }
    Ok((values, k))
}
