//! Connecting to Redis with bounded timeouts, so a Redis that is down or hung
//! turns into a prompt error instead of a hang.

use std::time::Duration;

use redis::aio::{ConnectionManager, ConnectionManagerConfig, MultiplexedConnection};
use redis::{AsyncConnectionConfig, Client, RedisResult};

/// How long a connection attempt may take.
pub const CONNECT_TIMEOUT: Duration = Duration::from_secs(2);
/// How long an ordinary command may take.
pub const RESPONSE_TIMEOUT: Duration = Duration::from_secs(5);

/// A client for `url`: `redis://` (password or ACL user in the URL) or
/// `rediss://` (TLS; the system's roots, or `ca` — a PEM file — when given).
pub fn client(url: &str, ca: Option<&std::path::Path>) -> RedisResult<Client> {
    match ca {
        None => Client::open(url),
        Some(path) => Client::build_with_tls(
            url,
            redis::TlsCertificates {
                client_tls: None,
                root_cert: Some(read_ca(path)?),
            },
        ),
    }
}

/// The PEM CA file of `--redis-ca`, or an error naming it.
pub fn read_ca(path: &std::path::Path) -> RedisResult<Vec<u8>> {
    std::fs::read(path).map_err(|e| {
        redis::RedisError::from((
            redis::ErrorKind::InvalidClientConfig,
            "cannot read the Redis CA",
            format!("{}: {e}", path.display()),
        ))
    })
}

/// A reconnecting, multiplexed connection for ordinary (non-blocking) commands.
/// Reconnects are bounded (3 tries, ≤ 1 s apart), so a caller sees an error
/// within a few seconds when Redis is down and succeeds again once it is back.
/// The connection is made lazily on first use, so a process can start while
/// Redis is down and serve `Unavailable` until it comes back.
pub fn manager(client: &Client) -> RedisResult<ConnectionManager> {
    let cfg = ConnectionManagerConfig::new()
        .set_connection_timeout(Some(CONNECT_TIMEOUT))
        .set_response_timeout(Some(RESPONSE_TIMEOUT))
        .set_number_of_retries(3)
        .set_min_delay(Duration::from_millis(50))
        .set_max_delay(Duration::from_secs(1));
    ConnectionManager::new_lazy_with_config(client.clone(), cfg)
}

/// A dedicated connection for blocking commands (XREAD/XREADGROUP BLOCK), which
/// would stall every other command pipelined on a shared connection.
/// `block` is the longest BLOCK the caller will use.
pub async fn blocking(client: &Client, block: Duration) -> RedisResult<MultiplexedConnection> {
    let cfg = AsyncConnectionConfig::new()
        .set_connection_timeout(Some(CONNECT_TIMEOUT))
        .set_response_timeout(Some(block + RESPONSE_TIMEOUT));
    client
        .get_multiplexed_async_connection_with_config(&cfg)
        .await
}

/// Create the consumer group of a tasks stream (and the stream) if missing.
/// Created at id 0, so tasks added before the group existed are delivered;
/// BUSYGROUP (it exists) is success.
pub async fn ensure_group<C: redis::aio::ConnectionLike>(
    conn: &mut C,
    stream: &str,
) -> RedisResult<()> {
    let r: RedisResult<()> = redis::cmd("XGROUP")
        .arg("CREATE")
        .arg(stream)
        .arg(crate::keys::GROUP)
        .arg("0")
        .arg("MKSTREAM")
        .query_async(conn)
        .await;
    match r {
        Err(e) if e.code() == Some("BUSYGROUP") => Ok(()),
        other => other,
    }
}

