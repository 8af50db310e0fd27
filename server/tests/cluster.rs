//! TTG on a real Redis Cluster: 3 primaries with a replica each, all
//! `redis-server` processes on loopback. The server and the agents are real
//! processes started with `--redis-cluster`. Every key carries one hash tag,
//! so every script and MULTI touches one slot: a workload that runs every
//! script must finish with exact books (a CROSSSLOT would fail it), a chaos
//! run with agent kills counts every chunk once, and a primary SIGKILLed
//! mid-run is replaced by its replica while the run finishes exactly.
//! With `--redis-wait-replicas 1` the agents' completions wait for the
//! replica, and the server's Submit, Cancel, Retry and Delete too; Redis
//! counts those WAITs on the installation's primary, and a Submit whose
//! replica is stopped still succeeds after the wait's timeout. A cancel
//! on one server reaches agents of another through the cluster's pub/sub.
//! Runs spread over slot groups: `slot_groups.rs`.

mod common;

use std::time::{Duration, Instant};

use common::cluster::*;
use common::*;
use ttg_proto::v1::{CancelRequest, DeleteRequest, RetryRequest, RunState, StatusRequest};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_script_runs_in_one_slot_on_a_cluster() {
    // The agents also wait for a replica after each completion, and the
    // server after each Submit, Cancel, Retry and Delete (WAIT, at the node
    // holding the installation).
    let wait = ["--redis-wait-replicas", "1"];
    let mut inst = Install::start_full(3, &wait, &wait);
    let mut c = control(&inst.server.url).await;

    // A plain sweep: the exact sum.
    sweep_exactly_once(&mut c, 10_000, 100).await;

    // A run whose program is missing: its chunks fail alike, fail-fast
    // ends it after 3 and purges the rest; with the program in place a
    // Retry re-queues the dead and the purged and computes them all (fail,
    // retry, requeue, the agents' claim gate).
    let dir = tempfile::tempdir().expect("tmp");
    let program = dir.path().join("later.sh");
    let mut req = exec_req(10_000, 100, &program, &[], 1);
    req.fail_fast = Some(3);
    let failing = c.submit(req).await.expect("submit").into_inner();
    let st = wait_finished(&mut c, &failing.run_id, Duration::from_secs(60)).await;
    assert_eq!(st.state, RunState::Failed as i32);
    let p = st.progress.expect("progress");
    assert!(p.chunks_dead >= 3 && p.chunks_purged > 0, "{p:?}");
    assert_eq!(
        p.chunks_done + p.chunks_dead + p.chunks_purged,
        p.chunks_total,
        "{p:?}"
    );
    script(
        dir.path(),
        "later.sh",
        "#!/bin/sh\nawk '{ printf \"%s.5\\n\", $1 }'\n",
    );
    let r = c
        .retry(RetryRequest {
            run_id: failing.run_id.clone(),
        })
        .await
        .expect("retry")
        .into_inner();
    assert_eq!(r.chunks_requeued, p.chunks_dead + p.chunks_purged);
    let st = wait_finished(&mut c, &failing.run_id, Duration::from_secs(60)).await;
    assert_eq!(st.state, RunState::Succeeded as i32);
    assert_eq!(st.aggregate.expect("aggregate").sum, 49_995_000.0 + 5_000.0);

    // An agent killed while no server is up: once a server is back, its
    // reaper finds the lease expired with no session and reclaims its
    // chunks; each is counted once.
    let run = submit_until_done(&mut c, submit_req(2_000, 20, 5), 10).await;
    inst.server.kill();
    inst.agents[0].signal("KILL");
    inst.server.spawn();
    c = control(&inst.server.url).await;
    let (_, events) = run_end(&mut c, &run.run_id).await;
    assert_exactly_once(&events, 2_000, 100);
    assert!(!reclaims(&events).is_empty(), "the kill cost reclaims");

    // Cancel a long run, then delete it (cancel, purge, the tasks' purge).
    // Cancelled with chunks in flight and the agents frozen, so the run's
    // task entries are still in the stream when the server, after the
    // cancel, looks for them to purge (awake, the agents may ack them
    // first).
    let long = submit_until_done(&mut c, submit_req(100_000, 100, 5), 1).await;
    for a in &inst.agents {
        a.signal("STOP");
    }
    c.cancel(CancelRequest {
        run_id: long.run_id.clone(),
        ..Default::default()
    })
    .await
    .expect("cancel");
    let st = wait_finished(&mut c, &long.run_id, Duration::from_secs(30)).await;
    assert_eq!(st.state, RunState::Cancelled as i32);
    let purge = ttg_proto::scripts::hashes()
        .into_iter()
        .find(|(name, _)| *name == "purge_tasks")
        .map(|(_, sha)| sha)
        .expect("purge_tasks");
    let primary = inst
        .cluster
        .primary_of(&inst.tagged_key())
        .expect("primary");
    wait_until(
        "the cancelled run's tasks purged",
        Duration::from_secs(10),
        || {
            let ran = inst.cluster.nodes[primary]
                .try_query::<Vec<i64>>(&["SCRIPT", "EXISTS", &purge])
                == Some(vec![1]);
            async move { ran.then_some(()) }
        },
    )
    .await;
    for a in &inst.agents {
        a.signal("CONT");
    }
    c.delete(DeleteRequest {
        run_id: long.run_id.clone(),
    })
    .await
    .expect("delete");
    let gone = c
        .status(StatusRequest {
            run_id: long.run_id.clone(),
        })
        .await;
    assert!(gone.is_err(), "a deleted run is gone");

    // Every completion waited for the replica on the installation's
    // primary (a WAIT elsewhere would not cover its writes).
    let primary = inst
        .cluster
        .primary_of(&inst.tagged_key())
        .expect("primary");
    let stats: String = inst.cluster.nodes[primary]
        .try_query(&["INFO", "commandstats"])
        .expect("info");
    let waits: u64 = stats
        .lines()
        .find_map(|l| l.strip_prefix("cmdstat_wait:calls="))
        .and_then(|l| l.split(',').next())
        .and_then(|n| n.parse().ok())
        .unwrap_or(0);
    assert!(waits >= 10, "{waits} WAITs on the installation's primary");

    // Every script ran on the primary of the installation's slot.
    let primary = inst
        .cluster
        .primary_of(&inst.tagged_key())
        .expect("primary");
    let node = &inst.cluster.nodes[primary];
    let mut missing = Vec::new();
    for (name, sha) in ttg_proto::scripts::hashes() {
        let exists: Vec<i64> = node
            .try_query(&["SCRIPT", "EXISTS", &sha])
            .expect("script exists");
        if exists != [1] {
            missing.push(name);
        }
    }
    assert!(
        missing.is_empty(),
        "scripts that never ran on the cluster: {missing:?}"
    );
    // Nothing of the installation lives outside its slot.
    let slot: i64 = node
        .try_query(&["CLUSTER", "KEYSLOT", &inst.tagged_key()])
        .expect("slot");
    for (i, n) in inst.cluster.nodes.iter().enumerate() {
        let keys: Vec<String> = n
            .try_query(&["KEYS", &format!("*{}*", inst.prefix.trim_end_matches(':'))])
            .unwrap_or_default();
        for k in keys {
            let s: i64 = n.try_query(&["CLUSTER", "KEYSLOT", &k]).expect("keyslot");
            assert_eq!(s, slot, "node {i}: key {k} outside the installation's slot");
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn chaos_on_a_cluster_counts_every_chunk_once() {
    let mut inst = Install::start(4);
    let mut c = control(&inst.server.url).await;
    // 200 chunks × 200 ms over 4 agents × 2 slots: ~5 s clean.
    let mut req = submit_req(20_000, 100, 2);
    req.max_attempts = Some(ttg_server::store::MAX_ATTEMPTS);
    let run = c.submit(req).await.expect("submit").into_inner();
    let deadline = Instant::now() + Duration::from_secs(120);
    let (mut kills, mut server_restarted) = (0, false);
    let mut pick = 7usize;
    loop {
        assert!(
            Instant::now() < deadline,
            "chaos run did not finish in 120 s"
        );
        tokio::time::sleep(Duration::from_millis(600)).await;
        if let Some(st) = try_status(&mut c, &run.run_id).await {
            if st.state != RunState::Running as i32 && st.state != RunState::Queued as i32 {
                break;
            }
        }
        pick = (pick * 31 + 17) % 97;
        let victim = pick % inst.agents.len();
        inst.agents[victim].signal("KILL");
        inst.agents[victim] = inst.agent();
        kills += 1;
        if kills == 3 && !server_restarted {
            inst.server.kill();
            inst.server.spawn();
            c = control(&inst.server.url).await;
            server_restarted = true;
        }
    }
    assert!(
        kills >= 3 && server_restarted,
        "the chaos happened ({kills} kills)"
    );
    let (rc, events) = run_end(&mut c, &run.run_id).await;
    assert_eq!(rc.state, RunState::Succeeded as i32);
    assert_exactly_once(&events, 20_000, 200);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_primary_killed_mid_run_fails_over_and_the_run_stays_exact() {
    let mut inst = Install::start(3);
    let mut c = control(&inst.server.url).await;
    // 200 chunks × 200 ms over 3 agents × 2 slots: ~7 s clean.
    // At 30 %: 60 chunks done.
    let run = submit_until_done(&mut c, submit_req(20_000, 100, 2), 60).await;
    let key = inst.tagged_key();
    let primary = inst.cluster.primary_of(&key).expect("primary");
    let killed_at = Instant::now();
    inst.cluster.kill(primary);
    let promoted = inst
        .cluster
        .wait_failover(primary, &key, Duration::from_secs(30));
    for (i, n) in inst.cluster.nodes.iter().enumerate() {
        let role: Option<Vec<redis::Value>> = n.try_query(&["ROLE"]);
        let size: Option<i64> = n.try_query(&["DBSIZE"]);
        eprintln!(
            "node {i} port {}: {:?} dbsize {size:?}",
            n.port,
            role.and_then(|r| r.first().cloned())
        );
    }
    let (rc, events) = run_end(&mut c, &run.run_id).await;
    eprintln!(
        "failover: replica promoted {:.2} s after the kill; the run ended {:.2} s after it",
        promoted.as_secs_f64(),
        killed_at.elapsed().as_secs_f64()
    );
    assert_eq!(rc.state, RunState::Succeeded as i32);
    assert_exactly_once(&events, 20_000, 200);
    // The promoted primary serves the installation: a new run works too.
    sweep_exactly_once(&mut c, 1_000, 100).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cancel_on_one_server_reaches_agents_of_another_through_cluster_pub_sub() {
    let inst = Install::start(0);
    let seeds = inst.cluster.seeds();
    let b = ServerProc::start(NO_NODE, &inst.prefix, &server_flags(&seeds));
    // The agent's session is on B; the cancel goes to A.
    let _agent = Agent::spawn(
        &b.url,
        NO_NODE,
        &inst.prefix,
        "long",
        2,
        &["--redis-cluster", &seeds],
    );
    let mut ca = control(&inst.server.url).await;
    let cb = control(&b.url).await;
    // Chunks of 10 × 1 s: each would compute for 10 s.
    let run = ca
        .submit(submit_req(100, 10, 1_000))
        .await
        .expect("submit")
        .into_inner();
    let held = |a: &[ttg_proto::v1::AgentInfo]| {
        a.iter()
            .find(|x| x.agent_id == "long")
            .map(|x| x.held.len())
    };
    wait_agents(
        &cb,
        "the agent holds chunks",
        Duration::from_secs(15),
        |a| held(a).filter(|n| *n > 0),
    )
    .await;
    let t = Instant::now();
    ca.cancel(CancelRequest {
        run_id: run.run_id.clone(),
        reason: "stop".into(),
    })
    .await
    .expect("cancel");
    wait_agents(
        &cb,
        "in-flight chunks aborted",
        Duration::from_secs(5),
        |a| held(a).filter(|n| *n == 0),
    )
    .await;
    assert!(
        t.elapsed() < Duration::from_secs(3),
        "aborted after {:?}, not after the 10 s chunks",
        t.elapsed()
    );
    let st = try_status(&mut ca, &run.run_id).await.expect("status");
    assert_eq!(st.state, RunState::Cancelled as i32);
    assert_eq!(
        st.progress.expect("progress").chunks_done,
        0,
        "nothing finished, nothing counted"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn server_writes_wait_for_a_replica_and_a_short_wait_still_succeeds() {
    let metrics: std::net::SocketAddr = format!("127.0.0.1:{}", free_port()).parse().unwrap();
    let m = metrics.to_string();
    let inst = Install::start_full(
        0,
        &[],
        &[
            "--redis-wait-replicas",
            "1",
            "--redis-wait-timeout",
            "300ms",
            "--metrics-addr",
            &m,
        ],
    );
    let mut c = control(&inst.server.url).await;
    let primary = inst
        .cluster
        .primary_of(&inst.tagged_key())
        .expect("primary");
    let waits = || -> u64 {
        let stats: String = inst.cluster.nodes[primary]
            .try_query(&["INFO", "commandstats"])
            .expect("INFO");
        stats
            .lines()
            .find_map(|l| l.strip_prefix("cmdstat_wait:calls="))
            .and_then(|v| v.split(',').next()?.parse().ok())
            .unwrap_or(0)
    };
    // No agents: a run stays queued. Submit, Cancel and Delete each wait
    // once, at the installation's primary.
    let before = waits();
    let run = c
        .submit(submit_req(1_000, 10, 0))
        .await
        .expect("submit")
        .into_inner();
    c.cancel(CancelRequest {
        run_id: run.run_id.clone(),
        reason: String::new(),
    })
    .await
    .expect("cancel");
    c.delete(DeleteRequest {
        run_id: run.run_id.clone(),
    })
    .await
    .expect("delete");
    assert_eq!(waits() - before, 3, "one WAIT per write request");
    let text = common::scrape::scrape(metrics).await;
    assert_eq!(
        common::scrape::sample(&text, "ttg_server_writes_unreplicated_total"),
        None,
        "every write reached the replica"
    );

    // The replica stops acknowledging: a Submit waits --redis-wait-timeout,
    // then succeeds (its write stands on the primary) and is counted.
    let replica = inst.cluster.replica_of(primary).expect("replica");
    inst.cluster.pause(replica);
    let t = Instant::now();
    let r = c.submit(submit_req(1_000, 10, 0)).await;
    let took = t.elapsed();
    inst.cluster.resume(replica);
    let run = r
        .expect("a submit whose replica is stopped still succeeds")
        .into_inner();
    assert!(
        took >= Duration::from_millis(300) && took < Duration::from_secs(3),
        "waited {took:?}"
    );
    assert_eq!(status(&mut c, &run.run_id).await.state(), RunState::Queued);
    let text = common::scrape::scrape(metrics).await;
    assert_eq!(
        common::scrape::sample(&text, "ttg_server_writes_unreplicated_total"),
        Some(1.0),
        "{text}"
    );
}

/// With every node of the cluster gone, the redis crate's reconnect
/// reports (~70 lines a second from one idle server before) reach the log
/// in one burst per target and level every 30 s; the server's own lines say
/// what is wrong.
#[test]
fn a_cluster_down_does_not_flood_the_log() {
    use std::io::{BufRead, BufReader};
    let mut cluster = RedisCluster::start(3, 1);
    let mut server = std::process::Command::new(common::bin("ttg-server"))
        .args(["--listen", &format!("127.0.0.1:{}", free_port())])
        .args(["--insecure-no-auth", "--log-format", "json"])
        .args(["--janitor-interval", "500ms"])
        .env("TTG_REDIS_CLUSTER", cluster.seeds())
        .env("RUST_LOG", "info")
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("ttg-server");
    let lines = std::sync::Arc::new(std::sync::Mutex::new(Vec::<String>::new()));
    let err = server.stderr.take().expect("stderr");
    let sink = lines.clone();
    std::thread::spawn(move || {
        for l in BufReader::new(err).lines().map_while(Result::ok) {
            sink.lock().unwrap().push(l);
        }
    });
    std::thread::sleep(Duration::from_secs(1));
    for i in 0..cluster.nodes.len() {
        cluster.kill(i);
    }
    std::thread::sleep(Duration::from_secs(5));
    let _ = server.kill();
    let _ = server.wait();
    let lines = lines.lock().unwrap().clone();
    let from_redis = lines
        .iter()
        .filter(|l| l.contains("\"target\":\"redis::"))
        .count();
    assert!(
        (1..=40).contains(&from_redis),
        "{from_redis} lines from the redis crate in 5 s:\n{}",
        lines.join("\n")
    );
    assert!(
        lines
            .iter()
            .any(|l| l.contains("janitor: expiring runs failed")),
        "the server says what fails:\n{}",
        lines.join("\n")
    );
}

#[test]
fn bad_cluster_settings_are_refused_by_name_without_secrets() {
    // Exit 64 with `says` on stderr; returns stderr.
    let refused = |bin: &str, args: &[&str], says: &str| {
        let out = std::process::Command::new(common::bin(bin))
            .args(args)
            .output()
            .expect("run");
        let err = String::from_utf8_lossy(&out.stderr).to_string();
        assert_eq!(out.status.code(), Some(64), "{err}");
        assert!(err.contains(says), "{bin} {args:?}: {err}");
        err
    };
    let err = refused(
        "ttg-server",
        &[
            "--redis-cluster",
            "redis://u:secret@127.0.0.1:1,ftp://u:secret@h:1",
            "--insecure-no-auth",
        ],
        "--redis-cluster: ftp://u:***@h:1 is not a redis:// or rediss:// URL",
    );
    assert!(!err.contains("secret"), "{err}");
    refused(
        "ttg-agent",
        &["--redis-cluster", ","],
        "--redis-cluster takes 1..=64 comma-separated",
    );
    refused(
        "ttg-agent",
        &["--redis-wait-replicas", "17"],
        "--redis-wait-replicas must be in 0..=16, got 17",
    );
    refused(
        "ttg-server",
        &[
            "--insecure-no-auth",
            "--redis-wait-replicas",
            "1",
            "--redis-wait-timeout",
            "5s",
        ],
        "--redis-wait-timeout (5s) must be shorter than --redis-timeout (5s)",
    );
    refused(
        "ttg-server",
        &[
            "--redis-cluster",
            "redis://127.0.0.1:1",
            "--prefix",
            "a{b:",
            "--insecure-no-auth",
        ],
        "must hold a whole hash tag",
    );
}
