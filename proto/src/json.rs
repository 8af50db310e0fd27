//! Runs, agents, events and points as JSON: one shape for `ttgctl -o json`
//! and the dashboard's API, so the two never disagree.

use serde_json::{json, Value};

use crate::space::Value as AxisValue;
use crate::v1::{event, AgentInfo, Aggregate, Event, Point, RunState, RunStatus};

/// Name of a state as users see it.
pub fn state_name(s: i32) -> &'static str {
    RunState::try_from(s)
        .unwrap_or(RunState::Unspecified)
        .as_str_name()
}

fn time(ms: i64) -> Value {
    if ms <= 0 {
        Value::Null
    } else {
        json!(ms)
    }
}

/// Aggregate as JSON.
pub fn aggregate_json(a: &Aggregate) -> Value {
    json!({"count": a.count, "sum": a.sum, "min": a.min, "max": a.max, "mean": a.mean})
}

/// A run's status as JSON.
pub fn status_json(st: &RunStatus) -> Value {
    let spec = st.spec.clone().unwrap_or_default();
    let p = st.progress.unwrap_or_default();
    json!({
        "run_id": spec.run_id,
        "name": spec.name,
        "state": state_name(st.state),
        "params": spec.params,
        "chunk_size": spec.chunk_size,
        "kernel": spec.kernel,
        "args": spec.args,
        "max_attempts": spec.max_attempts,
        "chunks": {"total": p.chunks_total, "done": p.chunks_done, "dead": p.chunks_dead, "purged": p.chunks_purged, "in_flight": st.chunks_in_flight, "queued": st.chunks_queued},
        "priority": crate::sched::priority_name(spec.priority()),
        "max_in_flight": spec.max_in_flight,
        "weight": spec.weight.max(1),
        "queue_wait": {"claims": st.claims, "mean_ms": st.queue_wait_mean_ms, "max_ms": st.queue_wait_max_ms},
        "agent_ms": st.agent_ms,
        "fail_fast": spec.fail_fast,
        "params_done": p.params_done,
        "aggregate": aggregate_json(&st.aggregate.unwrap_or_default()),
        "created_ms": time(st.created_ms),
        "started_ms": time(st.started_ms),
        "finished_ms": time(st.finished_ms),
        "expires_ms": time(st.expires_ms),
        "params_per_second": st.params_per_second,
        "message": st.message,
        "dead_chunks": st.dead_chunks.iter().map(|d| json!({"chunk": d.chunk_index, "attempt": d.attempt, "error": d.error})).collect::<Vec<_>>(),
        "space": spec.space.as_ref().and_then(|w| crate::space::Space::from_wire(w).ok()).map(|s| s.names().iter().map(|n| n.to_string()).collect::<Vec<_>>()),
        "outputs": outputs_json(&st.outputs),
    })
}

/// Per-output summaries as JSON: name → aggregate with its argmin/argmax points.
pub fn outputs_json(outputs: &[crate::v1::OutputSummary]) -> Value {
    let point = |p: &Option<crate::v1::Point>| {
        p.as_ref()
            .map(|p| point_json(p, &[]))
            .unwrap_or(Value::Null)
    };
    Value::Array(
        outputs
            .iter()
            .map(|o| {
                let mut a = aggregate_json(&o.aggregate.unwrap_or_default());
                a["name"] = json!(o.name);
                a["argmin"] = point(&o.argmin);
                a["argmax"] = point(&o.argmax);
                a
            })
            .collect(),
    )
}

/// One agent as JSON.
pub fn agent_json(a: &AgentInfo) -> Value {
    json!({
        "agent_id": a.agent_id, "host": a.host, "pid": a.pid, "version": a.version,
        "concurrency": a.concurrency, "kernels": a.kernels, "connected_ms": a.connected_ms,
        "last_heartbeat_ms": a.last_heartbeat_ms, "server_id": a.server_id,
        "completed_total": a.completed_total,
        "held": a.held.iter().map(|h| json!({"run_id": h.run_id, "chunk": h.chunk_index, "attempt": h.attempt})).collect::<Vec<_>>(),
    })
}

/// An event as JSON.
pub fn event_json(e: &Event) -> Value {
    let p = e.progress.unwrap_or_default();
    let (kind, detail) = match &e.kind {
        Some(event::Kind::RunSubmitted(k)) => (
            "RunSubmitted",
            json!({"params": k.params, "chunks": k.chunks, "kernel": k.kernel}),
        ),
        Some(event::Kind::RunStarted(k)) => ("RunStarted", json!({"agent_id": k.agent_id})),
        Some(event::Kind::ChunkCompleted(k)) => (
            "ChunkCompleted",
            json!({"chunk": k.chunk_index, "start": k.start, "end": k.end, "agent_id": k.agent_id, "attempt": k.attempt, "sum": k.sum, "compute_ms": k.compute_ms}),
        ),
        Some(event::Kind::RunCompleted(k)) => (
            "RunCompleted",
            json!({"state": state_name(k.state), "aggregate": aggregate_json(&k.aggregate.unwrap_or_default())}),
        ),
        Some(event::Kind::RunCancelled(k)) => ("RunCancelled", json!({"reason": k.reason})),
        Some(event::Kind::ChunkReclaimed(k)) => (
            "ChunkReclaimed",
            json!({"chunk": k.chunk_index, "agent_id": k.agent_id, "attempt": k.attempt, "after_ms": k.after_ms, "cause": k.cause}),
        ),
        Some(event::Kind::RunRetried(k)) => ("RunRetried", json!({"chunks": k.chunks})),
        Some(event::Kind::ChunkFailed(k)) => (
            "ChunkFailed",
            json!({"chunk": k.chunk_index, "agent_id": k.agent_id, "attempt": k.attempt, "error": k.error, "dead": k.dead}),
        ),
        None => ("Unknown", Value::Null),
    };
    json!({
        "id": e.id, "run_id": e.run_id, "time_ms": e.time_ms, "kind": kind, "detail": detail,
        "progress": {"chunks_total": p.chunks_total, "chunks_done": p.chunks_done, "chunks_dead": p.chunks_dead, "params_done": p.params_done},
        "outputs": if e.outputs.is_empty() { Value::Null } else { outputs_json(&e.outputs) },
    })
}

/// A coordinate's value as JSON.
pub fn json_value(v: &AxisValue) -> serde_json::Value {
    match v {
        AxisValue::Int(i) => serde_json::json!(i),
        AxisValue::Float(f) => serde_json::json!(f),
        AxisValue::Text(t) => serde_json::json!(&**t),
    }
}

/// A point as JSON: `{"index": i, "lr": …, …, "loss": …}`.
pub fn point_json(p: &Point, outputs: &[String]) -> serde_json::Value {
    let mut m = serde_json::Map::new();
    m.insert("index".into(), serde_json::json!(p.index));
    for v in &p.values {
        let x = v.value.as_ref().and_then(AxisValue::from_wire);
        m.insert(
            v.name.clone(),
            x.as_ref()
                .map(json_value)
                .unwrap_or(serde_json::Value::Null),
        );
    }
    for (n, o) in outputs.iter().zip(&p.outputs) {
        m.insert(n.clone(), serde_json::json!(o));
    }
    serde_json::Value::Object(m)
}
