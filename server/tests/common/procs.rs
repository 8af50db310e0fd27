//! The processes a test runs: a private `redis-server`, the server in
//! process or as the real binary, agents as real processes or in process.

use super::*;

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
        sigkill(&mut self.child);
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
        sigkill(&mut self.child);
    }
}

impl Drop for ServerProc {
    fn drop(&mut self) {
        self.kill();
    }
}

/// SIGKILL a child process, if there is one, and reap it.
pub fn sigkill(child: &mut Option<Child>) {
    if let Some(mut c) = child.take() {
        let _ = c.kill();
        let _ = c.wait();
    }
}
