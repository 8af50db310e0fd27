//! Many runs at once (#19): fair share between runs, priority classes with
//! the starvation rule, per-run caps, and re-queued chunks at the front of
//! their run's queue; all with real agent processes and the books checked
//! (the scheduler's in-flight count back to 0, every chunk counted once)
//! through an agent kill and a server restart.

mod common;

use std::time::Duration;

use common::*;
use ttg_proto::keys::Keys;
use ttg_proto::records::event_body;
use ttg_proto::scripts::{FailedAttempt, Failure, Scripts};
use ttg_proto::v1::{event, ChunkFailed, Priority, RunState, RunStatus, SubmitRequest};

/// One test at a time: they compare runs' progress on shared agents.
static SERIAL: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

const FAST: &[&str] = &["--lease", "1s", "--heartbeat-interval", "250ms"];

fn agents(server: &str, redis: &str, p: &str, n: usize, concurrency: u32) -> Vec<Agent> {
    (0..n)
        .map(|i| Agent::spawn(server, redis, p, &format!("s{i}"), concurrency, &[]))
        .collect()
}

fn req(params: u64, chunk: u64, work_ms: u64, priority: Priority) -> SubmitRequest {
    let mut r = submit_req(params, chunk, work_ms);
    r.priority = priority as i32;
    r
}

fn done(st: &RunStatus) -> u64 {
    st.progress.map_or(0, |p| p.chunks_done)
}

/// A finished run's books: every chunk counted once, the exact sum, and
/// nothing left in flight or queued in the scheduler.
fn assert_books(st: &RunStatus, params: u64) {
    assert_eq!(st.state, RunState::Succeeded as i32, "{st:?}");
    let a = st.aggregate.expect("aggregate");
    assert_eq!(a.count, params);
    assert_eq!(cents(a.sum), cents(expected_sum(params)), "exact aggregate");
    assert_eq!(st.chunks_in_flight, 0, "the in-flight count is back to 0");
    assert_eq!(st.chunks_queued, 0);
}

/// A 300-param run submitted into a busy 6,000-param run (3 agents × 1)
/// finishes while most of the big run is still queued: it gets the agents
/// instead of waiting behind every queued chunk (a FIFO would hand it out
/// only after all 60 big chunks). It has used far less agent time than the
/// big run, so every slot that frees goes to it until it is done: all
/// three agents compute its chunks, where a share of slots by chunks in
/// flight would leave one agent on the big run's 100 ms chunks.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_small_run_beside_a_big_one_finishes_long_before_it() {
    let _g = SERIAL.lock().await;
    let redis = Redis::start();
    let p = prefix();
    let server = ServerProc::start(&redis.url, &p, FAST);
    let _ag = agents(&server.url, &redis.url, &p, 3, 1);
    let mut c = control(&server.url).await;
    // 60 chunks of 100 ms.
    let big = submit_run(&mut c, req(6_000, 100, 1, Priority::Normal)).await;
    wait_until("the big run is running", Duration::from_secs(20), || {
        let mut c = c.clone();
        let id = big.clone();
        async move { (status(&mut c, &id).await.chunks_in_flight == 3).then_some(()) }
    })
    .await;
    // 30 chunks of 10 ms.
    let small = submit_run(&mut c, req(300, 10, 1, Priority::Normal)).await;
    let st = wait_finished(&mut c, &small, Duration::from_secs(30)).await;
    let big_now = status(&mut c, &big).await;
    assert_books(&st, 300);
    assert!(
        big_now.chunks_queued >= 30,
        "the small run finished with {} of the big run's 60 chunks still queued (done {}): it did not wait behind them",
        big_now.chunks_queued,
        done(&big_now)
    );
    assert!(st.queue_wait_max_ms > 0 || st.claims == 30, "{st:?}");
    assert_eq!(st.claims, 30, "each chunk claimed once");
    let events = watch_all(&mut c, &small, "").await;
    let mut by_agent = std::collections::BTreeMap::<String, usize>::new();
    for e in &events {
        if let Some(event::Kind::ChunkCompleted(k)) = &e.kind {
            *by_agent.entry(k.agent_id.clone()).or_default() += 1;
        }
    }
    assert_eq!(
        by_agent.len(),
        3,
        "every agent computed the small run's chunks: {by_agent:?}"
    );
    assert!(
        by_agent.values().all(|&n| n >= 4),
        "the small run held every slot that freed: {by_agent:?}"
    );
    // 30 chunks of 10 ms, each charged its compute time.
    assert!(
        (280..3_000).contains(&st.agent_ms),
        "agent time {} ms",
        st.agent_ms
    );
    let big_end = wait_finished(&mut c, &big, Duration::from_secs(60)).await;
    assert_books(&big_end, 6_000);
}

