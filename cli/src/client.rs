//! Connecting to the server (the connection flags resolved against the
//! contexts of the config file) and turning failures into one clear line
//! and the exit code of [`EXIT_CODES`].

use std::fmt;
use std::time::Duration;

use tonic::service::interceptor::InterceptedService;
use tonic::transport::Channel;
use tonic::{Code, Status};
use ttg_proto::client::{Bearer, ConnectOpts};
use ttg_proto::v1::control_plane_client::ControlPlaneClient;
use ttg_proto::v1::{ListRunsRequest, RunStatus, StatusRequest};

/// Exit code: success (for `wait`, `watch`, `submit --watch`: the run
/// succeeded).
pub const EXIT_OK: i32 = 0;
/// Exit code: the run failed or was cancelled, or the command failed for
/// another reason (a server error, a local file).
pub const EXIT_FAILED: i32 = 1;
/// Exit code: bad usage, or a request the server rejected (invalid,
/// unknown run, not allowed, not authenticated, a limit reached).
pub const EXIT_USAGE: i32 = 2;
/// Exit code: the server (or its Redis) is unavailable: not running, not
/// reachable, or a TLS handshake failed.
pub const EXIT_UNAVAILABLE: i32 = 3;
/// Exit code: `wait --timeout` ran out before the run ended.
pub const EXIT_TIMEOUT: i32 = 4;
/// Exit code: interrupted (Ctrl-C during `watch` or `wait`; the run goes on).
pub const EXIT_INTERRUPTED: i32 = 130;

/// Every exit code and its meaning: one table, shown by `--help` and kept
/// in the README.
pub const EXIT_CODES: &[(i32, &str)] = &[
    (EXIT_OK, "success (watch, wait, submit --watch: the run succeeded)"),
    (EXIT_FAILED, "the run failed or was cancelled, or the command failed (server error, local file)"),
    (EXIT_USAGE, "bad usage, or the server rejected the request (invalid, unknown run, not allowed, not authenticated, limit reached)"),
    (EXIT_UNAVAILABLE, "server unavailable (not running, unreachable, TLS handshake failed)"),
    (EXIT_TIMEOUT, "wait --timeout ran out before the run ended"),
    (EXIT_INTERRUPTED, "interrupted by Ctrl-C (the run goes on)"),
];

/// [`EXIT_CODES`] as `--help` shows it.
pub fn exit_codes_help() -> String {
    let mut s = String::from("Exit codes:");
    for (code, meaning) in EXIT_CODES {
        s.push_str(&format!("\n  {code:>3}  {meaning}"));
    }
    s
}

/// An error with the exit code it maps to.
#[derive(Debug)]
pub struct CliError {
    /// Process exit code.
    pub code: i32,
    /// One line for a person.
    pub message: String,
    /// The gRPC status code, when the server answered with an error.
    pub status: Option<Code>,
}

impl CliError {
    fn new(code: i32, message: impl Into<String>) -> Self {
        Self {
            code,
            message: message.into(),
            status: None,
        }
    }
    /// A usage error (exit 2).
    pub fn usage(message: impl Into<String>) -> Self {
        Self::new(EXIT_USAGE, message)
    }
    /// A failure (exit 1).
    pub fn failed(message: impl Into<String>) -> Self {
        Self::new(EXIT_FAILED, message)
    }
    /// Server unavailable (exit 3).
    pub fn unavailable(message: impl Into<String>) -> Self {
        Self::new(EXIT_UNAVAILABLE, message)
    }
    /// Timed out (exit 4).
    pub fn timeout(message: impl Into<String>) -> Self {
        Self::new(EXIT_TIMEOUT, message)
    }
    /// Interrupted (exit 130).
    pub fn interrupted(message: impl Into<String>) -> Self {
        Self::new(EXIT_INTERRUPTED, message)
    }

    /// The error as `-o json` prints it on stderr:
    /// `{"error": {"code": …, "exit": …, "message": …}}`, where `code` is the
    /// server's gRPC status (`NotFound`, …) or what went wrong locally
    /// (`Usage`, `Unavailable`, `Failed`, `Timeout`, `Interrupted`).
    pub fn to_json(&self) -> serde_json::Value {
        let code = match self.status {
            Some(c) => format!("{c:?}"),
            None => match self.code {
                EXIT_USAGE => "Usage".into(),
                EXIT_UNAVAILABLE => "Unavailable".into(),
                EXIT_TIMEOUT => "Timeout".into(),
                EXIT_INTERRUPTED => "Interrupted".into(),
                _ => "Failed".into(),
            },
        };
        serde_json::json!({"error": {"code": code, "exit": self.code, "message": self.message}})
    }
}

