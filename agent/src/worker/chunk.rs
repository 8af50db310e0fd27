//! One claimed entry's path: decode it, pass the claim gate, compute it with its kernel, check the values, and hand it to completion or failure.

use super::*;

impl Worker {
    /// Compute one claimed entry and complete it; `slot` is given back as
    /// soon as the computation ends.
    pub(super) async fn process(
        self: Arc<Self>,
        stream: String,
        entry_id: String,
        fields: HashMap<String, Value>,
        slot: tokio::sync::OwnedSemaphorePermit,
    ) {
        let TaskEntry {
            task,
            attempt,
            traceparent,
        } = match TaskEntry::decode(&fields) {
            Ok(e) => e,
            Err(e) => {
                // Never retried, never a panic: the entry goes to the
                // dead-entries stream with the reason, and the loop moves on.
                let error = e.to_string();
                let raw = bulk(fields.get(TASK_FIELD)).unwrap_or_default();
                tracing::error!(agent = %self.agent_id, stream = %stream, entry = %entry_id, error = %error,
                    "corrupt task entry moved to the dead-entries stream");
                let keys = self.keys.clone();
                self.persist("quarantine", |mut c| {
                    let p = ttg_proto::records::quarantine(&keys, &stream, &entry_id, &error, raw);
                    async move { p.query_async::<()>(&mut c).await }
                })
                .await;
                return;
            }
        };
        let (run_id, chunk) = (task.run_id.clone(), task.chunk_index);
        let tp = String::from_utf8_lossy(&traceparent).into_owned();
        // claim → compute → ack, each a child of the run's `submit` span
        // through the traceparent carried in the task entry.
        let chunk_span = |name: &'static str| {
            let span = tracing::info_span!("chunk", otel.name = name, run_id = %run_id, chunk,
                params.start = task.start, params.end = task.end, attempt, agent_id = %self.agent_id,
                kernel = %task.kernel);
            ttg_proto::telemetry::set_parent(&span, &tp);
            span
        };
        let claimed = Instant::now();

        let claim = chunk_span("claim");
        let gate = self.run_gate(&run_id, &stream, &entry_id);
        let Some(run_cancel) = tracing::Instrument::instrument(gate, claim.clone()).await else {
            return;
        };
        let chunk_abort = run_cancel.child_token();
        let claim_tp = ttg_proto::telemetry::traceparent_of(
            &tracing_opentelemetry::OpenTelemetrySpanExt::context(&claim),
        );
        drop(claim);
        if let Ok(mut h) = self.held.lock() {
            h.insert(
                entry_id.clone(),
                Held {
                    stream: stream.clone(),
                    info: HeldChunk {
                        run_id: run_id.clone(),
                        chunk_index: chunk,
                        entry_id: entry_id.clone(),
                        attempt,
                        traceparent: claim_tp,
                    },
                    abort: chunk_abort.clone(),
                    computed: false,
                },
            );
        }
        metrics::gauge!("ttg_agent_in_flight").increment(1.0);
        let input = ChunkInput {
            run_id: run_id.clone(),
            chunk_index: chunk,
            start: task.start,
            end: task.end,
            args: task.args.clone(),
            attempt,
        };
        let compute = chunk_span("compute");
        let began = Instant::now();
        let outcome = tracing::Instrument::instrument(
            async {
                match self.registry.get(&task.kernel) {
                    Some(k) => k.compute(&input, &chunk_abort).await,
                    None => Err(KernelError::Failed(format!(
                        "agent does not offer kernel {:?}",
                        task.kernel
                    ))),
                }
            },
            compute.clone(),
        )
        .await
        .and_then(|v| check_values(&task, v));
        let compute_ms = began.elapsed().as_millis() as u64;
        let us = began.elapsed().as_micros().min(u64::MAX as u128 - 1) as u64;
        let _ = self
            .compute_avg_us
            .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |avg| {
                Some(if avg == u64::MAX {
                    us
                } else {
                    avg - avg / 8 + us / 8
                })
            });
        metrics::histogram!("ttg_agent_compute_seconds").record(began.elapsed().as_secs_f64());
        match &outcome {
            Err(KernelError::Failed(msg)) => {
                ttg_proto::telemetry::set_error(&compute, msg);
                metrics::counter!("ttg_agent_kernel_errors_total").increment(1);
            }
            Err(KernelError::Cancelled) => ttg_proto::telemetry::set_error(&compute, "cancelled"),
            Ok(_) => {}
        }
        drop(compute);
        drop(slot);
        if let Ok(mut h) = self.held.lock() {
            if let Some(h) = h.get_mut(&entry_id) {
                h.computed = true;
            }
        }
        let ack = chunk_span("ack");
        match outcome {
            Ok(values) => {
                let done = self.complete(&stream, &entry_id, &task, attempt, &values, compute_ms);
                tracing::Instrument::instrument(done, ack.clone()).await;
                metrics::counter!("ttg_agent_chunks_computed_total").increment(1);
                if let Ok(mut v) = self.ack_latencies.lock() {
                    if v.len() < 4096 {
                        v.push(claimed.elapsed().as_millis().min(u32::MAX as u128) as u32);
                    }
                }
            }
            Err(KernelError::Cancelled) if self.run_cancelled(&run_id) => {
                let settle = self.settle_cancelled(&stream, &entry_id, &task, &traceparent);
                tracing::Instrument::instrument(settle, ack.clone()).await;
            }
            Err(KernelError::Cancelled) if !self.abort.is_cancelled() => {
                // Reclaimed from under us: the reclaimer already acked it.
            }
            Err(KernelError::Cancelled) => {
                // Agent aborting: leave the entry pending in our name; it is
                // reclaimed when our session ends without Bye.
                tracing::warn!(run = %run_id, chunk, agent = %self.agent_id, "chunk abandoned");
            }
            Err(KernelError::Failed(msg)) => {
                let failed = self.fail(&stream, &entry_id, &task, attempt, &msg, &traceparent);
                tracing::Instrument::instrument(failed, ack.clone()).await;
                ttg_proto::telemetry::set_error(&ack, &msg);
            }
        }
        metrics::gauge!("ttg_agent_in_flight").decrement(1.0);
        if let Ok(mut h) = self.held.lock() {
            h.remove(&entry_id);
        }
    }
}

/// A kernel must give one finite value per parameter.
fn check_values(task: &Task, values: Vec<f64>) -> Result<Vec<f64>, KernelError> {
    let n = (task.end - task.start) as usize;
    if values.len() != n {
        return Err(KernelError::Failed(format!(
            "kernel returned {} values for {n} parameters",
            values.len()
        )));
    }
    if let Some(i) = values.iter().position(|v| !v.is_finite()) {
        return Err(KernelError::Failed(format!(
            "kernel returned {} for parameter {}; values must be finite",
            values[i],
            task.start + i as u64
        )));
    }
    Ok(values)
}
