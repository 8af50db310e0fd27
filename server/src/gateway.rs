//! `AgentGateway.Session`: one bidirectional stream per agent, which is its
//! lease. The server records the agent in Redis at Hello and at every
//! heartbeat (so any replica can list it), pushes commands to it, and forgets
//! it at Bye or when the stream ends.

use std::collections::HashMap;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::sync::mpsc;
use tokio::time::Instant;
use tokio_stream::wrappers::ReceiverStream;
use tokio_stream::Stream;
use tokio_util::sync::CancellationToken;
use tonic::{Request, Response, Status, Streaming};
use ttg_proto::now_ms;
use ttg_proto::reclaim::Cause;
use ttg_proto::v1::agent_gateway_server::AgentGateway;
use ttg_proto::v1::{
    agent_message, server_message, AgentInfo, AgentMessage, CancelRun, ServerMessage, Welcome,
};

use crate::auth::Grant;
use crate::hello::{check_hello, trim_heartbeat};
use crate::store::Store;

/// How long a new session may take to say Hello.
const HELLO_TIMEOUT: Duration = Duration::from_secs(10);

type Outbound = mpsc::Sender<Result<ServerMessage, Status>>;

/// Sessions held by this replica: agent id → its outbound channel.
pub struct Sessions {
    inner: Mutex<HashMap<String, (u64, Outbound)>>,
    /// Open sessions per token name (only with auth on).
    per_token: Mutex<HashMap<String, u32>>,
    next: std::sync::atomic::AtomicU64,
    server_id: String,
}

impl Sessions {
    /// No sessions yet, for replica `server_id`.
    pub fn new(server_id: String) -> Self {
        Self {
            inner: Mutex::new(HashMap::new()),
            per_token: Mutex::new(HashMap::new()),
            next: std::sync::atomic::AtomicU64::new(0),
            server_id,
        }
    }

    /// This replica's id.
    pub fn server_id(&self) -> &str {
        &self.server_id
    }

    /// Whether this replica holds `agent_id`'s session.
    pub fn holds(&self, agent_id: &str) -> bool {
        self.inner
            .lock()
            .map(|m| m.contains_key(agent_id))
            .unwrap_or(false)
    }

    fn insert(&self, agent_id: &str, tx: Outbound) -> u64 {
        let n = self.next.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        if let Ok(mut m) = self.inner.lock() {
            m.insert(agent_id.to_string(), (n, tx));
            metrics::gauge!("ttg_sessions_connected").set(m.len() as f64);
        }
        n
    }

    /// Remove only the session numbered `n`: a reconnected agent's newer
    /// session must survive the old one's clean-up.
    fn remove(&self, agent_id: &str, n: u64) {
        if let Ok(mut m) = self.inner.lock() {
            if m.get(agent_id).is_some_and(|(k, _)| *k == n) {
                m.remove(agent_id);
            }
            metrics::gauge!("ttg_sessions_connected").set(m.len() as f64);
        }
    }

    /// Count one more session for `token`, unless it holds `max` already.
    fn admit(&self, token: &str, max: u32) -> bool {
        let Ok(mut m) = self.per_token.lock() else {
            return false;
        };
        let n = m.entry(token.to_string()).or_insert(0);
        if *n >= max {
            return false;
        }
        *n += 1;
        true
    }

    /// A session of `token` ended.
    fn release(&self, token: &str) {
        if let Ok(mut m) = self.per_token.lock() {
            if let Some(n) = m.get_mut(token) {
                *n = n.saturating_sub(1);
                if *n == 0 {
                    m.remove(token);
                }
            }
        }
    }

    /// Number of sessions held.
    pub fn len(&self) -> usize {
        self.inner.lock().map(|m| m.len()).unwrap_or(0)
    }

    /// Whether no session is held.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Tell every agent of this replica to drop `run_id`'s chunks at once.
    pub fn broadcast_cancel(&self, run_id: &str) {
        let msg = ServerMessage {
            msg: Some(server_message::Msg::CancelRun(CancelRun {
                run_id: run_id.to_string(),
            })),
        };
        if let Ok(m) = self.inner.lock() {
            for (_, tx) in m.values() {
                // A full channel means the agent is not reading; it still learns
                // of the cancel when its next completion is refused.
                let _ = tx.try_send(Ok(msg.clone()));
            }
        }
    }
}

/// The AgentGateway service.
pub struct Gateway {
    /// Where agents are recorded.
    pub store: Arc<Store>,
    /// This replica's sessions.
    pub sessions: Arc<Sessions>,
    /// This replica's id (sent in Welcome).
    pub server_id: String,
    /// Heartbeat interval the agents are told.
    pub heartbeat_interval: Duration,
    /// The lease: no heartbeat for this long and the agent is lost.
    pub lease: Duration,
    /// Most sessions one token may hold here.
    pub max_sessions_per_token: u32,
    /// Ends every session (server shutdown).
    pub shutdown: CancellationToken,
}

