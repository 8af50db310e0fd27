//! Liveness and recovery with real processes and real signals: SIGKILL →
//! immediate reclaim, SIGSTOP → reclaim at lease expiry and a harmless
//! zombie, the XAUTOCLAIM sweep with no server, dead letters and retry, drain
//! on SIGTERM, two replicas, server and Redis restarts mid-run.
//!
//! The tests here run one at a time (they measure lease timing on a small
//! machine); the server runs with a 1 s lease so they finish quickly.

mod common;

use std::time::{Duration, Instant};

use common::*;
use ttg_proto::keys::{Keys, GROUP};
use ttg_proto::records::event_body;
use ttg_proto::scripts::{Completion, FailedAttempt, Failure, Scripts};
use ttg_proto::v1::{event, ChunkFailed, ListAgentsRequest, RetryRequest, RunState, Task};

/// One test at a time (async-aware: held across awaits; a panicking test
/// does not poison it).
static SERIAL: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

const FAST: &[&str] = &["--lease", "1s", "--heartbeat-interval", "250ms"];

fn agents(server: &str, redis: &str, p: &str, names: &[&str], concurrency: u32) -> Vec<Agent> {
    names
        .iter()
        .map(|n| Agent::spawn(server, redis, p, n, concurrency, &[]))
        .collect()
}

async fn wait_holding(redis: &Redis, p: &str, agent: &str) {
    wait_until(
        &format!("{agent} holds a chunk"),
        Duration::from_secs(20),
        || {
            let n = pending_of(redis, p, agent);
            async move { (n > 0).then_some(()) }
        },
    )
    .await;
}

