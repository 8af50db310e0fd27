//! Connecting to the server and turning failures into one clear line and the
//! documented exit code: 1 run failed or cancelled, 2 usage error (including
//! a request the server rejected), 3 server unavailable.

use std::fmt;
use std::time::Duration;

use tonic::service::interceptor::InterceptedService;
use tonic::transport::Channel;
use tonic::{Code, Status};
use ttg_proto::client::{Bearer, ConnectOpts};
use ttg_proto::v1::control_plane_client::ControlPlaneClient;
use ttg_proto::v1::{RunStatus, StatusRequest};

/// Exit code: success.
pub const EXIT_OK: i32 = 0;
/// Exit code: the run failed or was cancelled (or another failure).
pub const EXIT_FAILED: i32 = 1;
/// Exit code: bad usage or a rejected request.
pub const EXIT_USAGE: i32 = 2;
/// Exit code: the server (or its Redis) is unavailable.
pub const EXIT_UNAVAILABLE: i32 = 3;

/// An error with the exit code it maps to.
#[derive(Debug)]
pub struct CliError {
    /// Process exit code.
    pub code: i32,
    /// One line for a person.
    pub message: String,
}

impl CliError {
    /// A usage error (exit 2).
    pub fn usage(message: impl Into<String>) -> Self {
        Self {
            code: EXIT_USAGE,
            message: message.into(),
        }
    }
    /// A failure (exit 1).
    pub fn failed(message: impl Into<String>) -> Self {
        Self {
            code: EXIT_FAILED,
            message: message.into(),
        }
    }
    /// Server unavailable (exit 3).
    pub fn unavailable(message: impl Into<String>) -> Self {
        Self {
            code: EXIT_UNAVAILABLE,
            message: message.into(),
        }
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
        match s.code() {
            Code::InvalidArgument
            | Code::NotFound
            | Code::FailedPrecondition
            | Code::AlreadyExists
            | Code::OutOfRange => CliError::usage(msg),
            Code::Unavailable | Code::DeadlineExceeded => {
                CliError::unavailable(format!("server unavailable: {msg}"))
            }
            Code::Unauthenticated => CliError::usage(format!(
                "not authenticated: {msg} (give --token or TTG_TOKEN; `ttgctl up` saves its cluster's token in ~/.ttg/token)"
            )),
            Code::PermissionDenied => CliError::usage(format!("not allowed: {msg}")),
            Code::ResourceExhausted => CliError::failed(format!("limit reached: {msg}")),
            _ => CliError::failed(format!("server error ({:?}): {msg}", s.code())),
        }
    }
}

impl From<std::io::Error> for CliError {
    fn from(e: std::io::Error) -> Self {
        CliError::failed(format!("i/o error: {e}"))
    }
}

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

/// Where `ttgctl up` leaves its cluster's client token, and where ttgctl
/// looks when neither --token nor TTG_TOKEN is given.
pub fn token_file() -> Option<std::path::PathBuf> {
    std::env::var_os("HOME").map(|h| std::path::Path::new(&h).join(".ttg").join("token"))
}

/// The token from `token_file`, if any.
pub fn saved_token() -> Option<String> {
    std::fs::read_to_string(token_file()?)
        .ok()
        .map(|s| s.trim().to_string())
        .filter(|s| !s.is_empty())
}

/// A ControlPlane client as ttgctl uses it (bearer token on every call).
pub type Control = ControlPlaneClient<InterceptedService<Channel, Bearer>>;

/// A channel to `server`, connected now so a dead server is reported at once.
pub async fn channel(server: &str) -> CliResult<Channel> {
    let ep = ttg_proto::client::endpoint(server, &connect_opts())
        .map_err(|e| CliError::usage(format!("--server: {e}")))?
        .connect_timeout(Duration::from_secs(3));
    ep.connect().await.map_err(|_| {
        CliError::unavailable(format!(
            "cannot reach the TTG server at {server}: is it running? (start a local one with `ttgctl up`, or set --server / TTG_SERVER)"
        ))
    })
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
