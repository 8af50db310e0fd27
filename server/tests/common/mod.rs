//! Test harness: a real `redis-server` per test on a free port, the real
//! tonic server on 127.0.0.1:0, agents as real processes (the binaries cargo
//! built) or in-process, and polling helpers with deadlines (never sleeps to
//! wait for readiness).
#![allow(dead_code)]

pub mod cli;
pub mod cluster;
pub mod procs;
pub mod redis_state;
pub mod scrape;

// Every test file includes the harness whole and uses part of it.
#[allow(unused_imports)]
pub use cli::*;
#[allow(unused_imports)]
pub use procs::*;
#[allow(unused_imports)]
pub use redis_state::*;

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use tokio_util::sync::CancellationToken;
use tonic::transport::Channel;
use ttg_proto::v1::control_plane_client::ControlPlaneClient;
use ttg_proto::v1::{Event, RunStatus, StatusRequest, SubmitRequest, WatchRequest};

static COUNTER: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);

/// A unique key prefix, so tests can share a Redis and run in parallel.
pub fn prefix() -> String {
    let n = COUNTER.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    format!("t{}-{n}:", std::process::id())
}

/// A free loopback port.
pub fn free_port() -> u16 {
    let l = std::net::TcpListener::bind("127.0.0.1:0").expect("bind 127.0.0.1:0");
    l.local_addr().expect("local addr").port()
}

/// A ControlPlane client.
pub async fn control(url: &str) -> ControlPlaneClient<Channel> {
    ControlPlaneClient::connect(url.to_string())
        .await
        .expect("connect")
}

/// Poll `f` until it returns Some, or panic after `within` naming `what`.
pub async fn wait_until<T, F, Fut>(what: &str, within: Duration, mut f: F) -> T
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Option<T>>,
{
    wait_for(what, within, || {
        let next = f();
        async move { next.await.ok_or("nothing yet") }
    })
    .await
}

