//! Server settings: command-line flags, each with a `TTG_…` environment variable.

use std::net::SocketAddr;
use std::time::Duration;

pub use ttg_proto::runtime::ConfigError;
use ttg_proto::telemetry::LogFormat;

/// `ttg-server` configuration.
#[derive(clap::Parser, Clone, Debug)]
#[command(
    name = "ttg-server",
    version,
    about = "TTG control plane: gRPC API and agent sessions over Redis Streams"
)]
pub struct Config {
    /// Address to serve gRPC on (default 127.0.0.1:50051; use 0.0.0.0:50051 in a container).
    #[arg(long, env = "TTG_LISTEN", default_value = "127.0.0.1:50051")]
    pub listen: SocketAddr,

    /// Redis URL (default redis://127.0.0.1:6379).
    #[arg(long, env = "TTG_REDIS_URL", default_value = "redis://127.0.0.1:6379")]
    pub redis_url: String,

    /// Redis Cluster seed nodes, comma-separated redis:// (or rediss://) URLs; when set, --redis-url is not used and every key carries one hash tag (see docs/architecture.md).
    #[arg(long, env = "TTG_REDIS_CLUSTER")]
    pub redis_cluster: Option<String>,

    /// PEM CA that signed Redis's certificate, for rediss:// URLs with a private CA (default: system roots).
    #[arg(long, env = "TTG_REDIS_CA")]
    pub redis_ca: Option<std::path::PathBuf>,

    /// Prefix of every Redis key (default "ttg:"); installations sharing a Redis need different ones.
    #[arg(long, env = "TTG_PREFIX", default_value = "ttg:")]
    pub prefix: String,

    /// Spread runs over this many slot groups (1..=64), each a hash slot of its own: on a Redis Cluster, a multiple of its primaries spreads the load over all of them. Fixed once an installation has more than one; without the flag, whatever the installation has (one when new). See docs/architecture.md.
    #[arg(long, env = "TTG_SLOT_GROUPS")]
    pub slot_groups: Option<u32>,

    /// How often agents send heartbeats (default 1s); sent to agents in Welcome.
    #[arg(long, env = "TTG_HEARTBEAT_INTERVAL", default_value = "1s", value_parser = humantime::parse_duration)]
    pub heartbeat_interval: Duration,

    /// An agent with no heartbeat for this long loses its chunks (default 3s).
    #[arg(long, env = "TTG_LEASE", default_value = "3s", value_parser = humantime::parse_duration)]
    pub lease: Duration,

    /// Deadline of every Redis call made for a request (default 5s); past it the RPC answers Unavailable.
    #[arg(long, env = "TTG_REDIS_TIMEOUT", default_value = "5s", value_parser = humantime::parse_duration)]
    pub redis_timeout: Duration,

    /// After each Submit, Cancel, Retry and Delete, wait until this many replicas hold what it wrote before answering (Redis WAIT, 0..=16; default 0: do not wait). See docs/operations.md.
    #[arg(long, env = "TTG_REDIS_WAIT_REPLICAS", default_value_t = 0)]
    pub redis_wait_replicas: u32,

    /// With --redis-wait-replicas: the longest wait for the replicas (default 1s); a request past it still succeeds and is counted in ttg_server_writes_unreplicated_total.
    #[arg(long, env = "TTG_REDIS_WAIT_TIMEOUT", default_value = "1s", value_parser = humantime::parse_duration)]
    pub redis_wait_timeout: Duration,

    /// Log format: auto (text on a terminal, JSON otherwise), text or json (default auto).
    #[arg(long, env = "TTG_LOG_FORMAT", default_value = "auto")]
    pub log_format: LogFormat,

    /// Serve Prometheus metrics on http://ADDR/metrics (default: off).
    #[arg(long, env = "TTG_METRICS_ADDR")]
    pub metrics_addr: Option<SocketAddr>,

    /// Serve the web dashboard on ADDR (https when --tls-cert is given), e.g. 127.0.0.1:8080 [default: off: a second port is opened only when asked for; `ttgctl up` and the Kubernetes overlays ask].
    #[arg(long, env = "TTG_HTTP_ADDR")]
    pub http_addr: Option<SocketAddr>,

    /// Link each run to its trace in this tracing UI: a URL with `{trace_id}` in it, e.g. http://jaeger:16686/trace/{trace_id}.
    #[arg(long, env = "TTG_TRACE_URL_TEMPLATE")]
    pub trace_url_template: Option<String>,

