//! Submit: validate, then store the run and put it in its scheduler zset,
//! in one MULTI. No task entry is written here: claim.lua hands chunks out
//! (fresh ones from `next`), so a run of any size is queued in O(1).

use super::*;
use ttg_proto::sched;

impl Store {
    /// Validate, store the run and queue it. Returns the run id and the
    /// number of chunks once the run is in Redis. The `submit` span is
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
            priority: v.priority as i32,
            max_in_flight: v.max_in_flight,
            weight: v.weight,
        };
        self.ensure_group(&self.keys.tasks(&v.kernel)).await?;
        self.write_run(&spec).await?;
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

    /// The run hash (with the scheduler's fields), its index entry, the
    /// active count, its `RunSubmitted` event, its place in the scheduler
    /// zset of its kernel and class and a ring of the kernel's wake stream,
    /// in one MULTI: a run is claimable exactly when it is stored.
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
        let priority = Priority::try_from(spec.priority).unwrap_or_default();
        let sched = self.keys.sched(&spec.kernel);
        let wake = self.keys.wake(&spec.kernel);
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
                    ("retention_ms", num(spec.retention_ms)),
                    ("fail_fast", num(spec.fail_fast.into())),
                    ("task", encode(&task_template(spec))),
                    ("params", num(spec.params)),
                    ("csize", num(spec.chunk_size)),
                    ("next", num(0)),
                    ("qn", num(0)),
                    ("inflight", num(0)),
                    ("cap", num(spec.max_in_flight.into())),
                    ("weight", num(spec.weight.max(1).into())),
                    ("class", num(sched::class_index(priority))),
                    ("sched", sched.clone().into_bytes()),
                    ("wake", wake.clone().into_bytes()),
                ],
            )
            .ignore()
            .zadd(&sched, run_id, sched::initial_score(priority))
            .ignore()
            .cmd("XADD")
            .arg(&wake)
            .arg("MAXLEN")
            .arg("~")
            .arg(64)
            .arg("*")
            .arg("r")
            .arg(run_id)
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
        let mut c = self.writer();
        self.timed(p.query_async::<()>(&mut c)).await?;
        self.replicated(&self.keys.run(run_id)).await;
        Ok(())
    }
}

/// The part of every task of a run that is the same for all its chunks:
/// claim.lua appends a chunk's index, start and end fields to it.
pub fn task_template(spec: &RunSpec) -> Task {
    Task {
        run_id: spec.run_id.clone(),
        kernel: spec.kernel.clone(),
        args: spec.args.clone(),
        max_attempts: spec.max_attempts,
        sweep: spec.space.is_some() || !spec.outputs.is_empty(),
        queued_ms: spec.created_ms,
        traceparent: spec.traceparent.clone(),
        ..Default::default()
    }
}
