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
        let group = self.place().await?;
        let created = now_ms();
        let run_id = new_run_id_in(created, rand::random(), group);
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
        let keys = self.keys_of(&run_id)?;
        self.ensure_group(&keys.tasks(&v.kernel)).await?;
        self.write_run(&keys, &spec).await?;
        tracing::info!(run = %run_id, params = v.params, chunks = v.chunks, kernel = %v.kernel, "run submitted");
        Ok((run_id, v.chunks, v.params))
    }

    /// The slot group a new run goes to: the one with the fewest runs
    /// QUEUED or RUNNING (ties at random), so load spreads over the groups'
    /// primaries. ResourceExhausted once --max-runs-in-flight runs are
    /// QUEUED or RUNNING, installation-wide.
    async fn place(&self) -> Result<u32> {
        let mut c = self.conn();
        let layout = self.layout();
        let mut per_group = Vec::with_capacity(layout.len());
        for keys in layout.groups() {
            let n: Option<i64> = self
                .timed(
                    redis::cmd("HGET")
                        .arg(keys.stats())
                        .arg("active")
                        .query_async(&mut c),
                )
                .await?;
            per_group.push(n.unwrap_or(0).max(0));
        }
        let active: i64 = per_group.iter().sum();
        if active.max(0) as u64 >= self.limits.max_runs_in_flight {
            return Err(Error::ResourceExhausted(format!(
                "runs in flight: {active} QUEUED or RUNNING, the limit is {} (--max-runs-in-flight); wait for one to end or cancel one",
                self.limits.max_runs_in_flight
            )));
        }
        let least = per_group.iter().copied().min().unwrap_or(0);
        let tied: Vec<usize> = (0..per_group.len())
            .filter(|&g| per_group[g] == least)
            .collect();
        Ok(tied[rand::random::<u32>() as usize % tied.len().max(1)] as u32)
    }

    /// The run hash (with the scheduler's fields), its index entry, the
    /// active count, its `RunSubmitted` event, its place in the scheduler
    /// zset of its kernel and class and a ring of the kernel's wake stream,
    /// in one MULTI: a run is claimable exactly when it is stored.
    ///
    /// With several slot groups it also rings the home group's wake stream
    /// of the kernel, where idle agents wait (see agent/src/worker/claim.rs):
    /// after the MULTI, as a hint — an agent that misses it finds the run
    /// at its next claim, within one blocking read.
    async fn write_run(&self, keys: &Keys, spec: &RunSpec) -> Result<()> {
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
        let sched = keys.sched(&spec.kernel);
        let wake = keys.wake(&spec.kernel);
        let mut p = redis::pipe();
        p.atomic()
            .hset_multiple(
                keys.run(run_id),
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
            .add_command(wake_entry(&wake, run_id))
            .ignore()
            .zadd(keys.runs(), run_id, spec.created_ms)
            .ignore()
            .hincr(keys.stats(), "active", 1)
            .ignore()
            .xadd(
                keys.events(run_id),
                "*",
                &[(EVENT_FIELD, encode(&submitted))],
            )
            .ignore();
        let mut c = self.writer();
        self.timed(p.query_async::<()>(&mut c)).await?;
        self.replicated(&keys.run(run_id)).await;
        self.ring_home(&spec.kernel, run_id).await;
        Ok(())
    }
}

impl Store {
    /// With several slot groups: an entry on the home group's wake stream
    /// of `kernel` (idle agents block there, as one blocking read cannot
    /// span the slots of several groups on a cluster). A hint: a failure is
    /// logged, and agents find the work at their next claim anyway.
    pub(super) async fn ring_home(&self, kernel: &str, run_id: &str) {
        let layout = self.layout();
        if layout.is_single() {
            return;
        }
        let mut c = self.conn();
        let r = self
            .timed(wake_entry(&layout.home().wake(kernel), run_id).query_async::<()>(&mut c))
            .await;
        if let Err(e) = r {
            tracing::warn!(error = %e, run = %run_id, "could not wake idle agents; they find the run at their next claim");
        }
    }
}

/// An entry on a wake stream saying `run_id` has work (the stream kept to
/// its last ~64).
fn wake_entry(wake: &str, run_id: &str) -> redis::Cmd {
    let mut cmd = redis::cmd("XADD");
    cmd.arg(wake)
        .arg("MAXLEN")
        .arg("~")
        .arg(64)
        .arg("*")
        .arg("r")
        .arg(run_id);
    cmd
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
