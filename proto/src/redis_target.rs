//! Where Redis is — one node (`--redis-url`) or a Redis Cluster
//! (`--redis-cluster`) — and the connections TTG makes to it. Every caller
//! talks through [`Conn`], so the stores, the scripts and the agents do not
//! care which it is.
//!
//! On a cluster every key TTG writes carries one hash tag (see
//! [`Target::prefix`]): every script and every MULTI touches keys of one slot,
//! so Redis Cluster runs them atomically, as one node does (docs/architecture.md,
//! "Redis Cluster").

use std::path::Path;
use std::pin::Pin;
use std::time::Duration;

use redis::aio::{ConnectionLike, ConnectionManager, MultiplexedConnection};
use redis::cluster::{ClusterClient, ClusterClientBuilder, ClusterConfig};
use redis::cluster_async::ClusterConnection;
use redis::{Client, Cmd, Pipeline, RedisError, RedisFuture, RedisResult, Value};
use tokio_stream::{Stream, StreamExt};

use crate::redis_conn::{self, CONNECT_TIMEOUT, RESPONSE_TIMEOUT};

/// At most this many seed nodes in `--redis-cluster`.
pub const MAX_SEEDS: usize = 64;

/// One Redis node, or a cluster reached through seed nodes.
#[derive(Clone)]
pub enum Target {
    /// `--redis-url`: the client, and the URL (for logs, redacted).
    Node(Box<Client>, String),
    /// `--redis-cluster`: the seed URLs, and the CA for `rediss://` ones.
    Cluster {
        /// Seed node URLs (any of them lets the client learn the topology).
        seeds: Vec<String>,
        /// PEM CA for `rediss://` seeds with a private CA.
        ca: Option<Vec<u8>>,
        /// The client for ordinary commands (boxed: it is large).
        client: Box<ClusterClient>,
    },
}

impl std::fmt::Debug for Target {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.describe())
    }
}

impl Target {
    /// One node at `url`, or, when `cluster` is a comma-separated list of
    /// seed URLs, that cluster. `ca`: a PEM file for `rediss://` URLs with a
    /// private CA.
    pub fn open(url: &str, cluster: Option<&str>, ca: Option<&Path>) -> RedisResult<Self> {
        let Some(list) = cluster.filter(|c| !c.trim().is_empty()) else {
            return Ok(Self::Node(
                Box::new(redis_conn::client(url, ca)?),
                url.to_string(),
            ));
        };
        let seeds: Vec<String> = list
            .split(',')
            .map(str::trim)
            .filter(|s| !s.is_empty())
            .map(str::to_string)
            .collect();
        if seeds.is_empty() || seeds.len() > MAX_SEEDS {
            return Err(invalid(format!(
                "--redis-cluster takes 1..={MAX_SEEDS} comma-separated redis:// or rediss:// URLs"
            )));
        }
        if let Some(bad) = seeds
            .iter()
            .find(|s| !(s.starts_with("redis://") || s.starts_with("rediss://")))
        {
            return Err(invalid(format!(
                "--redis-cluster: {} is not a redis:// or rediss:// URL",
                redis_conn::redact_url(bad)
            )));
        }
        let ca = ca.map(redis_conn::read_ca).transpose()?;
        let client = Box::new(cluster_builder(&seeds, ca.as_deref(), RESPONSE_TIMEOUT).build()?);
        Ok(Self::Cluster { seeds, ca, client })
    }

    /// Whether this is a cluster.
    pub fn is_cluster(&self) -> bool {
        matches!(self, Self::Cluster { .. })
    }

    /// The key prefix to use under `prefix` (`--prefix`): unchanged on one
    /// node; on a cluster, wrapped in a hash tag (`ttg:` → `{ttg}:`) unless
    /// it already holds one, so every key lands in one slot.
    pub fn prefix(&self, prefix: &str) -> String {
        if !self.is_cluster() || crate::keys::hash_tag(prefix).is_some() {
            return prefix.to_string();
        }
        let name = prefix.strip_suffix(':').unwrap_or(prefix);
        format!("{{{name}}}:")
    }

    /// Where Redis is, with passwords redacted (for logs).
    pub fn describe(&self) -> String {
        match self {
            Self::Node(_, url) => redis_conn::redact_url(url),
            Self::Cluster { seeds, .. } => format!(
                "cluster {}",
                seeds
                    .iter()
                    .map(|s| redis_conn::redact_url(s))
                    .collect::<Vec<_>>()
                    .join(",")
            ),
        }
    }

    /// A shared connection for ordinary (non-blocking) commands. It is made
    /// lazily, so a process can start while Redis is down; on one node it
    /// reconnects with bounded retries, on a cluster it follows the
    /// topology (MOVED, a failover).
    pub fn shared(&self) -> RedisResult<Conn> {
        match self {
            Self::Node(c, _) => Ok(Conn::Managed(redis_conn::manager(c)?)),
            Self::Cluster { client, .. } => Ok(Conn::Cluster(
                client.get_pending_async_connection_with_config(cluster_config(RESPONSE_TIMEOUT)),
            )),
        }
    }

