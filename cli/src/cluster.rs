//! A local cluster on one machine: a private `redis-server` (unless a URL is
//! given; a private Redis Cluster with `--redis-cluster`, see
//! `redis_cluster.rs`), `ttg-server` and N `ttg-agent`s as child processes, logs in one
//! folder. Used by `ttgctl up` and `ttgctl demo`. Children die with us (even
//! if we are SIGKILLed), and [`Cluster::stop`] drains agents before the rest.
//!
//! Other users of the machine get nothing: the folder has a random name, is
//! created 0700 and must not exist before (so nobody can plant or read the
//! tokens file), the private Redis requires a random password (its config
//! file, 0600, is in that folder), and secrets reach the children by
//! environment or file, never on a command line (`/proc/*/cmdline` is
//! world-readable; `/proc/*/environ` is not).

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::{Duration, Instant};

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::process::{Child, Command};
use tonic_health::pb::health_check_response::ServingStatus;
use tonic_health::pb::health_client::HealthClient;
use tonic_health::pb::HealthCheckRequest;

use crate::client::{CliError, CliResult};
use crate::sys;

/// What to start: `ttgctl up`'s flags.
#[derive(clap::Args, Clone, Debug)]
pub struct ClusterOpts {
    /// Number of agents, 1..=256.
    #[arg(long, default_value_t = 3)]
    pub agents: u32,
    /// Chunks each agent computes at once, 1..=1024 [default: number of CPUs].
    #[arg(long)]
    pub concurrency: Option<u32>,
    /// Use this Redis instead of starting a private redis-server.
    #[arg(long, conflicts_with = "data_dir")]
    pub redis_url: Option<String>,
    /// Start a private Redis Cluster of this many primaries (3..=16), each with a replica, instead of one redis-server, and spread runs over them (one slot group per primary): to try TTG on a cluster and its failover (kill a primary: its replica takes over within seconds). Its data lives in the cluster's temporary folder.
    #[arg(long, value_name = "PRIMARIES", conflicts_with_all = ["redis_url", "data_dir"])]
    pub redis_cluster: Option<u32>,
    /// Keep the private Redis's data (its AOF) in this folder: runs survive Ctrl-C, and a later `up --data-dir DIR` finds them again [default: a temporary folder, removed on exit].
    #[arg(long, value_name = "DIR")]
    pub data_dir: Option<PathBuf>,
    /// Address the server listens on; it must be free.
    #[arg(long, default_value = "127.0.0.1:50051")]
    pub listen: SocketAddr,
    /// Redis key prefix.
    #[arg(long, default_value = "ttg:")]
    pub prefix: String,
    /// Let the agents run users' programs with the exec kernel.
    #[arg(long)]
    pub allow_exec: bool,
    /// Serve Prometheus metrics from the server and from each agent, each on its own free port (printed at start).
    #[arg(long)]
    pub metrics: bool,
}

/// A running local cluster.
pub struct Cluster {
    /// Token with the client role for this cluster.
    pub client_token: String,
    agent_token: String,
    /// Server URL for clients.
    pub server_url: String,
    /// The web dashboard's URL (a free loopback port).
    pub dashboard_url: String,
    /// Redis URL (with a private Redis Cluster: its description, no
    /// password).
    pub redis_url: String,
    /// The variable that tells the server and agents where Redis is, and
    /// its value (it may hold a password: never on a command line).
    redis_env: (&'static str, String),
    /// The private Redis Cluster's nodes, with `--redis-cluster`.
    redis_nodes: Vec<(u16, Child)>,
    /// Folder with logs (and the private Redis's data).
    pub dir: PathBuf,
    redis: Option<Child>,
    server: Option<Child>,
    /// Agent processes, in start order.
    pub agents: Vec<Child>,
    opts: ClusterOpts,
    next_agent: u32,
    /// Metrics addresses, `(name, address)`, when `--metrics` was given.
    pub metrics: Vec<(String, SocketAddr)>,
    /// The `--data-dir` lock, held while the cluster runs.
    _data_lock: Option<std::fs::File>,
}

impl ClusterOpts {
    /// Chunks each agent computes at once: the flag, else this machine's CPUs.
    pub fn concurrency_now(&self) -> u32 {
        self.concurrency
            .unwrap_or_else(|| std::thread::available_parallelism().map_or(1, |n| n.get() as u32))
    }

