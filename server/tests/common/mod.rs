//! Test harness: a real `redis-server` per test on a free port, the real
//! tonic server on 127.0.0.1:0, agents as real processes (the binaries cargo
//! built) or in-process, and polling helpers with deadlines (never sleeps to
//! wait for readiness).
#![allow(dead_code)]

pub mod cluster;

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use tokio_util::sync::CancellationToken;
use tonic::transport::Channel;
use ttg_proto::v1::control_plane_client::ControlPlaneClient;
use ttg_proto::v1::{Event, RunStatus, StatusRequest, SubmitRequest, WatchRequest};

static COUNTER: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);

/// A unique key prefix, so tests can share a Redis and run in parallel.
pub fn prefix() -> String {
    let n = COUNTER.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    format!("t{}-{n}:", std::process::id())
}

/// A free loopback port.
pub fn free_port() -> u16 {
    let l = std::net::TcpListener::bind("127.0.0.1:0").expect("bind 127.0.0.1:0");
    l.local_addr().expect("local addr").port()
}

/// A private redis-server, killed on drop.
pub struct Redis {
    child: Option<Child>,
    pub port: u16,
    pub url: String,
    pub dir: tempfile::TempDir,
}

impl Redis {
    /// Start one with AOF on (`appendonly yes`), as production runs it.
    pub fn start() -> Redis {
        let dir = tempfile::tempdir().expect("tempdir");
        let port = free_port();
        let mut r = Redis {
            child: None,
            port,
            url: format!("redis://127.0.0.1:{port}"),
            dir,
        };
        r.spawn();
        r
    }

    fn spawn(&mut self) {
        let conf = self.dir.path().join("extra.conf");
        if !conf.exists() {
            std::fs::write(&conf, "").expect("conf");
        }
        let child = Command::new("redis-server")
            .arg(&conf)
            .args(["--port", &self.port.to_string(), "--bind", "127.0.0.1", "--save", "", "--appendonly", "yes"])
            .arg("--dir")
            .arg(self.dir.path())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap_or_else(|e| {
                panic!("cannot start redis-server ({e}). These tests need a real Redis: install it with `sudo apt-get install -y redis-server` (or `make setup`).")
            });
        self.child = Some(child);
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            if let Ok(c) = redis::Client::open(self.url.as_str()) {
                if let Ok(mut conn) = c.get_connection() {
                    match redis::cmd("PING").query::<String>(&mut conn) {
                        Ok(_) => return,
                        // It answers (asking for a password): it is up.
                        Err(e) if !e.is_io_error() && !e.is_connection_refusal() => return,
                        Err(_) => {}
                    }
                }
            }
            assert!(
                Instant::now() < deadline,
                "redis-server did not start on port {}",
                self.port
            );
            std::thread::sleep(Duration::from_millis(10));
        }
    }

    /// Kill it (SIGKILL): Redis is down until [`Redis::restart`].
    pub fn kill(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// Start it again on the same port and data folder.
    pub fn restart(&mut self) {
        self.kill();
        self.spawn();
    }

    /// An async connection, for scripts a test runs as an agent would.
    pub async fn async_conn(&self) -> redis::aio::MultiplexedConnection {
        redis::Client::open(self.url.as_str())
            .expect("client")
            .get_multiplexed_async_connection()
            .await
            .expect("connection")
    }

    /// A synchronous connection for assertions.
    pub fn conn(&self) -> redis::Connection {
        redis::Client::open(self.url.as_str())
            .expect("client")
            .get_connection()
            .expect("connection")
    }
}

impl Drop for Redis {
    fn drop(&mut self) {
        self.kill();
    }
}

/// The real server, in process, on 127.0.0.1:0.
pub struct Server {
    pub addr: SocketAddr,
    pub url: String,
    token: CancellationToken,
    handle: tokio::task::JoinHandle<Result<(), ttg_server::Error>>,
}

impl Server {
    pub async fn start(redis_url: &str, prefix: &str) -> Server {
        Self::start_with(ttg_server::Config::for_redis(redis_url, prefix)).await
    }

