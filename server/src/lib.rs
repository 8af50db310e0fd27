//! `ttg-server`: TTG's control plane.
//!
//! Modules, in the order a newcomer should read them:
//! - [`config`]: flags and their defaults.
//! - [`store`]: runs and agents on Redis — submit, status, cancel, watch,
//!   results. Every Redis call has a deadline. No tonic types.
//! - [`control`]: the `ttg.v1.ControlPlane` gRPC handlers (thin).
//! - [`gateway`]: the `ttg.v1.AgentGateway.Session` stream — an agent's lease.
//! - [`auth`]: bearer tokens with roles, checked in front of every service.
//! - [`error`]: the one error type and its one conversion to `tonic::Status`.
//!
//! [`run`] serves all of it plus `grpc.health.v1.Health` and server
//! reflection (v1 and v1alpha) on one listener until `shutdown` is cancelled.

pub mod auth;
pub mod config;
pub mod control;
pub mod error;
pub mod gateway;
pub mod hello;
pub mod http;
pub mod metrics_help;
pub mod store;
pub mod validate;

use std::sync::Arc;
use std::time::Duration;

use tokio::net::TcpListener;
use tokio_stream::wrappers::TcpListenerStream;
use tokio_util::sync::CancellationToken;
use ttg_proto::v1::agent_gateway_server::AgentGatewayServer;
use ttg_proto::v1::control_plane_server::ControlPlaneServer;

pub use config::Config;
pub use error::Error;

/// One reflection builder per version (`build_*` consumes it). Both versions'
/// descriptors are registered in both, so either client (grpcurl 1.8 speaks
/// v1alpha only) lists every service, both reflection services included.
fn reflection() -> tonic_reflection::server::Builder<'static> {
    tonic_reflection::server::Builder::configure()
        .include_reflection_service(false)
        .register_encoded_file_descriptor_set(ttg_proto::v1::FILE_DESCRIPTOR_SET)
        .register_encoded_file_descriptor_set(tonic_health::pb::FILE_DESCRIPTOR_SET)
        .register_encoded_file_descriptor_set(tonic_reflection::pb::v1::FILE_DESCRIPTOR_SET)
        .register_encoded_file_descriptor_set(tonic_reflection::pb::v1alpha::FILE_DESCRIPTOR_SET)
}

/// Reclaim the chunks of agents whose lease in Redis expired while no
/// replica held their session (the replica that did died with them, or the
/// agent froze while disconnected). Agents held here are left to their
/// session task, which reclaims at lease expiry itself.
async fn reaper(
    store: Arc<store::Store>,
    sessions: Arc<gateway::Sessions>,
    lease: Duration,
    stop: CancellationToken,
) {
    let mut tick = tokio::time::interval(lease / 3);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = stop.cancelled() => return,
            _ = tick.tick() => {}
        }
        let Ok(expired) = store.expired_agents().await else {
            continue;
        };
        for id in expired {
            if sessions.holds(&id) {
                continue;
            }
            // Hold the job for 10 leases: if this replica dies mid-reclaim,
            // another takes over then.
            let info = match store.claim_reap(&id, lease * 10).await {
                Ok(Some(info)) => info,
                Ok(None) => continue,
                Err(e) => {
                    tracing::warn!(agent = %id, error = %e, "reaper: claim failed");
                    continue;
                }
            };
            let kernels = if info.kernels.is_empty() {
                ttg_proto::kernels::BUILTIN
                    .iter()
                    .map(|k| k.name.to_string())
                    .collect()
            } else {
                info.kernels.clone()
            };
            let since_beat = (ttg_proto::now_ms() - info.last_heartbeat_ms).max(0) as u64;
            let died = std::time::Instant::now()
                .checked_sub(Duration::from_millis(since_beat.min(3_600_000)))
                .unwrap_or_else(std::time::Instant::now);
            tracing::warn!(agent = %id, "reaper: lease expired with no session; reclaiming its chunks");
            if let Err(e) = store
                .reclaim_agent(
                    &id,
                    &kernels,
                    ttg_proto::reclaim::Cause::LeaseExpired,
                    died,
                    &info.held,
                )
                .await
            {
                tracing::error!(agent = %id, error = %e, "reaper: reclaim failed; will retry");
            }
        }
    }
}

/// Every 5 s, refresh the metrics that live in Redis (see `Store::collect_metrics`).
async fn collect_metrics(store: Arc<store::Store>, stop: CancellationToken) {
    let mut tick = tokio::time::interval(Duration::from_secs(5));
    loop {
        tokio::select! {
            _ = stop.cancelled() => return,
            _ = tick.tick() => {}
        }
        if let Err(e) = store.collect_metrics().await {
            tracing::debug!(error = %e, "metrics collection failed");
        }
    }
}