    /// Bearer tokens with roles, one `<role> <token> [<name>]` per line; re-read when it changes (required unless --insecure-no-auth).
    #[arg(long, env = "TTG_TOKENS_FILE")]
    pub tokens_file: Option<std::path::PathBuf>,

    /// Accept every request without a token. For a single-user machine only.
    #[arg(long, env = "TTG_INSECURE_NO_AUTH")]
    pub insecure_no_auth: bool,

    /// PEM certificate (chain) to serve gRPC over TLS (default: plaintext); needs --tls-key.
    #[arg(long, env = "TTG_TLS_CERT", requires = "tls_key")]
    pub tls_cert: Option<std::path::PathBuf>,

    /// PEM private key of --tls-cert.
    #[arg(long, env = "TTG_TLS_KEY", requires = "tls_cert")]
    pub tls_key: Option<std::path::PathBuf>,

    /// PEM CA: require client certificates signed by it (mutual TLS); needs --tls-cert.
    #[arg(long, env = "TTG_CLIENT_CA", requires = "tls_cert")]
    pub client_ca: Option<std::path::PathBuf>,

    /// How often the janitor removes runs whose retention ended (default 5s).
    #[arg(long, env = "TTG_JANITOR_INTERVAL", default_value = "5s", value_parser = humantime::parse_duration)]
    pub janitor_interval: Duration,

    /// How often the audit looks for active runs with lost chunks (default 30s).
    #[arg(long, env = "TTG_AUDIT_INTERVAL", default_value = "30s", value_parser = humantime::parse_duration)]
    pub audit_interval: Duration,

    /// How long a run with chunks unaccounted for must go without an event before the audit scans its tasks stream for them (default 60s).
    #[arg(long, env = "TTG_AUDIT_QUIET", default_value = "60s", value_parser = humantime::parse_duration)]
    pub audit_quiet: Duration,

    #[command(flatten)]
    pub limits: Limits,
}

/// Limits on what one request or one user may ask for. Each has a safe
/// default; exceeding one is InvalidArgument (a request out of bounds) or
/// ResourceExhausted (a quota), naming the limit.
#[derive(clap::Args, Clone, Debug)]
pub struct Limits {
    /// Most parameters per run (default 10000000000, also the hard maximum).
    #[arg(long, env = "TTG_MAX_PARAMS", default_value_t = 10_000_000_000, value_parser = clap::value_parser!(u64).range(1..=10_000_000_000))]
    pub max_params: u64,

    /// Most chunks per run (default 1000000, also the hard maximum).
    #[arg(long, env = "TTG_MAX_CHUNKS", default_value_t = 1_000_000, value_parser = clap::value_parser!(u64).range(1..=1_000_000))]
    pub max_chunks: u64,

    /// Most kernel arguments per Submit (default 32).
    #[arg(long, env = "TTG_MAX_ARGS", default_value_t = 32)]
    pub max_args: usize,

    /// Longest kernel argument value in bytes (default 16384).
    #[arg(long, env = "TTG_MAX_ARG_BYTES", default_value_t = 16_384)]
    pub max_arg_bytes: usize,

    /// Largest gRPC message the server decodes, bytes (default 4194304).
    #[arg(long, env = "TTG_MAX_MESSAGE_BYTES", default_value_t = 4 * 1024 * 1024)]
    pub max_message_bytes: usize,

    /// Most runs QUEUED or RUNNING at once, installation-wide (default 1000).
    #[arg(long, env = "TTG_MAX_RUNS_IN_FLIGHT", default_value_t = 1_000)]
    pub max_runs_in_flight: u64,

    /// Most agent sessions one token may hold open on one server replica (default 256).
    #[arg(long, env = "TTG_MAX_SESSIONS_PER_TOKEN", default_value_t = 256, value_parser = clap::value_parser!(u32).range(1..=100_000))]
    pub max_sessions_per_token: u32,

    /// Most Submits per minute per token, per server replica (default 120).
    #[arg(long, env = "TTG_SUBMIT_RATE", default_value_t = 120)]
    pub submit_rate: u32,

    /// How long a finished run's data is kept before it is removed, unless its Submit says otherwise (default 7d).
    #[arg(long, env = "TTG_RUN_RETENTION", default_value = "7d", value_parser = humantime::parse_duration)]
    pub run_retention: Duration,

    /// Longest retention a Submit may ask for (default 365d).
    #[arg(long, env = "TTG_MAX_RUN_RETENTION", default_value = "365d", value_parser = humantime::parse_duration)]
    pub max_run_retention: Duration,
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

