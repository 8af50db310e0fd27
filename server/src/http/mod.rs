//! The dashboard: a web page and its JSON/SSE API, served by `ttg-server`
//! itself on `--http-addr` (TLS when the gRPC port has TLS, with the same
//! certificate). A thin adapter over the same [`Control`] the gRPC API
//! uses — the same validation, limits and errors — with the same tokens:
//! a session cookie holding the token (HttpOnly, SameSite=Strict, Secure
//! under TLS) or an `Authorization: Bearer` header, checked against the
//! gRPC method each endpoint stands for, so a reader token sees but cannot
//! act. Charts come from bounded server-side aggregates
//! ([`crate::store::Store::histogram`] and friends); live views are
//! server-sent events fed by the runs' event streams (a run page) or by one
//! shared snapshot per server (the runs and agents lists), never a polling
//! loop per tab.
//!
//! Files: `session` (who is asking), `api` (JSON endpoints), `live` (SSE),
//! `assets` (the page, embedded from `server/dashboard/`).

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use axum::http::{header, HeaderValue};
use axum::Router;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

use crate::auth::Auth;
use crate::control::Control;
use crate::error::Error;
use crate::store::Store;

mod api;
mod assets;
mod live;
mod session;

/// Most points a chart reads before it samples every k-th chunk.
pub const MAX_SCAN_POINTS: u64 = 2_000_000;
/// Charts computed at once (each reads up to [`MAX_SCAN_POINTS`]); more
/// wait up to [`CHART_WAIT`], then are told to retry (429).
pub const MAX_CHARTS: usize = 4;
/// How long a chart request waits for its turn.
pub const CHART_WAIT: Duration = Duration::from_secs(10);
/// Live (SSE) streams open at once per server; more are refused (429).
pub const MAX_STREAMS: usize = 2_048;

/// What every handler shares.
pub struct Dashboard {
    control: Arc<Control>,
    store: Arc<Store>,
    auth: Option<Arc<Auth>>,
    /// Served over TLS (the session cookie is then `Secure`).
    tls: bool,
    /// `--trace-url-template`, with `{trace_id}` in it.
    trace_url: Option<String>,
    hub: live::Hub,
    feeds: live::Feeds,
    charts: tokio::sync::Semaphore,
    streams: Arc<std::sync::atomic::AtomicUsize>,
    shutdown: CancellationToken,
}

impl Dashboard {
    /// The dashboard over the gRPC API's `control` and `store`.
    pub fn new(
        control: Arc<Control>,
        store: Arc<Store>,
        auth: Option<Arc<Auth>>,
        tls: bool,
        trace_url: Option<String>,
        shutdown: CancellationToken,
    ) -> Arc<Dashboard> {
        Arc::new(Dashboard {
            hub: live::Hub::new(store.clone()),
            feeds: live::Feeds::new(store.clone()),
            charts: tokio::sync::Semaphore::new(MAX_CHARTS),
            streams: Arc::default(),
            control,
            store,
            auth,
            tls,
            trace_url,
            shutdown,
        })
    }
}

/// Every route, with the headers every answer carries: a strict CSP (the
/// page loads only its own files and talks only to this origin), no
/// framing, no sniffing, no referrer.
fn router(d: Arc<Dashboard>) -> Router {
    let headers = tower::ServiceBuilder::new()
        .map_response(|mut r: axum::response::Response| {
            let h = r.headers_mut();
            for (k, v) in [
                (
                    header::CONTENT_SECURITY_POLICY,
                    "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' data:; connect-src 'self'; form-action 'self'; base-uri 'none'; frame-ancestors 'none'",
                ),
                (header::X_CONTENT_TYPE_OPTIONS, "nosniff"),
                (header::X_FRAME_OPTIONS, "DENY"),
                (header::REFERRER_POLICY, "no-referrer"),
            ] {
                h.insert(k, HeaderValue::from_static(v));
            }
            r
        });
    Router::new()
        .merge(assets::routes())
        .merge(session::routes())
        .merge(api::routes())
        .merge(live::routes())
        .layer(headers)
        .with_state(d)
}

/// Serve the dashboard on `listener` until `shutdown`, over TLS with
/// `tls` (the gRPC port's certificate and key, PEM) when given.
pub async fn serve(
    listener: TcpListener,
    d: Arc<Dashboard>,
    tls: Option<(Vec<u8>, Vec<u8>)>,
) -> Result<(), Error> {
    let addr: SocketAddr = listener
        .local_addr()
        .map_err(|e| Error::Startup(format!("--http-addr: {e}")))?;
    let stop = d.shutdown.clone();
    let app = router(d);
    tracing::info!(%addr, tls = tls.is_some(), "dashboard listening");
    let Some((cert, key)) = tls else {
        return axum::serve(listener, app)
            .with_graceful_shutdown(async move { stop.cancelled().await })
            .await
            .map_err(|e| Error::Startup(format!("dashboard: {e}")));
    };
    let acceptor = tls_acceptor(&cert, &key)?;
    loop {
        let (sock, _) = tokio::select! {
            _ = stop.cancelled() => return Ok(()),
            a = listener.accept() => match a {
                Ok(a) => a,
                Err(e) => {
                    tracing::debug!(error = %e, "dashboard accept failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
        };
        let (acceptor, app, stop) = (acceptor.clone(), app.clone(), stop.clone());
        tokio::spawn(async move {
            let Ok(Ok(tls)) =
                tokio::time::timeout(Duration::from_secs(10), acceptor.accept(sock)).await
            else {
                return;
            };
            let svc = hyper_util::service::TowerToHyperService::new(app);
            let builder =
                hyper_util::server::conn::auto::Builder::new(hyper_util::rt::TokioExecutor::new());
            let conn =
                builder.serve_connection_with_upgrades(hyper_util::rt::TokioIo::new(tls), svc);
            tokio::select! {
                _ = conn => {}
                _ = stop.cancelled() => {}
            }
        });
    }
}

/// A rustls acceptor for the PEM certificate chain and key.
fn tls_acceptor(cert: &[u8], key: &[u8]) -> Result<tokio_rustls::TlsAcceptor, Error> {
    use tokio_rustls::rustls::pki_types::pem::PemObject;
    use tokio_rustls::rustls::pki_types::{CertificateDer, PrivateKeyDer};
    let bad = |what: &str, e: &dyn std::fmt::Display| {
        Error::Startup(format!("dashboard TLS {what}: {e}"))
    };
    let certs = CertificateDer::pem_slice_iter(cert)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| bad("certificate", &e))?;
    let key = PrivateKeyDer::from_pem_slice(key).map_err(|e| bad("key", &e))?;
    let mut config = tokio_rustls::rustls::ServerConfig::builder_with_provider(Arc::new(
        tokio_rustls::rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .map_err(|e| bad("versions", &e))?
    .with_no_client_auth()
    .with_single_cert(certs, key)
    .map_err(|e| bad("certificate", &e))?;
    config.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
    Ok(tokio_rustls::TlsAcceptor::from(Arc::new(config)))
}
