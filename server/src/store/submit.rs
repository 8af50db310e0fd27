//! Submit: validate, store the run and queue its tasks in pipelined batches.

use super::*;

/// Tasks written per pipelined, atomic batch at Submit.
const SUBMIT_BATCH: u64 = 2_000;

impl Store {
    /// Validate, store the run and queue its tasks. Returns the run id and
    /// the number of chunks once every task is in Redis. The `submit` span is
    /// the root of the run's trace: its traceparent goes into the run spec and
    /// every task entry, so agents' spans join it.
    pub async fn submit(&self, req: &SubmitRequest) -> Result<(String, u64, u64)> {
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

    /// Validate a Submit against the limits and the kernels offered, as
    /// Submit would, storing nothing (a dry run).
    pub async fn validate(&self, req: &SubmitRequest) -> Result<ValidSubmit> {
        let offered = if req.kernel.is_empty() || kernels::find(&req.kernel).is_some() {
            Vec::new()
        } else {
            self.offered_kernels()
                .await?
                .into_iter()
                .filter_map(|k| k.decl)
                .collect()
        };
        validate_submit(req, &offered, &self.limits)
    }

    async fn submit_inner(&self, req: &SubmitRequest) -> Result<(String, u64, u64)> {
        let v = self.validate(req).await?;
        self.check_runs_in_flight().await?;
        let created = now_ms();
        let run_id = new_run_id(created, rand::random());
        let current = tracing::Span::current();
        current.record("run_id", run_id.as_str());
        current.record("chunks", v.chunks);
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
            traceparent: ttg_proto::telemetry::current_traceparent(),
            retention_ms: v.retention_ms,
            fail_fast: v.fail_fast,
            space: v.space.as_ref().map(|s| s.to_wire()),
            outputs: v.outputs.clone(),
        };
        self.ensure_group(&self.keys.tasks(&v.kernel)).await?;
        self.write_run(&spec).await?;
        self.queue_tasks(&spec).await?;
        tracing::info!(run = %run_id, params = v.params, chunks = v.chunks, kernel = %v.kernel, "run submitted");
        Ok((run_id, v.chunks, v.params))
    }

    /// ResourceExhausted once --max-runs-in-flight runs are QUEUED or RUNNING.
    async fn check_runs_in_flight(&self) -> Result<()> {
        let mut c = self.conn();
        let active: Option<i64> = self
            .timed(
                redis::cmd("HGET")
                    .arg(self.keys.stats())
                    .arg("active")
                    .query_async(&mut c),
            )
            .await?;
        let active = active.unwrap_or(0);
        if active.max(0) as u64 >= self.limits.max_runs_in_flight {
            return Err(Error::ResourceExhausted(format!(
                "runs in flight: {active} QUEUED or RUNNING, the limit is {} (--max-runs-in-flight); wait for one to end or cancel one",
                self.limits.max_runs_in_flight
            )));
        }
        Ok(())
    }

    /// The run hash, its index entry, the active count and its
    /// `RunSubmitted` event, in one MULTI.
    async fn write_run(&self, spec: &RunSpec) -> Result<()> {
        let run_id = &spec.run_id;
        let submitted = Event {
            run_id: run_id.clone(),
            time_ms: spec.created_ms,
            progress: Some(Progress {
                chunks_total: spec.total_chunks,
                ..Default::default()
            }),
            kind: Some(event::Kind::RunSubmitted(RunSubmitted {
                params: spec.params,
                chunks: spec.total_chunks,
                kernel: spec.kernel.clone(),
            })),
            ..Default::default()
        };
        let num = |n: u64| n.to_string().into_bytes();
        let mut p = redis::pipe();
        p.atomic()
            .hset_multiple(
                self.keys.run(run_id),
                &[
                    ("state", RunState::Queued.as_str_name().as_bytes().to_vec()),
                    ("spec", encode(spec)),
                    ("total", num(spec.total_chunks)),
                    ("done", num(0)),
                    ("dead", num(0)),
                    ("count", num(0)),
                    ("sum", num(0)),
                    ("created_ms", spec.created_ms.to_string().into_bytes()),
                    ("enqueued", num(0)),
                    ("retention_ms", num(spec.retention_ms)),
                    ("fail_fast", num(spec.fail_fast.into())),
                ],
            )
            .ignore()
            .zadd(self.keys.runs(), run_id, spec.created_ms)
            .ignore()
            .hincr(self.keys.stats(), "active", 1)
            .ignore()
            .xadd(
                self.keys.events(run_id),
                "*",
                &[(EVENT_FIELD, encode(&submitted))],
            )
            .ignore();
        let mut c = self.conn();
        self.timed(p.query_async::<()>(&mut c)).await
    }

    /// Append every task, one pipelined MULTI per batch: the tasks and the
    /// `enqueued` counter land together, so the counter always says exactly
    /// what is queued. A batch that fails cancels the run (its queued tasks
    /// are then removed): a half-queued run never waits forever.
    async fn queue_tasks(&self, spec: &RunSpec) -> Result<()> {
        let (run_id, total) = (&spec.run_id, spec.total_chunks);
        let tasks_key = self.keys.tasks(&spec.kernel);
        let mut task = Task {
            run_id: run_id.clone(),
            kernel: spec.kernel.clone(),
            args: spec.args.clone(),
            max_attempts: spec.max_attempts,
            sweep: spec.space.is_some() || !spec.outputs.is_empty(),
            ..Default::default()
        };
        let mut c = self.conn();
        let mut first = 0;
        while first < total {
            let last = (first + SUBMIT_BATCH).min(total);
            let mut p = redis::pipe();
            p.atomic();
            for i in first..last {
                (task.start, task.end) = chunk_range(spec.params, spec.chunk_size, i);
                task.chunk_index = i;
                p.cmd("XADD")
                    .arg(&tasks_key)
                    .arg("*")
                    .arg(TASK_FIELD)
                    .arg(encode(&task))
                    .arg(ATTEMPT_FIELD)
                    .arg(1)
                    .arg(TRACEPARENT_FIELD)
                    .arg(&spec.traceparent)
                    .ignore();
            }
            p.hset(self.keys.run(run_id), "enqueued", last).ignore();
            if let Err(e) = self.timed(p.query_async::<()>(&mut c)).await {
                let why = format!("submit failed after queuing {first} of {total} chunks: {e}");
                tracing::warn!(run = %run_id, error = %e, "{why}; cancelling the run");
                match self.cancel(run_id, &why).await {
                    Ok(_) => self.remove_cancelled_tasks(run_id).await,
                    Err(ce) => {
                        tracing::error!(run = %run_id, error = %ce, "half-submitted run not cancelled; cancel it with `ttgctl cancel {run_id}`")
                    }
                }
                return Err(e);
            }
            first = last;
        }
        Ok(())
    }
}
