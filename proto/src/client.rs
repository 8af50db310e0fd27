//! gRPC client side shared by agents and ttgctl: TLS (server CA, optional
//! client certificate for mutual TLS) and the bearer token on every call.

use std::path::PathBuf;
use std::time::Duration;

use tonic::metadata::{Ascii, MetadataValue};
use tonic::service::Interceptor;
use tonic::transport::{Certificate, ClientTlsConfig, Endpoint, Identity};

/// Why a client cannot be set up; the message is what a person can act on.
#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    /// The server URL does not parse.
    #[error("{url:?} is not a valid URL: {source}")]
    BadUrl {
        /// The URL given.
        url: String,
        /// Why.
        #[source]
        source: tonic::transport::Error,
    },
    /// A PEM file could not be read.
    #[error("{}: {source}", path.display())]
    Read {
        /// The file.
        path: PathBuf,
        /// Why.
        #[source]
        source: std::io::Error,
    },
    /// The TLS settings were refused.
    #[error("TLS: {0}")]
    Tls(#[source] tonic::transport::Error),
    /// TLS files given for a plaintext URL.
    #[error("--ca/--cert need an https:// server URL, got {0}")]
    TlsNeedsHttps(String),
    /// A token that cannot be sent in a header (never shown).
    #[error("the token must be printable ASCII")]
    BadToken,
}

/// How to reach a server.
#[derive(Clone, Debug, Default)]
pub struct ConnectOpts {
    /// Bearer token sent on every call.
    pub token: Option<String>,
    /// PEM CA that signed the server's certificate (https:// URLs).
    pub ca: Option<PathBuf>,
    /// PEM client certificate, for servers that require mutual TLS.
    pub cert: Option<PathBuf>,
    /// PEM key of `cert`.
    pub key: Option<PathBuf>,
}

/// An endpoint for `url` with these options (connect timeout 2 s, TCP
/// no-delay, HTTP/2 keepalive). `https://` URLs use TLS with the system's
/// roots unless `ca` is given.
pub fn endpoint(url: &str, opts: &ConnectOpts) -> Result<Endpoint, ClientError> {
    let mut ep = Endpoint::from_shared(url.to_string())
        .map_err(|source| ClientError::BadUrl {
            url: url.to_string(),
            source,
        })?
        .connect_timeout(Duration::from_secs(2))
        .tcp_nodelay(true)
        .http2_keep_alive_interval(Duration::from_secs(5))
        .keep_alive_timeout(Duration::from_secs(5))
        .keep_alive_while_idle(true);
    if url.starts_with("https://") {
        let read = |p: &PathBuf| {
            std::fs::read(p).map_err(|source| ClientError::Read {
                path: p.clone(),
                source,
            })
        };
        let mut tls = ClientTlsConfig::new();
        tls = match &opts.ca {
            Some(ca) => tls.ca_certificate(Certificate::from_pem(read(ca)?)),
            None => tls.with_enabled_roots(),
        };
        if let (Some(cert), Some(key)) = (&opts.cert, &opts.key) {
            tls = tls.identity(Identity::from_pem(read(cert)?, read(key)?));
        }
        ep = ep.tls_config(tls).map_err(ClientError::Tls)?;
    } else if opts.ca.is_some() || opts.cert.is_some() {
        return Err(ClientError::TlsNeedsHttps(url.to_string()));
    }
    Ok(ep)
}

/// Adds `authorization: Bearer <token>` to every call (nothing without a token).
#[derive(Clone, Debug, Default)]
pub struct Bearer(Option<MetadataValue<Ascii>>);

impl Bearer {
    /// For `token` (None: send nothing). Fails on a token that is not
    /// printable ASCII, naming neither the token nor its bytes.
    pub fn new(token: Option<&str>) -> Result<Self, ClientError> {
        match token.map(str::trim).filter(|t| !t.is_empty()) {
            None => Ok(Bearer(None)),
            Some(t) => format!("Bearer {t}")
                .parse()
                .map(|v| Bearer(Some(v)))
                .map_err(|_| ClientError::BadToken),
        }
    }
}

impl Interceptor for Bearer {
    fn call(&mut self, mut req: tonic::Request<()>) -> Result<tonic::Request<()>, tonic::Status> {
        if let Some(v) = &self.0 {
            req.metadata_mut().insert("authorization", v.clone());
        }
        Ok(req)
    }
}