/// Completions charge their run the compute time their agent measured,
/// bounded by how long the chunk was held; a run that arrives far behind
/// the least-served run of its class is lifted to CATCH_UP (one minute of
/// agent time) behind it, so it takes the free slots first, for a bounded
/// time, and then shares them.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn agent_time_is_charged_and_a_newcomers_lead_is_bounded() {
    let redis = Redis::start();
    let p = prefix();
    let keys = Keys::new(&p);
    let server = Server::start(&redis.url, &p).await;
    let mut c = control(&server.url).await;
    let mut conn = redis.async_conn().await;
    let tasks = keys.tasks("placeholder");
    let scripts = Scripts::new();
    let old = submit_run(&mut c, req(1_000, 10, 0, Priority::Normal)).await;
    let held = std::time::Instant::now();
    let got = read_group(&mut conn, &tasks, "tester", 2).await;
    tokio::time::sleep(Duration::from_millis(40)).await;
    // One chunk reports 20 ms; the other claims 11 days, and is charged no
    // more than it was held.
    let mut used = Vec::new();
    for ((id, e), us) in got.iter().zip([20_000u64, 10u64.pow(12)]) {
        let values: Vec<f64> = (e.task.start..e.task.end).map(|x| x as f64).collect();
        let chunk = tester_chunk(&old, id, &e.task, &values).with_compute_us(us);
        let (codes, _) = scripts
            .complete(&mut conn, &keys, &old, &tasks, "tester", &[chunk])
            .await
            .expect("complete");
        assert_eq!(codes, vec![1]);
        used.push(status(&mut c, &old).await.agent_ms);
    }
    let most = held.elapsed().as_millis() as u64 + 2;
    assert_eq!(used[0], 20, "the agent's measure");
    assert!(
        (20 + 40..=20 + most).contains(&used[1]),
        "charged {} ms: 20 ms plus the held time of the other (40..={most} ms)",
        used[1]
    );
    // The old run has used 10 minutes of agent time over 6 chunks; one more
    // claim puts its score there (vtime 600 s + 1 in flight x 100 s).
    let run = |id: &str| format!("{p}run:{id}");
    let _: () = redis::cmd("HSET")
        .arg(run(&old))
        .arg(&["served", "600000000", "nserved", "6"])
        .query_async(&mut conn)
        .await
        .expect("hset");
    let a = read_group(&mut conn, &tasks, "tester", 1).await;
    assert_eq!(a[0].1.task.run_id, old);
    let new = submit_run(&mut c, req(1_000, 10, 0, Priority::Normal)).await;
    // The newcomer goes first, lifted to one minute behind the old run.
    let b = read_group(&mut conn, &tasks, "tester", 1).await;
    assert_eq!(b[0].1.task.run_id, new);
    let vbase: i64 = redis::cmd("HGET")
        .arg(run(&new))
        .arg("vbase")
        .query_async(&mut conn)
        .await
        .expect("vbase");
    assert_eq!(vbase, 700_000 - 60_000);
    let more = read_group(&mut conn, &tasks, "tester", 3).await;
    assert!(
        more.iter().all(|(_, e)| e.task.run_id == new),
        "the newcomer takes the free slots while it is behind"
    );
    // Once the newcomer has used its minute (and more), the old run's turn
    // comes again.
    let _: () = redis::cmd("HSET")
        .arg(run(&new))
        .arg(&["served", "70000000", "nserved", "3"])
        .query_async(&mut conn)
        .await
        .expect("hset");
    let (id, e) = &b[0];
    let values: Vec<f64> = (e.task.start..e.task.end).map(|x| x as f64).collect();
    scripts
        .complete(
            &mut conn,
            &keys,
            &new,
            &tasks,
            "tester",
            &[tester_chunk(&new, id, &e.task, &values)],
        )
        .await
        .expect("complete");
    let next = read_group(&mut conn, &tasks, "tester", 1).await;
    assert_eq!(next[0].1.task.run_id, old, "the old run's turn");
    server.stop().await;
}