async fn wait_state(redis: &Redis, p: &str, run_id: &str, within: Duration) -> String {
    let key = Keys::new(p).run(run_id);
    wait_until(&format!("run {run_id} finishes"), within, || {
        let state: Option<String> = redis::cmd("HGET")
            .arg(&key)
            .arg("state")
            .query(&mut redis.conn())
            .ok()
            .flatten();
        async move { state.filter(|s| s != "QUEUED" && s != "RUNNING") }
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigkill_reclaims_at_once_and_every_chunk_counts_once() {
    let _g = SERIAL.lock().await;
    let redis = Redis::start();
    let p = prefix();
    let server = ServerProc::start(&redis.url, &p, FAST);
    let mut ag = agents(&server.url, &redis.url, &p, &["k0", "k1", "k2"], 1);
    let mut c = control(&server.url).await;
    // 100 chunks × 150 ms over 3 agents: ~5 s.
    let run = c
        .submit(submit_req(3_000, 30, 5))
        .await
        .expect("submit")
        .into_inner();
    wait_holding(&redis, &p, "k1").await;
    let killed_ms = ttg_proto::now_ms();
    ag[1].signal("KILL");
    let _ = ag[1].wait(Duration::from_secs(5));
    let events = watch_all(&mut c, &run.run_id, "").await;
    let rec = reclaims(&events);
    assert!(!rec.is_empty(), "the killed agent's chunk was reclaimed");
    for (r, t) in &rec {
        assert_eq!(r.agent_id, "k1");
        assert_eq!(r.cause, "session-lost");
        assert_eq!(r.attempt, 2);
        // Generous bound for a loaded CI machine; `make bench` measures it (p50 of ms).
        assert!(
            t - killed_ms < 1_000,
            "reclaimed {} ms after the kill",
            t - killed_ms
        );
    }
    assert_exactly_once(&events, 3_000, 100);
    assert_queue_drains(&redis, &p, Duration::from_secs(10)).await;
    // The dead consumer was removed from the group.
    let consumers: Vec<redis::Value> = redis::cmd("XINFO")
        .arg("CONSUMERS")
        .arg(Keys::new(&p).tasks("placeholder"))
        .arg(GROUP)
        .query(&mut redis.conn())
        .expect("xinfo");
    assert_eq!(consumers.len(), 2, "k1 removed, k0 and k2 remain");
    drop(ag);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigstop_reclaims_at_lease_expiry_and_the_zombie_changes_nothing() {
    let _g = SERIAL.lock().await;
    let redis = Redis::start();
    let p = prefix();
    let server = ServerProc::start(&redis.url, &p, FAST);
    let ag = agents(&server.url, &redis.url, &p, &["z0", "z1"], 1);
    let mut c = control(&server.url).await;
    // 100 chunks × 100 ms over 2 agents: ~5 s.
    let run = c
        .submit(submit_req(1_000, 10, 10))
        .await
        .expect("submit")
        .into_inner();
    wait_holding(&redis, &p, "z1").await;
    let stopped = Instant::now();
    let stopped_ms = ttg_proto::now_ms();
    ag[1].signal("STOP");
    let (r, t) = wait_until(
        "frozen agent's chunk reclaimed",
        Duration::from_secs(10),
        || {
            let ev = events_in_redis(&redis, &p, &run.run_id);
            async move { reclaims(&ev).into_iter().next() }
        },
    )
    .await;
    assert_eq!(r.agent_id, "z1");
    assert_eq!(r.cause, "lease-expired");
    let waited = t - stopped_ms;
    // Reclaim comes at lease expiry: 1 s after the last heartbeat, which was
    // at most one heartbeat interval (250 ms) before the freeze.
    assert!(
        (700..3_000).contains(&waited),
        "reclaimed {waited} ms after SIGSTOP"
    );
    // Let it sleep past its chunk's deadline, then wake the zombie: it
    // finishes (or abandons) a chunk that is no longer its own.
    tokio::time::sleep(
        Duration::from_millis(500)
            .saturating_sub(stopped.elapsed().min(Duration::from_millis(500))),
    )
    .await;
    ag[1].signal("CONT");
    let events = watch_all(&mut c, &run.run_id, "").await;
    assert_exactly_once(&events, 1_000, 100);
    assert_queue_drains(&redis, &p, Duration::from_secs(10)).await;
    // The zombie came back as a live agent.
    wait_agents(&c, "z1 reconnects", Duration::from_secs(10), |a| {
        a.iter().any(|a| a.agent_id == "z1").then_some(())
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_no_server_up_the_sweep_recovers_a_dead_agents_chunk() {
    let _g = SERIAL.lock().await;
    let redis = Redis::start();
    let p = prefix();
    // Lease 500 ms: agents learn it in Welcome; the sweep then takes entries
    // idle for 5 leases (2.5 s).
    let mut server = ServerProc::start(
        &redis.url,
        &p,
        &["--lease", "500ms", "--heartbeat-interval", "100ms"],
    );
    let mut ag = agents(&server.url, &redis.url, &p, &["s0", "s1"], 1);
    let mut c = control(&server.url).await;
    wait_agents(&c, "agents connected", Duration::from_secs(10), |a| {
        (a.len() == 2).then_some(())
    })
    .await;
    let run = c
        .submit(submit_req(600, 10, 10))
        .await
        .expect("submit")
        .into_inner();
    server.kill();
    wait_holding(&redis, &p, "s1").await;
    ag[1].signal("KILL");
    let _ = ag[1].wait(Duration::from_secs(5));
    let state = wait_state(&redis, &p, &run.run_id, Duration::from_secs(30)).await;
    assert_eq!(state, "SUCCEEDED");
    let events = events_in_redis(&redis, &p, &run.run_id);
    let rec = reclaims(&events);
    assert!(!rec.is_empty());
    assert!(
        rec.iter()
            .all(|(r, _)| r.cause == "sweep" && r.agent_id == "s1"),
        "{rec:?}"
    );
    assert_exactly_once(&events, 600, 60);
    assert_queue_drains(&redis, &p, Duration::from_secs(10)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_sweep_never_takes_a_live_agents_long_chunk() {
    let _g = SERIAL.lock().await;
    let redis = Redis::start();
    let p = prefix();
    let mut server = ServerProc::start(
        &redis.url,
        &p,
        &["--lease", "500ms", "--heartbeat-interval", "100ms"],
    );
    let _ag = agents(&server.url, &redis.url, &p, &["l0", "l1"], 1);
    let mut c = control(&server.url).await;
    wait_agents(&c, "agents connected", Duration::from_secs(10), |a| {
        (a.len() == 2).then_some(())
    })
    .await;
    // 4 chunks of 4 s each: each computes for 8 sweep thresholds (2.5 s × ... ),
    // with no server up to renew anything but the agents themselves.
    let run = c
        .submit(submit_req(40, 10, 400))
        .await
        .expect("submit")
        .into_inner();
    server.kill();
    let state = wait_state(&redis, &p, &run.run_id, Duration::from_secs(30)).await;
    assert_eq!(state, "SUCCEEDED");
    let events = events_in_redis(&redis, &p, &run.run_id);
    assert!(
        reclaims(&events).is_empty(),
        "a live agent's chunk was taken"
    );
    assert_exactly_once(&events, 40, 4);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_chunk_whose_agent_dies_past_max_attempts_is_dead_lettered_then_retried() {
    let _g = SERIAL.lock().await;
    let redis = Redis::start();
    let p = prefix();
    let server = ServerProc::start(&redis.url, &p, FAST);
    let ag = agents(&server.url, &redis.url, &p, &["d0", "d1", "d2"], 1);
    let mut c = control(&server.url).await;
    let mut req = submit_req(300, 10, 20);
    req.max_attempts = Some(1);
    let run = c.submit(req).await.expect("submit").into_inner();
    wait_holding(&redis, &p, "d1").await;
    ag[1].signal("KILL");
    let events = watch_all(&mut c, &run.run_id, "").await;
    let Some(event::Kind::RunCompleted(done)) = events.last().and_then(|e| e.kind.clone()) else {
        panic!("no end")
    };
    assert_eq!(done.state, RunState::Failed as i32);
    let dead: Vec<_> = events
        .iter()
        .filter_map(|e| match &e.kind {
            Some(event::Kind::ChunkFailed(f)) if f.dead => Some(f.clone()),
            _ => None,
        })
        .collect();
    assert!(!dead.is_empty());
    let st = status(&mut c, &run.run_id).await;
    assert_eq!(st.state, RunState::Failed as i32);
    assert_eq!(st.progress.expect("p").chunks_dead, dead.len() as u64);
    assert_eq!(st.dead_chunks.len(), dead.len());
    assert!(
        st.dead_chunks[0].error.contains("agent d1 died"),
        "{:?}",
        st.dead_chunks
    );
    // ttgctl names them and exits 1 for a failed run.
    let out = ttgctl_cmd()
        .args(["--server", &server.url, "watch", &run.run_id])
        .output()
        .expect("watch");
    assert_eq!(out.status.code(), Some(1));
    let out = ttgctl_cmd()
        .args(["--server", &server.url, "status", &run.run_id])
        .output()
        .expect("status");
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        text.contains(&format!("dead       chunk {}", dead[0].chunk_index)),
        "{text}"
    );
    // Retry puts them back with fresh attempts; the run goes on to success.
    let out = ttgctl_cmd()
        .args(["--server", &server.url, "retry", &run.run_id])
        .output()
        .expect("retry");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(String::from_utf8_lossy(&out.stdout).contains(&format!(
        "{} chunks re-queued (dead, or stopped by fail-fast)",
        dead.len()
    )));
    let events = watch_all(&mut c, &run.run_id, "").await;
    assert!(events
        .iter()
        .any(|e| matches!(e.kind, Some(event::Kind::RunRetried(_)))));
    assert_exactly_once(&events, 300, 30);
    let e = c
        .retry(RetryRequest {
            run_id: run.run_id.clone(),
        })
        .await
        .expect_err("retry a succeeded run");
    assert_eq!(e.code(), tonic::Code::FailedPrecondition);
    drop(ag);
}

/// The failure path a kernel error takes, driven directly: retries with
/// attempt + 1, dead letter at max_attempts, FAILED, retry, and a late result
/// rescuing a dead chunk.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kernel_errors_retry_then_dead_letter_and_a_late_result_rescues() {
    let _g = SERIAL.lock().await;
    let redis = Redis::start();
    let p = prefix();
    let keys = Keys::new(&p);
    let server = Server::start(&redis.url, &p).await;
    let mut c = control(&server.url).await;
    let mut req = submit_req(20, 10, 0);
    req.max_attempts = Some(2);
    let run = c.submit(req).await.expect("submit").into_inner();
    let tasks = keys.tasks("placeholder");
    let client = redis::Client::open(redis.url.as_str()).expect("client");
    let conn = client
        .get_multiplexed_async_connection()
        .await
        .expect("conn");
    let scripts = Scripts::new();
    let scripts = &scripts;
    let read = |n: usize| {
        let mut conn = conn.clone();
        let tasks = tasks.clone();
        async move {
            read_group(&mut conn, &tasks, "tester", n)
                .await
                .into_iter()
                .map(|(id, e)| (id, e.task, e.attempt))
                .collect::<Vec<_>>()
        }
    };
    let fail = |entry: String, task: Task, attempt: u32| {
        let mut conn = conn.clone();
        let (keys, tasks, run_id) = (keys.clone(), tasks.clone(), run.run_id.clone());
        async move {
            let body = |dead| {
                event_body(
                    &run_id,
                    event::Kind::ChunkFailed(ChunkFailed {
                        chunk_index: task.chunk_index,
                        agent_id: "tester".into(),
                        attempt,
                        error: "boom".into(),
                        dead,
                    }),
                )
            };
            let (retry_body, dead_body) = (body(false), body(true));
            let inv = scripts.fail(
                &keys,
                &run_id,
                &tasks,
                "tester",
                &FailedAttempt {
                    entry_id: &entry,
                    task: &task,
                    attempt,
                    error: "boom",
                    first_line: "boom",
                    traceparent: b"",
                    retry_body: &retry_body,
                    dead_body: &dead_body,
                },
            );
            let (code, state): (i64, String) = inv.invoke_async(&mut conn).await.expect("fail");
            Failure::from_reply(code, &state)
        }
    };
    let complete = |entry: String, task: Task| {
        let mut conn = conn.clone();
        let (keys, tasks, run_id, script) =
            (keys.clone(), tasks.clone(), run.run_id.clone(), scripts);
        async move {
            let values: Vec<f64> = (task.start..task.end)
                .map(ttg_proto::kernels::placeholder_value)
                .collect();
            let chunk = tester_chunk(&run_id, &entry, &task, &values);
            let (codes, state): (Vec<i64>, String) = script
                .complete(&mut conn, &keys, &run_id, &tasks, "tester", &[chunk])
                .await
                .expect("complete");
            Completion::from_reply(codes[0], &state)
        }
    };
    let first = read(10).await;
    assert_eq!(first.len(), 2);
    let (e0, t0, a0) = first[0].clone();
    let (e1, t1, _) = first[1].clone();
    assert_eq!((t0.chunk_index, a0), (0, 1));
    assert_eq!(fail(e0, t0, 1).await, Failure::Requeued);
    let again = read(10).await;
    assert_eq!(again.len(), 1);
    let (e0b, t0b, a0b) = again[0].clone();
    assert_eq!((t0b.chunk_index, a0b), (0, 2), "re-queued with attempt + 1");
    // No agent ran the start script here, so the run is still QUEUED.
    assert_eq!(
        fail(e0b, t0b.clone(), 2).await,
        Failure::DeadLettered(RunState::Queued)
    );
    assert_eq!(
        complete(e1, t1).await,
        Completion::Counted(RunState::Failed)
    );
    let st = status(&mut c, &run.run_id).await;
    assert_eq!(st.state, RunState::Failed as i32);
    assert_eq!(st.dead_chunks.len(), 1);
    assert_eq!(
        (st.dead_chunks[0].chunk_index, st.dead_chunks[0].attempt),
        (0, 2)
    );
    assert_eq!(st.dead_chunks[0].error, "boom");
    // A FAILED run has ended: its retention runs (default 7 days)...
    let week = 7 * 24 * 3_600 * 1_000;
    assert_eq!(st.expires_ms, st.finished_ms + week);
    let expiring = ttg_proto::keys::Keys::new(&p).expiring();
    let scheduled: Option<f64> = redis::cmd("ZSCORE")
        .arg(&expiring)
        .arg(&run.run_id)
        .query(&mut redis.conn())
        .expect("zscore");
    assert_eq!(scheduled, Some(st.expires_ms as f64));
    // Retry: attempt 1 again, RUNNING again.
    let r = c
        .retry(RetryRequest {
            run_id: run.run_id.clone(),
        })
        .await
        .expect("retry")
        .into_inner();
    assert_eq!((r.chunks_requeued, r.state), (1, RunState::Running as i32));
    let third = read(10).await;
    assert_eq!(third.len(), 1);
    assert_eq!(third[0].2, 1, "fresh attempts");
    // ...and stops while it runs again: nothing may expire a live run.
    let st = status(&mut c, &run.run_id).await;
    assert_eq!((st.expires_ms, st.finished_ms), (0, 0));
    let scheduled: Option<f64> = redis::cmd("ZSCORE")
        .arg(&expiring)
        .arg(&run.run_id)
        .query(&mut redis.conn())
        .expect("zscore");
    assert_eq!(scheduled, None);
    assert_eq!(
        complete(third[0].0.clone(), third[0].1.clone()).await,
        Completion::Counted(RunState::Succeeded)
    );
    let st = status(&mut c, &run.run_id).await;
    assert_eq!(
        cents(st.aggregate.expect("agg").sum),
        cents(expected_sum(20))
    );
    assert_eq!(st.progress.expect("p").chunks_dead, 0);
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_drains_says_bye_and_nothing_is_reclaimed() {
    let _g = SERIAL.lock().await;
    let redis = Redis::start();
    let p = prefix();
    let server = ServerProc::start(&redis.url, &p, FAST);
    let mut ag = agents(&server.url, &redis.url, &p, &["t0", "t1"], 2);
    let mut c = control(&server.url).await;
    let run = c
        .submit(submit_req(400, 20, 10))
        .await
        .expect("submit")
        .into_inner();
    wait_holding(&redis, &p, "t1").await;
    ag[1].signal("TERM");
    assert_eq!(
        ag[1].wait(Duration::from_secs(10)),
        Some(0),
        "drained agent exits 0"
    );
    assert_eq!(pending_of(&redis, &p, "t1"), 0, "it finished what it held");
    let events = watch_all(&mut c, &run.run_id, "").await;
    assert!(reclaims(&events).is_empty(), "a drain reclaims nothing");
    assert_exactly_once(&events, 400, 20);
    let agents_now = c
        .list_agents(ListAgentsRequest {})
        .await
        .expect("agents")
        .into_inner()
        .agents;
    assert!(
        agents_now.iter().all(|a| a.agent_id != "t1"),
        "Bye removed it"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_replicas_share_one_redis_and_a_dead_replica_loses_nothing() {
    let _g = SERIAL.lock().await;
    let redis = Redis::start();
    let p = prefix();
    let mut a = ServerProc::start(&redis.url, &p, FAST);
    let b = ServerProc::start(&redis.url, &p, FAST);
    let both_ab = format!("{},{}", a.url, b.url);
    let both_ba = format!("{},{}", b.url, a.url);
    let x1 = Agent::spawn(&both_ab, &redis.url, &p, "x1", 1, &[]);
    let x2 = Agent::spawn(&both_ab, &redis.url, &p, "x2", 1, &[]);
    let mut x3 = Agent::spawn(&both_ba, &redis.url, &p, "x3", 1, &[]);
    let mut cb = control(&b.url).await;
    let b_id = wait_agents(
        &cb,
        "x3 on B, x1 and x2 on A",
        Duration::from_secs(10),
        |a| {
            let sid = |n: &str| {
                a.iter()
                    .find(|x| x.agent_id == n)
                    .map(|x| x.server_id.clone())
            };
            let (s1, s3) = (sid("x1")?, sid("x3")?);
            (s1 != s3 && sid("x2")? == s1).then_some(s3)
        },
    )
    .await;
    let run = cb
        .submit(submit_req(3_000, 30, 5))
        .await
        .expect("submit")
        .into_inner();
    wait_holding(&redis, &p, "x1").await;
    a.kill();
    // A's agents move to B; nobody is reclaimed for it.
    wait_agents(
        &cb,
        "x1 and x2 reconnect to B",
        Duration::from_secs(10),
        |a| (a.iter().filter(|x| x.server_id == b_id).count() == 3).then_some(()),
    )
    .await;
    assert!(
        reclaims(&events_in_redis(&redis, &p, &run.run_id)).is_empty(),
        "a replica's death reclaims nothing"
    );
    wait_holding(&redis, &p, "x3").await;
    x3.signal("KILL");
    let _ = x3.wait(Duration::from_secs(5));
    let events = watch_all(&mut cb, &run.run_id, "").await;
    let rec = reclaims(&events);
    assert!(!rec.is_empty());
    assert!(rec.iter().all(|(r, _)| r.agent_id == "x3"));
    let mut seen = std::collections::BTreeSet::new();
    for (r, _) in &rec {
        assert!(
            seen.insert((r.chunk_index, r.attempt)),
            "chunk {} reclaimed twice",
            r.chunk_index
        );
    }
    assert_exactly_once(&events, 3_000, 100);
    assert_queue_drains(&redis, &p, Duration::from_secs(10)).await;
    drop((x1, x2));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn server_restart_mid_run_watch_resumes_and_the_sum_is_exact() {
    let _g = SERIAL.lock().await;
    let redis = Redis::start();
    let p = prefix();
    let mut server = ServerProc::start(&redis.url, &p, FAST);
    let _ag = agents(&server.url, &redis.url, &p, &["r0", "r1", "r2"], 1);
    let mut c = control(&server.url).await;
    let run = c
        .submit(submit_req(10_000, 100, 1))
        .await
        .expect("submit")
        .into_inner();
    let watcher = ttgctl_cmd()
        .args(["--server", &server.url, "watch", &run.run_id])
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("ttgctl watch");
    wait_until("some progress", Duration::from_secs(20), || {
        let mut c = c.clone();
        let id = run.run_id.clone();
        async move { (status(&mut c, &id).await.progress?.chunks_done >= 20).then_some(()) }
    })
    .await;
    server.kill();
    tokio::time::sleep(Duration::from_millis(300)).await;
    server.spawn();
    let out = tokio::task::spawn_blocking(move || watcher.wait_with_output())
        .await
        .expect("join")
        .expect("watch output");
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{text}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(text.contains("sum 5,000,355.00"), "{text}");
    let mut c = control(&server.url).await;
    let events = watch_all(&mut c, &run.run_id, "").await;
    assert!(
        reclaims(&events).is_empty(),
        "a server restart reclaims nothing"
    );
    assert_exactly_once(&events, 10_000, 100);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_killed_and_restarted_mid_run_the_run_finishes_exactly() {
    let _g = SERIAL.lock().await;
    // appendfsync always: nothing acknowledged is lost by a SIGKILL.
    let mut redis = Redis::start_with(&["appendfsync", "always"]);
    let p = prefix();
    let server = ServerProc::start(&redis.url, &p, FAST);
    let _ag = agents(&server.url, &redis.url, &p, &["q0", "q1", "q2"], 1);
    let mut c = control(&server.url).await;
    let run = c
        .submit(submit_req(10_000, 100, 1))
        .await
        .expect("submit")
        .into_inner();
    wait_until("some progress", Duration::from_secs(20), || {
        let mut c = c.clone();
        let id = run.run_id.clone();
        async move { (status(&mut c, &id).await.progress?.chunks_done >= 20).then_some(()) }
    })
    .await;
    redis.kill();
    tokio::time::sleep(Duration::from_millis(800)).await;
    redis.restart();
    let st = wait_until(
        "run finishes after the redis restart",
        Duration::from_secs(60),
        || {
            let mut c = c.clone();
            let id = run.run_id.clone();
            async move {
                let st = c
                    .status(ttg_proto::v1::StatusRequest { run_id: id })
                    .await
                    .ok()?
                    .into_inner();
                (st.state == RunState::Succeeded as i32).then_some(st)
            }
        },
    )
    .await;
    assert_eq!(cents(st.aggregate.expect("agg").sum), cents(5_000_355.00));
    let events = watch_all(&mut c, &run.run_id, "").await;
    assert_exactly_once(&events, 10_000, 100);
    assert_queue_drains(&redis, &p, Duration::from_secs(10)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cancel_on_one_replica_aborts_in_flight_chunks_on_agents_of_another_at_once() {
    let _g = SERIAL.lock().await;
    let redis = Redis::start();
    let p = prefix();
    let a = ServerProc::start(&redis.url, &p, FAST);
    let b = ServerProc::start(&redis.url, &p, FAST);
    // The agent's session is on B; the cancel goes to A.
    let _agent = Agent::spawn(&b.url, &redis.url, &p, "long", 2, &[]);
    let mut ca = control(&a.url).await;
    // Chunks of 10 × 1 s: each would compute for 10 s.
    let run = ca
        .submit(submit_req(100, 10, 1_000))
        .await
        .expect("submit")
        .into_inner();
    wait_holding(&redis, &p, "long").await;
    let t = Instant::now();
    ca.cancel(ttg_proto::v1::CancelRequest {
        run_id: run.run_id.clone(),
        reason: "stop".into(),
    })
    .await
    .expect("cancel");
    wait_until("in-flight chunks aborted", Duration::from_secs(5), || {
        let n = pending_of(&redis, &p, "long");
        async move { (n == 0).then_some(()) }
    })
    .await;
    assert!(
        t.elapsed() < Duration::from_secs(2),
        "aborted after {:?}, not after the 10 s chunks",
        t.elapsed()
    );
    assert_queue_drains(&redis, &p, Duration::from_secs(5)).await;
    let st = status(&mut ca, &run.run_id).await;
    assert_eq!(st.state, RunState::Cancelled as i32);
    assert_eq!(
        st.progress.expect("p").chunks_done,
        0,
        "nothing finished, nothing counted"
    );
}
