//! Every run's books balance, with real agent processes: a retried run is
//! never dropped by an agent that saw it fail (the claim gate asks Redis);
//! fail-fast stops a run whose chunks all fail alike, and retry computes only
//! what is missing; the audit re-queues chunks lost outside the scripts; and
//! a random mix of retries, cancels, deletes and kills leaves every run with
//! done + dead + purged = total.

mod common;

use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::Duration;

use common::*;
use rand::Rng;
use ttg_proto::keys::Keys;
use ttg_proto::v1::{
    CancelRequest, DeleteRequest, RetryRequest, RunState, RunStatus, StatusRequest, SubmitRequest,
};

fn exec_req(params: u64, chunk: u64, program: &Path, fail_fast: Option<u32>) -> SubmitRequest {
    SubmitRequest {
        params,
        chunk_size: Some(chunk),
        kernel: "exec".into(),
        args: [("program".to_string(), program.display().to_string())]
            .into_iter()
            .collect(),
        max_attempts: Some(3),
        name: "books".into(),
        retention_s: None,
        fail_fast,
        ..Default::default()
    }
}

/// p ↦ p + 0.5, one line per parameter, after `delay` seconds per chunk.
fn plus_half(delay: &str) -> String {
    format!("#!/bin/sh\nsleep {delay}\nawk '{{ printf \"%s.5\\n\", $1 }}'\n")
}

/// Σ (p + 0.5) for p < n.
fn plus_half_sum(n: u64) -> f64 {
    (n * (n - 1) / 2) as f64 + 0.5 * n as f64
}

/// The books of a run that has ended: done + dead + purged = total, and a
/// SUCCEEDED run has every chunk done, its values stored once each.
fn assert_books(st: &RunStatus, redis: &Redis, prefix: &str) {
    assert_books_in(st, redis, &ttg_proto::keys::Layout::new(prefix, 1));
}