    /// A dedicated connection for blocking commands (XREAD BLOCK), whose
    /// replies may take `block`.
    pub async fn blocking(&self, block: Duration) -> RedisResult<Conn> {
        match self {
            Self::Node(c, _) => Ok(Conn::Plain(redis_conn::blocking(c, block).await?)),
            Self::Cluster { client, .. } => Ok(Conn::Cluster(
                client
                    .get_async_connection_with_config(cluster_config(block + RESPONSE_TIMEOUT))
                    .await?,
            )),
        }
    }

    /// Messages published on `channel` (their payloads). On a cluster,
    /// PUBLISH reaches every node, and the subscription is renewed after a
    /// failover by the client.
    pub async fn subscribe(&self, channel: &str) -> RedisResult<Subscription> {
        match self {
            Self::Node(c, _) => {
                let mut ps = c.get_async_pubsub().await?;
                ps.subscribe(channel).await?;
                let s = ps
                    .into_on_message()
                    .map(|m| m.get_payload::<String>().unwrap_or_default());
                Ok(Subscription::Node(Box::pin(s)))
            }
            Self::Cluster { seeds, ca, .. } => {
                let (tx, rx) = tokio::sync::mpsc::unbounded_channel();
                let client = cluster_builder(seeds, ca.as_deref(), RESPONSE_TIMEOUT)
                    .use_protocol(redis::ProtocolVersion::RESP3)
                    .push_sender(tx)
                    .build()?;
                let mut conn = client.get_async_connection().await?;
                conn.subscribe(channel).await?;
                Ok(Subscription::Cluster { _conn: conn, rx })
            }
        }
    }
}

/// A subscription made by [`Target::subscribe`].
pub enum Subscription {
    /// On one node.
    Node(Pin<Box<dyn Stream<Item = String> + Send>>),
    /// On a cluster: the connection that holds it, and its pushes.
    Cluster {
        /// Kept for the subscription's lifetime.
        _conn: ClusterConnection,
        /// Pushes from the cluster (messages and subscription notices).
        rx: tokio::sync::mpsc::UnboundedReceiver<redis::PushInfo>,
    },
}

impl Subscription {
    /// The next message's payload; None once the connection is gone.
    pub async fn next(&mut self) -> Option<String> {
        match self {
            Self::Node(s) => s.next().await,
            Self::Cluster { rx, .. } => loop {
                let push = rx.recv().await?;
                match push.kind {
                    redis::PushKind::Message => {
                        if let Some(v) = push.data.get(1) {
                            return Some(
                                redis::from_redis_value::<String>(v.clone()).unwrap_or_default(),
                            );
                        }
                    }
                    redis::PushKind::Disconnection => return None,
                    _ => {}
                }
            },
        }
    }
}

fn cluster_builder(
    seeds: &[String],
    ca: Option<&[u8]>,
    response: Duration,
) -> ClusterClientBuilder {
    let mut b = ClusterClientBuilder::new(seeds.to_vec())
        .connection_timeout(CONNECT_TIMEOUT)
        .response_timeout(response)
        .retries(6)
        .min_retry_wait(50)
        .max_retry_wait(1000);
    if let Some(pem) = ca {
        b = b.certs(redis::TlsCertificates {
            client_tls: None,
            root_cert: Some(pem.to_vec()),
        });
    }
    b
}

fn cluster_config(response: Duration) -> ClusterConfig {
    ClusterConfig::new()
        .set_connection_timeout(CONNECT_TIMEOUT)
        .set_response_timeout(response)
}

/// The first key a pipeline's commands name: EVAL/EVALSHA's first KEYS
/// entry, else the first argument (the key of every command TTG sends in a
/// MULTI).
fn first_key(pipeline: &Pipeline) -> Option<Vec<u8>> {
    pipeline.cmd_iter().find_map(|cmd| {
        let args: Vec<&[u8]> = cmd
            .args_iter()
            .filter_map(|a| match a {
                redis::Arg::Simple(d) => Some(d),
                _ => None,
            })
            .collect();
        let name = args.first()?.to_ascii_uppercase();
        match name.as_slice() {
            b"MULTI" | b"EXEC" => None,
            b"EVAL" | b"EVALSHA" => {
                let n: usize = std::str::from_utf8(args.get(2)?).ok()?.parse().ok()?;
                (n > 0).then(|| args.get(3).map(|k| k.to_vec())).flatten()
            }
            _ => args.get(1).map(|k| k.to_vec()),
        }
    })
}

fn invalid(msg: String) -> RedisError {
    RedisError::from((
        redis::ErrorKind::InvalidClientConfig,
        "bad Redis setting",
        msg,
    ))
}

/// A connection to one node or to a cluster; cheap to clone (clones share
/// the underlying connections).
#[derive(Clone)]
pub enum Conn {
    /// One node, reconnecting.
    Managed(ConnectionManager),
    /// One node, a dedicated connection (blocking reads).
    Plain(MultiplexedConnection),
    /// A cluster: commands go to the node owning their keys' slot.
    Cluster(ClusterConnection),
}

