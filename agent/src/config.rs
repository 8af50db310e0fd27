//! Agent settings: command-line flags, each with a `TTG_…` environment variable.

use std::time::Duration;

pub use ttg_proto::runtime::ConfigError;
use ttg_proto::telemetry::LogFormat;

/// `ttg-agent` configuration.
#[derive(clap::Parser, Clone, Debug)]
#[command(
    name = "ttg-agent",
    version,
    about = "TTG worker agent: claims chunks from Redis Streams, computes them, completes them atomically"
)]
pub struct Config {
    /// Server gRPC URL for the session, or several replicas' URLs comma-separated, tried in turn (default http://127.0.0.1:50051).
    #[arg(long, env = "TTG_SERVER", default_value = "http://127.0.0.1:50051")]
    pub server: String,

    /// Bearer token with the agent role (required unless the server runs --insecure-no-auth).
    #[arg(long, env = "TTG_TOKEN", hide_env_values = true)]
    pub token: Option<String>,

    /// PEM CA of the server's certificate, for https:// server URLs (default: system roots).
    #[arg(long, env = "TTG_CA")]
    pub ca: Option<std::path::PathBuf>,

    /// PEM client certificate, for a server requiring mutual TLS; needs --key.
    #[arg(long, env = "TTG_CERT", requires = "key")]
    pub cert: Option<std::path::PathBuf>,

    /// PEM key of --cert.
    #[arg(long, env = "TTG_KEY", requires = "cert")]
    pub key: Option<std::path::PathBuf>,

    /// Redis URL (default redis://127.0.0.1:6379).
    #[arg(long, env = "TTG_REDIS_URL", default_value = "redis://127.0.0.1:6379")]
    pub redis_url: String,

    /// Redis Cluster seed nodes, comma-separated redis:// (or rediss://) URLs; when set, --redis-url is not used and every key carries one hash tag (see docs/architecture.md).
    #[arg(long, env = "TTG_REDIS_CLUSTER")]
    pub redis_cluster: Option<String>,

    /// PEM CA that signed Redis's certificate, for rediss:// URLs with a private CA (default: system roots).
    #[arg(long, env = "TTG_REDIS_CA")]
    pub redis_ca: Option<std::path::PathBuf>,

    /// Prefix of every Redis key (default "ttg:"); must match the server's.
    #[arg(long, env = "TTG_PREFIX", default_value = "ttg:")]
    pub prefix: String,

    /// Agent id, also its consumer name (default <host>-<pid>-<random>); must be unique.
    #[arg(long, env = "TTG_AGENT_ID")]
    pub agent_id: Option<String>,

    /// Chunks computed at once (default: number of CPUs).
    #[arg(long, env = "TTG_CONCURRENCY")]
    pub concurrency: Option<u32>,

    /// Kernels to offer, comma-separated (default: every built-in kernel).
    #[arg(long, env = "TTG_KERNELS", value_delimiter = ',')]
    pub kernels: Vec<String>,

    /// Offer the `exec` kernel, which runs users' programs (off by default: an agent runs no arbitrary program unless told to).
    #[arg(long, env = "TTG_ALLOW_EXEC")]
    pub allow_exec: bool,

    /// With --allow-exec: the only programs `exec` may run, comma-separated paths of files or directories (default: any).
    #[arg(
        long,
        env = "TTG_EXEC_ALLOW",
        value_delimiter = ',',
        requires = "allow_exec"
    )]
    pub exec_allow: Vec<String>,

    /// With --allow-exec: seconds an idle `mode=worker` program is kept before it is stopped (default 60).
    #[arg(long, env = "TTG_EXEC_IDLE_S", default_value_t = 60.0)]
    pub exec_idle_s: f64,

    /// On SIGTERM, how long to finish held chunks before abandoning them to be reclaimed (default 30s).
    #[arg(long, env = "TTG_DRAIN_TIMEOUT", default_value = "30s", value_parser = humantime::parse_duration)]
    pub drain_timeout: Duration,

    /// After each completion, wait until this many replicas hold it (Redis WAIT, 0..=16; default 0: do not wait). Narrows what a primary's failover can cost; see docs/operations.md.
    #[arg(long, env = "TTG_REDIS_WAIT_REPLICAS", default_value_t = 0)]
    pub redis_wait_replicas: u32,

    /// With --redis-wait-replicas: the longest wait for the replicas (default 1s); a completion past it is counted in ttg_agent_completions_unreplicated_total.
    #[arg(long, env = "TTG_REDIS_WAIT_TIMEOUT", default_value = "1s", value_parser = humantime::parse_duration)]
    pub redis_wait_timeout: Duration,

    /// Log format: auto (text on a terminal, JSON otherwise), text or json (default auto).
    #[arg(long, env = "TTG_LOG_FORMAT", default_value = "auto")]
    pub log_format: LogFormat,

    /// Serve Prometheus metrics on http://ADDR/metrics (default: off). Its own variable, not the server's TTG_METRICS_ADDR: processes sharing an environment (ttgctl up) must not all bind one port.
    #[arg(long, env = "TTG_AGENT_METRICS_ADDR")]
    pub metrics_addr: Option<std::net::SocketAddr>,
}