/// The URL with any password replaced by `***`, for logs: the `user:pass@`
/// part, and `pass` / `password` query parameters (`redis+unix:///s?pass=…`).
pub fn redact_url(url: &str) -> String {
    let (base, query) = match url.split_once('?') {
        Some((b, q)) => (b, Some(q)),
        None => (url, None),
    };
    let mut out = match base.split_once("://") {
        Some((scheme, rest)) => match rest.rsplit_once('@') {
            Some((auth, host)) => match auth.split_once(':') {
                Some((user, _)) => format!("{scheme}://{user}:***@{host}"),
                None => format!("{scheme}://***@{host}"),
            },
            None => base.to_string(),
        },
        None => base.to_string(),
    };
    if let Some(q) = query {
        let params: Vec<String> = q
            .split('&')
            .map(|kv| match kv.split_once('=') {
                Some((k, _))
                    if k.eq_ignore_ascii_case("pass") || k.eq_ignore_ascii_case("password") =>
                {
                    format!("{k}=***")
                }
                _ => kv.to_string(),
            })
            .collect();
        out.push('?');
        out.push_str(&params.join("&"));
    }
    out
}

/// Whether a Redis error will likely heal by itself (Redis down, restarting,
/// loading its AOF, connection dropped), so the caller should back off and
/// retry rather than give up.
pub fn is_transient(e: &redis::RedisError) -> bool {
    const HEALS: [&str; 8] = [
        "LOADING",
        "TRYAGAIN",
        "MASTERDOWN",
        "CLUSTERDOWN",
        "READONLY",
        "MOVED",
        "ASK",
        "EXECABORT",
    ];
    // Redis's own refusals that heal: of one command, or of every command
    // of a refused MULTI (during a failover it aborts with MOVED to the new
    // primary, or CLUSTERDOWN meanwhile: nothing ran).
    let codes = codes_inside(e);
    (!codes.is_empty() && codes.iter().all(|c| HEALS.contains(&c.as_str())))
        || e.is_io_error()
        || e.is_connection_refusal()
        || e.is_connection_dropped()
        || e.is_timeout()
        || e.is_unrecoverable_error()
        // An error the client made itself, with a server kind but no reply.
        || matches!(
            e.code(),
            Some("LOADING" | "TRYAGAIN" | "MASTERDOWN" | "CLUSTERDOWN" | "READONLY")
        )
}

/// The error codes of the commands of a refused MULTI or pipeline (or of the
/// one command), upper case; empty for errors that are not Redis's replies.
pub fn codes_inside(e: &redis::RedisError) -> Vec<String> {
    e.clone()
        .into_server_errors()
        .map(|errs| {
            errs.iter()
                .map(|(_, se)| se.code().to_ascii_uppercase())
                .collect()
        })
        .unwrap_or_default()
}

/// Whether Redis refused a write because `used_memory` reached `maxmemory`
/// under `noeviction`. Nothing was written (a script is refused at its first
/// write that adds data), so the same call can be retried once memory is
/// freed: runs deleted or expired, or `maxmemory` raised.
/// A transaction refused this way aborts with EXECABORT, carrying the OOM
/// errors of the commands Redis refused to queue.
pub fn is_oom(e: &redis::RedisError) -> bool {
    e.code() == Some("OOM")
        || e.clone()
            .into_server_errors()
            .is_some_and(|errs| errs.iter().any(|(_, se)| se.code() == "OOM"))
}

#[cfg(test)]
mod tests {
    use super::redact_url;

    #[test]
    fn passwords_never_reach_logs() {
        assert_eq!(
            redact_url("redis://u:secret@h:6379/0"),
            "redis://u:***@h:6379/0"
        );
        assert_eq!(redact_url("rediss://secret@h"), "rediss://***@h");
        assert_eq!(
            redact_url("redis+unix:///tmp/r.sock?db=1&pass=secret"),
            "redis+unix:///tmp/r.sock?db=1&pass=***"
        );
        assert_eq!(
            redact_url("redis+unix:///tmp/r.sock?user=u&password=secret"),
            "redis+unix:///tmp/r.sock?user=u&password=***"
        );
        assert_eq!(
            redact_url("redis://u:secret@h:1/0?protocol=resp3"),
            "redis://u:***@h:1/0?protocol=resp3"
        );
        assert_eq!(
            redact_url("redis://127.0.0.1:6379"),
            "redis://127.0.0.1:6379"
        );
    }
}