/// Weights share agent time: a weight-3 run beside a weight-1 run, both
/// of 10 ms chunks on 3 agents, gets about three times the agent time, so
/// when it has done its 300 chunks the other has done about 100.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_weighted_run_gets_its_weight_in_agent_time() {
    let _g = SERIAL.lock().await;
    let redis = Redis::start();
    let p = prefix();
    let server = ServerProc::start(&redis.url, &p, FAST);
    let _ag = agents(&server.url, &redis.url, &p, 3, 1);
    let mut c = control(&server.url).await;
    let light = submit_run(&mut c, req(3_000, 10, 1, Priority::Normal)).await;
    let mut r = req(3_000, 10, 1, Priority::Normal);
    r.weight = 3;
    let heavy = submit_run(&mut c, r).await;
    let h = wait_finished(&mut c, &heavy, Duration::from_secs(60)).await;
    assert_books(&h, 3_000);
    let l = wait_finished(&mut c, &light, Duration::from_secs(60)).await;
    assert_books(&l, 3_000);
    // The light run's chunks completed while the heavy run was going.
    let (mut chunks, mut ms) = (0u64, 0u64);
    for e in watch_all(&mut c, &light, "").await {
        if let Some(event::Kind::ChunkCompleted(k)) = &e.kind {
            if e.time_ms <= h.finished_ms {
                chunks += 1;
                ms += k.compute_ms;
            }
        }
    }
    assert!(
        (70..=135).contains(&chunks),
        "the weight-1 run did {chunks} of its 300 chunks while the weight-3 run did its 300 (about 100 expected)"
    );
    let ratio = h.agent_ms as f64 / ms.max(1) as f64;
    assert!(
        (2.3..=4.0).contains(&ratio),
        "agent time {} ms (weight 3) against {ms} ms (weight 1) meanwhile: {ratio:.2}",
        h.agent_ms
    );
}

/// High before normal before low; a low run still gets chunks while the
/// normal one is busy (every 20th chunk goes to the lowest class with work).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn higher_classes_go_first_and_a_low_run_does_not_starve() {
    let _g = SERIAL.lock().await;
    let redis = Redis::start();
    let p = prefix();
    let server = ServerProc::start(&redis.url, &p, FAST);
    let mut c = control(&server.url).await;
    // Queued before any agent exists, so the order is the scheduler's alone.
    let normal = submit_run(&mut c, req(4_000, 50, 1, Priority::Normal)).await;
    let low = submit_run(&mut c, req(500, 50, 1, Priority::Low)).await;
    let high = submit_run(&mut c, req(1_000, 50, 1, Priority::High)).await;
    let _ag = agents(&server.url, &redis.url, &p, 2, 1);
    let h = wait_finished(&mut c, &high, Duration::from_secs(60)).await;
    let n = wait_finished(&mut c, &normal, Duration::from_secs(60)).await;
    let l = wait_finished(&mut c, &low, Duration::from_secs(60)).await;
    assert_books(&h, 1_000);
    assert_books(&n, 4_000);
    assert_books(&l, 500);
    // Chunks of a run completed before `t` (from its events).
    let before = |run: String, t: i64| {
        let mut c = c.clone();
        async move {
            let events = watch_all(&mut c, &run, "").await;
            events
                .iter()
                .filter(|e| matches!(e.kind, Some(event::Kind::ChunkCompleted(_))) && e.time_ms < t)
                .count()
        }
    };
    // The 20 high chunks were handed out first: the normal run only got
    // the slots the high run's last chunks left (2 agents).
    let normal_early = before(normal.clone(), h.finished_ms).await;
    assert!(
        normal_early <= 3,
        "the normal run completed {normal_early} chunks before the high run ended"
    );
    // Every 20th chunk went to the low run while the others were busy,
    // but it was not served as an equal.
    let low_early = before(low.clone(), n.finished_ms).await;
    assert!(
        (1..10).contains(&low_early),
        "the low run completed {low_early} of 10 chunks before the normal run ended"
    );
    assert!(h.finished_ms <= n.finished_ms && n.finished_ms <= l.finished_ms);
    let bad = c
        .submit(SubmitRequest {
            priority: 7,
            ..req(10, 10, 0, Priority::Normal)
        })
        .await
        .expect_err("unknown priority");
    assert_eq!(bad.code(), tonic::Code::InvalidArgument);
    assert!(bad.message().contains("priority"), "{}", bad.message());
}