/// Every `interval`, remove the runs whose retention has ended; every
/// `audit_every`, audit the active runs' books and re-queue lost chunks (see
/// `store::audit`). Every replica runs one; the scripts make their work
/// idempotent.
async fn janitor(
    store: Arc<store::Store>,
    interval: Duration,
    audit_every: Duration,
    audit_quiet: Duration,
    stop: CancellationToken,
) {
    let mut tick = tokio::time::interval(interval);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut audit = tokio::time::interval(audit_every);
    audit.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = stop.cancelled() => return,
            _ = tick.tick() => match store.expire_due().await {
                Ok(0) => {}
                Ok(n) => tracing::info!(runs = n, "janitor removed expired runs"),
                Err(e) => tracing::warn!(error = %e, "janitor: expiring runs failed; will retry"),
            },
            _ = audit.tick() => match store.audit(audit_quiet).await {
                Ok(0) => {}
                Ok(n) => tracing::warn!(chunks = n, "audit re-queued lost chunks"),
                Err(e) => tracing::warn!(error = %e, "audit failed; will retry"),
            },
        }
    }
}

/// Push cancels published by other replicas to the agents this one holds.
async fn cancel_listener(
    store: Arc<store::Store>,
    sessions: Arc<gateway::Sessions>,
    stop: CancellationToken,
) {
    let channel = store.keys().control_channel();
    loop {
        match store.target().subscribe(&channel).await {
            Ok(mut sub) => loop {
                let payload = tokio::select! {
                    _ = stop.cancelled() => return,
                    m = sub.next() => m,
                };
                let Some(payload) = payload else { break };
                let mut parts = payload.split(' ');
                if let (Some("cancel"), Some(from), Some(run)) =
                    (parts.next(), parts.next(), parts.next())
                {
                    if from != sessions.server_id() {
                        sessions.broadcast_cancel(run);
                    }
                }
            },
            Err(e) => tracing::debug!(error = %e, "cancel listener: redis unavailable"),
        }
        tokio::select! {
            _ = stop.cancelled() => return,
            _ = tokio::time::sleep(Duration::from_secs(1)) => {}
        }
    }
}

/// The server's background tasks: the reaper of dead agents, the cancel
/// listener, the metrics refresh (with --metrics-addr), the janitor, and a
/// one-off eviction-policy check (not awaited: a Redis that is down at start
/// must not delay serving).
fn spawn_background(
    store: &Arc<store::Store>,
    sessions: &Arc<gateway::Sessions>,
    config: &Config,
    shutdown: &CancellationToken,
) {
    tokio::spawn(reaper(
        store.clone(),
        sessions.clone(),
        config.lease,
        shutdown.clone(),
    ));
    tokio::spawn(cancel_listener(
        store.clone(),
        sessions.clone(),
        shutdown.clone(),
    ));
    if config.metrics_addr.is_some() {
        tokio::spawn(collect_metrics(store.clone(), shutdown.clone()));
    }
    tokio::spawn(janitor(
        store.clone(),
        config.janitor_interval,
        config.audit_interval,
        config.audit_quiet,
        shutdown.clone(),
    ));
    let store = store.clone();
    tokio::spawn(async move { store.check_eviction_policy().await });
}

/// The gRPC server builder, with TLS (and mutual TLS) when configured.
fn transport_builder(config: &Config) -> Result<tonic::transport::Server, Error> {
    let builder = tonic::transport::Server::builder();
    let (Some(cert), Some(key)) = (&config.tls_cert, &config.tls_key) else {
        return Ok(builder);
    };
    let read = |p: &std::path::PathBuf| {
        std::fs::read(p).map_err(|e| Error::Startup(format!("{}: {e}", p.display())))
    };
    let mut tls = tonic::transport::ServerTlsConfig::new().identity(
        tonic::transport::Identity::from_pem(read(cert)?, read(key)?),
    );
    if let Some(ca) = &config.client_ca {
        tls = tls.client_ca_root(tonic::transport::Certificate::from_pem(read(ca)?));
    }
    builder
        .tls_config(tls)
        .map_err(|e| Error::Startup(format!("TLS: {e}")))
}

/// Agree the installation's slot groups with Redis (see
/// `store/layout.rs`). A `--slot-groups` that contradicts the stored
/// layout stops the server; a Redis not reachable yet is asked again every
/// second in the background (the store uses one group meanwhile, which is
/// every installation's home group).
async fn settle_layout(
    store: &Arc<store::Store>,
    wanted: Option<u32>,
    shutdown: &CancellationToken,
) -> Result<(), Error> {
    match store.settle_layout(wanted).await {
        Ok(n) => {
            if n > 1 {
                tracing::info!(groups = n, "runs spread over slot groups");
            }
            Ok(())
        }
        Err(e @ Error::Startup(_)) => Err(e),
        Err(e) => {
            tracing::warn!(error = %e, "cannot read the installation's slot groups yet; retrying");
            let (store, shutdown) = (store.clone(), shutdown.clone());
            tokio::spawn(async move {
                loop {
                    tokio::select! {
                        _ = shutdown.cancelled() => return,
                        _ = tokio::time::sleep(Duration::from_secs(1)) => {}
                    }
                    match store.settle_layout(wanted).await {
                        Ok(_) => return,
                        Err(e @ Error::Startup(_)) => {
                            tracing::error!(error = %e, "stopping");
                            shutdown.cancel();
                            return;
                        }
                        Err(_) => {}
                    }
                }
            });
            Ok(())
        }
    }
}

