//! Submit: validate, store the run and queue its tasks in pipelined batches.

use super::*;

/// Tasks written per pipelined, atomic batch at Submit.
const SUBMIT_BATCH: u64 = 2_000;

impl Store {
    /// Validate, store the run and queue its tasks. Returns the run id and
    /// the number of chunks once every task is in Redis. The `submit` span is
    /// the root of the run's trace: its traceparent goes into the run spec and
    /// every task entry, so agents' spans join it.
    pub async fn submit(&self, req: &SubmitRequest) -> Result<(String, u64)> {
        let span = tracing::info_span!("submit", run_id = tracing::field::Empty, params = req.params,
            chunks = tracing::field::Empty, kernel = %req.kernel);
        let started = std::time::Instant::now();
        let r = tracing::Instrument::instrument(self.submit_inner(req), span.clone()).await;
        match &r {
            Ok(_) => {
                ::metrics::histogram!("ttg_submit_seconds").record(started.elapsed().as_secs_f64())
            }
            Err(e) => ttg_proto::telemetry::set_error(&span, &e.to_string()),
        }
        r
    }

    async fn submit_inner(&self, req: &SubmitRequest) -> Result<(String, u64)> {
        let offered = if req.kernel.is_empty() || kernels::find(&req.kernel).is_some() {
            Vec::new()
        } else {
            self.offered_kernels()
                .await?
                .into_iter()
                .filter_map(|k| k.decl)
                .collect()
        };
        let v = validate_submit(req, &offered, &self.limits)?;
        let mut c0 = self.conn();
        let active: Option<i64> = self
            .timed(
                redis::cmd("HGET")
                    .arg(self.keys.stats())
                    .arg("active")
                    .query_async(&mut c0),
            )
            .await?;
        if active.unwrap_or(0).max(0) as u64 >= self.limits.max_runs_in_flight {
            return Err(Error::ResourceExhausted(format!(
                "runs in flight: {} QUEUED or RUNNING, the limit is {} (--max-runs-in-flight); wait for one to end or cancel one",
                active.unwrap_or(0),
                self.limits.max_runs_in_flight
            )));
        }
        let created = now_ms();
        let run_id = new_run_id(created, rand::random());
        let current = tracing::Span::current();
        current.record("run_id", run_id.as_str());
        current.record("chunks", v.chunks);
        let traceparent = ttg_proto::telemetry::current_traceparent();
        let spec = RunSpec {
            run_id: run_id.clone(),
            params: v.params,
            chunk_size: v.chunk_size,
            total_chunks: v.chunks,
            kernel: v.kernel.clone(),
            args: v.args.clone().into_iter().collect(),
            max_attempts: v.max_attempts,
            name: v.name.clone(),
            created_ms: created,
            traceparent: traceparent.clone(),
            retention_ms: v.retention_ms,
            fail_fast: v.fail_fast,
        };
        let tasks_key = self.keys.tasks(&v.kernel);
        self.ensure_group(&tasks_key).await?;

        let run_key = self.keys.run(&run_id);
        let submitted = Event {
            run_id: run_id.clone(),
            time_ms: created,
            progress: Some(Progress {
                chunks_total: v.chunks,
                ..Default::default()
            }),
            kind: Some(event::Kind::RunSubmitted(RunSubmitted {
                params: v.params,
                chunks: v.chunks,
                kernel: v.kernel.clone(),
            })),
            ..Default::default()
        };
        let mut p = redis::pipe();
        p.atomic()
            .hset_multiple(
                &run_key,
                &[
                    ("state", RunState::Queued.as_str_name().as_bytes().to_vec()),
                    ("spec", encode(&spec)),
                    ("total", v.chunks.to_string().into_bytes()),
                    ("done", b"0".to_vec()),
                    ("dead", b"0".to_vec()),
                    ("count", b"0".to_vec()),
                    ("sum", b"0".to_vec()),
                    ("created_ms", created.to_string().into_bytes()),
                    ("enqueued", b"0".to_vec()),
                    ("retention_ms", v.retention_ms.to_string().into_bytes()),
                    ("fail_fast", v.fail_fast.to_string().into_bytes()),
                ],
            )
            .ignore()
            .zadd(self.keys.runs(), &run_id, created)
            .ignore()
            .hincr(self.keys.stats(), "active", 1)
            .ignore()
            .xadd(
                self.keys.events(&run_id),
                "*",
                &[(EVENT_FIELD, encode(&submitted))],
            )
            .ignore();
        let mut c = self.conn();
        self.timed(p.query_async::<()>(&mut c)).await?;

        // One pipelined MULTI per batch: the tasks and the `enqueued` counter
        // land together, so the counter always says exactly what is queued.
        let mut task = Task {
            run_id: run_id.clone(),
            kernel: v.kernel.clone(),
            args: spec.args.clone(),
            max_attempts: v.max_attempts,
            ..Default::default()
        };
        let mut first = 0;
        while first < v.chunks {
            let last = (first + SUBMIT_BATCH).min(v.chunks);
            let mut p = redis::pipe();
            p.atomic();
            for i in first..last {
                let (start, end) = chunk_range(v.params, v.chunk_size, i);
                task.chunk_index = i;
                task.start = start;
                task.end = end;
                p.cmd("XADD")
                    .arg(&tasks_key)
                    .arg("*")
                    .arg(TASK_FIELD)
                    .arg(encode(&task))
                    .arg(ATTEMPT_FIELD)
                    .arg(1)
                    .arg(TRACEPARENT_FIELD)
                    .arg(&traceparent)
                    .ignore();
            }
            p.hset(&run_key, "enqueued", last).ignore();
            if let Err(e) = self.timed(p.query_async::<()>(&mut c)).await {
                // Never leave a half-queued run waiting forever: cancel it
                // (its queued tasks are then removed) and answer the error.
                let why = format!(
                    "submit failed after queuing {first} of {} chunks: {e}",
                    v.chunks
                );
                tracing::warn!(run = %run_id, error = %e, "{why}; cancelling the run");
                match self.cancel(&run_id, &why).await {
                    Ok(_) => self.remove_cancelled_tasks(&run_id).await,
                    Err(ce) => {
                        tracing::error!(run = %run_id, error = %ce, "half-submitted run not cancelled; cancel it with `ttgctl cancel {run_id}`")
                    }
                }
                return Err(e);
            }
            first = last;
        }
        tracing::info!(run = %run_id, params = v.params, chunks = v.chunks, kernel = %v.kernel, "run submitted");
        Ok((run_id, v.chunks))
    }
}