/// Poll `f` until it returns Ok, or panic after `within` naming `what` and
/// the last Err it returned (what was seen instead).
pub async fn wait_for<T, E, F, Fut>(what: &str, within: Duration, mut f: F) -> T
where
    E: std::fmt::Debug,
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Result<T, E>>,
{
    let deadline = Instant::now() + within;
    loop {
        match f().await {
            Ok(v) => return v,
            Err(last) => assert!(
                Instant::now() < deadline,
                "timed out after {within:?} waiting for: {what} (last seen: {last:?})"
            ),
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

pub fn submit_req(params: u64, chunk_size: u64, work_ms: u64) -> SubmitRequest {
    SubmitRequest {
        params,
        chunk_size: Some(chunk_size),
        kernel: "placeholder".into(),
        args: [("work_ms".to_string(), work_ms.to_string())]
            .into_iter()
            .collect(),
        max_attempts: None,
        name: "test".into(),
        retention_s: None,
        fail_fast: None,
        ..Default::default()
    }
}

/// Submit `r`, which the test expects to be accepted: the new run's id.
pub async fn submit_run(c: &mut ControlPlaneClient<Channel>, r: SubmitRequest) -> String {
    c.submit(r).await.expect("submit").into_inner().run_id
}

pub async fn status(c: &mut ControlPlaneClient<Channel>, run_id: &str) -> RunStatus {
    c.status(StatusRequest {
        run_id: run_id.to_string(),
    })
    .await
    .expect("status")
    .into_inner()
}

/// Wait for the run to reach a final state and return its status.
pub async fn wait_finished(
    c: &mut ControlPlaneClient<Channel>,
    run_id: &str,
    within: Duration,
) -> RunStatus {
    let mut c2 = c.clone();
    wait_until(&format!("run {run_id} finishes"), within, || {
        let mut c = c2.clone();
        let id = run_id.to_string();
        async move {
            let st = status(&mut c, &id).await;
            ttg_proto::records::is_finished(ttg_proto::v1::RunState::try_from(st.state).ok()?)
                .then_some(st)
        }
    })
    .await;
    status(&mut c2, run_id).await
}

/// Every event of a Watch from `after` to the stream's end.
pub async fn watch_all(
    c: &mut ControlPlaneClient<Channel>,
    run_id: &str,
    after: &str,
) -> Vec<Event> {
    watch_events(c, run_id, after, true).await
}

/// Every event of a Watch from `after`: to the run's end if `follow`, else
/// to the last event stored now.
pub async fn watch_events(
    c: &mut ControlPlaneClient<Channel>,
    run_id: &str,
    after: &str,
    follow: bool,
) -> Vec<Event> {
    let mut s = c
        .watch(WatchRequest {
            run_id: run_id.into(),
            after_event_id: after.into(),
            no_follow: !follow,
        })
        .await
        .expect("watch")
        .into_inner();
    let mut out = Vec::new();
    while let Some(e) = tokio::time::timeout(Duration::from_secs(60), s.message())
        .await
        .expect("watch stalled")
        .expect("watch stream")
    {
        out.push(e);
    }
    out
}

/// Sum of the placeholder over 0..n, to 2 decimals.
pub fn expected_sum(n: u64) -> f64 {
    ttg_proto::kernels::placeholder_expected_sum_hundredths(n) as f64 / 100.0
}

/// Round to hundredths for exact comparison.
pub fn cents(x: f64) -> i128 {
    (x * 100.0).round() as i128
}

/// The live agents (None if the server cannot be asked right now).
pub async fn live_agents(c: &ControlPlaneClient<Channel>) -> Option<Vec<ttg_proto::v1::AgentInfo>> {
    let mut c = c.clone();
    Some(
        c.list_agents(ttg_proto::v1::ListAgentsRequest {})
            .await
            .ok()?
            .into_inner()
            .agents,
    )
}

/// Wait until the live agents satisfy `ok`; returns what `ok` made of them.
pub async fn wait_agents<T>(
    c: &ControlPlaneClient<Channel>,
    what: &str,
    within: Duration,
    ok: impl Fn(&[ttg_proto::v1::AgentInfo]) -> Option<T>,
) -> T {
    let ok = &ok;
    wait_until(what, within, || async move { ok(&live_agents(c).await?) }).await
}

/// An exec request: `program` over `params`, with extra args.
pub fn exec_req(
    params: u64,
    chunk: u64,
    program: &std::path::Path,
    extra: &[(&str, &str)],
    attempts: u32,
) -> SubmitRequest {
    let mut args: std::collections::HashMap<String, String> =
        [("program".to_string(), program.display().to_string())]
            .into_iter()
            .collect();
    args.extend(extra.iter().map(|(k, v)| (k.to_string(), v.to_string())));
    SubmitRequest {
        params,
        chunk_size: Some(chunk),
        kernel: "exec".into(),
        args,
        max_attempts: Some(attempts),
        name: "exec-test".into(),
        retention_s: None,
        fail_fast: None,
        ..Default::default()
    }
}

/// Watch a run to its end: its RunCompleted and every event.
pub async fn run_end(
    c: &mut ControlPlaneClient<Channel>,
    run: &str,
) -> (ttg_proto::v1::RunCompleted, Vec<Event>) {
    let events = watch_all(c, run, "").await;
    match events.last().and_then(|e| e.kind.clone()) {
        Some(ttg_proto::v1::event::Kind::RunCompleted(rc)) => (rc, events),
        other => panic!("run ended with {other:?}"),
    }
}

/// The failed attempts among `events`.
pub fn chunk_failures(events: &[Event]) -> Vec<ttg_proto::v1::ChunkFailed> {
    events
        .iter()
        .filter_map(|e| match &e.kind {
            Some(ttg_proto::v1::event::Kind::ChunkFailed(f)) => Some(f.clone()),
            _ => None,
        })
        .collect()
}