    pub async fn start_with(config: ttg_server::Config) -> Server {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind");
        let addr = listener.local_addr().expect("addr");
        let token = CancellationToken::new();
        let handle = tokio::spawn(ttg_server::run(listener, config, token.clone()));
        let url = format!("http://{addr}");
        let s = Server {
            addr,
            url,
            token,
            handle,
        };
        wait_until(
            "server accepts connections",
            Duration::from_secs(10),
            || async {
                tonic::transport::Endpoint::from_shared(s.url.clone())
                    .ok()?
                    .connect()
                    .await
                    .ok()
            },
        )
        .await;
        s
    }

    /// Shut down and join.
    pub async fn stop(self) {
        self.token.cancel();
        let r = tokio::time::timeout(Duration::from_secs(10), self.handle).await;
        assert!(r.is_ok(), "server did not shut down within 10s");
    }
}

/// The directory cargo put the workspace's binaries in.
pub fn bin(name: &str) -> PathBuf {
    let exe = std::env::current_exe().expect("current exe");
    let dir = exe.parent().and_then(|d| d.parent()).expect("target dir");
    let p = dir.join(name);
    assert!(
        p.is_file(),
        "{} not built: run `cargo build --workspace` (make test does)",
        p.display()
    );
    p
}

/// A real agent process, SIGKILLed on drop.
pub struct Agent {
    pub child: Child,
    pub id: String,
}

impl Agent {
    /// Spawn with extra environment and a chosen stderr.
    #[allow(clippy::too_many_arguments)]
    pub fn spawn_env(
        server_url: &str,
        redis_url: &str,
        prefix: &str,
        id: &str,
        concurrency: u32,
        extra: &[&str],
        env: &[(&str, &str)],
        stderr: Stdio,
    ) -> Agent {
        let child = Command::new(bin("ttg-agent"))
            .args([
                "--server",
                server_url,
                "--redis-url",
                redis_url,
                "--prefix",
                prefix,
                "--agent-id",
                id,
            ])
            .args(["--concurrency", &concurrency.to_string()])
            .args(extra)
            .env("RUST_LOG", "warn")
            .envs(env.iter().copied())
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(stderr)
            .spawn()
            .expect("spawn ttg-agent");
        Agent {
            child,
            id: id.to_string(),
        }
    }

    pub fn spawn(
        server_url: &str,
        redis_url: &str,
        prefix: &str,
        id: &str,
        concurrency: u32,
        extra: &[&str],
    ) -> Agent {
        Self::spawn_env(
            server_url,
            redis_url,
            prefix,
            id,
            concurrency,
            extra,
            &[],
            Stdio::inherit(),
        )
    }

    pub fn pid(&self) -> i32 {
        self.child.id() as i32
    }

    /// Send a signal by name (e.g. "TERM", "KILL", "STOP", "CONT").
    pub fn signal(&self, sig: &str) {
        let ok = Command::new("kill")
            .args([&format!("-{sig}"), &self.pid().to_string()])
            .status()
            .map(|s| s.success());
        assert!(matches!(ok, Ok(true)), "kill -{sig} failed");
    }

