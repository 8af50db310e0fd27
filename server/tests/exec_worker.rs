//! exec `mode=worker` with real processes: real agents running real Python
//! workers through the library (python/), and programs that misbehave —
//! crash every Nth chunk, hang, never answer the handshake, print garbage —
//! each costing only its chunk's attempt; cancel killing a chunk in flight;
//! workers stopping when their run ends, and none left behind by an agent
//! that stops or is killed (checked in the process table).

mod common;

use std::path::{Path, PathBuf};
use std::time::Duration;

use common::*;
use ttg_proto::v1::{CancelRequest, RunState, SubmitRequest};

/// A worker-mode exec request (fail-fast off: the tests count failures).
fn worker_req(
    params: u64,
    chunk: u64,
    program: &Path,
    extra: &[(&str, &str)],
    attempts: u32,
) -> SubmitRequest {
    let mut req = exec_req(params, chunk, program, extra, attempts);
    req.args.insert("mode".into(), "worker".into());
    req.fail_fast = Some(0);
    req
}

/// Redis, a server and exec agents (id, concurrency, extra flags).
struct Local {
    redis: Redis,
    prefix: String,
    server: Server,
    c: ttg_proto::v1::control_plane_client::ControlPlaneClient<tonic::transport::Channel>,
    agents: Vec<Agent>,
}

impl Local {
    async fn start(agents: &[(&str, u32, &[&str])]) -> Local {
        let redis = Redis::start();
        let prefix = prefix();
        let server = Server::start(&redis.url, &prefix).await;
        let c = control(&server.url).await;
        let mut l = Local {
            redis,
            prefix,
            server,
            c,
            agents: Vec::new(),
        };
        for (id, conc, extra) in agents {
            l.agent(id, *conc, extra);
        }
        l
    }

    fn agent(&mut self, id: &str, concurrency: u32, extra: &[&str]) {
        let mut flags = vec!["--allow-exec"];
        flags.extend_from_slice(extra);
        self.agents.push(Agent::spawn(
            &self.server.url,
            &self.redis.url,
            &self.prefix,
            id,
            concurrency,
            &flags,
        ));
    }

    async fn submit(&mut self, req: SubmitRequest) -> String {
        self.c
            .submit(req)
            .await
            .expect("submit")
            .into_inner()
            .run_id
    }

    /// Submit and watch to the end.
    async fn run(
        &mut self,
        req: SubmitRequest,
    ) -> (ttg_proto::v1::RunCompleted, Vec<ttg_proto::v1::Event>) {
        let run = self.submit(req).await;
        run_end(&mut self.c, &run).await
    }

    /// Stop agents and server, then check nothing of `dir` runs.
    async fn stop(self, dir: &Path) {
        drop(self.agents);
        self.server.stop().await;
        assert_nothing_left(dir).await;
    }
}

fn sum_of(rc: &ttg_proto::v1::RunCompleted) -> i128 {
    cents(rc.aggregate.unwrap_or_default().sum)
}

/// A Python model (see `common::py_model`) whose every process writes its
/// pid into the folder `<name>.pids` on start.
fn counted_model(dir: &Path, name: &str, body: &str) -> PathBuf {
    let pids = dir.join(format!("{name}.pids"));
    std::fs::create_dir_all(&pids).expect("mkdir");
    py_model(
        dir,
        name,
        &format!(
            "open(os.path.join({pids:?}, str(os.getpid())), 'w').close()\n{body}",
            pids = pids.display().to_string()
        ),
    )
}