/// Serve on `listener` until `shutdown` is cancelled. Order on shutdown:
/// health turns NOT_SERVING, sessions and watches end (agents keep working
/// and reconnect), then the listener closes.
pub async fn run(
    listener: TcpListener,
    config: Config,
    shutdown: CancellationToken,
) -> Result<(), Error> {
    let store = Arc::new(
        store::Store::new(
            config
                .redis_target()
                .map_err(|e| Error::Startup(format!("redis: {e}")))?,
            &config.prefix,
            config.redis_timeout,
            config.limits.clone(),
        )
        .and_then(|s| s.with_wait_replicas(config.redis_wait_replicas, config.redis_wait_timeout))
        .map_err(|e| Error::Startup(format!("redis: {e}")))?,
    );
    settle_layout(&store, config.slot_groups, &shutdown).await?;
    let server_id = format!("srv-{:08x}", rand::random::<u32>());
    let sessions = Arc::new(gateway::Sessions::new(server_id.clone()));
    spawn_background(&store, &sessions, &config, &shutdown);
    let auth = match &config.tokens_file {
        Some(path) => {
            let a = Arc::new(auth::Auth::from_file(path)?);
            tokio::spawn(a.clone().watch(shutdown.clone()));
            Some(a)
        }
        None => {
            tracing::warn!("--insecure-no-auth: every request is accepted without a token");
            None
        }
    };
    let control = Arc::new(control::Control::new(
        store.clone(),
        sessions.clone(),
        shutdown.clone(),
        config.limits.submit_rate,
    ));
    if let Some(addr) = config.http_addr {
        let listener = TcpListener::bind(addr)
            .await
            .map_err(|e| Error::Startup(format!("--http-addr {addr}: {e}")))?;
        let tls = match (&config.tls_cert, &config.tls_key) {
            (Some(c), Some(k)) => {
                let read = |p: &std::path::PathBuf| {
                    std::fs::read(p).map_err(|e| Error::Startup(format!("{}: {e}", p.display())))
                };
                Some((read(c)?, read(k)?))
            }
            _ => None,
        };
        let dashboard = http::Dashboard::new(
            control.clone(),
            store.clone(),
            auth.clone(),
            tls.is_some(),
            config.trace_url_template.clone(),
            shutdown.clone(),
        );
        // Built now so a bad certificate stops start-up, not the first visitor.
        let serving = http::serve(listener, dashboard, tls);
        tokio::spawn(async move {
            if let Err(e) = serving.await {
                tracing::error!(error = %e, "dashboard stopped");
            }
        });
    }
    let gateway = gateway::Gateway {
        store: store.clone(),
        sessions: sessions.clone(),
        server_id: server_id.clone(),
        heartbeat_interval: config.heartbeat_interval,
        lease: config.lease,
        max_sessions_per_token: config.limits.max_sessions_per_token,
        shutdown: shutdown.clone(),
    };

    let (health, health_service) = tonic_health::server::health_reporter();
    health
        .set_serving::<ControlPlaneServer<control::Control>>()
        .await;
    health
        .set_serving::<AgentGatewayServer<gateway::Gateway>>()
        .await;
    let reflection_v1 = reflection()
        .build_v1()
        .map_err(|e| Error::Startup(format!("reflection: {e}")))?;
    let reflection_v1alpha = reflection()
        .build_v1alpha()
        .map_err(|e| Error::Startup(format!("reflection: {e}")))?;

    let addr = listener
        .local_addr()
        .map_err(|e| Error::Startup(e.to_string()))?;
    tracing::info!(%addr, server = %server_id, redis = %store.target().describe(), prefix = %store.keys().prefix(), "ttg-server listening");

    let stop = shutdown.clone();
    let drained = async move {
        stop.cancelled().await;
        health
            .set_not_serving::<ControlPlaneServer<control::Control>>()
            .await;
        health
            .set_not_serving::<AgentGatewayServer<gateway::Gateway>>()
            .await;
        tracing::info!("shutting down");
    };
    let max_msg = config.limits.max_message_bytes;
    transport_builder(&config)?
        .tcp_nodelay(true)
        // Keepalives find a peer that vanished without closing its socket
        // (network cut); a killed process's socket is closed by its kernel.
        .http2_keepalive_interval(Some(Duration::from_secs(5)))
        .http2_keepalive_timeout(Some(Duration::from_secs(5)))
        .layer(auth::AuthLayer(auth))
        .add_service(health_service)
        .add_service(reflection_v1)
        .add_service(reflection_v1alpha)
        .add_service(ControlPlaneServer::from_arc(control).max_decoding_message_size(max_msg))
        .add_service(AgentGatewayServer::new(gateway).max_decoding_message_size(max_msg))
        .serve_with_incoming_shutdown(TcpListenerStream::new(listener), drained)
        .await
        .map_err(|e| Error::Startup(format!("transport: {e}")))
}