impl Conn {
    /// Redis WAIT at the primary that serves `key`: how many replicas hold
    /// what this connection wrote there, waiting up to `timeout` for
    /// `replicas`. It covers only this connection's writes, so it must go
    /// through the connection that wrote and to the node holding the key.
    pub async fn wait_replicas(
        &mut self,
        key: &str,
        replicas: u32,
        timeout: Duration,
    ) -> RedisResult<u32> {
        let mut cmd = redis::cmd("WAIT");
        cmd.arg(replicas).arg(timeout.as_millis() as u64);
        self.query_at(key, &cmd).await
    }

    /// `cmd` on the primary that serves `key`. For commands without keys
    /// (INFO, CONFIG GET), which a cluster client would send to every node,
    /// so they describe the node holding the installation.
    pub async fn query_at<T: redis::FromRedisValue>(
        &mut self,
        key: &str,
        cmd: &Cmd,
    ) -> RedisResult<T> {
        use redis::cluster_routing::{Route, RoutingInfo, SingleNodeRoutingInfo, SlotAddr};
        match self {
            Self::Cluster(c) => {
                let at = Route::with_key(key, SlotAddr::Master);
                let v = c
                    .route_command(
                        cmd.clone(),
                        RoutingInfo::SingleNode(SingleNodeRoutingInfo::SpecificNode(at)),
                    )
                    .await?;
                Ok(redis::from_redis_value(v)?)
            }
            other => cmd.query_async(other).await,
        }
    }
}

impl ConnectionLike for Conn {
    fn req_packed_command<'a>(&'a mut self, cmd: &'a Cmd) -> RedisFuture<'a, Value> {
        match self {
            Self::Managed(c) => c.req_packed_command(cmd),
            Self::Plain(c) => c.req_packed_command(cmd),
            Self::Cluster(c) => c.req_packed_command(cmd),
        }
    }

    fn req_packed_commands<'a>(
        &'a mut self,
        pipeline: &'a Pipeline,
        offset: usize,
        count: usize,
    ) -> RedisFuture<'a, Vec<Value>> {
        match self {
            Self::Managed(c) => c.req_packed_commands(pipeline, offset, count),
            Self::Plain(c) => c.req_packed_commands(pipeline, offset, count),
            Self::Cluster(c) => Box::pin(async move {
                let r = c.req_packed_commands(pipeline, offset, count).await;
                if let Err(e) = &r {
                    if redis_conn::codes_inside(e)
                        .iter()
                        .any(|c| c == "MOVED" || c == "ASK")
                    {
                        // A MULTI whose commands were redirected aborts as a
                        // whole, and the client does not learn the new owner
                        // from it; one plain command on the same key does
                        // (it follows the MOVED and refreshes the slot map),
                        // so the caller's next try reaches the right node.
                        if let Some(key) = first_key(pipeline) {
                            let _: RedisResult<Value> =
                                c.req_packed_command(redis::cmd("EXISTS").arg(key)).await;
                        }
                    }
                }
                r
            }),
        }
    }

    fn get_db(&self) -> i64 {
        match self {
            Self::Managed(c) => c.get_db(),
            Self::Plain(c) => c.get_db(),
            Self::Cluster(c) => c.get_db(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cluster_prefixes_carry_one_hash_tag() {
        let node = Target::open("redis://127.0.0.1:1", None, None).unwrap();
        assert_eq!(node.prefix("ttg:"), "ttg:");
        let c = Target::open("", Some("redis://127.0.0.1:1, redis://127.0.0.1:2"), None).unwrap();
        assert!(c.is_cluster());
        assert_eq!(c.prefix("ttg:"), "{ttg}:");
        assert_eq!(c.prefix("team-a"), "{team-a}:");
        assert_eq!(c.prefix("{t}:ttg:"), "{t}:ttg:");
        assert_eq!(
            c.describe(),
            "cluster redis://127.0.0.1:1,redis://127.0.0.1:2"
        );
    }

    #[test]
    fn bad_seed_lists_are_refused_by_name() {
        let e = Target::open("", Some("http://h:1"), None).unwrap_err();
        assert!(
            e.to_string().contains("not a redis:// or rediss:// URL"),
            "{e}"
        );
        let e = Target::open("", Some("redis://u:secret@h:1,ftp://u:secret@h"), None).unwrap_err();
        assert!(!e.to_string().contains("secret"), "{e}");
        let many = vec!["redis://h:1"; MAX_SEEDS + 1].join(",");
        assert!(Target::open("", Some(&many), None).is_err());
        assert!(Target::open("redis://127.0.0.1:1", Some(" , "), None).is_err());
        let c = Target::open("redis://127.0.0.1:1", Some("  "), None);
        assert!(
            matches!(c, Ok(Target::Node(..))),
            "an empty setting means one node"
        );
    }
}
