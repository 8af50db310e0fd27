//! Kernels with real processes: the exec kernel running users' programs
//! (exact results, failures with their stderr, timeouts, cancel killing the
//! process group, the --allow-exec gate and allow-list), per-kernel routing,
//! the collatz kernel against a direct computation, and `ttgctl kernels`.

mod common;

use std::path::Path;
use std::time::{Duration, Instant};

use common::*;
use ttg_proto::v1::{event, CancelRequest, GetResultsRequest, ListKernelsRequest, RunState};

const SQUARE: &str = "#!/usr/bin/env python3\nimport sys\nfor line in sys.stdin:\n    p = int(line)\n    print(p * p)\n";

async fn final_event(
    c: &mut ttg_proto::v1::control_plane_client::ControlPlaneClient<tonic::transport::Channel>,
    run: &str,
) -> ttg_proto::v1::RunCompleted {
    run_end(c, run).await.0
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn exec_runs_a_users_program_and_the_sum_is_exact() {
    let dir = tempfile::tempdir().expect("tmp");
    let square = script(dir.path(), "square.py", SQUARE);
    let redis = Redis::start();
    let p = prefix();
    let server = Server::start(&redis.url, &p).await;
    let _a = Agent::spawn(&server.url, &redis.url, &p, "e1", 2, &["--allow-exec"]);
    let _b = Agent::spawn(&server.url, &redis.url, &p, "e2", 2, &["--allow-exec"]);
    let mut c = control(&server.url).await;
    let run = c
        .submit(exec_req(
            10_000,
            500,
            &square,
            &[("args", "--unused 'a b'")],
            3,
        ))
        .await
        .expect("submit")
        .into_inner();
    let rc = final_event(&mut c, &run.run_id).await;
    assert_eq!(rc.state, RunState::Succeeded as i32);
    let a = rc.aggregate.expect("agg");
    // Σ p² for p < 10,000 = (n-1) n (2n-1) / 6: exact in f64.
    assert_eq!(a.sum, 333_283_335_000.0);
    assert_eq!((a.count, a.min, a.max), (10_000, 0.0, 9_999.0 * 9_999.0));
    // Values come back in parameter order.
    let mut s = c
        .get_results(GetResultsRequest {
            run_id: run.run_id.clone(),
        })
        .await
        .expect("results")
        .into_inner();
    while let Some(chunk) = s.message().await.expect("chunk") {
        for (i, v) in chunk.values.iter().enumerate() {
            let p = chunk.start + i as u64;
            assert_eq!(*v, (p * p) as f64);
        }
    }
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failing_program_uses_its_attempts_then_is_dead_lettered_with_its_stderr() {
    let dir = tempfile::tempdir().expect("tmp");
    let fail = script(
        dir.path(),
        "fail.sh",
        "#!/bin/sh\necho \"boom: cannot read chunk $TTG_CHUNK_INDEX\" >&2\nexit 3\n",
    );
    let short = script(
        dir.path(),
        "short.sh",
        "#!/bin/sh\ncat >/dev/null\necho 1\n",
    );
    let redis = Redis::start();
    let p = prefix();
    let server = Server::start(&redis.url, &p).await;
    let _a = Agent::spawn(&server.url, &redis.url, &p, "f1", 2, &["--allow-exec"]);
    let mut c = control(&server.url).await;
    let run = c
        .submit(exec_req(20, 10, &fail, &[], 2))
        .await
        .expect("submit")
        .into_inner();
    let rc = final_event(&mut c, &run.run_id).await;
    assert_eq!(rc.state, RunState::Failed as i32);
    let events = watch_all(&mut c, &run.run_id, "").await;
    let failures: Vec<_> = events
        .iter()
        .filter_map(|e| match &e.kind {
            Some(event::Kind::ChunkFailed(f)) => Some(f.clone()),
            _ => None,
        })
        .collect();
    assert_eq!(failures.len(), 4, "2 chunks × 2 attempts");
    assert_eq!(failures.iter().filter(|f| f.dead).count(), 2);
    let st = status(&mut c, &run.run_id).await;
    assert_eq!(st.dead_chunks.len(), 2);
    for d in &st.dead_chunks {
        assert_eq!(d.attempt, 2);
        assert!(
            d.error.contains("exited with exit status: 3"),
            "{}",
            d.error
        );
        assert!(
            d.error
                .contains(&format!("boom: cannot read chunk {}", d.chunk_index)),
            "{}",
            d.error
        );
    }
    // Short output fails the attempt too, naming the shortfall.
    let run = c
        .submit(exec_req(5, 5, &short, &[], 1))
        .await
        .expect("submit")
        .into_inner();
    final_event(&mut c, &run.run_id).await;
    let st = status(&mut c, &run.run_id).await;
    assert!(
        st.dead_chunks[0]
            .error
            .contains("short output: 1 values on stdout, 5 expected"),
        "{:?}",
        st.dead_chunks
    );
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_hanging_program_is_killed_at_its_timeout() {
    let dir = tempfile::tempdir().expect("tmp");
    let hang = script(dir.path(), "hang.sh", "#!/bin/sh\nsleep 30\n");
    let redis = Redis::start();
    let p = prefix();
    let server = Server::start(&redis.url, &p).await;
    let _a = Agent::spawn(&server.url, &redis.url, &p, "h1", 1, &["--allow-exec"]);
    let mut c = control(&server.url).await;
    let t = Instant::now();
    let run = c
        .submit(exec_req(3, 3, &hang, &[("timeout_s", "0.5")], 1))
        .await
        .expect("submit")
        .into_inner();
    let rc = final_event(&mut c, &run.run_id).await;
    assert_eq!(rc.state, RunState::Failed as i32);
    assert!(
        t.elapsed() < Duration::from_secs(10),
        "took {:?}",
        t.elapsed()
    );
    let st = status(&mut c, &run.run_id).await;
    assert!(
        st.dead_chunks[0].error.contains("timed out after 0.500 s"),
        "{:?}",
        st.dead_chunks
    );
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cancel_kills_the_programs_whole_process_group() {
    let dir = tempfile::tempdir().expect("tmp");
    let pids = dir.path().join("pids");
    std::fs::create_dir(&pids).expect("mkdir");
    // The program starts a grandchild and waits: both must die on cancel.
    let body = format!(
        "#!/bin/sh\nsleep 1000 &\necho $! > {d}/child-$TTG_CHUNK_INDEX\necho $$ > {d}/main-$TTG_CHUNK_INDEX\nwait\n",
        d = pids.display()
    );
    let prog = script(dir.path(), "spawner.sh", &body);
    let redis = Redis::start();
    let p = prefix();
    let server = Server::start(&redis.url, &p).await;
    let _a = Agent::spawn(&server.url, &redis.url, &p, "g1", 2, &["--allow-exec"]);
    let mut c = control(&server.url).await;
    let run = c
        .submit(exec_req(4, 2, &prog, &[], 1))
        .await
        .expect("submit")
        .into_inner();
    let found: Vec<u32> = wait_until(
        "both programs started their children",
        Duration::from_secs(15),
        || {
            let pids = pids.clone();
            async move {
                let v: Vec<u32> = std::fs::read_dir(&pids)
                    .ok()?
                    .filter_map(|e| {
                        std::fs::read_to_string(e.ok()?.path())
                            .ok()?
                            .trim()
                            .parse()
                            .ok()
                    })
                    .collect();
                (v.len() == 4).then_some(v)
            }
        },
    )
    .await;
    assert!(found.iter().all(|p| alive(*p)));
    c.cancel(CancelRequest {
        run_id: run.run_id.clone(),
        reason: "test".into(),
    })
    .await
    .expect("cancel");
    wait_until(
        "every process of the groups is gone",
        Duration::from_secs(5),
        || {
            let any = found.iter().any(|p| alive(*p));
            async move { (!any).then_some(()) }
        },
    )
    .await;
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn exec_chunks_only_reach_agents_that_allow_exec() {
    let dir = tempfile::tempdir().expect("tmp");
    let square = script(dir.path(), "square.py", SQUARE);
    let redis = Redis::start();
    let p = prefix();
    let server = Server::start(&redis.url, &p).await;
    // A default agent: it offers placeholder and collatz, never exec.
    let _plain = Agent::spawn(&server.url, &redis.url, &p, "plain", 2, &[]);
    let mut c = control(&server.url).await;
    wait_until("agent up", Duration::from_secs(10), || {
        let mut c = c.clone();
        async move {
            (!c.list_agents(ttg_proto::v1::ListAgentsRequest {})
                .await
                .ok()?
                .into_inner()
                .agents
                .is_empty())
            .then_some(())
        }
    })
    .await;
    let exec_run = c
        .submit(exec_req(100, 10, &square, &[], 3))
        .await
        .expect("submit")
        .into_inner();
    let other = c
        .submit(submit_req(1_000, 100, 0))
        .await
        .expect("submit")
        .into_inner();
    let st = wait_finished(&mut c, &other.run_id, Duration::from_secs(20)).await;
    assert_eq!(
        st.state,
        RunState::Succeeded as i32,
        "the plain agent works meanwhile: {:?}",
        st.dead_chunks
    );
    let st = status(&mut c, &exec_run.run_id).await;
    assert_eq!(st.state, RunState::Queued as i32, "{st:?}");
    assert_eq!(st.message, "waiting for an agent offering exec");
    assert_eq!(pending_of(&redis, &p, "plain"), 0);
    // An agent that allows exec: the waiting run completes.
    let mut open = Agent::spawn(&server.url, &redis.url, &p, "open", 2, &["--allow-exec"]);
    let rc = final_event(&mut c, &exec_run.run_id).await;
    assert_eq!(rc.state, RunState::Succeeded as i32);
    assert_eq!(
        rc.aggregate.expect("agg").sum,
        (0..100u64).map(|p| (p * p) as f64).sum::<f64>()
    );
    open.signal("TERM");
    assert_eq!(open.wait(Duration::from_secs(10)), Some(0));
    // One that allows exec only from another folder takes the chunks and
    // fails them, naming its allow-list.
    let elsewhere = tempfile::tempdir().expect("tmp");
    let allow = format!("--exec-allow={}", elsewhere.path().display());
    let _strict = Agent::spawn(
        &server.url,
        &redis.url,
        &p,
        "strict",
        1,
        &["--allow-exec", &allow],
    );
    let run = c
        .submit(exec_req(10, 10, &square, &[], 1))
        .await
        .expect("submit")
        .into_inner();
    let rc = final_event(&mut c, &run.run_id).await;
    assert_eq!(rc.state, RunState::Failed as i32);
    let st = status(&mut c, &run.run_id).await;
    assert!(
        st.dead_chunks[0]
            .error
            .contains("not in this agent's --exec-allow list"),
        "{:?}",
        st.dead_chunks
    );

    // ttgctl kernels names them, with their arguments.
    let out = ttgctl_cmd()
        .args(["--server", &server.url, "kernels"])
        .output()
        .expect("kernels");
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        text.contains("exec  (1 agents)") && text.contains("placeholder  (2 agents)"),
        "{text}"
    );
    assert!(
        text.contains("--arg program=…   text, at most 4096 bytes, required"),
        "{text}"
    );
    assert!(
        text.contains("--arg timeout_s=…   number in 0.001..=86400, default 600"),
        "{text}"
    );
    let k = c
        .list_kernels(ListKernelsRequest {})
        .await
        .expect("list")
        .into_inner()
        .kernels;
    let names: Vec<_> = k
        .iter()
        .filter_map(|k| k.decl.as_ref().map(|d| d.name.as_str()))
        .collect();
    assert_eq!(names, vec!["collatz", "exec", "placeholder"]);
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn collatz_matches_a_direct_computation() {
    let redis = Redis::start();
    let p = prefix();
    let server = Server::start(&redis.url, &p).await;
    let _a = Agent::spawn(&server.url, &redis.url, &p, "c1", 2, &[]);
    let mut c = control(&server.url).await;
    let mut req = submit_req(100_000, 5_000, 0);
    req.kernel = "collatz".into();
    req.args.clear();
    let run = c.submit(req).await.expect("submit").into_inner();
    let rc = final_event(&mut c, &run.run_id).await;
    assert_eq!(rc.state, RunState::Succeeded as i32);
    // Independent of the agent's code: the textbook definition, here.
    let steps = |mut n: u64| {
        let mut s = 0u64;
        while n > 1 {
            n = if n.is_multiple_of(2) {
                n / 2
            } else {
                3 * n + 1
            };
            s += 1;
        }
        s
    };
    let direct: Vec<u64> = (0..100_000).map(steps).collect();
    let a = rc.aggregate.expect("agg");
    assert_eq!(a.sum, direct.iter().sum::<u64>() as f64);
    assert_eq!(a.max, *direct.iter().max().expect("max") as f64);
    let mut s = c
        .get_results(GetResultsRequest {
            run_id: run.run_id.clone(),
        })
        .await
        .expect("results")
        .into_inner();
    let mut n = 0;
    while let Some(chunk) = s.message().await.expect("chunk") {
        for (i, v) in chunk.values.iter().enumerate() {
            assert_eq!(*v, direct[(chunk.start + i as u64) as usize] as f64);
            n += 1;
        }
    }
    assert_eq!(n, 100_000);
    // exec without a program is refused at Submit, naming the argument.
    let mut bad = exec_req(10, 10, Path::new("/bin/true"), &[], 1);
    bad.args.remove("program");
    let e = c.submit(bad).await.expect_err("no program");
    assert_eq!(e.code(), tonic::Code::InvalidArgument);
    assert!(
        e.message()
            .starts_with("args.program: required by kernel exec"),
        "{}",
        e.message()
    );
    // An exec mode that does not exist, likewise, with the allowed ones.
    let bad = exec_req(10, 10, Path::new("/bin/true"), &[("mode", "daemon")], 1);
    let e = c.submit(bad).await.expect_err("bad mode");
    assert_eq!(e.code(), tonic::Code::InvalidArgument);
    assert_eq!(
        e.message(),
        "args.mode: must be one of chunk, worker, got \"daemon\""
    );
    // An agent refuses an idle timeout out of range, naming the flag.
    for bad in ["0", "nan", "1e9"] {
        let out = std::process::Command::new(bin("ttg-agent"))
            .args(["--allow-exec", "--exec-idle-s", bad])
            .output()
            .expect("agent");
        assert_eq!(out.status.code(), Some(64), "--exec-idle-s {bad}");
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(
            err.contains("--exec-idle-s must be in 0.01..=86400 seconds"),
            "{err}"
        );
    }
    server.stop().await;
}