/// `max_in_flight` 2 on 3 agents × 2 slots: the server's own view never
/// shows more than 2 chunks in flight, while an uncapped run beside it
/// takes the other slots.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_capped_run_never_holds_more_than_its_cap() {
    let _g = SERIAL.lock().await;
    let redis = Redis::start();
    let p = prefix();
    let server = ServerProc::start(&redis.url, &p, FAST);
    let _ag = agents(&server.url, &redis.url, &p, 3, 2);
    let mut c = control(&server.url).await;
    let mut capped = req(2_400, 30, 1, Priority::Normal);
    capped.max_in_flight = 2;
    let capped = submit_run(&mut c, capped).await;
    let free = submit_run(&mut c, req(2_400, 30, 1, Priority::Normal)).await;
    let (mut max_capped, mut max_free, mut samples) = (0, 0, 0);
    loop {
        let a = status(&mut c, &capped).await;
        let b = status(&mut c, &free).await;
        assert!(
            a.chunks_in_flight <= 2,
            "the capped run held {} chunks",
            a.chunks_in_flight
        );
        max_capped = max_capped.max(a.chunks_in_flight);
        max_free = max_free.max(b.chunks_in_flight);
        samples += 1;
        if a.state == RunState::Succeeded as i32 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    assert!(samples > 10, "sampled {samples} times");
    assert_eq!(max_capped, 2, "the cap was reached");
    assert!(
        max_free >= 3,
        "the other slots went to the uncapped run ({max_free})"
    );
    assert_books(&status(&mut c, &capped).await, 2_400);
    assert_books(
        &wait_finished(&mut c, &free, Duration::from_secs(60)).await,
        2_400,
    );
    let mut over = req(10, 10, 0, Priority::Normal);
    over.max_in_flight = 1_000_001;
    let e = c.submit(over).await.expect_err("cap out of range");
    assert!(e.message().contains("max_in_flight"), "{}", e.message());
}

/// Two equal runs share three agents; one agent is SIGKILLed mid-run. Its
/// chunks are reclaimed to the front of their runs' queues; both runs end
/// with exact sums, and in-flight counts return to 0.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fair_share_survives_an_agent_kill() {
    let _g = SERIAL.lock().await;
    let redis = Redis::start();
    let p = prefix();
    let server = ServerProc::start(&redis.url, &p, FAST);
    let ag = agents(&server.url, &redis.url, &p, 3, 1);
    let mut c = control(&server.url).await;
    let a = submit_run(&mut c, req(3_000, 50, 1, Priority::Normal)).await;
    let b = submit_run(&mut c, req(3_000, 50, 1, Priority::Normal)).await;
    wait_until("both runs progress", Duration::from_secs(20), || {
        let mut c = c.clone();
        let (a, b) = (a.clone(), b.clone());
        async move {
            let (x, y) = (status(&mut c, &a).await, status(&mut c, &b).await);
            (done(&x) >= 5 && done(&y) >= 5).then_some(())
        }
    })
    .await;
    // Fair: neither run is far ahead of the other.
    let (x, y) = (status(&mut c, &a).await, status(&mut c, &b).await);
    assert!(
        done(&x).abs_diff(done(&y)) <= 4,
        "{} vs {}",
        done(&x),
        done(&y)
    );
    ag[1].signal("KILL");
    let sa = wait_finished(&mut c, &a, Duration::from_secs(60)).await;
    let sb = wait_finished(&mut c, &b, Duration::from_secs(60)).await;
    assert_books(&sa, 3_000);
    assert_books(&sb, 3_000);
    let ea = watch_all(&mut c, &a, "").await;
    let eb = watch_all(&mut c, &b, "").await;
    assert_exactly_once(&ea, 3_000, 60);
    assert_exactly_once(&eb, 3_000, 60);
    assert!(
        !reclaims(&ea).is_empty() || !reclaims(&eb).is_empty(),
        "the killed agent's chunk was reclaimed"
    );
    assert_queue_drains(&redis, &p, Duration::from_secs(10)).await;
}

/// The server is SIGKILLed and restarted while two runs of different
/// classes share the agents: the scheduler lives in Redis, so both finish
/// exactly, the high one first.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_scheduler_survives_a_server_restart() {
    let _g = SERIAL.lock().await;
    let redis = Redis::start();
    let p = prefix();
    let mut server = ServerProc::start(&redis.url, &p, FAST);
    let mut c = control(&server.url).await;
    let normal = submit_run(&mut c, req(3_000, 50, 1, Priority::Normal)).await;
    let high = submit_run(&mut c, req(2_000, 50, 1, Priority::High)).await;
    let _ag = agents(&server.url, &redis.url, &p, 3, 1);
    wait_until("the high run progresses", Duration::from_secs(20), || {
        let mut c = c.clone();
        let id = high.clone();
        async move { (done(&status(&mut c, &id).await) >= 5).then_some(()) }
    })
    .await;
    server.kill();
    server.spawn();
    let mut c = control(&server.url).await;
    let h = wait_finished(&mut c, &high, Duration::from_secs(60)).await;
    let n = wait_finished(&mut c, &normal, Duration::from_secs(60)).await;
    assert_books(&h, 2_000);
    assert_books(&n, 3_000);
    assert!(h.finished_ms < n.finished_ms, "high ended first");
    assert_queue_drains(&redis, &p, Duration::from_secs(10)).await;
}