impl fmt::Display for CliError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.message)
    }
}

impl From<Status> for CliError {
    fn from(s: Status) -> Self {
        let msg = s.message().to_string();
        // A call the connection broke under carries the transport's error
        // as its source; a server's own statuses carry none.
        if std::error::Error::source(&s).is_some() {
            return transport_error(&s);
        }
        let mut e = match s.code() {
            Code::InvalidArgument
            | Code::NotFound
            | Code::FailedPrecondition
            | Code::AlreadyExists
            | Code::OutOfRange => CliError::usage(msg),
            Code::Unavailable | Code::DeadlineExceeded => {
                CliError::unavailable(format!("server unavailable: {msg}"))
            }
            Code::Unauthenticated => CliError::usage(format!(
                "not authenticated: {msg} (pick a context with --context, or give --token-file / TTG_TOKEN; `ttgctl up` adds a context for its cluster)"
            )),
            Code::PermissionDenied => CliError::usage(format!("not allowed: {msg}")),
            Code::ResourceExhausted => CliError::usage(format!("limit reached: {msg}")),
            _ => CliError::failed(format!("server error ({:?}): {msg}", s.code())),
        };
        e.status = Some(s.code());
        e
    }
}

impl From<std::io::Error> for CliError {
    fn from(e: std::io::Error) -> Self {
        if e.kind() == std::io::ErrorKind::BrokenPipe {
            // stdout closed (`| head`): end quietly, as a SIGPIPE death.
            return Self::new(crate::sys::EXIT_CLOSED_PIPE, "");
        }
        CliError::failed(format!("i/o error: {e}"))
    }
}

/// A call the connection broke under (tonic's "transport error"): exit 3,
/// with the cause, and the likely fix when plaintext met a TLS server.
fn transport_error(s: &Status) -> CliError {
    let mut detail = Vec::new();
    let mut cur = std::error::Error::source(s);
    while let Some(e) = cur {
        detail.push(e.to_string());
        cur = e.source();
    }
    let server = SERVER.read().map(|s| s.clone()).unwrap_or_default();
    let hint = if server.starts_with("http://") {
        " — is the server serving TLS? Then use https:// (with --ca if its certificate is your own)"
    } else {
        ""
    };
    let mut e = CliError::unavailable(format!(
        "the connection to {server} failed during the call{hint} (detail: {})",
        detail
            .last()
            .map(String::as_str)
            .unwrap_or("transport error")
    ));
    e.status = Some(s.code());
    e
}

/// The server the last client was made for (for messages).
static SERVER: std::sync::RwLock<String> = std::sync::RwLock::new(String::new());

/// Result with [`CliError`].
pub type CliResult<T> = Result<T, CliError>;

/// How ttgctl reaches servers: set once from the command line (and by
/// `up`/`demo` for the cluster they start).
static CONNECT: std::sync::RwLock<Option<ConnectOpts>> = std::sync::RwLock::new(None);

/// Set the connection options.
pub fn set_connect_opts(o: ConnectOpts) {
    if let Ok(mut w) = CONNECT.write() {
        *w = Some(o);
    }
}

fn connect_opts() -> ConnectOpts {
    CONNECT
        .read()
        .ok()
        .and_then(|o| o.clone())
        .unwrap_or_default()
}

/// Default server when neither a flag, the environment nor a context names one.
pub const DEFAULT_SERVER: &str = "http://127.0.0.1:50051";

/// A server address as users type it, made a URL: `host:port` means
/// `http://host:port`; `http://` and `https://` are kept; any other scheme
/// is refused here, at parse time, naming the accepted forms.
pub fn parse_server(s: &str) -> Result<String, String> {
    let s = s.trim().trim_end_matches('/');
    if s.is_empty() {
        return Err("empty: give host:port, http://host:port or https://host:port".into());
    }
    let url = match s.split_once("://") {
        Some((scheme, _)) if scheme.eq_ignore_ascii_case("http") || scheme.eq_ignore_ascii_case("https") => {
            format!("{}{}", scheme.to_ascii_lowercase(), &s[scheme.len()..])
        }
        Some((scheme, _)) => {
            return Err(format!(
                "unknown scheme {scheme:?} in {s:?}: use http://host:port, https://host:port (TLS) or host:port (plaintext)"
            ))
        }
        None => format!("http://{s}"),
    };
    let uri: tonic::transport::Uri = url
        .parse()
        .map_err(|e| format!("{s:?} is not a server address ({e}): use host:port, http://host:port or https://host:port"))?;
    if uri.host().is_none_or(str::is_empty) {
        return Err(format!(
            "{s:?} names no host: use host:port, http://host:port or https://host:port"
        ));
    }
    Ok(url)
}