/// How a session ended.
#[derive(Debug, PartialEq, Eq)]
enum End {
    /// The agent said Bye.
    Bye,
    /// The stream ended or broke without Bye (agent killed, connection reset).
    Dropped,
    /// No heartbeat within the lease (agent frozen, network cut).
    LeaseExpired,
    /// This server is shutting down; the agent will reconnect elsewhere.
    ServerShutdown,
    /// A tokens reload removed the session's token.
    Revoked,
}

#[tonic::async_trait]
impl AgentGateway for Gateway {
    type SessionStream = Pin<Box<dyn Stream<Item = Result<ServerMessage, Status>> + Send>>;

    async fn session(
        &self,
        request: Request<Streaming<AgentMessage>>,
    ) -> Result<Response<Self::SessionStream>, Status> {
        let grant = request.extensions().get::<Grant>().cloned();
        let token = grant.as_ref().map(|g| g.id.name.clone());
        if let Some(t) = &token {
            if !self.sessions.admit(t, self.max_sessions_per_token) {
                return Err(Status::resource_exhausted(format!(
                    "token {t:?} already holds {} agent sessions on this server (--max-sessions-per-token)",
                    self.max_sessions_per_token
                )));
            }
        }
        // Gives the token's session slot back however the session ends.
        struct Slot(Arc<Sessions>, Option<String>);
        impl Drop for Slot {
            fn drop(&mut self) {
                if let Some(t) = &self.1 {
                    self.0.release(t);
                }
            }
        }
        let slot = Slot(self.sessions.clone(), token);
        let inbound = request.into_inner();
        let (tx, rx) = mpsc::channel(64);
        let session = SessionTask {
            store: self.store.clone(),
            sessions: self.sessions.clone(),
            server_id: self.server_id.clone(),
            interval: self.heartbeat_interval,
            lease: self.lease,
            shutdown: self.shutdown.child_token(),
            tx,
        };
        let span =
            tracing::info_span!("session", agent_id = tracing::field::Empty, side = "server");
        tokio::spawn(tracing::Instrument::instrument(
            async move {
                let _slot = slot;
                session.run(inbound, grant).await;
            },
            span,
        ));
        Ok(Response::new(Box::pin(ReceiverStream::new(rx))))
    }
}

/// One agent session, from Hello to its end (and the reclaim it may need).
struct SessionTask {
    store: Arc<Store>,
    sessions: Arc<Sessions>,
    server_id: String,
    interval: Duration,
    lease: Duration,
    shutdown: CancellationToken,
    tx: Outbound,
}

impl SessionTask {
    async fn run(self, mut inbound: Streaming<AgentMessage>, grant: Option<Grant>) {
        let mut info = match self.admit(&mut inbound).await {
            Ok(info) => info,
            Err(status) => {
                let _ = self.tx.send(Err(status)).await;
                return;
            }
        };
        let agent_id = info.agent_id.clone();
        let n = self.sessions.insert(&agent_id, self.tx.clone());
        tracing::info!(agent = %agent_id, host = %info.host, concurrency = info.concurrency, "agent session opened");
        let welcome = ServerMessage {
            msg: Some(server_message::Msg::Welcome(Welcome {
                heartbeat_interval_ms: self.interval.as_millis() as u64,
                lease_ms: self.lease.as_millis() as u64,
                server_id: self.server_id.clone(),
            })),
        };
        let mut last_beat = Instant::now();
        let end = if self.tx.send(Ok(welcome)).await.is_err() {
            End::Dropped
        } else {
            tokio::select! {
                end = receive(&mut inbound, &mut info, &self.store, self.lease, &self.shutdown, &mut last_beat) => end,
                _ = crate::auth::revoked(grant) => End::Revoked,
            }
        };
        self.sessions.remove(&agent_id, n);
        self.finish(end, &info, last_beat).await;
    }

    /// Read and check Hello, take the agent id for its process, record the
    /// agent: its `AgentInfo`, or the status to refuse the session with.
    async fn admit(&self, inbound: &mut Streaming<AgentMessage>) -> Result<AgentInfo, Status> {
        let hello = match tokio::time::timeout(HELLO_TIMEOUT, inbound.message()).await {
            Ok(Ok(Some(AgentMessage {
                msg: Some(agent_message::Msg::Hello(h)),
            }))) => h,
            _ => {
                return Err(Status::invalid_argument(
                    "first message of a session must be Hello",
                ))
            }
        };
        if let Err(why) = check_hello(&hello) {
            tracing::warn!(error = %why, "agent session refused: bad Hello");
            return Err(Status::invalid_argument(why.to_string()));
        }
        let agent_id = hello.agent_id.clone();
        // A live agent id belongs to the process that holds it: a second
        // Hello with it is refused unless it carries the same instance
        // secret (the same process, reconnecting).
        if !self
            .store
            .claim_agent_id(&agent_id, &hello.instance, self.lease)
            .await?
        {
            tracing::warn!(agent = %agent_id, "agent session refused: the id is held by another live agent");
            return Err(Status::already_exists(format!(
                "hello.agent_id: agent {agent_id:?} is held by another live agent process; pick another id or wait until its lease expires"
            )));
        }
        tracing::Span::current().record("agent_id", agent_id.as_str());
        let info = AgentInfo {
            agent_id,
            host: hello.host,
            version: hello.version,
            concurrency: hello.concurrency,
            kernels: hello.kernels,
            connected_ms: now_ms(),
            last_heartbeat_ms: now_ms(),
            held: Vec::new(),
            server_id: self.server_id.clone(),
            pid: hello.pid,
            kernel_decls: hello.kernel_decls,
            completed_total: 0,
        };
        self.store.put_agent(&info, self.lease).await?;
        Ok(info)
    }