/// A failed chunk goes back to the front of its run's queue: the next claim
/// hands it out again (attempt 2) before any fresh chunk.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failed_chunk_is_handed_out_again_first() {
    let redis = Redis::start();
    let p = prefix();
    let keys = Keys::new(&p);
    let server = Server::start(&redis.url, &p).await;
    let mut c = control(&server.url).await;
    let run = submit_run(&mut c, req(100, 10, 0, Priority::Normal)).await;
    let mut conn = redis.async_conn().await;
    let tasks = keys.tasks("placeholder");
    let got = read_group(&mut conn, &tasks, "tester", 3).await;
    let chunks: Vec<u64> = got.iter().map(|(_, e)| e.task.chunk_index).collect();
    assert_eq!(chunks, vec![0, 1, 2]);
    assert_eq!(status(&mut c, &run).await.chunks_in_flight, 3);
    let (id, entry) = &got[1];
    let body = |dead| {
        event_body(
            &run,
            event::Kind::ChunkFailed(ChunkFailed {
                chunk_index: 1,
                dead,
                ..Default::default()
            }),
        )
    };
    let (retry_body, dead_body) = (body(false), body(true));
    let f = FailedAttempt {
        entry_id: id,
        task: &entry.task,
        attempt: 1,
        error: "boom",
        first_line: "boom",
        traceparent: b"",
        retry_body: &retry_body,
        dead_body: &dead_body,
    };
    let (code, state): (i64, String) = Scripts::new()
        .fail(&keys, &run, &tasks, "tester", &f)
        .invoke_async(&mut conn)
        .await
        .expect("fail");
    assert_eq!(Failure::from_reply(code, &state), Failure::Requeued);
    let st = status(&mut c, &run).await;
    assert_eq!((st.chunks_in_flight, st.chunks_queued), (2, 8));
    let again = read_group(&mut conn, &tasks, "tester", 2).await;
    let next: Vec<(u64, u32)> = again
        .iter()
        .map(|(_, e)| (e.task.chunk_index, e.attempt))
        .collect();
    assert_eq!(next, vec![(1, 2), (3, 1)], "the failed chunk first");
    // A fresh chunk waited since submit; the re-queued one since its failure.
    let submitted = got[0].1.queued_ms.expect("queued_ms");
    assert_eq!(again[1].1.queued_ms, Some(submitted));
    assert!(again[0].1.queued_ms.expect("queued_ms") >= submitted);
    assert!(!again[0].1.traceparent.is_empty() || got[0].1.traceparent.is_empty());
    server.stop().await;
}

/// Capped runs do not hide claimable ones: with more high runs at their cap
/// than a claim reads scores of, a small claim still reaches the normal run
/// behind them (a capped run sorts after its class's claimable runs, and
/// the claim skips the rest of a class at its first capped run), and no
/// capped run gets a chunk past its cap.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn capped_runs_of_a_higher_class_do_not_hide_a_lower_one() {
    let redis = Redis::start();
    let p = prefix();
    let keys = Keys::new(&p);
    let server = Server::start(&redis.url, &p).await;
    let mut c = control(&server.url).await;
    let mut high = Vec::new();
    for _ in 0..12 {
        let mut r = req(30, 10, 0, Priority::High);
        r.max_in_flight = 1;
        high.push(submit_run(&mut c, r).await);
    }
    let normal = submit_run(&mut c, req(20, 10, 0, Priority::Normal)).await;
    let mut conn = redis.async_conn().await;
    let tasks = keys.tasks("placeholder");
    let mut per_run = std::collections::HashMap::<String, u64>::new();
    for _ in 0..20 {
        let got = read_group(&mut conn, &tasks, "tester", 2).await;
        if got.is_empty() {
            break;
        }
        for (_, e) in got {
            *per_run.entry(e.task.run_id).or_default() += 1;
        }
    }
    for id in &high {
        assert_eq!(
            per_run.get(id),
            Some(&1),
            "one chunk each for the capped runs"
        );
        assert_eq!(status(&mut c, id).await.chunks_in_flight, 1);
    }
    assert_eq!(
        per_run.get(&normal),
        Some(&2),
        "the normal run was reached: {per_run:?}"
    );
    assert_eq!(per_run.values().sum::<u64>(), 14);
    server.stop().await;
}
