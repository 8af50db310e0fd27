//! Server settings: command-line flags, each with a `TTG_…` environment variable.

use std::net::SocketAddr;
use std::time::Duration;

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

    /// Prefix of every Redis key (default "ttg:"); installations sharing a Redis need different ones.
    #[arg(long, env = "TTG_PREFIX", default_value = "ttg:")]
    pub prefix: String,

    /// How often agents send heartbeats (default 1s); sent to agents in Welcome.
    #[arg(long, env = "TTG_HEARTBEAT_INTERVAL", default_value = "1s", value_parser = humantime::parse_duration)]
    pub heartbeat_interval: Duration,

    /// An agent with no heartbeat for this long loses its chunks (default 3s).
    #[arg(long, env = "TTG_LEASE", default_value = "3s", value_parser = humantime::parse_duration)]
    pub lease: Duration,

    /// Deadline of every Redis call made for a request (default 5s); past it the RPC answers Unavailable.
    #[arg(long, env = "TTG_REDIS_TIMEOUT", default_value = "5s", value_parser = humantime::parse_duration)]
    pub redis_timeout: Duration,

    /// Log format: auto (text on a terminal, JSON otherwise), text or json (default auto).
    #[arg(long, env = "TTG_LOG_FORMAT", default_value = "auto")]
    pub log_format: LogFormat,

    /// Serve Prometheus metrics on http://ADDR/metrics (default: off).
    #[arg(long, env = "TTG_METRICS_ADDR")]
    pub metrics_addr: Option<SocketAddr>,
}

impl Config {
    /// Check settings that clap's types cannot; the message names the flag.
    pub fn validate(&self) -> Result<(), String> {
        if self.heartbeat_interval < Duration::from_millis(50)
            || self.heartbeat_interval > Duration::from_secs(60)
        {
            return Err("--heartbeat-interval must be within 50ms..=60s".into());
        }
        if self.lease < self.heartbeat_interval * 2 {
            return Err(format!(
                "--lease ({:?}) must be at least twice --heartbeat-interval ({:?}) so one late heartbeat does not lose an agent's chunks",
                self.lease, self.heartbeat_interval
            ));
        }
        if self.redis_timeout < Duration::from_millis(100) {
            return Err("--redis-timeout must be at least 100ms".into());
        }
        if self.prefix.is_empty() || self.prefix.len() > 64 {
            return Err("--prefix must be 1..=64 characters".into());
        }
        redis::Client::open(self.redis_url.as_str())
            .map_err(|e| format!("--redis-url is not a valid Redis URL: {e}"))?;
        Ok(())
    }

    /// Settings for tests and embedding: everything default but Redis and prefix.
    pub fn for_redis(redis_url: &str, prefix: &str) -> Self {
        use clap::Parser;
        let mut c = Config::parse_from(["ttg-server"]);
        c.redis_url = redis_url.to_string();
        c.prefix = prefix.to_string();
        c
    }
}
