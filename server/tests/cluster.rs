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

mod common;

use std::time::{Duration, Instant};

use common::cluster::RedisCluster;
use common::*;
use ttg_proto::v1::{
    CancelRequest, DeleteRequest, RetryRequest, RunState, RunStatus, StatusRequest,
};

/// Unused: with --redis-cluster the processes never read --redis-url.
const NO_NODE: &str = "redis://127.0.0.1:1";

/// A server's flags on the cluster at `seeds`: short leases, so a lost
/// agent is noticed within a test's patience.
fn server_flags(seeds: &str) -> [&str; 6] {
    [
        "--redis-cluster",
        seeds,
        "--lease",
        "1s",
        "--heartbeat-interval",
        "250ms",
    ]
}

/// Fields drop in order: the agents and the server go before the cluster.
struct Install {
    agents: Vec<Agent>,
    server: ServerProc,
    cluster: RedisCluster,
    prefix: String,
    next: usize,
    agent_flags: Vec<String>,
}

impl Install {
    fn start(agents: usize) -> Install {
        Self::start_with(agents, &[])
    }

    /// With extra flags for every agent.
    fn start_with(agents: usize, agent_flags: &[&str]) -> Install {
        Self::start_full(agents, agent_flags, &[])
    }

    /// With extra flags for every agent and for the server.
    fn start_full(agents: usize, agent_flags: &[&str], server_flags_extra: &[&str]) -> Install {
        let cluster = RedisCluster::start(3, 1);
        let prefix = prefix();
        let seeds = cluster.seeds();
        let mut flags = server_flags(&seeds).to_vec();
        flags.extend_from_slice(server_flags_extra);
        let server = ServerProc::start(NO_NODE, &prefix, &flags);
        let mut i = Install {
            cluster,
            prefix,
            server,
            agents: Vec::new(),
            next: 0,
            agent_flags: agent_flags.iter().map(|f| f.to_string()).collect(),
        };
        for _ in 0..agents {
            let a = i.agent();
            i.agents.push(a);
        }
        i
    }

    fn agent(&mut self) -> Agent {
        self.next += 1;
        let seeds = self.cluster.seeds();
        let mut flags = vec!["--redis-cluster", &seeds, "--allow-exec"];
        flags.extend(self.agent_flags.iter().map(String::as_str));
        Agent::spawn(
            &self.server.url,
            NO_NODE,
            &self.prefix,
            &format!("k{}", self.next),
            2,
            &flags,
        )
    }

    /// A key of this installation (all share its hash tag).
    fn tagged_key(&self) -> String {
        format!("{{{}}}:runs", self.prefix.trim_end_matches(':'))
    }
}

/// Status, or None while the server cannot answer (Redis failing over).
async fn try_status(
    c: &mut ttg_proto::v1::control_plane_client::ControlPlaneClient<tonic::transport::Channel>,
    id: &str,
) -> Option<RunStatus> {
    c.status(StatusRequest { run_id: id.into() })
        .await
        .ok()
        .map(|r| r.into_inner())
}

/// A no-work sweep of `params` in chunks of `chunk`, to its end: every
/// chunk counted once, the exact sum.
async fn sweep_exactly_once(
    c: &mut ttg_proto::v1::control_plane_client::ControlPlaneClient<tonic::transport::Channel>,
    params: u64,
    chunk: u64,
) {
    let run = c
        .submit(submit_req(params, chunk, 0))
        .await
        .expect("submit")
        .into_inner();
    let (_, events) = run_end(c, &run.run_id).await;
    assert_exactly_once(&events, params, params.div_ceil(chunk));
}

/// Submit `req` and wait until `done` of its chunks are done.
async fn submit_until_done(
    c: &mut ttg_proto::v1::control_plane_client::ControlPlaneClient<tonic::transport::Channel>,
    req: ttg_proto::v1::SubmitRequest,
    done: u64,
) -> ttg_proto::v1::SubmitResponse {
    let run = c.submit(req).await.expect("submit").into_inner();
    wait_until(&format!("{done} chunks done"), Duration::from_secs(60), || {
        let mut c = c.clone();
        let id = run.run_id.clone();
        async move { (try_status(&mut c, &id).await?.progress?.chunks_done >= done).then_some(()) }
    })
    .await;
    run
}

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