    /// Wait for exit and return the exit code.
    pub fn wait(&mut self, within: Duration) -> Option<i32> {
        let deadline = Instant::now() + within;
        loop {
            if let Ok(Some(s)) = self.child.try_wait() {
                return s.code();
            }
            if Instant::now() > deadline {
                return None;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

impl Drop for Agent {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// An agent running in this process (same code as the binary).
pub struct InProcAgent {
    token: CancellationToken,
    handle: tokio::task::JoinHandle<Result<ttg_agent::Exit, ttg_agent::Error>>,
}

impl InProcAgent {
    pub fn start(server_url: &str, redis_url: &str, prefix: &str, concurrency: u32) -> InProcAgent {
        let token = CancellationToken::new();
        let cfg = ttg_agent::Config::for_test(server_url, redis_url, prefix, concurrency);
        let handle = tokio::spawn(ttg_agent::run(cfg, token.clone()));
        InProcAgent { token, handle }
    }

    pub async fn stop(self) -> ttg_agent::Exit {
        self.token.cancel();
        tokio::time::timeout(Duration::from_secs(40), self.handle)
            .await
            .expect("agent drains in time")
            .expect("agent task")
            .expect("agent ran")
    }
}

/// A ControlPlane client.
pub async fn control(url: &str) -> ControlPlaneClient<Channel> {
    ControlPlaneClient::connect(url.to_string())
        .await
        .expect("connect")
}

/// Poll `f` until it returns Some, or panic after `within` naming `what`.
pub async fn wait_until<T, F, Fut>(what: &str, within: Duration, mut f: F) -> T
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Option<T>>,
{
    wait_for(what, within, || {
        let next = f();
        async move { next.await.ok_or("nothing yet") }
    })
    .await
}

/// Poll `f` until it returns Ok, or panic after `within` naming `what` and
/// the last Err it returned (what was seen instead).
pub async fn wait_for<T, E, F, Fut>(what: &str, within: Duration, mut f: F) -> T
where
    E: std::fmt::Debug,
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Result<T, E>>,
{
    let deadline = Instant::now() + within;
    loop {
        match f().await {
            Ok(v) => return v,
            Err(last) => assert!(
                Instant::now() < deadline,
                "timed out after {within:?} waiting for: {what} (last seen: {last:?})"
            ),
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

pub fn submit_req(params: u64, chunk_size: u64, work_ms: u64) -> SubmitRequest {
    SubmitRequest {
        params,
        chunk_size: Some(chunk_size),
        kernel: "placeholder".into(),
        args: [("work_ms".to_string(), work_ms.to_string())]
            .into_iter()
            .collect(),
        max_attempts: None,
        name: "test".into(),
        retention_s: None,
        fail_fast: None,
        ..Default::default()
    }
}

pub async fn status(c: &mut ControlPlaneClient<Channel>, run_id: &str) -> RunStatus {
    c.status(StatusRequest {
        run_id: run_id.to_string(),
    })
    .await
    .expect("status")
    .into_inner()
}

/// Wait for the run to reach a final state and return its status.
pub async fn wait_finished(
    c: &mut ControlPlaneClient<Channel>,
    run_id: &str,
    within: Duration,
) -> RunStatus {
    let mut c2 = c.clone();
    wait_until(&format!("run {run_id} finishes"), within, || {
        let mut c = c2.clone();
        let id = run_id.to_string();
        async move {
            let st = status(&mut c, &id).await;
            ttg_proto::records::is_finished(ttg_proto::v1::RunState::try_from(st.state).ok()?)
                .then_some(st)
        }
    })
    .await;
    status(&mut c2, run_id).await
}

/// Every event of a Watch from `after` to the stream's end.
pub async fn watch_all(
    c: &mut ControlPlaneClient<Channel>,
    run_id: &str,
    after: &str,
) -> Vec<Event> {
    let mut s = c
        .watch(WatchRequest {
            run_id: run_id.into(),
            after_event_id: after.into(),
            no_follow: false,
        })
        .await
        .expect("watch")
        .into_inner();
    let mut out = Vec::new();
    while let Some(e) = tokio::time::timeout(Duration::from_secs(60), s.message())
        .await
        .expect("watch stalled")
        .expect("watch stream")
    {
        out.push(e);
    }
    out
}

/// Sum of the placeholder over 0..n, to 2 decimals.
pub fn expected_sum(n: u64) -> f64 {
    ttg_proto::kernels::placeholder_expected_sum_hundredths(n) as f64 / 100.0
}

/// Round to hundredths for exact comparison.
pub fn cents(x: f64) -> i128 {
    (x * 100.0).round() as i128
}

impl Redis {
    /// Start one with extra settings (e.g. `["--appendfsync", "always"]`).
    pub fn start_with(extra: &[&str]) -> Redis {
        let dir = tempfile::tempdir().expect("tempdir");
        let port = free_port();
        std::fs::write(
            dir.path().join("extra.conf"),
            extra
                .chunks(2)
                .map(|kv| kv.join(" "))
                .collect::<Vec<_>>()
                .join("\n"),
        )
        .expect("conf");
        let mut r = Redis {
            child: None,
            port,
            url: format!("redis://127.0.0.1:{port}"),
            dir,
        };
        r.spawn();
        r
    }

    /// Stop it gracefully (SIGTERM: the AOF is flushed), then start it again.
    pub fn restart_graceful(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = Command::new("kill")
                .args(["-TERM", &c.id().to_string()])
                .status();
            let _ = c.wait();
        }
        self.spawn();
    }
}

/// A real ttg-server process on a fixed port, SIGKILLed on drop.
pub struct ServerProc {
    pub child: Option<Child>,
    pub port: u16,
    pub url: String,
    args: Vec<String>,
    env: Vec<(String, String)>,
}

impl ServerProc {
    /// Start with extra environment variables.
    pub fn start_env(
        redis_url: &str,
        prefix: &str,
        extra: &[&str],
        env: &[(&str, &str)],
    ) -> ServerProc {
        let mut s = ServerProc::start_with(redis_url, prefix, extra);
        s.env = env
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        s.spawn();
        s
    }

    /// SIGTERM it and wait for a clean exit (spans are flushed).
    pub fn terminate(&mut self) -> Option<i32> {
        let mut c = self.child.take()?;
        let _ = Command::new("kill")
            .args(["-TERM", &c.id().to_string()])
            .status();
        c.wait().ok()?.code()
    }

    pub fn start(redis_url: &str, prefix: &str, extra: &[&str]) -> ServerProc {
        let mut s = ServerProc::start_with(redis_url, prefix, extra);
        s.spawn();
        s
    }

    fn start_with(redis_url: &str, prefix: &str, extra: &[&str]) -> ServerProc {
        let port = free_port();
        let mut args: Vec<String> = [
            "--listen",
            &format!("127.0.0.1:{port}"),
            "--redis-url",
            redis_url,
            "--prefix",
            prefix,
        ]
        .iter()
        .map(|s| s.to_string())
        .collect();
        args.extend(extra.iter().map(|s| s.to_string()));
        // Tests run without tokens unless they bring a tokens file.
        if !extra.contains(&"--tokens-file") {
            args.push("--insecure-no-auth".into());
        }
        ServerProc {
            child: None,
            port,
            url: format!("http://127.0.0.1:{port}"),
            args,
            env: Vec::new(),
        }
    }

    pub fn spawn(&mut self) {
        let child = Command::new(bin("ttg-server"))
            .args(&self.args)
            .env("RUST_LOG", "warn")
            .envs(self.env.iter().map(|(k, v)| (k.as_str(), v.as_str())))
            .stdout(Stdio::null())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("spawn ttg-server");
        self.child = Some(child);
        let deadline = Instant::now() + Duration::from_secs(15);
        while std::net::TcpStream::connect(("127.0.0.1", self.port)).is_err() {
            assert!(
                Instant::now() < deadline,
                "ttg-server did not listen on {}",
                self.port
            );
            std::thread::sleep(Duration::from_millis(10));
        }
    }

    /// SIGKILL it.
    pub fn kill(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

impl Drop for ServerProc {
    fn drop(&mut self) {
        self.kill();
    }
}

/// Every event of a run, read straight from Redis (works with no server up).
pub fn events_in_redis(redis: &Redis, prefix: &str, run_id: &str) -> Vec<Event> {
    let mut c = redis.conn();
    let reply: redis::streams::StreamRangeReply = redis::cmd("XRANGE")
        .arg(ttg_proto::keys::Keys::new(prefix).events(run_id))
        .arg("-")
        .arg("+")
        .query(&mut c)
        .expect("xrange events");
    reply
        .ids
        .iter()
        .map(|e| match e.map.get("e") {
            Some(redis::Value::BulkString(b)) => {
                ttg_proto::records::decode_event(&e.id, b).expect("event")
            }
            other => panic!("event field {other:?}"),
        })
        .collect()
}

/// Chunk indices of the ChunkCompleted events (one per chunk counted).
pub fn completed_chunks(events: &[Event]) -> Vec<u64> {
    events
        .iter()
        .filter_map(|e| match &e.kind {
            Some(ttg_proto::v1::event::Kind::ChunkCompleted(k)) => Some(k.chunk_index),
            _ => None,
        })
        .collect()
}

/// The ChunkReclaimed events.
pub fn reclaims(events: &[Event]) -> Vec<(ttg_proto::v1::ChunkReclaimed, i64)> {
    events
        .iter()
        .filter_map(|e| match &e.kind {
            Some(ttg_proto::v1::event::Kind::ChunkReclaimed(k)) => Some((k.clone(), e.time_ms)),
            _ => None,
        })
        .collect()
}

/// Entries of `consumer` pending in the placeholder tasks stream.
pub fn pending_of(redis: &Redis, prefix: &str, consumer: &str) -> usize {
    let mut c = redis.conn();
    let r: redis::streams::StreamPendingCountReply = redis::cmd("XPENDING")
        .arg(ttg_proto::keys::Keys::new(prefix).tasks("placeholder"))
        .arg(ttg_proto::keys::GROUP)
        .arg("-")
        .arg("+")
        .arg(1000)
        .arg(consumer)
        .query(&mut c)
        .unwrap_or(redis::streams::StreamPendingCountReply { ids: vec![] });
    r.ids.len()
}

/// Every entry pending in the placeholder tasks stream, and its length.
pub fn queue_state(redis: &Redis, prefix: &str) -> (usize, usize) {
    let mut c = redis.conn();
    let key = ttg_proto::keys::Keys::new(prefix).tasks("placeholder");
    let r: redis::streams::StreamPendingCountReply = redis::cmd("XPENDING")
        .arg(&key)
        .arg(ttg_proto::keys::GROUP)
        .arg("-")
        .arg("+")
        .arg(100_000)
        .query(&mut c)
        .unwrap_or(redis::streams::StreamPendingCountReply { ids: vec![] });
    let len: usize = redis::cmd("XLEN").arg(&key).query(&mut c).unwrap_or(0);
    (r.ids.len(), len)
}

/// Wait (≤ `within`) until the placeholder tasks stream holds nothing and
/// nothing is pending in it. Not at once when a run ends: if a chunk was
/// reclaimed from a live agent (frozen, cut off) and that agent's late result
/// won, the chunk's re-queued copy is still queued or computing when the run
/// ends; an agent then drops it (run finished). It must go, just not
/// instantly.
pub async fn assert_queue_drains(redis: &Redis, prefix: &str, within: Duration) {
    wait_for("tasks stream drained, nothing pending", within, || {
        let q = queue_state(redis, prefix);
        async move {
            match q {
                (0, 0) => Ok(()),
                (pending, len) => Err(format!("{pending} pending, stream length {len}")),
            }
        }
    })
    .await
}

/// Check a finished run counted every chunk exactly once with the exact sum.
pub fn assert_exactly_once(events: &[Event], params: u64, chunks: u64) {
    let done = completed_chunks(events);
    let distinct: std::collections::BTreeSet<_> = done.iter().collect();
    assert_eq!(done.len(), distinct.len(), "a chunk was counted twice");
    assert_eq!(distinct.len() as u64, chunks, "every chunk counted");
    let last = events.last().expect("events");
    let Some(ttg_proto::v1::event::Kind::RunCompleted(c)) = &last.kind else {
        panic!("run did not complete: {last:?}")
    };
    assert_eq!(c.state, ttg_proto::v1::RunState::Succeeded as i32);
    let a = c.aggregate.expect("aggregate");
    assert_eq!(a.count, params);
    assert_eq!(cents(a.sum), cents(expected_sum(params)), "exact aggregate");
}

/// The ttgctl binary, kept from this machine's contexts and connection
/// variables: no config file (TTG_CONFIG names one that does not exist),
/// no TTG_SERVER / TTG_CONTEXT / TTG_TOKEN / TTG_TOKEN_FILE.
pub fn ttgctl_cmd() -> Command {
    let mut c = Command::new(bin("ttgctl"));
    c.env(
        "TTG_CONFIG",
        std::env::temp_dir()
            .join("ttg-tests-no-config")
            .join("config"),
    );
    for v in [
        "TTG_SERVER",
        "TTG_CONTEXT",
        "TTG_TOKEN",
        "TTG_TOKEN_FILE",
        "TTG_CA",
        "TTG_CERT",
        "TTG_KEY",
    ] {
        c.env_remove(v);
    }
    c
}

/// Run ttgctl against `server`: (exit code, stdout, stderr).
pub fn ttgctl(server: &str, args: &[&str]) -> (i32, String, String) {
    let out = ttgctl_cmd()
        .arg("--server")
        .arg(server)
        .args(args)
        .output()
        .expect("run ttgctl");
    outcome(out)
}

/// A finished process's (exit code, stdout, stderr); -1 if a signal ended it.
pub fn outcome(out: std::process::Output) -> (i32, String, String) {
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// Write an executable script `name` with `body` into `dir`.
pub fn script(dir: &std::path::Path, name: &str, body: &str) -> PathBuf {
    use std::os::unix::fs::PermissionsExt;
    let p = dir.join(name);
    std::fs::write(&p, body).expect("write script");
    std::fs::set_permissions(&p, std::fs::Permissions::from_mode(0o755)).expect("chmod");
    p
}

/// The live agents (None if the server cannot be asked right now).
pub async fn live_agents(c: &ControlPlaneClient<Channel>) -> Option<Vec<ttg_proto::v1::AgentInfo>> {
    let mut c = c.clone();
    Some(
        c.list_agents(ttg_proto::v1::ListAgentsRequest {})
            .await
            .ok()?
            .into_inner()
            .agents,
    )
}

/// Wait until the live agents satisfy `ok`; returns what `ok` made of them.
pub async fn wait_agents<T>(
    c: &ControlPlaneClient<Channel>,
    what: &str,
    within: Duration,
    ok: impl Fn(&[ttg_proto::v1::AgentInfo]) -> Option<T>,
) -> T {
    let ok = &ok;
    wait_until(what, within, || async move { ok(&live_agents(c).await?) }).await
}

/// Up to `n` chunks of `kernel` the scheduler hands to `consumer`
/// (claim.lua, as an agent claims), in XREADGROUP's reply shape.
pub async fn claim_read(
    conn: &mut redis::aio::MultiplexedConnection,
    keys: &ttg_proto::keys::Keys,
    kernel: &str,
    consumer: &str,
    n: usize,
) -> redis::streams::StreamReadReply {
    let scripts = ttg_proto::scripts::Scripts::new();
    let reply = ttg_proto::sched::claim(
        conn,
        &scripts,
        keys,
        &[kernel.to_string()],
        consumer,
        n,
        &[],
    )
    .await
    .expect("claim");
    redis::streams::StreamReadReply { keys: reply.keys }
}

/// Up to `n` chunks claimed from the tasks stream `tasks` (`<prefix>tasks:<kernel>`)
/// for `consumer`, decoded: `(entry id, task entry)`.
pub async fn read_group(
    conn: &mut redis::aio::MultiplexedConnection,
    tasks: &str,
    consumer: &str,
    n: usize,
) -> Vec<(String, ttg_proto::records::TaskEntry)> {
    let (prefix, kernel) = tasks.rsplit_once("tasks:").expect("a tasks stream key");
    let keys = ttg_proto::keys::Keys::new(prefix);
    let r = claim_read(conn, &keys, kernel, consumer, n).await;
    r.keys
        .into_iter()
        .flat_map(|k| k.ids)
        .map(|e| {
            let entry = ttg_proto::records::TaskEntry::decode(&e.map).expect("task entry");
            (e.id, entry)
        })
        .collect()
}

/// An exec request: `program` over `params`, with extra args.
pub fn exec_req(
    params: u64,
    chunk: u64,
    program: &std::path::Path,
    extra: &[(&str, &str)],
    attempts: u32,
) -> SubmitRequest {
    let mut args: std::collections::HashMap<String, String> =
        [("program".to_string(), program.display().to_string())]
            .into_iter()
            .collect();
    args.extend(extra.iter().map(|(k, v)| (k.to_string(), v.to_string())));
    SubmitRequest {
        params,
        chunk_size: Some(chunk),
        kernel: "exec".into(),
        args,
        max_attempts: Some(attempts),
        name: "exec-test".into(),
        retention_s: None,
        fail_fast: None,
        ..Default::default()
    }
}

/// Watch a run to its end: its RunCompleted and every event.
pub async fn run_end(
    c: &mut ControlPlaneClient<Channel>,
    run: &str,
) -> (ttg_proto::v1::RunCompleted, Vec<Event>) {
    let events = watch_all(c, run, "").await;
    match events.last().and_then(|e| e.kind.clone()) {
        Some(ttg_proto::v1::event::Kind::RunCompleted(rc)) => (rc, events),
        other => panic!("run ended with {other:?}"),
    }
}

/// The failed attempts among `events`.
pub fn chunk_failures(events: &[Event]) -> Vec<ttg_proto::v1::ChunkFailed> {
    events
        .iter()
        .filter_map(|e| match &e.kind {
            Some(ttg_proto::v1::event::Kind::ChunkFailed(f)) => Some(f.clone()),
            _ => None,
        })
        .collect()
}

/// Whether process `pid` runs (a zombie does not).
pub fn alive(pid: u32) -> bool {
    std::fs::read_to_string(format!("/proc/{pid}/stat"))
        .map(|s| !s.contains(") Z "))
        .unwrap_or(false)
}

/// Live processes whose command line mentions `needle` (the test's own
/// temporary folder): what a test leaves behind.
pub fn processes_mentioning(needle: &str) -> Vec<(u32, String)> {
    let me = std::process::id();
    std::fs::read_dir("/proc")
        .into_iter()
        .flatten()
        .filter_map(|e| {
            let pid: u32 = e.ok()?.file_name().to_str()?.parse().ok()?;
            let cmd = std::fs::read(format!("/proc/{pid}/cmdline")).ok()?;
            let cmd = String::from_utf8_lossy(&cmd).replace('\0', " ");
            (pid != me && cmd.contains(needle) && alive(pid)).then_some((pid, cmd))
        })
        .collect()
}

/// A Python model program using the repository's library (`python/`, put
/// on `sys.path`): `body` defines `model`; `os`, `sys`, `time` and `ttg`
/// are imported and `placeholder(p)` gives the placeholder kernel's value.
pub fn py_model(dir: &std::path::Path, name: &str, body: &str) -> PathBuf {
    let lib = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../python");
    script(
        dir,
        name,
        &format!(
            "#!/usr/bin/env python3\nimport os, sys, time\nsys.path.insert(0, {lib:?})\nimport ttg\n\
             def placeholder(p):\n    m = p % 100\n    return float((7 * (p % 1000) + 13) % 1000) + (m / 10 if m < 10 else m / 100)\n\
             {body}\nif __name__ == '__main__':\n    ttg.serve(model)\n",
            lib = lib.display().to_string(),
        ),
    )
}

/// Wait (10 s at most) until no live process mentions `dir` on its command
/// line: nothing a test's programs started is left behind.
pub async fn assert_nothing_left(dir: &std::path::Path) {
    let needle = dir.display().to_string();
    wait_until(
        "no process of the test's programs is left",
        Duration::from_secs(10),
        || {
            let left = processes_mentioning(&needle);
            async move { left.is_empty().then_some(()) }
        },
    )
    .await;
}

/// A completion of `task`, delivered as `entry`, with `values`, as an agent
/// named "tester" sends it (a ChunkCompleted event with the values' sum).
pub fn tester_chunk(
    run_id: &str,
    entry: &str,
    task: &ttg_proto::v1::Task,
    values: &[f64],
) -> ttg_proto::scripts::ChunkResult {
    use ttg_proto::v1::{event, ChunkCompleted};
    let body = ttg_proto::records::event_body(
        run_id,
        event::Kind::ChunkCompleted(ChunkCompleted {
            chunk_index: task.chunk_index,
            start: task.start,
            end: task.end,
            agent_id: "tester".into(),
            attempt: 1,
            sum: values.iter().sum(),
            compute_ms: 0,
        }),
    );
    ttg_proto::scripts::ChunkResult::new(entry, task.chunk_index, task.start, values, body)
}
