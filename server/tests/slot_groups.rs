//! Runs spread over slot groups (`ttg-server --slot-groups N`) on a real
//! Redis Cluster of 3 primaries with a replica each: the groups sit on the
//! three primaries, runs are placed by load, every primary works, and a
//! primary lost mid-way (with an agent killed and the server restarted)
//! leaves every run exact. The one-group layout is `cluster.rs`'s.

mod common;

use std::time::Duration;

use common::cluster::*;
use common::*;
use ttg_proto::v1::RunState;

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
