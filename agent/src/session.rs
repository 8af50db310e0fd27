//! The agent's session with the server: Hello, heartbeats carrying the chunks
//! held, commands from the server, Bye on a clean exit. The session is the
//! agent's lease; the work goes on without it (Redis is the source of truth),
//! and it reconnects with back-off whenever the server is unreachable.

use std::sync::Arc;
use std::time::Duration;

use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
use tokio_util::sync::CancellationToken;

use ttg_proto::runtime::Backoff;
use ttg_proto::v1::agent_gateway_client::AgentGatewayClient;
use ttg_proto::v1::{agent_message, server_message, AgentMessage, Bye, Heartbeat, Hello};

use crate::worker::Worker;

/// Reconnect back-off: 100 ms doubling to 1 s — kept under the lease (3 s
/// by default), so an agent whose server restarted is back before a reaper
/// could take it for dead.
fn reconnect_backoff() -> Backoff {
    Backoff::new(Duration::from_millis(100), Duration::from_secs(1))
}

/// How the session should end once `stop` fires.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Ending {
    /// Say Bye: nothing is held, nothing to reclaim.
    Bye,
    /// Drop the stream without Bye, so the server reclaims what is held at once.
    Abandon,
}

/// Why a session went down.
#[derive(Debug, thiserror::Error)]
enum Down {
    /// The server answered with this status.
    #[error("session refused ({:?}): {}", .0.code(), .0.message())]
    Refused(tonic::Status),
    /// The client could not be set up (URL, TLS files, token).
    #[error(transparent)]
    Setup(#[from] ttg_proto::client::ClientError),
    /// The connection could not be made.
    #[error("connect: {0}")]
    Connect(#[source] tonic::transport::Error),
    /// The stream ended or broke the protocol.
    #[error("{0}")]
    Stream(&'static str),
}

/// Keep a session open until `stop` fires, then end it as `ending` says.
/// `servers` is a comma-separated list of URLs (replicas); on failure the
/// next one is tried. If a server refuses the agent's token
/// (Unauthenticated, PermissionDenied: wrong, or revoked) `unauthorized` is
/// cancelled and this returns: the agent must stop working.
pub async fn keep_session(
    opts: ttg_proto::client::ConnectOpts,
    servers: String,
    worker: Arc<Worker>,
    stop: CancellationToken,
    ending: Arc<std::sync::Mutex<Ending>>,
    unauthorized: CancellationToken,
) {
    let servers: Vec<String> = servers
        .split(',')
        .map(|s| s.trim().to_string())
        .filter(|s| !s.is_empty())
        .collect();
    let mut backoff = reconnect_backoff();
    let mut turn = 0usize;
    while !stop.is_cancelled() {
        let server = servers[turn % servers.len().max(1)].clone();
        turn += 1;
        let span = tracing::info_span!("session", side = "agent", agent_id = %worker.agent_id(), server = %server);
        let attempt = one_session(&server, &opts, &worker, &stop, &ending, &mut backoff);
        match tracing::Instrument::instrument(attempt, span).await {
            Ok(()) => return,
            Err(Down::Refused(s))
                if matches!(
                    s.code(),
                    tonic::Code::Unauthenticated | tonic::Code::PermissionDenied
                ) =>
            {
                tracing::error!(agent = %worker.agent_id(), server = %server, error = %s.message(),
                    "the server refuses this agent's token; stopping");
                unauthorized.cancel();
                return;
            }
            Err(e) => {
                tracing::warn!(agent = %worker.agent_id(), server = %server, error = %e, retry_in = ?backoff.peek(), "session down; reconnecting");
            }
        }
        tokio::select! {
            _ = tokio::time::sleep(backoff.next_delay()) => {}
            _ = stop.cancelled() => return,
        }
    }
}

async fn one_session(
    server: &str,
    opts: &ttg_proto::client::ConnectOpts,
    worker: &Worker,
    stop: &CancellationToken,
    ending: &std::sync::Mutex<Ending>,
    backoff: &mut Backoff,
) -> Result<(), Down> {
    let channel = ttg_proto::client::endpoint(server, opts)?
        .connect()
        .await
        .map_err(Down::Connect)?;
    let bearer = ttg_proto::client::Bearer::new(opts.token.as_deref())?;
    let mut client = AgentGatewayClient::with_interceptor(channel, bearer);
    let (tx, rx) = mpsc::channel::<AgentMessage>(16);
    let hello = AgentMessage {
        msg: Some(agent_message::Msg::Hello(Hello {
            agent_id: worker.agent_id().to_string(),
            host: crate::config::hostname(),
            version: env!("CARGO_PKG_VERSION").to_string(),
            concurrency: worker.concurrency(),
            kernels: worker.kernel_names(),
            pid: std::process::id(),
            kernel_decls: worker.kernel_decls(),
            instance: worker.instance().to_string(),
        })),
    };
    tx.send(hello)
        .await
        .map_err(|_| Down::Stream("session closed"))?;
    let mut inbound = client
        .session(ReceiverStream::new(rx))
        .await
        .map_err(Down::Refused)?
        .into_inner();
    let welcome = match tokio::time::timeout(Duration::from_secs(5), inbound.message()).await {
        Ok(Ok(Some(m))) => match m.msg {
            Some(server_message::Msg::Welcome(w)) => w,
            _ => return Err(Down::Stream("expected Welcome")),
        },
        Ok(Err(s)) => return Err(Down::Refused(s)),
        Ok(Ok(None)) => return Err(Down::Stream("session closed before Welcome")),
        Err(_) => return Err(Down::Stream("no Welcome within 5s")),
    };
    backoff.reset();
    worker.set_lease(Duration::from_millis(welcome.lease_ms));
    tracing::info!(agent = %worker.agent_id(), server = %welcome.server_id, lease_ms = welcome.lease_ms, "session open");
    let mut tick = tokio::time::interval(Duration::from_millis(
        welcome.heartbeat_interval_ms.clamp(50, 60_000),
    ));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = tick.tick() => {
                let hb = AgentMessage { msg: Some(agent_message::Msg::Heartbeat(Heartbeat {
                    held: worker.held(),
                    completed_total: worker.completed_total(),
                    ack_latency_ms: worker.take_ack_latencies(),
                })) };
                tx.send(hb).await.map_err(|_| Down::Stream("session closed"))?;
            }
            m = inbound.message() => match m {
                Ok(Some(msg)) => {
                    if let Some(server_message::Msg::CancelRun(c)) = msg.msg {
                        worker.cancel_run(&c.run_id);
                    }
                }
                Ok(None) => return Err(Down::Stream("server closed the session")),
                Err(s) => return Err(Down::Refused(s)),
            },
            _ = stop.cancelled() => {
                let how = ending.lock().map(|e| *e).unwrap_or(Ending::Abandon);
                if how == Ending::Bye {
                    let bye = AgentMessage { msg: Some(agent_message::Msg::Bye(Bye { reason: "drained".into() })) };
                    let _ = tx.send(bye).await;
                    drop(tx);
                    // Wait until the server has read Bye and closed its side.
                    let _ = tokio::time::timeout(Duration::from_secs(2), async {
                        while let Ok(Some(_)) = inbound.message().await {}
                    }).await;
                }
                return Ok(());
            }
        }
    }
}
