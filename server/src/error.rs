//! The server's one error type, and its one conversion to a gRPC status.

use ttg_proto::records::DecodeError;

/// Everything that can go wrong serving a request.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The request is malformed or out of range.
    #[error("{field}: {message}")]
    InvalidArgument {
        /// Request field (e.g. `chunk_size`, `args.work_ms`).
        field: String,
        /// What is wrong and what is allowed.
        message: String,
    },
    /// No such run.
    #[error("run {0} not found")]
    RunNotFound(String),
    /// The run existed but its data was removed: its retention ended
    /// (`why` = "expired") or it was deleted.
    #[error("run {run_id} {}: its data was removed at {}", if why == "expired" { "expired (its retention ended)" } else { "was deleted" }, humantime::format_rfc3339_seconds(std::time::UNIX_EPOCH + std::time::Duration::from_millis(*at_ms)))]
    RunGone {
        /// Run id.
        run_id: String,
        /// `expired` or `deleted`.
        why: String,
        /// When its data was removed, ms since the Unix epoch.
        at_ms: u64,
    },
    /// The operation does not apply to the run's current state.
    #[error("{0}")]
    FailedPrecondition(String),
    /// Redis answered with an error or could not be reached.
    #[error("redis: {0}")]
    Redis(#[from] redis::RedisError),
    /// A Redis call did not finish within the request deadline.
    #[error("redis did not answer within {0:?}")]
    RedisTimeout(std::time::Duration),
    /// A record in Redis could not be decoded.
    #[error("corrupt record: {0}")]
    Corrupt(#[from] DecodeError),
    /// A quota was reached (runs in flight, submit rate).
    #[error("{0}")]
    ResourceExhausted(String),
    /// Redis refused a write: `used_memory` reached `maxmemory`.
    #[error("Redis is out of memory (used_memory reached maxmemory): delete finished runs (ttgctl delete RUN), shorten --run-retention, or raise Redis's maxmemory; see docs/operations.md#sizing-redis")]
    RedisFull,
    /// The server is shutting down.
    #[error("server is shutting down")]
    ShuttingDown,
    /// A tokens reload removed the token that opened this stream.
    #[error("the token that opened this stream was revoked")]
    Revoked,
    /// Start-up failed (bad listener, bad Redis URL, transport error).
    #[error("{0}")]
    Startup(String),
    /// The tokens file cannot be used.
    #[error(transparent)]
    Tokens(#[from] crate::auth::TokensError),
}

impl Error {
    /// Shorthand for [`Error::InvalidArgument`].
    pub fn invalid(field: impl Into<String>, message: impl Into<String>) -> Self {
        Error::InvalidArgument {
            field: field.into(),
            message: message.into(),
        }
    }
}

impl From<Error> for tonic::Status {
    fn from(e: Error) -> Self {
        use tonic::Status;
        match e {
            Error::InvalidArgument { .. } => Status::invalid_argument(e.to_string()),
            Error::RunNotFound(_) | Error::RunGone { .. } => Status::not_found(e.to_string()),
            Error::FailedPrecondition(_) => Status::failed_precondition(e.to_string()),
            Error::ResourceExhausted(_) => Status::resource_exhausted(e.to_string()),
            // Whether a retry can help decides the code: a dropped connection,
            // refused connect or timeout will heal when Redis is back, so the
            // client should retry (Unavailable); a Redis error reply (wrong
            // type, script error) will not, so it is Internal and logged.
            Error::Redis(ref r) if ttg_proto::redis_conn::is_oom(r) => {
                tracing::warn!(error = %r, "redis is out of memory");
                Status::resource_exhausted(Error::RedisFull.to_string())
            }
            Error::RedisFull => Status::resource_exhausted(e.to_string()),
            Error::Redis(ref r) if ttg_proto::redis_conn::is_transient(r) => {
                tracing::warn!(error = %r, "redis unavailable");
                Status::unavailable("redis is unavailable; retry later")
            }
            Error::RedisTimeout(_) => {
                tracing::warn!(error = %e, "redis timeout");
                Status::unavailable(format!("{e}; retry later"))
            }
            Error::ShuttingDown => Status::unavailable(e.to_string()),
            Error::Revoked => Status::unauthenticated(e.to_string()),
            Error::Redis(_) | Error::Corrupt(_) | Error::Startup(_) | Error::Tokens(_) => {
                tracing::error!(error = %e, "internal error");
                Status::internal("internal error; see server log")
            }
        }
    }
}

/// Result with [`Error`].
pub type Result<T, E = Error> = std::result::Result<T, E>;