    /// Check settings that clap's types cannot; the message names the flag.
    pub fn validate(&self) -> Result<(), ConfigError> {
        if self.heartbeat_interval < Duration::from_millis(50)
            || self.heartbeat_interval > Duration::from_secs(60)
        {
            return Err(ConfigError::Invalid(
                "--heartbeat-interval must be within 50ms..=60s".into(),
            ));
        }
        if self.lease < self.heartbeat_interval * 2 {
            return Err(ConfigError::Invalid(format!(
                "--lease ({:?}) must be at least twice --heartbeat-interval ({:?}) so one late heartbeat does not lose an agent's chunks",
                self.lease, self.heartbeat_interval
            )));
        }
        if self.redis_timeout < Duration::from_millis(100) {
            return Err(ConfigError::Invalid(
                "--redis-timeout must be at least 100ms".into(),
            ));
        }
        ttg_proto::runtime::check_redis_flags(
            &self.prefix,
            &self.redis_url,
            self.redis_cluster.as_deref(),
            self.redis_ca.as_deref(),
        )?;
        ttg_proto::runtime::check_wait_flags(self.redis_wait_replicas, self.redis_wait_timeout)?;
        if let Some(n) = self
            .slot_groups
            .filter(|n| !(1..=ttg_proto::keys::MAX_GROUPS).contains(n))
        {
            return Err(ConfigError::Invalid(format!(
                "--slot-groups must be in 1..={}, got {n}",
                ttg_proto::keys::MAX_GROUPS
            )));
        }
        if self.redis_wait_replicas > 0 && self.redis_wait_timeout >= self.redis_timeout {
            return Err(ConfigError::Invalid(format!(
                "--redis-wait-timeout ({:?}) must be shorter than --redis-timeout ({:?}), the deadline of the request it is part of",
                self.redis_wait_timeout, self.redis_timeout
            )));
        }
        if let Some(t) = &self.trace_url_template {
            if !(t.starts_with("http://") || t.starts_with("https://"))
                || !t.contains("{trace_id}")
                || t.len() > 2048
            {
                return Err(ConfigError::Invalid(
                    "--trace-url-template must be an http(s) URL of at most 2048 characters with {trace_id} in it".into(),
                ));
            }
        }
        match (&self.tokens_file, self.insecure_no_auth) {
            (None, false) => {
                return Err(ConfigError::Invalid("refusing to start without authentication: give --tokens-file FILE \
                    (lines of `<role> <token> [<name>]`, see docs/security.md), or --insecure-no-auth \
                    for a single-user machine"
                    .into()))
            }
            (Some(_), true) => return Err(ConfigError::Invalid("--tokens-file and --insecure-no-auth contradict each other".into())),
            _ => {}
        }
        if self.limits.run_retention < Duration::from_secs(1)
            || self.limits.run_retention > self.limits.max_run_retention
        {
            return Err(ConfigError::Invalid(format!(
                "--run-retention must be within 1s..=--max-run-retention ({})",
                humantime::format_duration(self.limits.max_run_retention)
            )));
        }
        if self.janitor_interval < Duration::from_millis(10)
            || self.janitor_interval > Duration::from_secs(3_600)
        {
            return Err(ConfigError::Invalid(
                "--janitor-interval must be within 10ms..=1h".into(),
            ));
        }
        if self.audit_interval < Duration::from_millis(10)
            || self.audit_interval > Duration::from_secs(3_600)
        {
            return Err(ConfigError::Invalid(
                "--audit-interval must be within 10ms..=1h".into(),
            ));
        }
        if self.audit_quiet < Duration::from_millis(100)
            || self.audit_quiet > Duration::from_secs(86_400)
        {
            return Err(ConfigError::Invalid(
                "--audit-quiet must be within 100ms..=24h".into(),
            ));
        }
        if self.limits.max_message_bytes < 64 * 1024 {
            return Err(ConfigError::Invalid(
                "--max-message-bytes must be at least 65536".into(),
            ));
        }
        if self.limits.submit_rate == 0
            || self.limits.max_args == 0
            || self.limits.max_runs_in_flight == 0
        {
            return Err(ConfigError::Invalid(
                "--submit-rate, --max-args and --max-runs-in-flight must be at least 1".into(),
            ));
        }
        Ok(())
    }

    /// Settings for tests and embedding: everything default but Redis and prefix.
    pub fn for_redis(redis_url: &str, prefix: &str) -> Self {
        use clap::Parser;
        let mut c = Config::parse_from(["ttg-server"]);
        c.redis_url = redis_url.to_string();
        c.prefix = prefix.to_string();
        c.insecure_no_auth = true;
        c
    }
}