/// Connection settings as given on the command line or in the environment
/// (None: not given).
#[derive(Debug, Default, Clone)]
pub struct ConnFlags {
    /// `--context` / `TTG_CONTEXT`.
    pub context: Option<String>,
    /// `--server` / `TTG_SERVER`, already parsed by [`parse_server`].
    pub server: Option<String>,
    /// `--token` / `TTG_TOKEN`.
    pub token: Option<String>,
    /// `--token-file` / `TTG_TOKEN_FILE`.
    pub token_file: Option<std::path::PathBuf>,
    /// `--ca`.
    pub ca: Option<std::path::PathBuf>,
    /// `--cert`.
    pub cert: Option<std::path::PathBuf>,
    /// `--key`.
    pub key: Option<std::path::PathBuf>,
}

/// Where a command connects, and with what.
#[derive(Debug, Clone)]
pub struct Target {
    /// Server URL.
    pub server: String,
    /// The context it came from, if any.
    pub context: Option<String>,
    /// Token and TLS files.
    pub opts: ConnectOpts,
}

/// Resolve the flags against the config file: `--context` (or
/// `TTG_CONTEXT`) names the context; else `--server` alone takes the
/// credentials of the context whose server it is; else the current
/// context; else [`DEFAULT_SERVER`] without credentials. Flags given
/// explicitly always win over the context's values.
pub fn resolve(f: &ConnFlags) -> CliResult<Target> {
    let config = crate::context::load()?;
    let named = match &f.context {
        Some(name) => Some((
            name.clone(),
            config.contexts.get(name).cloned().ok_or_else(|| {
                CliError::usage(format!(
                    "no context named {name:?}; contexts: {} (`ttgctl context list`)",
                    names(&config)
                ))
            })?,
        )),
        None => match &f.server {
            Some(server) => {
                let same = |c: &crate::context::Context| {
                    parse_server(&c.server).is_ok_and(|u| &u == server)
                };
                // The current context first, then by name.
                config
                    .current_context
                    .as_ref()
                    .and_then(|n| {
                        config
                            .contexts
                            .get(n)
                            .filter(|c| same(c))
                            .map(|c| (n.clone(), c.clone()))
                    })
                    .or_else(|| {
                        config
                            .contexts
                            .iter()
                            .find(|(_, c)| same(c))
                            .map(|(n, c)| (n.clone(), c.clone()))
                    })
            }
            None => config
                .current_context
                .as_ref()
                .and_then(|n| config.contexts.get(n).map(|c| (n.clone(), c.clone()))),
        },
    };
    let mut t = Target {
        server: DEFAULT_SERVER.to_string(),
        context: None,
        opts: ConnectOpts::default(),
    };
    if let Some((name, ctx)) = named {
        t.server = parse_server(&ctx.server)
            .map_err(|e| CliError::usage(format!("context {name}: server {e}")))?;
        if f.token.is_none() && f.token_file.is_none() {
            t.opts.token = ctx.read_token(&name)?;
        }
        t.opts.ca = ctx.ca.clone();
        t.opts.cert = ctx.cert.clone();
        t.opts.key = ctx.key.clone();
        t.context = Some(name);
    }
    if let Some(s) = &f.server {
        t.server = s.clone();
    }
    if let Some(tok) = &f.token {
        t.opts.token = Some(tok.clone());
    } else if let Some(file) = &f.token_file {
        let tok = std::fs::read_to_string(file)
            .map_err(|e| CliError::usage(format!("--token-file {}: {e}", file.display())))?;
        t.opts.token = Some(tok.trim().to_string()).filter(|t| !t.is_empty());
    }
    for (dst, src) in [
        (&mut t.opts.ca, &f.ca),
        (&mut t.opts.cert, &f.cert),
        (&mut t.opts.key, &f.key),
    ] {
        if src.is_some() {
            dst.clone_from(src);
        }
    }
    Ok(t)
}

/// Context names, for messages.
fn names(c: &crate::context::Config) -> String {
    if c.contexts.is_empty() {
        return "none".into();
    }
    c.contexts.keys().cloned().collect::<Vec<_>>().join(", ")
}

/// A ControlPlane client as ttgctl uses it (bearer token on every call).
pub type Control = ControlPlaneClient<InterceptedService<Channel, Bearer>>;