/// Script calls (EVALSHA) node `i` has served.
fn evalsha_calls(cluster: &RedisCluster, i: usize) -> u64 {
    let stats: String = cluster.nodes[i]
        .try_query(&["INFO", "commandstats"])
        .unwrap_or_default();
    stats
        .lines()
        .find_map(|l| l.strip_prefix("cmdstat_evalsha:calls="))
        .and_then(|v| v.split(',').next()?.parse().ok())
        .unwrap_or(0)
}

/// `--slot-groups 3`: six runs go two to each group, the groups live on
/// the three primaries and each primary runs their scripts; the primary
/// of one group is SIGKILLed mid-way, an agent too and the server is
/// restarted, and every run still counts every chunk once. A server asking
/// for another number of groups is refused.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn slot_groups_spread_runs_over_the_primaries_and_survive_a_failover() {
    let mut inst = Install::start_full(3, &[], &["--slot-groups", "3"]);
    let mut c = control(&inst.server.url).await;
    let tagged = format!("{{{}}}:", inst.prefix.trim_end_matches(':'));
    let layout = ttg_proto::keys::Layout::new(&tagged, 3);
    let primaries: Vec<usize> = layout
        .groups()
        .iter()
        .map(|k| inst.cluster.primary_of(&k.runs()).expect("primary"))
        .collect();
    let distinct: std::collections::HashSet<_> = primaries.iter().collect();
    assert_eq!(distinct.len(), 3, "one group per primary: {primaries:?}");

    // 6 runs × 40 chunks of 100 ms over 3 agents × 2 slots: ~4 s clean.
    let mut runs = Vec::new();
    for _ in 0..6 {
        let r = c
            .submit(submit_req(4_000, 100, 1))
            .await
            .expect("submit")
            .into_inner();
        runs.push(r.run_id);
    }
    let mut per_group = [0; 3];
    for id in &runs {
        per_group[ttg_proto::keys::run_group(id) as usize] += 1;
    }
    assert_eq!(per_group, [2, 2, 2], "placed by load: {runs:?}");
    // Every primary works.
    wait_until("every primary ran scripts", Duration::from_secs(30), || {
        let ok = primaries
            .iter()
            .all(|&p| evalsha_calls(&inst.cluster, p) >= 5);
        async move { ok.then_some(()) }
    })
    .await;
    let victim_run = runs
        .iter()
        .find(|id| ttg_proto::keys::run_group(id) == 1)
        .expect("a run of group 1")
        .clone();
    wait_until("a third of group 1's run", Duration::from_secs(60), || {
        let mut c = c.clone();
        let id = victim_run.clone();
        async move { (try_status(&mut c, &id).await?.progress?.chunks_done >= 13).then_some(()) }
    })
    .await;
    inst.agents[0].signal("KILL");
    inst.agents[0] = inst.agent();
    let key = layout.groups()[1].runs();
    inst.cluster.kill(primaries[1]);
    inst.cluster
        .wait_failover(primaries[1], &key, Duration::from_secs(30));
    inst.server.kill();
    inst.server.spawn();
    c = control(&inst.server.url).await;
    for id in &runs {
        let (rc, events) = run_end(&mut c, id).await;
        assert_eq!(rc.state, RunState::Succeeded as i32, "{id}");
        assert_exactly_once(&events, 4_000, 40);
    }
    // Listing merges the groups, newest first.
    let listed = c
        .list_runs(ttg_proto::v1::ListRunsRequest {
            limit: 100,
            ..Default::default()
        })
        .await
        .expect("list")
        .into_inner();
    let ids: Vec<&str> = listed
        .runs
        .iter()
        .filter_map(|r| Some(r.spec.as_ref()?.run_id.as_str()))
        .collect();
    let mut want: Vec<&str> = runs.iter().map(String::as_str).collect();
    want.sort_by(|a, b| b.cmp(a));
    assert_eq!(ids, want, "every run, newest first");
    sweep_exactly_once(&mut c, 1_000, 100).await;

    // The number of groups is fixed: another is refused by name.
    let seeds = inst.cluster.seeds();
    let mut flags = server_flags(&seeds).to_vec();
    flags.extend(["--slot-groups", "4", "--insecure-no-auth"]);
    let out = std::process::Command::new(common::bin("ttg-server"))
        .args(["--listen", &format!("127.0.0.1:{}", free_port())])
        .args(["--prefix", &inst.prefix])
        .args(&flags)
        .output()
        .expect("ttg-server");
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{err}");
    assert!(
        err.contains("--slot-groups 4: this installation has 3"),
        "{err}"
    );
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
