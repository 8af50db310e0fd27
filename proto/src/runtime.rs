//! Process plumbing every binary shares: the shutdown signal, the back-off
//! used wherever a peer (Redis, the server) is retried, and the error for a
//! bad setting.

use std::time::Duration;

use tokio_util::sync::CancellationToken;

/// Cancel `token` on the first SIGTERM or SIGINT (both start a drain).
pub async fn signal_cancels(token: CancellationToken) {
    use tokio::signal::unix::{signal, SignalKind};
    let (Ok(mut term), Ok(mut int)) = (
        signal(SignalKind::terminate()),
        signal(SignalKind::interrupt()),
    ) else {
        tracing::error!("cannot install signal handlers");
        return;
    };
    tokio::select! {
        _ = term.recv() => {}
        _ = int.recv() => {}
    }
    token.cancel();
}

/// A setting clap's types cannot check; the message names the flag.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// A flag out of range, or flags that contradict each other.
    #[error("{0}")]
    Invalid(String),
    /// The Redis URL, cluster seeds or CA do not make a client.
    #[error("--redis-url/--redis-cluster/--redis-ca: {0}")]
    Redis(#[source] redis::RedisError),
    /// The server URL, TLS files or token do not make a client.
    #[error("{flag}: {source}")]
    Client {
        /// The flag at fault.
        flag: &'static str,
        /// Why.
        #[source]
        source: crate::client::ClientError,
    },
}

/// The Redis flags every binary takes: `--prefix` 1..=64 characters, and a
/// `--redis-url` or `--redis-cluster` (with `--redis-ca`) that makes a client.
pub fn check_redis_flags(
    prefix: &str,
    url: &str,
    cluster: Option<&str>,
    ca: Option<&std::path::Path>,
) -> Result<(), ConfigError> {
    if prefix.is_empty() || prefix.len() > 64 {
        return Err(ConfigError::Invalid(
            "--prefix must be 1..=64 characters".into(),
        ));
    }
    let target = crate::redis_target::Target::open(url, cluster, ca).map_err(ConfigError::Redis)?;
    if target.is_cluster() && prefix.contains('{') && crate::keys::hash_tag(prefix).is_none() {
        return Err(ConfigError::Invalid(
            "--prefix: on a cluster a prefix with '{' must hold a whole hash tag such as {ttg}:"
                .into(),
        ));
    }
    Ok(())
}

/// `--redis-wait-replicas` (0..=16) and `--redis-wait-timeout` (1ms..=60s),
/// as the server and the agent take them.
pub fn check_wait_flags(replicas: u32, timeout: std::time::Duration) -> Result<(), ConfigError> {
    if replicas > 16 {
        return Err(ConfigError::Invalid(format!(
            "--redis-wait-replicas must be in 0..=16, got {replicas}"
        )));
    }
    if !(std::time::Duration::from_millis(1)..=std::time::Duration::from_secs(60))
        .contains(&timeout)
    {
        return Err(ConfigError::Invalid(
            "--redis-wait-timeout must be within 1ms..=60s".into(),
        ));
    }
    Ok(())
}

/// Exponential back-off: `min`, doubling on every failure up to `max`,
/// back to `min` on success.
#[derive(Debug, Clone, Copy)]
pub struct Backoff {
    min: Duration,
    max: Duration,
    current: Duration,
}

impl Backoff {
    /// Start at `min`, never above `max`.
    pub fn new(min: Duration, max: Duration) -> Self {
        Self {
            min,
            max,
            current: min,
        }
    }

    /// The delay to wait now; the next one doubles (up to `max`).
    pub fn next_delay(&mut self) -> Duration {
        let d = self.current;
        self.current = (self.current * 2).min(self.max);
        d
    }

    /// The delay the next failure would wait, without moving on.
    pub fn peek(&self) -> Duration {
        self.current
    }

    /// A success: start again from `min`.
    pub fn reset(&mut self) {
        self.current = self.min;
    }

    /// Sleep the next delay, or less if `stop` is cancelled first.
    pub async fn sleep_or(&mut self, stop: &CancellationToken) {
        let d = self.next_delay();
        tokio::select! {
            _ = tokio::time::sleep(d) => {}
            _ = stop.cancelled() => {}
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_doubles_caps_and_resets() {
        let ms = Duration::from_millis;
        let mut b = Backoff::new(ms(50), ms(300));
        let seen: Vec<_> = (0..5).map(|_| b.next_delay()).collect();
        assert_eq!(seen, vec![ms(50), ms(100), ms(200), ms(300), ms(300)]);
        b.reset();
        assert_eq!(b.peek(), ms(50));
    }
}
