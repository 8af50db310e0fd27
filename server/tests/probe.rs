//! The holes an outside probe found, each closed and kept closed: a swapped
//! symlink cannot run a program outside --exec-allow; an agent token cannot
//! blow up records, open unbounded sessions or take over a live agent's id;
//! a completion from anyone but the holder of the delivery stores nothing;
//! revoking a token ends what it opened; a dead agent leaves no ghost; bad
//! Watch ids are InvalidArgument.

mod common;

use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use common::*;
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
use tonic::metadata::MetadataValue;
use tonic::transport::Channel;
use tonic::{Code, Request, Status};
use ttg_proto::keys::Keys;
use ttg_proto::records::event_body;
use ttg_proto::scripts::{ChunkResult, Scripts};
use ttg_proto::v1::agent_gateway_client::AgentGatewayClient;
use ttg_proto::v1::control_plane_client::ControlPlaneClient;
use ttg_proto::v1::{
    agent_message, event, AgentMessage, ChunkCompleted, Hello, ListAgentsRequest, RunState,
    RunStatus, ServerMessage, StatusRequest, SubmitRequest, WatchRequest,
};

const CLIENT: &str = "client-token-0123456789abcdef";
const READER: &str = "reader-token-0123456789abcdef";
const AGENT: &str = "agent-token-0123456789abcdef";

fn authed<T>(msg: T, token: &str) -> Request<T> {
    let mut r = Request::new(msg);
    r.metadata_mut().insert(
        "authorization",
        MetadataValue::try_from(format!("Bearer {token}")).expect("ascii"),
    );
    r
}

/// A server (in process) that requires the three tokens in `dir/tokens`.
async fn server_with_tokens(
    redis: &Redis,
    prefix: &str,
    dir: &Path,
    tune: impl FnOnce(&mut ttg_server::Config),
) -> (Server, PathBuf) {
    let tokens = dir.join("tokens");
    std::fs::write(
        &tokens,
        format!("client {CLIENT} alice\nreader {READER} dash\nagent {AGENT} fleet\n"),
    )
    .expect("tokens");
    let mut cfg = ttg_server::Config::for_redis(&redis.url, prefix);
    cfg.insecure_no_auth = false;
    cfg.tokens_file = Some(tokens.clone());
    tune(&mut cfg);
    (Server::start_with(cfg).await, tokens)
}

/// A real agent process holding the agent token.
fn token_agent(server_url: &str, redis: &Redis, prefix: &str, id: &str, concurrency: u32) -> Agent {
    Agent::spawn_env(
        server_url,
        &redis.url,
        prefix,
        id,
        concurrency,
        &[],
        &[("TTG_TOKEN", AGENT)],
        Stdio::inherit(),
    )
}

/// Wait until a reader sees agent `id` listed.
async fn wait_listed(c: &ControlPlaneClient<Channel>, id: &str) {
    wait_until(
        &format!("agent {id} connected"),
        Duration::from_secs(10),
        || async move { agent_ids(c).await.iter().any(|a| a == id).then_some(()) },
    )
    .await;
}

/// Ids of the live agents, as a reader sees them.
async fn agent_ids(c: &ControlPlaneClient<Channel>) -> Vec<String> {
    let mut c = c.clone();
    c.list_agents(authed(ListAgentsRequest {}, READER))
        .await
        .expect("list agents")
        .into_inner()
        .agents
        .into_iter()
        .map(|a| a.agent_id)
        .collect()
}

/// Status as `token` sees it; None if it cannot be read.
async fn status_with(
    c: &ControlPlaneClient<Channel>,
    run_id: &str,
    token: &str,
) -> Option<RunStatus> {
    let mut c = c.clone();
    c.status(authed(
        StatusRequest {
            run_id: run_id.to_string(),
        },
        token,
    ))
    .await
    .ok()
    .map(|r| r.into_inner())
}

fn hello(agent_id: &str, instance: &str) -> Hello {
    Hello {
        agent_id: agent_id.into(),
        host: "probe".into(),
        version: "0".into(),
        concurrency: 1,
        kernels: vec!["placeholder".into()],
        pid: 1,
        kernel_decls: Vec::new(),
        instance: instance.into(),
    }
}