/// Pids the model's processes wrote.
fn pids_of(dir: &Path, name: &str) -> Vec<u32> {
    std::fs::read_dir(dir.join(format!("{name}.pids")))
        .map(|d| {
            d.filter_map(|e| e.ok()?.file_name().to_str()?.parse().ok())
                .collect()
        })
        .unwrap_or_default()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_python_model_serves_many_chunks_from_one_process_per_slot() {
    let dir = tempfile::tempdir().expect("tmp");
    // It prints to stdout from user code on every call: the library keeps
    // the protocol clean.
    let model = counted_model(
        dir.path(),
        "model.py",
        "print('loading the model')\n@ttg.kernel\ndef model(p):\n    print('computing', p)\n    return placeholder(p)\n",
    );
    let mut l = Local::start(&[("w1", 2, &[]), ("w2", 2, &[])]).await;
    let (rc, events) = l.run(worker_req(2_000, 10, &model, &[], 1)).await;
    assert_eq!(rc.state, RunState::Succeeded as i32, "{}", rc.message);
    assert_eq!(sum_of(&rc), cents(expected_sum(2_000)));
    assert_exactly_once(&events, 2_000, 200);
    // 200 chunks, at most one process per slot (2 agents × 2).
    let pids = pids_of(dir.path(), "model.py");
    assert!(
        !pids.is_empty() && pids.len() <= 4,
        "{} processes for 4 slots",
        pids.len()
    );
    // The run ended: its workers stop (the completing agent knows at once,
    // the other asks Redis within a second).
    wait_until("the run's workers stop", Duration::from_secs(10), || {
        let any = pids.iter().any(|p| alive(*p));
        async move { (!any).then_some(()) }
    })
    .await;
    l.stop(dir.path()).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_crash_fails_only_the_chunk_in_flight_and_the_next_gets_a_fresh_process() {
    let dir = tempfile::tempdir().expect("tmp");
    // Every process dies on its 3rd chunk.
    let model = counted_model(
        dir.path(),
        "crashy.py",
        "served = [0]\n@ttg.kernel\ndef model(p):\n    c = ttg.current_chunk()\n    if p == c.start:\n        served[0] += 1\n        if served[0] == 3:\n            sys.stderr.write('crashing now, chunk %d\\n' % c.index)\n            sys.stderr.flush()\n            os._exit(3)\n    return placeholder(p)\n",
    );
    let mut l = Local::start(&[("k1", 2, &[])]).await;
    let (rc, events) = l.run(worker_req(300, 10, &model, &[], 10)).await;
    assert_eq!(rc.state, RunState::Succeeded as i32, "{}", rc.message);
    assert_eq!(sum_of(&rc), cents(expected_sum(300)));
    assert_exactly_once(&events, 300, 30);
    let failed = chunk_failures(&events);
    assert!(failed.len() >= 5, "{} crashes", failed.len());
    for f in &failed {
        assert!(
            f.error.contains("exited with exit status: 3")
                && f.error.contains("crashing now, chunk"),
            "{}",
            f.error
        );
    }
    // A fresh process after each crash.
    assert!(pids_of(dir.path(), "crashy.py").len() > failed.len());
    l.stop(dir.path()).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_hanging_chunk_is_killed_at_its_timeout_and_an_error_keeps_the_process() {
    let dir = tempfile::tempdir().expect("tmp");
    // Chunk 2 hangs on its first attempt; chunk 4 raises on its first.
    let model = counted_model(
        dir.path(),
        "hang.py",
        "@ttg.kernel\ndef model(p):\n    c = ttg.current_chunk()\n    if c.attempt == 1 and c.index == 2:\n        time.sleep(1000)\n    if c.attempt == 1 and c.index == 4:\n        raise ValueError('bad point %d' % p)\n    return placeholder(p)\n",
    );
    let mut l = Local::start(&[("h1", 1, &[])]).await;
    let (rc, events) = l
        .run(worker_req(60, 10, &model, &[("timeout_s", "1")], 3))
        .await;
    assert_eq!(rc.state, RunState::Succeeded as i32, "{}", rc.message);
    assert_eq!(sum_of(&rc), cents(expected_sum(60)));
    let failed = chunk_failures(&events);
    assert_eq!(failed.len(), 2, "{failed:?}");
    let hung = failed.iter().find(|f| f.chunk_index == 2).expect("chunk 2");
    assert!(
        hung.error.contains("timed out after 1.000 s"),
        "{}",
        hung.error
    );
    let raised = failed.iter().find(|f| f.chunk_index == 4).expect("chunk 4");
    assert!(
        raised.error.starts_with("Traceback")
            && raised.error.contains("hang.py")
            && raised.error.ends_with("ValueError: bad point 40"),
        "{}",
        raised.error
    );
    // One process started, one after the timeout killed it; the exception
    // kept its process.
    let pids = pids_of(dir.path(), "hang.py");
    assert_eq!(pids.len(), 2, "{pids:?}");
    l.stop(dir.path()).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn programs_that_do_not_speak_the_protocol_fail_clearly_not_by_hanging() {
    let dir = tempfile::tempdir().expect("tmp");
    let silent = script(dir.path(), "silent.sh", "#!/bin/sh\nexec sleep 1000\n");
    let chatty = script(
        dir.path(),
        "chatty.sh",
        "#!/bin/sh\necho 'hello world'\nexec sleep 1000\n",
    );
    // A mode=chunk program (reads numbers) started as a worker.
    let chunky = script(
        dir.path(),
        "chunky.py",
        "#!/usr/bin/env python3\nimport sys\nfor line in sys.stdin:\n    print(int(line) ** 2)\n",
    );
    let mut l = Local::start(&[("n1", 2, &[])]).await;
    let cases: [(&Path, &str); 3] = [
        (&silent, "did not answer the handshake within 0.500 s"),
        (&chatty, "broke the protocol on stdout: not a TTG protocol message (a line of JSON with a \"type\"): \"hello world\""),
        (&chunky, "exited with exit status: 1 before the handshake; stderr: Traceback"),
    ];
    for (prog, expect) in cases {
        let (rc, events) = l
            .run(worker_req(5, 5, prog, &[("start_timeout_s", "0.5")], 1))
            .await;
        assert_eq!(rc.state, RunState::Failed as i32);
        let f = chunk_failures(&events);
        assert_eq!(f.len(), 1);
        assert!(
            f[0].error.contains(expect),
            "{}: {}",
            prog.display(),
            f[0].error
        );
    }
    l.stop(dir.path()).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cancel_kills_the_chunk_in_flight_promptly() {
    let dir = tempfile::tempdir().expect("tmp");
    // Each chunk also starts a grandchild in the worker's process group.
    let model = counted_model(
        dir.path(),
        "slow.py",
        &format!(
            "import subprocess\n@ttg.kernel\ndef model(p):\n    subprocess.Popen(['sh', '-c', 'sleep 1000', {tag:?}])\n    time.sleep(1000)\n    return 0\n",
            tag = dir.path().display().to_string()
        ),
    );
    let mut l = Local::start(&[("x1", 2, &[])]).await;
    let run = l.submit(worker_req(4, 1, &model, &[], 1)).await;
    let needle = dir.path().display().to_string();
    // Both slots' workers run, each with its chunk's grandchild.
    let pids = wait_until(
        "both chunks are in their workers",
        Duration::from_secs(20),
        || {
            let v = pids_of(dir.path(), "slow.py");
            let n = processes_mentioning(&needle).len();
            async move { (v.len() == 2 && n == 4).then_some(v) }
        },
    )
    .await;
    let t = std::time::Instant::now();
    l.c.cancel(CancelRequest {
        run_id: run.clone(),
        reason: "test".into(),
    })
    .await
    .expect("cancel");
    wait_until(
        "the workers and their children are killed",
        Duration::from_secs(5),
        || {
            // A process being killed may lose its command line before its
            // state says so: wait for both.
            let gone = processes_mentioning(&needle).is_empty() && !pids.iter().any(|p| alive(*p));
            async move { gone.then_some(()) }
        },
    )
    .await;
    eprintln!("workers gone {} ms after Cancel", t.elapsed().as_millis());
    let st = wait_finished(&mut l.c, &run, Duration::from_secs(10)).await;
    assert_eq!(st.state, RunState::Cancelled as i32);
    l.stop(dir.path()).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn agents_that_stop_or_die_leave_no_worker_behind() {
    let dir = tempfile::tempdir().expect("tmp");
    let model = counted_model(
        dir.path(),
        "steady.py",
        "@ttg.kernel\ndef model(p):\n    time.sleep(0.02)\n    return placeholder(p)\n",
    );
    let mut l = Local::start(&[("t1", 2, &["--drain-timeout", "1s"]), ("t2", 2, &[])]).await;
    let run = l.submit(worker_req(800, 5, &model, &[], 10)).await;
    wait_until("four workers run", Duration::from_secs(20), || {
        let n = pids_of(dir.path(), "steady.py").len();
        async move { (n >= 4).then_some(()) }
    })
    .await;
    // SIGTERM: the agent drains, then stops its workers and their groups.
    l.agents[0].signal("TERM");
    // SIGKILL: the kernel kills its workers (PR_SET_PDEATHSIG).
    l.agents[1].signal("KILL");
    assert!(
        l.agents[0].wait(Duration::from_secs(15)).is_some(),
        "agent stopped"
    );
    // A new agent finishes the run.
    l.agent("t3", 2, &[]);
    let (rc, events) = run_end(&mut l.c, &run).await;
    assert_eq!(rc.state, RunState::Succeeded as i32, "{}", rc.message);
    assert_eq!(sum_of(&rc), cents(expected_sum(800)));
    assert_exactly_once(&events, 800, 160);
    l.stop(dir.path()).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_shell_worker_of_the_docs_speaks_the_protocol() {
    let example = Path::new(env!("CARGO_MANIFEST_DIR")).join("../examples/shell/square-worker.sh");
    let mut l = Local::start(&[("s1", 2, &[])]).await;
    let (rc, _) = l.run(worker_req(100, 7, &example, &[], 1)).await;
    assert_eq!(rc.state, RunState::Succeeded as i32, "{}", rc.message);
    assert_eq!(
        rc.aggregate.unwrap_or_default().sum,
        (0..100u64).map(|p| (p * p) as f64).sum::<f64>()
    );
    l.server.stop().await;
}
