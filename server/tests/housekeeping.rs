//! Redis memory stays bounded: task streams hold only outstanding work,
//! finished runs expire whole after their retention, `delete` removes a
//! finished run at once, `runs` filters and pages, and the server warns when
//! Redis could evict TTG's keys. Real redis-server, real tonic server, real
//! agents.

mod common;

use std::process::{Command, Stdio};
use std::time::Duration;

use common::*;
use tonic::Code;
use ttg_proto::keys::{Keys, GROUP};
use ttg_proto::v1::{
    CancelRequest, DeleteRequest, GetResultsRequest, ListRunsRequest, RunState, StatusRequest,
    WatchRequest,
};

/// Every key under the prefix that belongs to `run_id`.
fn run_keys(redis: &Redis, prefix: &str, run_id: &str) -> Vec<String> {
    let mut keys: Vec<String> = redis::cmd("KEYS")
        .arg(format!("{prefix}run:{run_id}*"))
        .query(&mut redis.conn())
        .expect("keys");
    keys.sort();
    keys
}

fn xlen(redis: &Redis, key: &str) -> usize {
    redis::cmd("XLEN")
        .arg(key)
        .query(&mut redis.conn())
        .expect("xlen")
}

fn server_config(redis: &Redis, prefix: &str) -> ttg_server::Config {
    let mut cfg = ttg_server::Config::for_redis(&redis.url, prefix);
    cfg.janitor_interval = Duration::from_millis(100);
    cfg
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tasks_streams_hold_only_what_is_still_to_do() {
    let redis = Redis::start();
    let p = prefix();
    let keys = Keys::new(&p);
    let server = Server::start_with(server_config(&redis, &p)).await;
    let mut c = control(&server.url).await;
    let tasks = keys.tasks("placeholder");

    // Queued with no agent: the scheduler holds all 10 chunks (none is
    // dropped), and the stream holds nothing until an agent claims.
    let waiting = c
        .submit(submit_req(1_000, 100, 0))
        .await
        .expect("submit")
        .into_inner();
    assert_eq!(xlen(&redis, &tasks), 0);
    assert_eq!(status(&mut c, &waiting.run_id).await.chunks_queued, 10);

    let agents: Vec<_> = (0..2)
        .map(|_| InProcAgent::start(&server.url, &redis.url, &p, 2))
        .collect();
    let mut runs = vec![waiting.run_id];
    for _ in 0..20 {
        let r = c
            .submit(submit_req(2_000, 100, 0))
            .await
            .expect("submit")
            .into_inner();
        runs.push(r.run_id);
    }
    for r in &runs {
        let st = wait_finished(&mut c, r, Duration::from_secs(60)).await;
        assert_eq!(st.state, RunState::Succeeded as i32, "{r}");
    }
    // 21 runs, 410 chunks done: the stream holds nothing, nothing is pending.
    assert_eq!(xlen(&redis, &tasks), 0, "completed deliveries are deleted");
    assert_eq!(queue_state(&redis, &p), (0, 0));
    for a in agents {
        a.stop().await;
    }

    // A cancelled run leaves the scheduler at once: nothing queued, nothing
    // in the stream, and no agent is ever handed one of its chunks.
    let cancelled = c
        .submit(submit_req(5_000, 100, 0))
        .await
        .expect("submit")
        .into_inner();
    assert_eq!(status(&mut c, &cancelled.run_id).await.chunks_queued, 50);
    c.cancel(CancelRequest {
        run_id: cancelled.run_id.clone(),
        reason: "test".into(),
    })
    .await
    .expect("cancel");
    assert_eq!(status(&mut c, &cancelled.run_id).await.chunks_queued, 0);
    assert_eq!(xlen(&redis, &tasks), 0);
    let sched: usize = redis::cmd("ZCARD")
        .arg(keys.sched("placeholder"))
        .query(&mut redis.conn())
        .expect("zcard");
    assert_eq!(sched, 0, "no run left in the scheduler");
    // The group is intact for the next run.
    let groups: Vec<redis::Value> = redis::cmd("XINFO")
        .arg("GROUPS")
        .arg(&tasks)
        .query(&mut redis.conn())
        .expect("groups");
    assert_eq!(groups.len(), 1, "group {GROUP} still there");
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn finished_runs_expire_whole_and_answer_expired() {
    let redis = Redis::start();
    let p = prefix();
    let server = Server::start_with(server_config(&redis, &p)).await;
    let mut c = control(&server.url).await;
    let agent = InProcAgent::start(&server.url, &redis.url, &p, 2);

    let mut short = submit_req(1_000, 100, 0);
    short.retention_s = Some(2);
    short.name = "short-lived".into();
    let short = c.submit(short).await.expect("submit").into_inner();
    let kept = c
        .submit(submit_req(1_000, 100, 0))
        .await
        .expect("submit")
        .into_inner();
    let st = wait_finished(&mut c, &short.run_id, Duration::from_secs(30)).await;
    assert_eq!(st.state, RunState::Succeeded as i32);
    assert_eq!(st.expires_ms, st.finished_ms + 2_000);
    assert_eq!(st.spec.as_ref().expect("spec").retention_ms, 2_000);
    let kept_st = wait_finished(&mut c, &kept.run_id, Duration::from_secs(30)).await;
    assert_eq!(
        kept_st.expires_ms,
        kept_st.finished_ms + 7 * 24 * 3_600 * 1_000,
        "default --run-retention is 7 days"
    );
    // Every kind of key the run owns exists before expiry.
    let before = run_keys(&redis, &p, &short.run_id);
    for suffix in ["", ":done", ":events", ":results"] {
        let k = format!("{p}run:{}{suffix}", short.run_id);
        assert!(before.contains(&k), "{k} in {before:?}");
    }

    // While it waits to expire, every listing shows it whole; then it is
    // gone from all of them at once.
    let e = wait_until("run expired", Duration::from_secs(15), || {
        let mut c = c.clone();
        let run_id = short.run_id.clone();
        async move {
            let runs = c
                .list_runs(ListRunsRequest::default())
                .await
                .expect("runs")
                .into_inner()
                .runs;
            for r in &runs {
                let spec = r.spec.as_ref().expect("a listed run has its spec");
                assert!(r.progress.is_some() && !spec.run_id.is_empty());
            }
            c.status(StatusRequest { run_id }).await.err()
        }
    })
    .await;
    assert_eq!(e.code(), Code::NotFound);
    assert!(e.message().contains("expired"), "{}", e.message());
    assert!(e.message().contains(&short.run_id), "{}", e.message());
    assert_eq!(run_keys(&redis, &p, &short.run_id), Vec::<String>::new());
    let runs = c
        .list_runs(ListRunsRequest::default())
        .await
        .expect("runs")
        .into_inner()
        .runs;
    let ids: Vec<_> = runs
        .iter()
        .map(|r| r.spec.as_ref().expect("spec").run_id.clone())
        .collect();
    assert_eq!(ids, vec![kept.run_id.clone()]);
    let e = c
        .watch(WatchRequest {
            run_id: short.run_id.clone(),
            after_event_id: String::new(),
            no_follow: false,
        })
        .await
        .expect_err("watch");
    assert!(
        e.code() == Code::NotFound && e.message().contains("expired"),
        "{e:?}"
    );
    let e = c
        .get_results(GetResultsRequest {
            run_id: short.run_id.clone(),
        })
        .await
        .expect_err("results");
    assert!(
        e.code() == Code::NotFound && e.message().contains("expired"),
        "{e:?}"
    );
    let (code, _, err) = ttgctl(&server.url, &["status", &short.run_id]);
    assert_ne!(code, 0);
    assert!(err.contains("expired"), "{err}");
    // The schedule is empty but for the kept run; the kept run is untouched.
    let expiring: Vec<String> = redis::cmd("ZRANGE")
        .arg(Keys::new(&p).expiring())
        .arg(0)
        .arg(-1)
        .query(&mut redis.conn())
        .expect("zrange");
    assert_eq!(expiring, vec![kept.run_id.clone()]);
    assert_eq!(
        status(&mut c, &kept.run_id).await.state,
        RunState::Succeeded as i32
    );
    agent.stop().await;
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn delete_removes_a_finished_run_and_refuses_a_running_one() {
    let redis = Redis::start();
    let p = prefix();
    let server = Server::start_with(server_config(&redis, &p)).await;
    let mut c = control(&server.url).await;
    let tasks = Keys::new(&p).tasks("placeholder");

    // No agent: the run stays QUEUED.
    let run = c
        .submit(submit_req(1_000, 100, 0))
        .await
        .expect("submit")
        .into_inner();
    let e = c
        .delete(DeleteRequest {
            run_id: run.run_id.clone(),
        })
        .await
        .expect_err("delete a queued run");
    assert_eq!(e.code(), Code::FailedPrecondition);
    assert!(
        e.message().contains("QUEUED") && e.message().contains("cancel it first"),
        "{}",
        e.message()
    );
    let (code, _, err) = ttgctl(&server.url, &["delete", &run.run_id]);
    assert_eq!(code, 2, "{err}");
    assert!(err.contains("cancel it first"), "{err}");
    assert!(
        !run_keys(&redis, &p, &run.run_id).is_empty(),
        "nothing removed"
    );

    let (code, out, err) = ttgctl(&server.url, &["cancel", &run.run_id]);
    assert_eq!(code, 0, "{err}");
    assert!(out.contains("CANCELLED"), "{out}");
    let (code, out, err) = ttgctl(&server.url, &["delete", &run.run_id]);
    assert_eq!(code, 0, "{err}");
    assert!(
        out.contains("deleted") && out.contains("CANCELLED"),
        "{out}"
    );
    assert_eq!(run_keys(&redis, &p, &run.run_id), Vec::<String>::new());
    wait_until(
        "cancelled tasks purged",
        Duration::from_secs(10),
        || async { (xlen(&redis, &tasks) == 0).then_some(()) },
    )
    .await;
    let e = c
        .status(StatusRequest {
            run_id: run.run_id.clone(),
        })
        .await
        .expect_err("status of a deleted run");
    assert_eq!(e.code(), Code::NotFound);
    assert!(e.message().contains("was deleted"), "{}", e.message());
    // Deleting twice: NotFound, saying so.
    let (code, _, err) = ttgctl(&server.url, &["delete", &run.run_id]);
    assert_ne!(code, 0);
    assert!(err.contains("was deleted"), "{err}");

    // A finished run with results: deleted at once, whatever its retention.
    let agent = InProcAgent::start(&server.url, &redis.url, &p, 2);
    let done = c
        .submit(submit_req(1_000, 100, 0))
        .await
        .expect("submit")
        .into_inner();
    wait_finished(&mut c, &done.run_id, Duration::from_secs(30)).await;
    assert!(run_keys(&redis, &p, &done.run_id).len() >= 4);
    let r = c
        .delete(DeleteRequest {
            run_id: done.run_id.clone(),
        })
        .await
        .expect("delete")
        .into_inner();
    assert_eq!(r.state, RunState::Succeeded as i32);
    assert_eq!(run_keys(&redis, &p, &done.run_id), Vec::<String>::new());
    let listed = c
        .list_runs(ListRunsRequest::default())
        .await
        .expect("runs")
        .into_inner()
        .runs;
    assert!(listed.is_empty(), "{listed:?}");
    agent.stop().await;
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn runs_filter_by_state_name_and_age_and_page() {
    let redis = Redis::start();
    let p = prefix();
    let server = Server::start_with(server_config(&redis, &p)).await;
    let mut c = control(&server.url).await;
    // Seven runs, no agent: five "alpha", two "beta"; two alphas cancelled.
    let mut ids = Vec::new();
    for i in 0..7 {
        let mut req = submit_req(100, 10, 0);
        req.name = if i < 5 {
            format!("Alpha-{i}")
        } else {
            format!("beta-{i}")
        };
        ids.push(c.submit(req).await.expect("submit").into_inner().run_id);
    }
    for id in &ids[..2] {
        c.cancel(CancelRequest {
            run_id: id.clone(),
            reason: String::new(),
        })
        .await
        .expect("cancel");
    }
    let newest_first: Vec<String> = ids.iter().rev().cloned().collect();
    let list = |req: ListRunsRequest| {
        let mut c = c.clone();
        async move {
            let r = c.list_runs(req).await.expect("runs").into_inner();
            let ids: Vec<String> = r
                .runs
                .iter()
                .map(|s| s.spec.as_ref().expect("spec").run_id.clone())
                .collect();
            (ids, r.next_page_token)
        }
    };
    let (all, token) = list(ListRunsRequest::default()).await;
    assert_eq!((all.clone(), token), (newest_first.clone(), String::new()));
    let (cancelled, _) = list(ListRunsRequest {
        states: vec![RunState::Cancelled as i32],
        ..Default::default()
    })
    .await;
    assert_eq!(cancelled, vec![ids[1].clone(), ids[0].clone()]);
    let (queued_alpha, _) = list(ListRunsRequest {
        states: vec![RunState::Queued as i32],
        name_contains: "ALPHA".into(),
        ..Default::default()
    })
    .await;
    assert_eq!(
        queued_alpha,
        vec![ids[4].clone(), ids[3].clone(), ids[2].clone()]
    );
    let (recent, _) = list(ListRunsRequest {
        max_age_s: 3_600,
        ..Default::default()
    })
    .await;
    assert_eq!(recent.len(), 7);
    let (old, token) = list(ListRunsRequest {
        min_age_s: 3_600,
        ..Default::default()
    })
    .await;
    assert!(old.is_empty() && token.is_empty());

    // Pages of two: every run once, newest first, then no token.
    let mut paged = Vec::new();
    let mut token = String::new();
    for _ in 0..10 {
        let (page, next) = list(ListRunsRequest {
            limit: 2,
            page_token: token.clone(),
            ..Default::default()
        })
        .await;
        assert!(page.len() <= 2);
        paged.extend(page);
        if next.is_empty() {
            break;
        }
        token = next;
    }
    assert_eq!(paged, newest_first);
    // A filtered page continues with the same filter.
    let (first, next) = list(ListRunsRequest {
        limit: 1,
        name_contains: "beta".into(),
        ..Default::default()
    })
    .await;
    let (second, _) = list(ListRunsRequest {
        limit: 1,
        name_contains: "beta".into(),
        page_token: next,
        ..Default::default()
    })
    .await;
    assert_eq!(
        [first, second].concat(),
        vec![ids[6].clone(), ids[5].clone()]
    );

    // ttgctl: filters, one page with a hint, or --all.
    let (code, out, err) = ttgctl(&server.url, &["runs", "--state", "cancelled", "-o", "json"]);
    assert_eq!(code, 0, "{err}");
    let v: serde_json::Value = serde_json::from_str(&out).expect("json");
    assert_eq!(v["runs"].as_array().map(Vec::len), Some(2));
    assert_eq!(v["next_page_token"], "", "{out}");
    let (code, out, err) = ttgctl(&server.url, &["runs", "--limit", "3"]);
    assert_eq!(code, 0, "{err}");
    assert_eq!(out.lines().count(), 1 + 3, "{out}");
    assert!(err.contains("--page-token"), "{err}");
    let (code, out, _) = ttgctl(
        &server.url,
        &[
            "runs", "--limit", "3", "--all", "--name", "alpha", "--since", "1h", "-o", "json",
        ],
    );
    assert_eq!(code, 0);
    let v: serde_json::Value = serde_json::from_str(&out).expect("json");
    assert_eq!(v["runs"].as_array().map(Vec::len), Some(5));
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn server_warns_when_redis_may_evict() {
    let redis = Redis::start_with(&["maxmemory-policy", "allkeys-lru"]);
    let dir = tempfile::tempdir().expect("tempdir");
    let log = dir.path().join("server.log");
    let port = free_port();
    let mut child = Command::new(bin("ttg-server"))
        .args([
            "--listen",
            &format!("127.0.0.1:{port}"),
            "--redis-url",
            &redis.url,
        ])
        .args([
            "--prefix",
            &prefix(),
            "--insecure-no-auth",
            "--log-format",
            "text",
        ])
        .env("RUST_LOG", "warn")
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(&log).expect("log"))
        .spawn()
        .expect("spawn ttg-server");
    let text = wait_until("eviction warning", Duration::from_secs(15), || async {
        let t = std::fs::read_to_string(&log).unwrap_or_default();
        t.contains("noeviction").then_some(t)
    })
    .await;
    assert!(text.contains("allkeys-lru"), "{text}");
    let _ = child.kill();
    let _ = child.wait();
}

fn used_memory(redis: &Redis) -> u64 {
    let info: String = redis::cmd("INFO")
        .arg("memory")
        .query(&mut redis.conn())
        .expect("info");
    info.lines()
        .find_map(|l| l.strip_prefix("used_memory:"))
        .and_then(|v| v.trim().parse().ok())
        .expect("used_memory")
}

fn set_maxmemory(redis: &Redis, bytes: u64) {
    let _: () = redis::cmd("CONFIG")
        .arg("SET")
        .arg("maxmemory")
        .arg(bytes)
        .query(&mut redis.conn())
        .expect("config set");
}

/// With `noeviction` (the default), a full Redis refuses writes. TTG must
/// turn that into a clear error, keep every result it has not stored yet,
/// and let a user cancel and delete runs to make room.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_full_redis_refuses_submits_clearly_and_loses_no_result() {
    let redis = Redis::start();
    let p = prefix();
    let keys = Keys::new(&p);
    let server = Server::start_with(server_config(&redis, &p)).await;
    let mut c = control(&server.url).await;
    let queued = c
        .submit(submit_req(20_000, 100, 0))
        .await
        .expect("submit")
        .into_inner();
    let doomed = c
        .submit(submit_req(1_000, 100, 0))
        .await
        .expect("submit")
        .into_inner();

    // Full: every write that adds data is refused.
    set_maxmemory(&redis, 1);
    let err = c
        .submit(submit_req(1_000, 100, 0))
        .await
        .expect_err("a full Redis takes no run");
    assert_eq!(err.code(), Code::ResourceExhausted, "{err:?}");
    assert!(err.message().contains("maxmemory"), "{}", err.message());

    // An agent computes but cannot store: nothing counted, nothing dropped.
    let agent = InProcAgent::start(&server.url, &redis.url, &p, 2);
    tokio::time::sleep(Duration::from_millis(1_500)).await;
    let st = status(&mut c, &queued.run_id).await;
    assert_eq!(st.progress.expect("progress").chunks_done, 0);
    // …and it stops claiming: what it holds stays bounded (2 × concurrency
    // + 64), the rest stays queued for agents that can finish it.
    let (pending, _) = queue_state(&redis, &p);
    assert!(
        pending <= 2 * 2 + 64,
        "{pending} chunks held by a stalled agent"
    );

    // Cancel and delete still work, so a user can make room.
    c.cancel(CancelRequest {
        run_id: doomed.run_id.clone(),
        reason: "make room".into(),
    })
    .await
    .expect("cancel on a full Redis");
    c.delete(DeleteRequest {
        run_id: doomed.run_id.clone(),
    })
    .await
    .expect("delete on a full Redis");

    // Room again: the stalled completions land, each chunk counted once.
    set_maxmemory(&redis, 0);
    let st = wait_finished(&mut c, &queued.run_id, Duration::from_secs(30)).await;
    assert_eq!(st.state, RunState::Succeeded as i32);
    let events = events_in_redis(&redis, &p, &queued.run_id);
    assert_exactly_once(&events, 20_000, 200);
    agent.stop().await;

    // Submit writes O(1) whatever the run's size (the scheduler hands
    // chunks out as agents claim them), so 100,000 chunks fit in 2 MB of
    // headroom: a Submit can no longer be half-queued.
    let tasks = keys.tasks("placeholder");
    assert_eq!(xlen(&redis, &tasks), 0);
    let before = used_memory(&redis);
    set_maxmemory(&redis, before + 2_000_000);
    let big = c
        .submit(submit_req(10_000_000, 100, 0))
        .await
        .expect("a 100,000-chunk run takes O(1) to queue")
        .into_inner();
    assert_eq!(big.chunks, 100_000);
    assert!(
        used_memory(&redis) < before + 100_000,
        "a run record, not its chunks"
    );
    assert_eq!(status(&mut c, &big.run_id).await.chunks_queued, 100_000);
    set_maxmemory(&redis, 0);
    server.stop().await;
}