/// [`assert_books`] for an installation of `layout`'s slot groups.
fn assert_books_in(st: &RunStatus, redis: &Redis, layout: &ttg_proto::keys::Layout) {
    let p = st.progress.expect("progress");
    let id = &st.spec.as_ref().expect("spec").run_id;
    assert_eq!(
        p.chunks_done + p.chunks_dead + p.chunks_purged,
        p.chunks_total,
        "run {id} ({:?}): done {} + dead {} + purged {} != total {}",
        RunState::try_from(st.state),
        p.chunks_done,
        p.chunks_dead,
        p.chunks_purged,
        p.chunks_total
    );
    let keys = layout.of_run(id).expect("the run's group");
    let mut conn = redis.conn();
    let stored: u64 = redis::cmd("HLEN")
        .arg(keys.results(id))
        .query(&mut conn)
        .expect("hlen");
    let done_bits: u64 = redis::cmd("BITCOUNT")
        .arg(keys.done(id))
        .query(&mut conn)
        .expect("bitcount");
    assert_eq!(
        stored, p.chunks_done,
        "run {id}: one stored result per done chunk"
    );
    assert_eq!(done_bits, p.chunks_done, "run {id}: done bitmap agrees");
    if st.state == RunState::Succeeded as i32 {
        assert_eq!(p.chunks_done, p.chunks_total, "run {id}");
        assert_eq!(p.chunks_purged, 0, "run {id}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_retried_run_is_computed_by_the_agent_that_saw_it_fail() {
    let dir = tempfile::tempdir().expect("tmp");
    let program = dir.path().join("later.sh");
    let redis = Redis::start();
    let p = prefix();
    let server = Server::start(&redis.url, &p).await;
    // One agent: it dead-letters the last chunk itself, so it is the one that
    // learns "FAILED" — and the one that must compute the retried chunks.
    let _a = Agent::spawn(&server.url, &redis.url, &p, "only", 1, &["--allow-exec"]);
    let mut c = control(&server.url).await;
    let run = c
        .submit(exec_req(1_000, 100, &program, Some(0)))
        .await
        .expect("submit")
        .into_inner();
    let st = wait_finished(&mut c, &run.run_id, Duration::from_secs(60)).await;
    assert_eq!(st.state, RunState::Failed as i32);
    assert_eq!(st.progress.expect("p").chunks_dead, 10);
    assert_books(&st, &redis, &p);
    // Its watch never says 100 % (every chunk is dead, none done) and
    // prints "no values" rather than a zero aggregate.
    let (code, out, _) = watch_cli(&server.url, &run.run_id).await;
    assert_eq!(code, 1, "{out}");
    assert!(out.contains("0/10 chunks (0%)"), "{out}");
    assert!(!out.contains("(100%)"), "{out}");
    assert!(
        out.contains("no values") && !out.contains("sum 0.00"),
        "{out}"
    );

    script(dir.path(), "later.sh", &plus_half("0.2"));
    let r = c
        .retry(RetryRequest {
            run_id: run.run_id.clone(),
        })
        .await
        .expect("retry")
        .into_inner();
    assert_eq!((r.chunks_requeued, r.state), (10, RunState::Running as i32));
    // A watch started now replays the old failure, then follows the reopened
    // run to its end and exits 0.
    let (code, out, err) = watch_cli(&server.url, &run.run_id).await;
    assert_eq!(code, 0, "watch of a retried run: {out}\n{err}");
    assert!(out.contains("SUCCEEDED"), "{out}");
    assert!(out.contains("10 chunks re-queued"), "{out}");
    let st = wait_finished(&mut c, &run.run_id, Duration::from_secs(30)).await;
    assert_eq!(st.state, RunState::Succeeded as i32);
    assert_eq!(st.aggregate.expect("agg").sum, plus_half_sum(1_000));
    assert_books(&st, &redis, &p);
    assert_queue_drains(&redis, &p, Duration::from_secs(10)).await;
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fail_fast_stops_a_run_and_retry_computes_only_what_is_missing() {
    let dir = tempfile::tempdir().expect("tmp");
    let broken = "#!/bin/sh\ncat >/dev/null\necho 'ModuleNotFoundError: No module named numpy' >&2\nexit 1\n";
    let program = script(dir.path(), "model.sh", broken);
    let redis = Redis::start();
    let p = prefix();
    let server = Server::start(&redis.url, &p).await;
    let _a = Agent::spawn(&server.url, &redis.url, &p, "ff", 1, &["--allow-exec"]);
    let mut c = control(&server.url).await;
    let run = c
        .submit(exec_req(10_000, 100, &program, Some(5)))
        .await
        .expect("submit")
        .into_inner();
    let st = wait_finished(&mut c, &run.run_id, Duration::from_secs(60)).await;
    assert_eq!(st.state, RunState::Failed as i32);
    assert!(
        st.message
            .starts_with("stopped by fail-fast: 5 attempts in a row failed with: "),
        "{}",
        st.message
    );
    assert!(
        st.message.contains("No module named numpy"),
        "{}",
        st.message
    );
    let pr = st.progress.expect("p");
    assert_eq!(pr.chunks_done, 0);
    assert_eq!(pr.chunks_purged, 100 - pr.chunks_dead);
    assert_books(&st, &redis, &p);
    // 5 attempts, not 100 chunks × 3 attempts.
    let events = events_in_redis(&redis, &p, &run.run_id);
    let failed = events
        .iter()
        .filter(|e| matches!(e.kind, Some(ttg_proto::v1::event::Kind::ChunkFailed(_))))
        .count();
    assert_eq!(failed, 5, "failed attempts: fail-fast stops at the 5th");
    // The watch says why, folds the repeated error, never shows 100 %.
    let (code, out, _) = watch_cli(&server.url, &run.run_id).await;
    assert_eq!(code, 1);
    assert!(out.contains("stopped by fail-fast"), "{out}");
    assert!(out.contains("the same error × 4 more"), "{out}");
    assert!(out.contains("no values"), "{out}");
    // Exporting a FAILED run says what is missing and fails unless --partial.
    let (code, _, err) = ttgctl(&server.url, &["results", &run.run_id]);
    assert_eq!(code, 1, "{err}");
    assert!(
        err.contains("wrote 0 of 10000 values, 10000 missing"),
        "{err}"
    );
    let (code, _, _) = ttgctl(&server.url, &["results", &run.run_id, "--partial"]);
    assert_eq!(code, 0);

    // Fixed: retry re-queues the purged and the dead chunks, each once.
    script(dir.path(), "model.sh", &plus_half("0"));
    let r = c
        .retry(RetryRequest {
            run_id: run.run_id.clone(),
        })
        .await
        .expect("retry")
        .into_inner();
    assert_eq!(r.chunks_requeued, 100);
    let st = wait_finished(&mut c, &run.run_id, Duration::from_secs(60)).await;
    assert_eq!(st.state, RunState::Succeeded as i32, "{}", st.message);
    assert_eq!(st.message, "");
    assert_eq!(st.aggregate.expect("agg").sum, plus_half_sum(10_000));
    assert_books(&st, &redis, &p);
    let events = events_in_redis(&redis, &p, &run.run_id);
    assert_exactly_once_chunks(&events, 100);
    server.stop().await;
}

/// `ttgctl watch RUN` to its end, off the async runtime: (exit, stdout, stderr).
async fn watch_cli(server: &str, run_id: &str) -> (i32, String, String) {
    let (url, id) = (server.to_string(), run_id.to_string());
    tokio::task::spawn_blocking(move || ttgctl(&url, &["watch", &id]))
        .await
        .expect("ttgctl")
}

/// Every chunk 0..n completed exactly once in the events.
fn assert_exactly_once_chunks(events: &[ttg_proto::v1::Event], n: u64) {
    let mut done = completed_chunks(events);
    done.sort_unstable();
    assert_eq!(done, (0..n).collect::<Vec<_>>());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_audit_requeues_chunks_lost_outside_the_books() {
    let redis = Redis::start();
    let p = prefix();
    let mut cfg = ttg_server::Config::for_redis(&redis.url, &p);
    cfg.audit_interval = Duration::from_millis(200);
    cfg.audit_quiet = Duration::from_millis(800);
    let server = Server::start_with(cfg).await;
    let mut c = control(&server.url).await;
    let lost = c
        .submit(submit_req(2_000, 100, 0))
        .await
        .expect("submit")
        .into_inner();
    let keys = Keys::new(&p);
    let tasks = keys.tasks("placeholder");
    // Hand every chunk of the first run to a consumer that is no agent,
    // then lose the deliveries behind the scripts' back: no entry, nothing
    // queued, yet its in-flight count still says 20.
    {
        let mut conn = redis.async_conn().await;
        let got = read_group(&mut conn, &tasks, "ghost", 100).await;
        let mine: Vec<String> = got.into_iter().map(|(id, _)| id).collect();
        assert_eq!(mine.len(), 20);
        let mut conn = redis.conn();
        let _: usize = redis::cmd("XACK")
            .arg(&tasks)
            .arg(ttg_proto::keys::GROUP)
            .arg(&mine)
            .query(&mut conn)
            .expect("xack");
        let _: usize = redis::cmd("XDEL")
            .arg(&tasks)
            .arg(&mine)
            .query(&mut conn)
            .expect("xdel");
    }
    let st = status(&mut c, &lost.run_id).await;
    assert_eq!((st.chunks_in_flight, st.chunks_queued), (20, 0));
    let waiting = c
        .submit(submit_req(500, 100, 0))
        .await
        .expect("submit")
        .into_inner();
    let stats_field = |f: &'static str| {
        let mut conn = redis.conn();
        let stats = keys.stats();
        move || {
            let v: Option<u64> = redis::cmd("HGET")
                .arg(&stats)
                .arg(f)
                .query(&mut conn)
                .expect("hget");
            v.unwrap_or(0)
        }
    };
    let mut audited = stats_field("requeued_by_audit");
    wait_until(
        "the audit re-queues the lost run",
        Duration::from_secs(20),
        || {
            let n = audited();
            async move { (n == 20).then_some(()) }
        },
    )
    .await;
    // The run that was only waiting (its chunks are queued) was left
    // alone, audit after audit; the lost one's chunks are queued again and
    // its in-flight count is back to the truth.
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert_eq!(audited(), 20);
    let st = status(&mut c, &lost.run_id).await;
    assert_eq!((st.chunks_in_flight, st.chunks_queued), (0, 20));
    let st = status(&mut c, &waiting.run_id).await;
    assert_eq!((st.chunks_in_flight, st.chunks_queued), (0, 5));
    // Agents compute both, each chunk once.
    let _a = Agent::spawn(&server.url, &redis.url, &p, "au", 2, &[]);
    for (id, n) in [(&lost.run_id, 2_000), (&waiting.run_id, 500)] {
        let st = wait_finished(&mut c, id, Duration::from_secs(30)).await;
        assert_eq!(st.state, RunState::Succeeded as i32);
        assert_eq!(
            cents(st.aggregate.expect("agg").sum),
            cents(expected_sum(n))
        );
        assert_books(&st, &redis, &p);
    }
    server.stop().await;
}

/// A program that fails while `flag` exists, else prints p + 0.5.
fn flaky(dir: &Path, flag: &Path) -> PathBuf {
    script(
        dir,
        "flaky.sh",
        &format!(
            "#!/bin/sh\nif [ -e '{}' ]; then cat >/dev/null; echo \"broken for chunk $TTG_CHUNK_INDEX\" >&2; exit 2; fi\nawk '{{ printf \"%s.5\\n\", $1 }}'\n",
            flag.display()
        ),
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn random_retries_cancels_deletes_and_kills_keep_every_runs_books() {
    books_mix(1).await;
}

/// The same mix with runs spread over 3 slot groups (one Redis: the
/// groups' keys differ, the scheduler, agents' claims and the server's
/// housekeeping span them).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_books_balance_with_runs_spread_over_slot_groups() {
    books_mix(3).await;
}

async fn books_mix(groups: u32) {
    let seed: u64 = std::env::var("TTG_CHAOS_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(rand::random);
    eprintln!("books chaos seed {seed} (TTG_CHAOS_SEED={seed} to replay)");
    let mut rng = <rand::rngs::StdRng as rand::SeedableRng>::seed_from_u64(seed);
    let dir = tempfile::tempdir().expect("tmp");
    let flag = dir.path().join("broken");
    let program = flaky(dir.path(), &flag);
    let redis = Redis::start();
    let p = prefix();
    let mut cfg = ttg_server::Config::for_redis(&redis.url, &p);
    cfg.audit_interval = Duration::from_millis(500);
    cfg.audit_quiet = Duration::from_secs(3);
    cfg.slot_groups = Some(groups);
    let layout = ttg_proto::keys::Layout::new(&p, groups);
    let server = Server::start_with(cfg).await;
    let spawn = |n: usize| {
        Agent::spawn_env(
            &server.url,
            &redis.url,
            &p,
            &format!("mix-{n}"),
            2,
            &["--allow-exec"],
            &[],
            Stdio::null(),
        )
    };
    let mut agents: Vec<Agent> = (0..3).map(spawn).collect();
    let mut next_agent = 3;
    let mut c = control(&server.url).await;
    let mut runs: Vec<String> = Vec::new();
    let mut deleted: Vec<String> = Vec::new();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(40);
    let mut actions = std::collections::BTreeMap::<&str, u32>::new();
    while tokio::time::Instant::now() < deadline {
        let pick = rng.random_range(0..100);
        let action = match pick {
            0..=24 => {
                let req = if rng.random_bool(0.5) {
                    // Some of these fail while the flag is up.
                    exec_req(rng.random_range(50..400), 10, &program, Some(0))
                } else {
                    submit_req(rng.random_range(100..3_000), 50, 1)
                };
                if let Ok(r) = c.submit(req).await {
                    runs.push(r.into_inner().run_id);
                }
                "submit"
            }
            25..=34 => {
                if flag.exists() {
                    let _ = std::fs::remove_file(&flag);
                } else {
                    let _ = std::fs::write(&flag, b"");
                }
                "toggle failures"
            }
            35..=49 => {
                if let Some(id) = pick_run(&mut rng, &runs) {
                    let _ = c.retry(RetryRequest { run_id: id }).await;
                }
                "retry"
            }
            50..=59 => {
                if let Some(id) = pick_run(&mut rng, &runs) {
                    let _ = c
                        .cancel(CancelRequest {
                            run_id: id,
                            reason: "chaos".into(),
                        })
                        .await;
                }
                "cancel"
            }
            60..=69 => {
                if let Some(id) = pick_run(&mut rng, &runs) {
                    if c.delete(DeleteRequest { run_id: id.clone() }).await.is_ok() {
                        runs.retain(|r| r != &id);
                        deleted.push(id);
                    }
                }
                "delete"
            }
            70..=79 => {
                let i = rng.random_range(0..agents.len());
                agents[i].signal("KILL");
                agents[i] = spawn(next_agent);
                next_agent += 1;
                "kill -9 an agent"
            }
            _ => "wait",
        };
        *actions.entry(action).or_default() += 1;
        tokio::time::sleep(Duration::from_millis(rng.random_range(50..400))).await;
    }
    eprintln!(
        "actions: {actions:?}; {} runs kept, {} deleted",
        runs.len(),
        deleted.len()
    );
    // Settle: failures off, retry what failed until nothing is left to retry.
    let _ = std::fs::remove_file(&flag);
    let settle = tokio::time::Instant::now() + Duration::from_secs(120);
    loop {
        let mut open = 0;
        for id in &runs {
            let st = status(&mut c, id).await;
            match RunState::try_from(st.state) {
                Ok(RunState::Queued) | Ok(RunState::Running) => open += 1,
                Ok(RunState::Failed) => {
                    open += 1;
                    let _ = c.retry(RetryRequest { run_id: id.clone() }).await;
                }
                _ => {}
            }
        }
        if open == 0 {
            break;
        }
        assert!(
            tokio::time::Instant::now() < settle,
            "{open} runs still open after the mix (seed {seed})"
        );
        tokio::time::sleep(Duration::from_millis(300)).await;
    }
    for id in &runs {
        let st = c
            .status(StatusRequest { run_id: id.clone() })
            .await
            .expect("status")
            .into_inner();
        assert_books_in(&st, &redis, &layout);
        let state = RunState::try_from(st.state).expect("state");
        assert!(
            matches!(state, RunState::Succeeded | RunState::Cancelled),
            "run {id} ended {state:?} (seed {seed})"
        );
        if state == RunState::Succeeded {
            let spec = st.spec.expect("spec");
            let sum = st.aggregate.expect("agg").sum;
            if spec.kernel == "exec" {
                assert_eq!(sum, plus_half_sum(spec.params), "run {id} (seed {seed})");
            } else {
                assert_eq!(
                    cents(sum),
                    cents(expected_sum(spec.params)),
                    "run {id} (seed {seed})"
                );
            }
        }
    }
    for id in &deleted {
        let e = c
            .status(StatusRequest { run_id: id.clone() })
            .await
            .expect_err("deleted");
        assert_eq!(e.code(), tonic::Code::NotFound);
    }
    for keys in layout.groups() {
        assert_queue_drains(&redis, keys.prefix(), Duration::from_secs(15)).await;
    }
    if groups > 1 {
        let mut per_group = vec![0; groups as usize];
        for id in &runs {
            per_group[ttg_proto::keys::run_group(id) as usize] += 1;
        }
        assert!(
            per_group.iter().all(|&n| n > 0),
            "runs in every group: {per_group:?}"
        );
    }
    server.stop().await;
}

fn pick_run(rng: &mut impl Rng, runs: &[String]) -> Option<String> {
    (!runs.is_empty()).then(|| runs[rng.random_range(0..runs.len())].clone())
}