/// A channel to `server`, connected now so a dead server is reported at once
/// — and why: nobody listening, or a TLS handshake that failed.
pub async fn channel(server: &str) -> CliResult<Channel> {
    if let Ok(mut s) = SERVER.write() {
        *s = server.to_string();
    }
    let ep = ttg_proto::client::endpoint(server, &connect_opts())
        .map_err(|e| CliError::usage(format!("--server: {e}")))?
        .connect_timeout(Duration::from_secs(3));
    ep.connect().await.map_err(|e| connect_error(server, &e))
}

/// One line for a failed connection, from the error's whole chain.
fn connect_error(server: &str, e: &tonic::transport::Error) -> CliError {
    let mut chain = Vec::new();
    let mut cur: Option<&(dyn std::error::Error + 'static)> = Some(e);
    while let Some(err) = cur {
        chain.push(err.to_string());
        cur = err.source();
    }
    let all = chain.join(": ").to_ascii_lowercase();
    let tls = server.starts_with("https://");
    if tls
        && (all.contains("tls")
            || all.contains("ssl")
            || all.contains("certificate")
            || all.contains("corrupt message")
            || all.contains("handshake")
            || all.contains("invalidcontenttype"))
    {
        return CliError::unavailable(format!(
            "TLS handshake with {server} failed: is the server serving TLS? (a plaintext server is http://…; detail: {})",
            chain.last().cloned().unwrap_or_default()
        ));
    }
    CliError::unavailable(format!(
        "cannot reach the TTG server at {server}: is it running? (start a local one with `ttgctl up`, or pick one with --server / --context; detail: {})",
        chain.last().cloned().unwrap_or_default()
    ))
}

/// A ControlPlane client for `server`.
pub async fn control(server: &str) -> CliResult<Control> {
    let bearer = Bearer::new(connect_opts().token.as_deref())
        .map_err(|e| CliError::usage(format!("--token: {e}")))?;
    Ok(
        ControlPlaneClient::with_interceptor(channel(server).await?, bearer)
            .max_decoding_message_size(64 * 1024 * 1024),
    )
}

/// A run's status.
pub async fn run_status(c: &mut Control, run_id: &str) -> Result<RunStatus, tonic::Status> {
    c.status(StatusRequest {
        run_id: run_id.to_string(),
    })
    .await
    .map(tonic::Response::into_inner)
}

/// Length of a full run id (`00mx5bov8n-wpl45j`): shorter is a prefix.
const RUN_ID_LEN: usize = 17;

/// Most runs a prefix is matched against (newest first).
const PREFIX_SCAN: usize = 100_000;

/// A run as the user named it: a full id as is; `latest` or `-` for the
/// most recent run on this server; a unique prefix of an id for that run;
/// an ambiguous prefix is an error listing the candidates.
pub async fn resolve_run(server: &str, given: String) -> CliResult<String> {
    let given = given.trim();
    let latest = given == "latest" || given == "-";
    if !latest && given.len() >= RUN_ID_LEN {
        return Ok(given.to_string());
    }
    if given.is_empty() {
        return Err(CliError::usage("empty run id"));
    }
    let mut c = control(server).await?;
    let mut req = ListRunsRequest {
        limit: if latest { 1 } else { 1_000 },
        ..Default::default()
    };
    let (mut seen, mut found) = (0usize, Vec::new());
    loop {
        let page = c.list_runs(req.clone()).await?.into_inner();
        seen += page.runs.len();
        for r in &page.runs {
            let id = r
                .spec
                .as_ref()
                .map(|s| s.run_id.as_str())
                .unwrap_or_default();
            if latest || id.starts_with(given) {
                found.push(id.to_string());
            }
        }
        if latest || page.next_page_token.is_empty() || seen >= PREFIX_SCAN || found.len() > 10 {
            break;
        }
        req.page_token = page.next_page_token;
    }
    if found.iter().any(|f| f == given) {
        return Ok(given.to_string());
    }
    match found.as_slice() {
        [one] => Ok(one.clone()),
        [] if latest => Err(CliError::usage(format!("no runs on {server} yet"))),
        [] => Err(CliError::usage(format!(
            "no run id starts with {given:?} (`ttgctl runs` lists them)"
        ))),
        many => Err(CliError::usage(format!(
            "run id prefix {given:?} is ambiguous: it matches {}{}; give more characters",
            many.iter().take(10).cloned().collect::<Vec<_>>().join(", "),
            if many.len() > 10 { ", …" } else { "" }
        ))),
    }
}