    /// After the session: forget a clean leaver, leave the record on a
    /// server shutdown, and reclaim what a lost agent held (unless it is
    /// already back on a newer session).
    async fn finish(&self, end: End, info: &AgentInfo, last_beat: Instant) {
        let agent_id = &info.agent_id;
        let (cause, died) = match end {
            End::ServerShutdown => {
                // Leave the record: the agent keeps working and reconnects to
                // another replica; its lease in Redis says it is alive.
                tracing::info!(agent = %agent_id, "session closed by server shutdown");
                return;
            }
            End::Bye => {
                if let Err(e) = self.store.remove_agent(agent_id).await {
                    tracing::warn!(agent = %agent_id, error = %e, "could not remove agent record");
                }
                tracing::info!(agent = %agent_id, "agent left cleanly");
                return;
            }
            End::Dropped => (Cause::SessionLost, std::time::Instant::now()),
            End::Revoked => {
                tracing::warn!(agent = %agent_id, "agent session ended: its token was revoked");
                let revoked = Status::unauthenticated("the session's token was revoked");
                let _ = self.tx.send(Err(revoked)).await;
                (Cause::SessionLost, std::time::Instant::now())
            }
            End::LeaseExpired => (Cause::LeaseExpired, last_beat.into_std()),
        };
        if self.sessions.holds(agent_id) {
            // The agent already reconnected (a new session replaced this
            // one): it is alive, and what it holds is its own.
            tracing::info!(agent = %agent_id, "old session ended; agent already back");
            return;
        }
        tracing::warn!(agent = %agent_id, cause = cause.as_str(), "agent lost: reclaiming its chunks");
        match self
            .store
            .reclaim_agent(agent_id, &info.kernels, cause, died, &info.held)
            .await
        {
            Ok(r) => tracing::info!(agent = %agent_id, chunks = r.len(), "reclaim done"),
            // The record stays with an expired lease: a reaper retries.
            Err(e) => {
                tracing::error!(agent = %agent_id, error = %e, "reclaim failed; a reaper will retry")
            }
        }
    }
}

async fn receive(
    inbound: &mut Streaming<AgentMessage>,
    info: &mut AgentInfo,
    store: &Store,
    lease: Duration,
    shutdown: &CancellationToken,
    last_beat: &mut Instant,
) -> End {
    let mut deadline = Instant::now() + lease;
    loop {
        let msg = tokio::select! {
            _ = shutdown.cancelled() => return End::ServerShutdown,
            r = tokio::time::timeout_at(deadline, inbound.message()) => r,
        };
        match msg {
            Err(_) => return End::LeaseExpired,
            Ok(Err(_)) | Ok(Ok(None)) => return End::Dropped,
            Ok(Ok(Some(AgentMessage { msg: Some(m) }))) => match m {
                agent_message::Msg::Heartbeat(mut hb) => {
                    if trim_heartbeat(&mut hb) {
                        tracing::warn!(agent = %info.agent_id, "oversized heartbeat trimmed");
                    }
                    *last_beat = Instant::now();
                    deadline = *last_beat + lease;
                    for ms in &hb.ack_latency_ms {
                        metrics::histogram!("ttg_claim_to_ack_seconds").record(*ms as f64 / 1000.0);
                    }
                    info.held = hb.held;
                    info.completed_total = hb.completed_total;
                    info.last_heartbeat_ms = now_ms();
                    if let Err(e) = store.put_agent(info, lease).await {
                        // Redis trouble must not end a live agent's session: it
                        // keeps computing, and the next heartbeat tries again.
                        tracing::warn!(agent = %info.agent_id, error = %e, "heartbeat not recorded");
                    }
                }
                agent_message::Msg::Bye(b) => {
                    tracing::info!(agent = %info.agent_id, reason = %b.reason, "agent said bye");
                    return End::Bye;
                }
                agent_message::Msg::Hello(_) => {
                    tracing::warn!(agent = %info.agent_id, "second Hello ignored");
                }
            },
            Ok(Ok(Some(AgentMessage { msg: None }))) => {}
        }
    }
}