/// Open a raw agent session: the first server message (Welcome) or the
/// status the server refused with. The returned sender keeps it open.
async fn open_session(
    url: &str,
    token: &str,
    h: Hello,
) -> Result<(mpsc::Sender<AgentMessage>, tonic::Streaming<ServerMessage>), Status> {
    let mut client = AgentGatewayClient::connect(url.to_string())
        .await
        .expect("connect");
    let (tx, rx) = mpsc::channel(4);
    tx.send(AgentMessage {
        msg: Some(agent_message::Msg::Hello(h)),
    })
    .await
    .expect("queue hello");
    let mut inbound = client
        .session(authed(ReceiverStream::new(rx), token))
        .await?
        .into_inner();
    match tokio::time::timeout(Duration::from_secs(10), inbound.message()).await {
        Ok(Ok(Some(_welcome))) => Ok((tx, inbound)),
        Ok(Ok(None)) => Err(Status::unknown("closed before Welcome")),
        Ok(Err(s)) => Err(s),
        Err(_) => panic!("no answer to Hello"),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_swapped_symlink_never_runs_a_program_outside_the_allow_list() {
    let dir = tempfile::tempdir().expect("tmp");
    let allowed = dir.path().join("allowed");
    std::fs::create_dir(&allowed).expect("mkdir");
    let good = script(&allowed, "good.sh", "#!/bin/sh\nawk '{ print 1 }'\n");
    let evil = script(dir.path(), "evil.sh", "#!/bin/sh\nawk '{ print 666 }'\n");
    let link = allowed.join("model");
    std::os::unix::fs::symlink(&good, &link).expect("symlink");
    // Swap the link between the allowed program and the other one, as fast
    // as the machine allows, for as long as the run lasts.
    let stop = Arc::new(AtomicBool::new(false));
    let swapper = {
        let (stop, link, good, evil) = (stop.clone(), link.clone(), good.clone(), evil.clone());
        std::thread::spawn(move || {
            let tmp = link.with_extension("tmp");
            let mut n = 0u64;
            while !stop.load(Ordering::Relaxed) {
                let target = if n.is_multiple_of(2) { &evil } else { &good };
                let _ = std::fs::remove_file(&tmp);
                if std::os::unix::fs::symlink(target, &tmp).is_ok() {
                    let _ = std::fs::rename(&tmp, &link);
                }
                n += 1;
            }
            n
        })
    };
    let redis = Redis::start();
    let p = prefix();
    let server = Server::start(&redis.url, &p).await;
    let allow = allowed.display().to_string();
    let flags = ["--allow-exec", "--exec-allow", allow.as_str()];
    let quiet = |id: &str| {
        Agent::spawn_env(
            &server.url,
            &redis.url,
            &p,
            id,
            2,
            &flags,
            &[],
            Stdio::null(),
        )
    };
    let (_a, _b) = (quiet("x1"), quiet("x2"));
    let mut c = control(&server.url).await;
    let run = c
        .submit(SubmitRequest {
            params: 300,
            chunk_size: Some(1),
            kernel: "exec".into(),
            args: [("program".to_string(), link.display().to_string())]
                .into_iter()
                .collect(),
            max_attempts: Some(100),
            name: "race".into(),
            retention_s: None,
            fail_fast: Some(0),
            ..Default::default()
        })
        .await
        .expect("submit")
        .into_inner();
    let st = wait_finished(&mut c, &run.run_id, Duration::from_secs(120)).await;
    stop.store(true, Ordering::Relaxed);
    let swaps = swapper.join().expect("swapper");
    assert!(swaps > 100, "the link was swapped {swaps} times");
    assert_eq!(st.state, RunState::Succeeded as i32, "{}", st.message);
    let a = st.aggregate.expect("agg");
    // Every value from the allowed program: none is 666.
    assert_eq!((a.count, a.max, a.sum), (300, 1.0, 300.0));
    // And the race was really run: some attempts saw the other program and
    // were refused by the allow-list check.
    let refused = events_in_redis(&redis, &p, &run.run_id)
        .iter()
        .filter(|e| matches!(&e.kind, Some(event::Kind::ChunkFailed(f)) if f.error.contains("--exec-allow")))
        .count();
    eprintln!("{swaps} swaps; {refused} attempts refused by the allow-list");
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_agent_token_cannot_bloat_records_or_open_unbounded_sessions() {
    let dir = tempfile::tempdir().expect("tmp");
    let redis = Redis::start();
    let p = prefix();
    let (server, _) = server_with_tokens(&redis, &p, dir.path(), |c| {
        c.limits.max_sessions_per_token = 3
    })
    .await;
    // A 100 KB host (the probe used 4 MB; the message limit stops that one
    // earlier) is refused, naming the limit; so are other oversized fields.
    let mut big = hello("bloat", "0123456789abcdef0123");
    big.host = "h".repeat(100_000);
    let e = open_session(&server.url, AGENT, big)
        .await
        .expect_err("refused");
    assert_eq!(e.code(), Code::InvalidArgument);
    assert!(
        e.message().contains("at most 16384 bytes"),
        "{}",
        e.message()
    );
    let mut many = hello("many", "0123456789abcdef0123");
    many.kernels = (0..65).map(|i| format!("k{i}")).collect();
    let e = open_session(&server.url, AGENT, many)
        .await
        .expect_err("refused");
    assert!(e.message().starts_with("hello.kernels"), "{}", e.message());
    let e = open_session(&server.url, AGENT, hello("no-instance", ""))
        .await
        .expect_err("refused");
    assert!(e.message().starts_with("hello.instance"), "{}", e.message());
    // Sessions per token: 3 open, the 4th refused, one closes, room again.
    let mut open = Vec::new();
    for i in 0..3 {
        open.push(
            open_session(
                &server.url,
                AGENT,
                hello(&format!("s{i}"), &format!("{i}-instance-0123456789")),
            )
            .await
            .expect("session"),
        );
    }
    let e = open_session(&server.url, AGENT, hello("s3", "3-instance-0123456789"))
        .await
        .expect_err("refused");
    assert_eq!(e.code(), Code::ResourceExhausted);
    assert!(
        e.message().contains("--max-sessions-per-token"),
        "{}",
        e.message()
    );
    drop(open.pop());
    wait_until("a slot frees", Duration::from_secs(10), || {
        let url = server.url.clone();
        async move {
            open_session(&url, AGENT, hello("s3", "3-instance-0123456789"))
                .await
                .ok()
        }
    })
    .await;
    // Nothing that was refused made a record.
    let c = control(&server.url).await;
    let ids = agent_ids(&c).await;
    assert!(
        !ids.iter().any(|id| id == "bloat" || id == "many"),
        "{ids:?}"
    );
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_live_agent_id_cannot_be_taken_over() {
    let dir = tempfile::tempdir().expect("tmp");
    let redis = Redis::start();
    let p = prefix();
    let (server, _) = server_with_tokens(&redis, &p, dir.path(), |_| {}).await;
    let _victim = token_agent(&server.url, &redis, &p, "victim", 2);
    let mut c = control(&server.url).await;
    wait_listed(&c, "victim").await;
    let run = c
        .submit(authed(submit_req(200, 20, 20), CLIENT))
        .await
        .expect("submit")
        .into_inner();
    // Mid-run, an agent token says Hello as "victim" and hangs up.
    tokio::time::sleep(Duration::from_millis(500)).await;
    let e = open_session(
        &server.url,
        AGENT,
        hello("victim", "mallory-0123456789abcdef"),
    )
    .await
    .expect_err("refused");
    assert_eq!(e.code(), Code::AlreadyExists);
    assert!(e.message().starts_with("hello.agent_id"), "{}", e.message());
    let st = wait_until("the victim's run ends", Duration::from_secs(60), || {
        let (c, id) = (c.clone(), run.run_id.clone());
        async move {
            let st = status_with(&c, &id, READER).await?;
            (st.state != RunState::Queued as i32 && st.state != RunState::Running as i32)
                .then_some(st)
        }
    })
    .await;
    assert_eq!(st.state, RunState::Succeeded as i32);
    let events = events_in_redis(&redis, &p, &run.run_id);
    assert!(reclaims(&events).is_empty(), "the victim lost chunks");
    assert!(agent_ids(&c).await.contains(&"victim".to_string()));
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_agent_id_stays_owned_for_as_long_as_its_session_lives() {
    // Short leases: the id's ownership would lapse after 20 leases (6 s)
    // unless every heartbeat renews it.
    let dir = tempfile::tempdir().expect("tmp");
    let redis = Redis::start();
    let p = prefix();
    let (server, _) = server_with_tokens(&redis, &p, dir.path(), |c| {
        c.heartbeat_interval = Duration::from_millis(100);
        c.lease = Duration::from_millis(300);
    })
    .await;
    let _owner = token_agent(&server.url, &redis, &p, "long-lived", 1);
    let c = control(&server.url).await;
    wait_listed(&c, "long-lived").await;
    tokio::time::sleep(Duration::from_secs(8)).await;
    let e = open_session(
        &server.url,
        AGENT,
        hello("long-lived", "mallory-0123456789abcdef"),
    )
    .await
    .expect_err("still owned");
    assert_eq!(e.code(), Code::AlreadyExists);
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_completion_from_anyone_but_the_holder_stores_nothing() {
    let redis = Redis::start();
    let p = prefix();
    let server = Server::start(&redis.url, &p).await;
    let mut c = control(&server.url).await;
    let run = c
        .submit(submit_req(100, 10, 0))
        .await
        .expect("submit")
        .into_inner();
    let keys = Keys::new(&p);
    let tasks = keys.tasks("placeholder");
    let mut conn = redis::Client::open(redis.url.as_str())
        .expect("client")
        .get_multiplexed_async_connection()
        .await
        .expect("conn");
    let scripts = Scripts::new();
    let forged = |entry: &str, chunk: u64| {
        let values = vec![1e300; 10];
        let body = event_body(
            &run.run_id,
            event::Kind::ChunkCompleted(ChunkCompleted {
                chunk_index: chunk,
                ..Default::default()
            }),
        );
        ChunkResult::new(entry, chunk, 0, &values, body)
    };
    // Made-up entry ids, for every chunk: nothing is stored.
    let batch: Vec<ChunkResult> = (0..10).map(|i| forged(&format!("1-{i}"), i)).collect();
    let (codes, _): (Vec<i64>, String) = scripts
        .complete(&mut conn, &keys, &run.run_id, &tasks, "mallory", &batch)
        .await
        .expect("script");
    assert_eq!(codes, vec![-3; 10]);
    // Real deliveries, but held by another consumer: nothing either.
    let read = claim_read(&mut conn, &keys, "placeholder", "eve", 10).await;
    let ids: Vec<String> = read.keys[0].ids.iter().map(|e| e.id.clone()).collect();
    let batch: Vec<ChunkResult> = ids
        .iter()
        .enumerate()
        .map(|(i, id)| forged(id, i as u64))
        .collect();
    let (codes, _): (Vec<i64>, String) = scripts
        .complete(&mut conn, &keys, &run.run_id, &tasks, "mallory", &batch)
        .await
        .expect("script");
    assert_eq!(codes, vec![-3; 10]);
    let st = c
        .status(StatusRequest {
            run_id: run.run_id.clone(),
        })
        .await
        .expect("status")
        .into_inner();
    assert_eq!(st.state, RunState::Queued as i32);
    assert_eq!(st.aggregate.expect("agg").count, 0);
    let stored: usize = redis::cmd("HLEN")
        .arg(keys.results(&run.run_id))
        .query_async(&mut conn)
        .await
        .expect("hlen");
    assert_eq!(stored, 0);
    // The holder's completion counts, as ever.
    let (codes, _): (Vec<i64>, String) = scripts
        .complete(&mut conn, &keys, &run.run_id, &tasks, "eve", &batch[..1])
        .await
        .expect("script");
    assert_eq!(codes, vec![1]);
    // A batch out of id order, mixing the holder's deliveries with a
    // made-up id and one already counted: each entry is judged on its own
    // (the script reads the batch's id range, then looks up what that
    // read did not show).
    let mixed = vec![
        forged(&ids[9], 9),
        forged(&ids[8], 8),
        forged("1-5", 5),
        forged(&ids[7], 7),
        forged(&ids[0], 0),
        forged(&ids[2], 2),
    ];
    let (codes, _): (Vec<i64>, String) = scripts
        .complete(&mut conn, &keys, &run.run_id, &tasks, "eve", &mixed)
        .await
        .expect("script");
    assert_eq!(codes, vec![1, 1, -3, 1, 0, 1]);
    let st = status(&mut c, &run.run_id).await;
    assert_eq!(st.progress.expect("progress").chunks_done, 5);
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn revoking_a_token_ends_its_watch_and_stops_its_agent() {
    let dir = tempfile::tempdir().expect("tmp");
    let redis = Redis::start();
    let p = prefix();
    let (server, tokens) = server_with_tokens(&redis, &p, dir.path(), |_| {}).await;
    let mut agent = token_agent(&server.url, &redis, &p, "revoked", 1);
    let mut c = control(&server.url).await;
    let run = c
        .submit(authed(submit_req(100_000, 100, 1), CLIENT))
        .await
        .expect("submit")
        .into_inner();
    let mut watch = c
        .watch(authed(
            WatchRequest {
                run_id: run.run_id.clone(),
                after_event_id: String::new(),
                no_follow: false,
            },
            READER,
        ))
        .await
        .expect("watch")
        .into_inner();
    wait_until("the agent computes", Duration::from_secs(20), || {
        let (c, id) = (c.clone(), run.run_id.clone());
        async move { (status_with(&c, &id, READER).await?.progress?.chunks_done > 0).then_some(()) }
    })
    .await;
    // Only the client's token is left.
    tokio::time::sleep(Duration::from_millis(1_100)).await; // a new mtime second
    std::fs::write(&tokens, format!("client {CLIENT} alice\n")).expect("rewrite tokens");
    let end = tokio::time::timeout(Duration::from_secs(20), async {
        loop {
            match watch.message().await {
                Ok(Some(_)) => continue,
                Ok(None) => return None,
                Err(s) => return Some(s),
            }
        }
    })
    .await
    .expect("the watch ends within a reload");
    let s = end.expect("ended with a status");
    assert_eq!(s.code(), Code::Unauthenticated, "{}", s.message());
    assert!(s.message().contains("revoked"), "{}", s.message());
    let code = tokio::task::spawn_blocking(move || agent.wait(Duration::from_secs(20)))
        .await
        .expect("join");
    assert!(matches!(code, Some(c) if c != 0), "agent exit: {code:?}");
    let st = status_with(&c, &run.run_id, CLIENT).await.expect("status");
    assert_eq!(st.state, RunState::Running as i32);
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_dead_agent_of_a_kernel_never_queued_leaves_no_ghost() {
    let redis = Redis::start();
    let p = prefix();
    let server = Server::start(&redis.url, &p).await;
    let mut c = control(&server.url).await;
    let listed =
        |c: &ttg_proto::v1::control_plane_client::ControlPlaneClient<tonic::transport::Channel>| {
            let mut c = c.clone();
            async move {
                c.list_agents(ListAgentsRequest {})
                    .await
                    .expect("list")
                    .into_inner()
                    .agents
                    .iter()
                    .any(|a| a.agent_id == "ghost")
            }
        };
    // An agent declaring a kernel nobody ever queued (no tasks stream, no
    // consumer group) whose session then drops without Bye.
    let mut h = hello("ghost", "ghost-instance-0123456789");
    h.kernels = vec!["never-queued".into()];
    let session = open_session(&server.url, AGENT, h).await.expect("session");
    assert!(listed(&c).await);
    let keys = Keys::new(&p);
    let exists: bool = redis::cmd("EXISTS")
        .arg(keys.tasks("never-queued"))
        .query(&mut redis.conn())
        .expect("exists");
    assert!(!exists);
    drop(session);
    wait_until("the dead agent is gone", Duration::from_secs(15), || {
        let f = listed(&c);
        async move { (!f.await).then_some(()) }
    })
    .await;
    let record: bool = redis::cmd("EXISTS")
        .arg(keys.agent("ghost"))
        .query(&mut redis.conn())
        .expect("exists");
    assert!(!record, "the agent's record outlived it");
    // Watch ids Redis would misread are refused up front.
    let run = c
        .submit(submit_req(10, 10, 0))
        .await
        .expect("submit")
        .into_inner();
    for bad in ["+", "$", "abc", "1-", "-1", "1-2-3"] {
        let e = c
            .watch(WatchRequest {
                run_id: run.run_id.clone(),
                after_event_id: bad.into(),
                no_follow: false,
            })
            .await
            .expect_err(bad);
        assert_eq!(e.code(), Code::InvalidArgument, "{bad}");
        assert!(e.message().starts_with("after_event_id"), "{}", e.message());
    }
    server.stop().await;
}

/// Resident memory of a process, KiB.
fn rss_kib(pid: u32) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .unwrap_or_default()
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.split_whitespace().next()?.parse().ok())
        .unwrap_or(0)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn five_hundred_watches_keep_the_server_small_and_all_see_the_end() {
    let redis = Redis::start();
    let p = prefix();
    let server = ServerProc::start(&redis.url, &p, &[]);
    wait_until("server up", Duration::from_secs(10), || async {
        tokio::net::TcpStream::connect(("127.0.0.1", server.port))
            .await
            .ok()
    })
    .await;
    let pid = server.child.as_ref().expect("child").id();
    let mut c = control(&server.url).await;
    let run = c
        .submit(submit_req(1_000, 100, 0))
        .await
        .expect("submit")
        .into_inner();
    let before = rss_kib(pid);
    let mut watches = Vec::new();
    for _ in 0..500 {
        let mut c = c.clone();
        let id = run.run_id.clone();
        watches.push(tokio::spawn(async move {
            let mut s = c
                .watch(WatchRequest {
                    run_id: id,
                    after_event_id: String::new(),
                    no_follow: false,
                })
                .await
                .expect("watch")
                .into_inner();
            let mut last = None;
            while let Some(e) = s.message().await.expect("stream") {
                last = e.kind;
            }
            matches!(last, Some(event::Kind::RunCompleted(_)))
        }));
    }
    // All 500 open and blocked on the run's events.
    tokio::time::sleep(Duration::from_secs(2)).await;
    let during = rss_kib(pid);
    let _agent = Agent::spawn(&server.url, &redis.url, &p, "w1", 2, &[]);
    let mut ended = 0;
    for w in watches {
        if tokio::time::timeout(Duration::from_secs(60), w)
            .await
            .expect("watch ends")
            .expect("task")
        {
            ended += 1;
        }
    }
    assert_eq!(ended, 500, "every watch saw RunCompleted");
    let grew_mib = during.saturating_sub(before) / 1024;
    eprintln!(
        "server RSS {} KiB before, {} KiB with 500 watches",
        before, during
    );
    assert!(
        grew_mib < 64,
        "500 watches grew the server by {grew_mib} MiB"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_agent_keeps_its_id_through_a_server_outage() {
    // With every server gone past the ownership's 20 leases (6 s here),
    // the agent's own lease refresh keeps its id from being taken.
    let dir = tempfile::tempdir().expect("tmp");
    let tokens = dir.path().join("tokens");
    std::fs::write(
        &tokens,
        format!("agent {AGENT} fleet\nreader {READER} dash\n"),
    )
    .expect("tokens");
    let redis = Redis::start();
    let p = prefix();
    let t = tokens.display().to_string();
    let mut server = ServerProc::start(
        &redis.url,
        &p,
        &[
            "--tokens-file",
            &t,
            "--heartbeat-interval",
            "100ms",
            "--lease",
            "300ms",
        ],
    );
    let up = |port: u16| async move {
        wait_until("server up", Duration::from_secs(10), || async move {
            tokio::net::TcpStream::connect(("127.0.0.1", port))
                .await
                .ok()
        })
        .await;
    };
    up(server.port).await;
    let _owner = token_agent(&server.url, &redis, &p, "steady", 1);
    let c = control(&server.url).await;
    wait_listed(&c, "steady").await;
    server.kill();
    tokio::time::sleep(Duration::from_secs(8)).await;
    server.spawn();
    up(server.port).await;
    let e = open_session(
        &server.url,
        AGENT,
        hello("steady", "mallory-0123456789abcdef"),
    )
    .await
    .expect_err("still owned");
    assert_eq!(e.code(), Code::AlreadyExists, "{}", e.message());
}