    /// Refuse out-of-range flags before anything starts.
    pub fn check(&self) -> CliResult<()> {
        if self.agents == 0 || self.agents > 256 {
            return Err(CliError::usage(format!(
                "--agents must be in 1..=256, got {}",
                self.agents
            )));
        }
        if let Some(n) = self
            .redis_cluster
            .filter(|n| !crate::redis_cluster::PRIMARIES.contains(n))
        {
            return Err(CliError::usage(format!(
                "--redis-cluster must be in 3..=16 primaries (Redis Cluster needs 3), got {n}"
            )));
        }
        if let Some(c) = self.concurrency.filter(|c| !(1..=1024).contains(c)) {
            return Err(CliError::usage(format!(
                "--concurrency must be in 1..=1024, got {c}"
            )));
        }
        Ok(())
    }
}

/// The data folder of `--data-dir`: created 0700 if missing, refused if
/// others can write it, and locked so two clusters never share one Redis
/// data folder. Returns the lock (held while the cluster runs).
fn take_data_dir(dir: &Path) -> CliResult<std::fs::File> {
    use std::os::unix::fs::{DirBuilderExt, MetadataExt, OpenOptionsExt};
    if !dir.exists() {
        std::fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(dir)
            .map_err(|e| CliError::usage(format!("--data-dir {}: {e}", dir.display())))?;
    }
    let meta = std::fs::metadata(dir)
        .map_err(|e| CliError::usage(format!("--data-dir {}: {e}", dir.display())))?;
    // Our uid: /proc/self belongs to it.
    let me = std::fs::metadata("/proc/self")
        .map(|m| m.uid())
        .unwrap_or(u32::MAX);
    if !meta.is_dir() || meta.uid() != me || meta.mode() & 0o022 != 0 {
        return Err(CliError::usage(format!(
            "--data-dir {}: must be a folder of yours that others cannot write (mode {:o}, owner {})",
            dir.display(),
            meta.mode() & 0o777,
            meta.uid()
        )));
    }
    let lock_path = dir.join("ttg-up.lock");
    let lock = std::fs::OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .mode(0o600)
        .open(&lock_path)
        .map_err(|e| CliError::usage(format!("{}: {e}", lock_path.display())))?;
    if !sys::try_lock_exclusive(&lock) {
        return Err(CliError::usage(format!(
            "--data-dir {} is in use by another `ttgctl up`: stop it first, or pick another folder",
            dir.display()
        )));
    }
    Ok(lock)
}

/// Find a TTG binary: beside this `ttgctl` first (cargo puts them together),
/// then `TTG_BIN_DIR`, then PATH.
pub fn find_binary(name: &str) -> CliResult<PathBuf> {
    let mut candidates = Vec::new();
    if let Ok(exe) = std::env::current_exe() {
        candidates.push(exe.with_file_name(name));
    }
    if let Some(d) = std::env::var_os("TTG_BIN_DIR") {
        candidates.push(Path::new(&d).join(name));
    }
    if let Some(path) = std::env::var_os("PATH") {
        candidates.extend(std::env::split_paths(&path).map(|d| d.join(name)));
    }
    candidates.into_iter().find(|p| p.is_file()).ok_or_else(|| {
        CliError::usage(format!(
            "cannot find {name}: build the workspace (`cargo build --release`) or put {name} on PATH"
        ))
    })
}

/// 32 hex characters from the OS's random source.
pub fn random_token() -> CliResult<String> {
    use std::io::Read;
    let mut b = [0u8; 16];
    std::fs::File::open("/dev/urandom")?.read_exact(&mut b)?;
    Ok(b.iter().map(|x| format!("{x:02x}")).collect())
}

/// Write a file only its owner can read.
pub fn write_private(path: &Path, text: &str) -> CliResult<()> {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(path)?;
    f.write_all(text.as_bytes())?;
    Ok(())
}

/// A free loopback port (bound, read, released).
pub fn free_port() -> CliResult<u16> {
    let l = std::net::TcpListener::bind("127.0.0.1:0")?;
    Ok(l.local_addr()?.port())
}

pub(crate) async fn redis_ping(port: u16, password: &str) -> bool {
    let Ok(mut s) = tokio::net::TcpStream::connect(("127.0.0.1", port)).await else {
        return false;
    };
    let cmd = format!("AUTH {password}\r\nPING\r\n");
    if s.write_all(cmd.as_bytes()).await.is_err() {
        return false;
    }
    // "+OK\r\n+PONG\r\n", possibly in two reads.
    let mut buf = Vec::new();
    let read = async {
        let mut b = [0u8; 32];
        while !buf.ends_with(b"+PONG\r\n") && buf.len() < 64 {
            match s.read(&mut b).await {
                Ok(0) | Err(_) => break,
                Ok(n) => buf.extend_from_slice(&b[..n]),
            }
        }
    };
    let _ = tokio::time::timeout(Duration::from_secs(1), read).await;
    buf == b"+OK\r\n+PONG\r\n"
}

/// A new folder only this user can enter: a random name under the temp
/// folder, created with mode 0700, failing if anything is already there
/// (never reused: a folder someone else made could be theirs to read).
pub fn private_dir() -> CliResult<PathBuf> {
    use std::os::unix::fs::{DirBuilderExt, MetadataExt, PermissionsExt};
    let dir = std::env::temp_dir().join(format!("ttg-local-{}", random_token()?));
    std::fs::DirBuilder::new()
        .mode(0o700)
        .create(&dir)
        .map_err(|e| CliError::usage(format!("cannot create {}: {e}", dir.display())))?;
    // We just created it (create fails on anything existing, symlinks
    // included), so it is ours; the mode is checked against an odd umask.
    let meta = std::fs::symlink_metadata(&dir)?;
    if !meta.is_dir() || meta.permissions().mode() & 0o077 != 0 {
        return Err(CliError::usage(format!(
            "{} is not a private folder (mode {:o}, owner {}): refusing to use it",
            dir.display(),
            meta.permissions().mode() & 0o777,
            meta.uid()
        )));
    }
    Ok(dir)
}

/// Wait until the server's health check says SERVING.
pub async fn wait_serving(url: &str, within: Duration) -> CliResult<()> {
    let deadline = Instant::now() + within;
    loop {
        if let Ok(ch) = tonic::transport::Endpoint::from_shared(url.to_string())
            .map_err(|e| CliError::usage(e.to_string()))?
            .connect()
            .await
        {
            let mut h = HealthClient::new(ch);
            if let Ok(r) = h
                .check(HealthCheckRequest {
                    service: String::new(),
                })
                .await
            {
                if r.get_ref().status == ServingStatus::Serving as i32 {
                    return Ok(());
                }
            }
        }
        if Instant::now() > deadline {
            return Err(CliError::unavailable(format!(
                "server at {url} did not become healthy within {within:?}"
            )));
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

impl Cluster {
    /// Start everything and wait until it is ready. The server requires
    /// tokens: a client token ([`Cluster::client_token`]) and an agent token
    /// are generated into the cluster's folder, readable by this user only.
    pub async fn start(opts: ClusterOpts) -> CliResult<Cluster> {
        opts.check()?;
        // Before anything else: a busy address would make the readiness
        // check below reach another server.
        crate::ports::check_free(opts.listen).map_err(CliError::usage)?;
        let data_lock = opts.data_dir.as_deref().map(take_data_dir).transpose()?;
        let dir = private_dir()?;
        let (client_token, agent_token) = (random_token()?, random_token()?);
        let tokens = dir.join("tokens");
        write_private(
            &tokens,
            &format!("client {client_token} local-user\nagent {agent_token} local-agents\n"),
        )?;
        let server_bin = find_binary("ttg-server")?;
        find_binary("ttg-agent")?;
        let mut cluster = Cluster {
            client_token,
            agent_token,
            server_url: format!("http://{}", opts.listen),
            dashboard_url: String::new(),
            redis_url: String::new(),
            redis_env: ("TTG_REDIS_URL", String::new()),
            redis_nodes: Vec::new(),
            dir,
            redis: None,
            server: None,
            agents: Vec::new(),
            opts: opts.clone(),
            next_agent: 0,
            metrics: Vec::new(),
            _data_lock: data_lock,
        };
        match (&opts.redis_url, opts.redis_cluster) {
            (Some(u), _) => cluster.redis_url = u.clone(),
            (None, Some(n)) => match crate::redis_cluster::start(&cluster.dir, n).await {
                Ok(rc) => {
                    cluster.redis_url = rc.describe();
                    cluster.redis_env = ("TTG_REDIS_CLUSTER", rc.seeds);
                    cluster.redis_nodes = rc.nodes;
                }
                Err((e, nodes)) => {
                    cluster.redis_nodes = nodes;
                    cluster.stop_keeping_logs().await;
                    return Err(e);
                }
            },
            (None, None) => cluster.redis_url = cluster.start_redis().await?,
        }
        if cluster.redis_env.1.is_empty() {
            cluster.redis_env.1 = cluster.redis_url.clone();
        }
        let log = cluster.log("server")?;
        let http = SocketAddr::from(([127, 0, 0, 1], free_port()?));
        cluster.dashboard_url = format!("http://{http}/");
        let mut cmd = Command::new(server_bin);
        cmd.arg("--listen")
            .arg(opts.listen.to_string())
            .arg("--http-addr")
            .arg(http.to_string())
            .env(cluster.redis_env.0, &cluster.redis_env.1)
            .arg("--prefix")
            .arg(&opts.prefix)
            .arg("--tokens-file")
            .arg(&tokens)
            .args(cluster.metrics_flag("server")?)
            .stdin(Stdio::null())
            .stdout(log.try_clone()?)
            .stderr(log);
        // A private cluster: one slot group per primary, so runs spread
        // over all of them (a fresh installation: the number is free).
        if let Some(n) = opts.redis_cluster {
            cmd.arg("--slot-groups").arg(n.to_string());
        }
        sys::child_dies_with_us(&mut cmd, libc::SIGTERM);
        cluster.server = Some(cmd.spawn()?);
        // Healthy, and ours: the server we started is still running (it
        // exiting, say on a bad flag, ends the wait at once).
        let deadline = Instant::now() + Duration::from_secs(15);
        let failure = loop {
            if let Some(e) = cluster.exited() {
                break Some(e);
            }
            if wait_serving(&cluster.server_url, Duration::from_millis(200))
                .await
                .is_ok()
            {
                break cluster.exited();
            }
            if Instant::now() > deadline {
                break Some(format!(
                    "server at {} did not become healthy within 15 s",
                    cluster.server_url
                ));
            }
        };
        if let Some(e) = failure {
            let tail = cluster.tail("server");
            cluster.stop_keeping_logs().await;
            let msg = format!(
                "{e}; server log (kept in {}):\n{tail}",
                cluster.dir.display()
            );
            // The server refused its flags (EX_USAGE): ours to fix.
            return Err(if e.contains("exit status: 64") {
                CliError::usage(msg)
            } else {
                CliError::unavailable(msg)
            });
        }
        for _ in 0..opts.agents {
            cluster.add_agent()?;
        }
        Ok(cluster)
    }

    fn log(&self, name: &str) -> CliResult<std::fs::File> {
        Ok(std::fs::File::create(self.dir.join(format!("{name}.log")))?)
    }

    /// Last lines of a component's log.
    pub fn tail(&self, name: &str) -> String {
        let s = std::fs::read_to_string(self.dir.join(format!("{name}.log"))).unwrap_or_default();
        let lines: Vec<&str> = s.lines().collect();
        lines[lines.len().saturating_sub(15)..].join("\n")
    }

    async fn start_redis(&mut self) -> CliResult<String> {
        let bin = find_binary("redis-server").map_err(|_| {
            CliError::usage(
                "redis-server not found: install it (Debian/Ubuntu: `sudo apt-get install -y redis-server`, macOS: `brew install redis`) or pass --redis-url",
            )
        })?;
        let port = free_port()?;
        let password = random_token()?;
        let conf = self.dir.join("redis.conf");
        // Quoted: the folder name is ours (temp dir + random hex), but a
        // TMPDIR with spaces must not break the config.
        write_private(
            &conf,
            &format!(
                "port {port}\nbind 127.0.0.1\ndir \"{}\"\nsave \"\"\nappendonly yes\nrequirepass {password}\n",
                self.opts.data_dir.as_deref().unwrap_or(&self.dir).display()
            ),
        )?;
        let log = self.log("redis")?;
        let mut cmd = Command::new(bin);
        cmd.arg(&conf)
            .stdin(Stdio::null())
            .stdout(log.try_clone()?)
            .stderr(log);
        sys::child_dies_with_us(&mut cmd, libc::SIGTERM);
        self.redis = Some(cmd.spawn()?);
        let deadline = Instant::now() + Duration::from_secs(10);
        while !redis_ping(port, &password).await {
            if Instant::now() > deadline {
                return Err(CliError::unavailable(format!(
                    "redis-server did not start:\n{}",
                    self.tail("redis")
                )));
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        Ok(format!("redis://:{password}@127.0.0.1:{port}"))
    }

    /// Start one more agent.
    pub fn add_agent(&mut self) -> CliResult<u32> {
        self.next_agent += 1;
        let n = self.next_agent;
        let log = self.log(&format!("agent-{n}"))?;
        let mut cmd = Command::new(find_binary("ttg-agent")?);
        cmd.arg("--server")
            .arg(&self.server_url)
            .env(self.redis_env.0, &self.redis_env.1)
            .arg("--prefix")
            .arg(&self.opts.prefix)
            .arg("--agent-id")
            .arg(format!("local-{}-{n}", std::process::id()))
            .env("TTG_TOKEN", &self.agent_token)
            .stdin(Stdio::null())
            .stdout(log.try_clone()?)
            .stderr(log);
        if let Some(c) = self.opts.concurrency {
            cmd.arg("--concurrency").arg(c.to_string());
        }
        if self.opts.allow_exec {
            cmd.arg("--allow-exec");
        }
        cmd.args(self.metrics_flag(&format!("agent-{n}"))?);
        sys::child_dies_with_us(&mut cmd, libc::SIGTERM);
        self.agents.push(cmd.spawn()?);
        Ok(n)
    }

    /// `--metrics-addr <free loopback port>` for component `name` (and
    /// remember it), or nothing without `--metrics`.
    fn metrics_flag(&mut self, name: &str) -> CliResult<Vec<String>> {
        if !self.opts.metrics {
            return Ok(Vec::new());
        }
        let addr = SocketAddr::from(([127, 0, 0, 1], free_port()?));
        self.metrics.push((name.to_string(), addr));
        Ok(vec!["--metrics-addr".into(), addr.to_string()])
    }

    /// A child that exited on its own, if any: its name and status.
    pub fn exited(&mut self) -> Option<String> {
        if let Some(c) = self.redis.as_mut() {
            if let Ok(Some(s)) = c.try_wait() {
                return Some(format!("redis-server exited ({s})"));
            }
        }
        // A cluster node may go (a primary killed to try a failover); all
        // of them gone is the end.
        if !self.redis_nodes.is_empty()
            && self
                .redis_nodes
                .iter_mut()
                .all(|(_, c)| matches!(c.try_wait(), Ok(Some(_))))
        {
            return Some("every node of the Redis Cluster exited".into());
        }
        if let Some(c) = self.server.as_mut() {
            if let Ok(Some(s)) = c.try_wait() {
                return Some(format!("ttg-server exited ({s})"));
            }
        }
        None
    }

    /// Drain agents (SIGTERM, then SIGKILL after 15 s), then stop the server
    /// and Redis, and remove the folder (logs, secrets, and the private
    /// Redis's data unless it lives in `--data-dir`).
    pub async fn stop(&mut self) {
        self.stop_children().await;
        // Ours (see private_dir): logs, secrets and, unless it lives in
        // --data-dir or --redis-url was given, the private Redis's data.
        let _ = std::fs::remove_dir_all(&self.dir);
    }

    /// Stop as [`Cluster::stop`] but keep the folder: something failed and
    /// its logs say what.
    pub async fn stop_keeping_logs(&mut self) {
        self.stop_children().await;
        for secret in ["tokens", "redis.conf", "client.token"] {
            let _ = std::fs::remove_file(self.dir.join(secret));
        }
        for (port, _) in &self.redis_nodes {
            let _ = std::fs::remove_file(self.dir.join(format!("redis-{port}/redis.conf")));
        }
    }

    async fn stop_children(&mut self) {
        for a in &self.agents {
            if let Some(pid) = a.id() {
                sys::signal(pid, libc::SIGTERM);
            }
        }
        for a in self.agents.iter_mut() {
            stop_child(a, Duration::from_secs(15)).await;
        }
        if let Some(s) = self.server.as_mut() {
            if let Some(pid) = s.id() {
                sys::signal(pid, libc::SIGTERM);
            }
            stop_child(s, Duration::from_secs(5)).await;
        }
        if let Some(r) = self.redis.as_mut() {
            if let Some(pid) = r.id() {
                sys::signal(pid, libc::SIGTERM);
            }
            stop_child(r, Duration::from_secs(5)).await;
        }
        for (_, r) in &self.redis_nodes {
            if let Some(pid) = r.id() {
                sys::signal(pid, libc::SIGTERM);
            }
        }
        for (_, r) in self.redis_nodes.iter_mut() {
            stop_child(r, Duration::from_secs(5)).await;
        }
    }
}

async fn stop_child(c: &mut Child, grace: Duration) {
    if tokio::time::timeout(grace, c.wait()).await.is_err() {
        let _ = c.kill().await;
    }
}