impl Config {
    /// Where Redis is: `--redis-cluster` when given, else `--redis-url`.
    pub fn redis_target(&self) -> redis::RedisResult<ttg_proto::redis_target::Target> {
        ttg_proto::redis_target::Target::open(
            &self.redis_url,
            self.redis_cluster.as_deref(),
            self.redis_ca.as_deref(),
        )
    }

    /// Check what clap's types cannot; the message names the flag.
    pub fn validate(&self) -> Result<(), ConfigError> {
        ttg_proto::runtime::check_wait_flags(self.redis_wait_replicas, self.redis_wait_timeout)?;
        if let Some(c) = self.concurrency {
            if !(1..=1024).contains(&c) {
                return Err(ConfigError::Invalid(format!(
                    "--concurrency must be in 1..=1024, got {c}"
                )));
            }
        }
        if !(self.exec_idle_s.is_finite() && (0.01..=86_400.0).contains(&self.exec_idle_s)) {
            return Err(ConfigError::Invalid(format!(
                "--exec-idle-s must be in 0.01..=86400 seconds, got {}",
                self.exec_idle_s
            )));
        }
        if let Some(id) = &self.agent_id {
            if !ttg_proto::keys::valid_agent_id(id) {
                return Err(ConfigError::Invalid(
                    "--agent-id must be 1..=64 characters of letters, digits and '-'".into(),
                ));
            }
        }
        ttg_proto::runtime::check_redis_flags(
            &self.prefix,
            &self.redis_url,
            self.redis_cluster.as_deref(),
            self.redis_ca.as_deref(),
        )?;
        for url in self.server.split(',').map(str::trim) {
            ttg_proto::client::endpoint(url, &self.connect_opts()).map_err(|source| {
                ConfigError::Client {
                    flag: "--server",
                    source,
                }
            })?;
        }
        ttg_proto::client::Bearer::new(self.token.as_deref()).map_err(|source| {
            ConfigError::Client {
                flag: "--token",
                source,
            }
        })?;
        Ok(())
    }

    /// How to reach the server.
    pub fn connect_opts(&self) -> ttg_proto::client::ConnectOpts {
        ttg_proto::client::ConnectOpts {
            token: self.token.clone(),
            ca: self.ca.clone(),
            cert: self.cert.clone(),
            key: self.key.clone(),
        }
    }

    /// Concurrency to use.
    pub fn effective_concurrency(&self) -> u32 {
        self.concurrency.unwrap_or_else(|| {
            std::thread::available_parallelism()
                .map(|n| n.get() as u32)
                .unwrap_or(1)
        })
    }

    /// Agent id to use.
    pub fn effective_agent_id(&self) -> String {
        self.agent_id.clone().unwrap_or_else(|| {
            let host: String = hostname()
                .chars()
                .filter(|c| c.is_ascii_alphanumeric() || *c == '-')
                .take(40)
                .collect();
            format!(
                "{}-{}-{:04x}",
                if host.is_empty() { "agent" } else { &host },
                std::process::id(),
                rand_u16()
            )
        })
    }

    /// Settings for tests and embedding: everything default but these.
    pub fn for_test(server: &str, redis_url: &str, prefix: &str, concurrency: u32) -> Self {
        use clap::Parser;
        let mut c = Config::parse_from(["ttg-agent"]);
        c.server = server.to_string();
        c.redis_url = redis_url.to_string();
        c.prefix = prefix.to_string();
        c.concurrency = Some(concurrency);
        c
    }
}

/// This machine's host name.
pub fn hostname() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .map(|s| s.trim().to_string())
        .or_else(|_| std::env::var("HOSTNAME"))
        .unwrap_or_default()
}

fn rand_u16() -> u16 {
    use std::hash::{BuildHasher, Hasher};
    let mut h = std::collections::hash_map::RandomState::new().build_hasher();
    h.write_u128(
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_nanos())
            .unwrap_or(0),
    );
    h.finish() as u16
}
