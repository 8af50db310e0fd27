//! `ttg-agent`: TTG's worker.
//!
//! Modules, in reading order:
//! - [`config`]: flags and their defaults.
//! - [`kernels`]: the `Kernel` trait, the registry, one file per kernel
//!   (`placeholder`, `collatz`, `exec`).
//! - [`worker`]: the claim loop — XREADGROUP, compute, atomic completion.
//! - [`session`]: the gRPC session to the server (the agent's lease).
//!
//! [`run`] ties them together: claim until `shutdown`, then drain (finish what
//! is held, bounded by the drain timeout), say Bye, return.

pub mod config;
pub mod kernels;
pub mod metrics_help;
pub mod session;
pub(crate) mod sys;
pub mod worker;

use std::sync::{Arc, Mutex};

use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

pub use config::Config;

/// The sweep takes entries idle for this many leases (15 s at the default
/// 3 s lease): live agents refresh theirs every half lease, so only a dead
/// agent's entries get that old.
pub const SWEEP_IDLE_LEASES: u32 = 5;

/// Why the agent could not run.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// Bad settings.
    #[error(transparent)]
    Config(#[from] config::ConfigError),
    /// An --exec-allow path cannot be resolved.
    #[error("--exec-allow {}: {source}", path.display())]
    ExecAllow {
        /// The path given.
        path: std::path::PathBuf,
        /// Why.
        #[source]
        source: std::io::Error,
    },
    /// --kernels names a kernel this agent does not have, or exec without --allow-exec.
    #[error("{0}")]
    Kernels(String),
    /// Redis client could not be built.
    #[error("redis: {0}")]
    Redis(#[from] redis::RedisError),
    /// The server refused the agent's token (wrong, or revoked): the agent
    /// stopped claiming and abandoned what it held (already reclaimed).
    #[error("the server refuses this agent's token (wrong or revoked); check --token / TTG_TOKEN")]
    Unauthorized,
}

/// How a run of the agent ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Exit {
    /// Every held chunk finished; said Bye.
    Drained,
    /// The drain timeout passed; unfinished chunks were left to be reclaimed.
    Abandoned,
}

/// Run the agent until `shutdown` is cancelled, then drain.
pub async fn run(config: Config, shutdown: CancellationToken) -> Result<Exit, Error> {
    config.validate()?;
    let exec = if config.allow_exec {
        Some(kernels::exec::ExecOptions {
            allow: kernels::exec::allow_list(&config.exec_allow)?,
            slots: config.effective_concurrency() as usize,
            idle_after: std::time::Duration::from_secs_f64(config.exec_idle_s),
        })
    } else {
        None
    };
    if !config.allow_exec && config.kernels.iter().any(|k| k == "exec") {
        return Err(Error::Kernels("--kernels exec needs --allow-exec".into()));
    }
    let registry = if config.kernels.is_empty() {
        kernels::Registry::builtin(exec)
    } else {
        kernels::Registry::builtin(exec)
            .only(&config.kernels)
            .map_err(|e| Error::Kernels(format!("--kernels: {e}")))?
    };
    let agent_id = config.effective_agent_id();
    let worker = Arc::new(
        worker::Worker::new(
            agent_id.clone(),
            config.redis_target()?,
            &config.prefix,
            registry,
            config.effective_concurrency(),
        )?
        .with_wait_replicas(config.redis_wait_replicas, config.redis_wait_timeout)?,
    );
    tracing::info!(agent = %agent_id, concurrency = worker.concurrency(), kernels = ?worker.kernel_names(),
        redis = %worker.redis(), server = %config.server, "ttg-agent starting");

    let session_stop = CancellationToken::new();
    let unauthorized = CancellationToken::new();
    let ending = Arc::new(Mutex::new(session::Ending::Abandon));
    let session = tokio::spawn(session::keep_session(
        config.connect_opts(),
        config.server.clone(),
        worker.clone(),
        session_stop.clone(),
        ending.clone(),
        unauthorized.clone(),
    ));
    // A refused token stops claiming at once, like a shutdown.
    let stop = shutdown.child_token();
    {
        let (stop, unauthorized) = (stop.clone(), unauthorized.clone());
        tokio::spawn(async move {
            unauthorized.cancelled().await;
            stop.cancel();
        });
    }

    // The lease keeper and the sweep run until the session ends: a draining
    // agent's entries must stay fresh while it finishes them.
    let keeper_stop = CancellationToken::new();
    let keeper = tokio::spawn(worker.clone().keep_lease(keeper_stop.clone()));
    let sweeper = tokio::spawn(worker.clone().sweep(SWEEP_IDLE_LEASES, keeper_stop.clone()));
    let kept_runs = tokio::spawn(
        worker
            .clone()
            .watch_kept_runs(std::time::Duration::from_secs(1), keeper_stop.clone()),
    );

    let tracker = TaskTracker::new();
    worker.clone().claim_loop(stop, tracker.clone()).await;
    tracker.close();
    if unauthorized.is_cancelled() {
        // No session, so the server reclaimed what we hold: stop at once.
        worker.abort();
    }
    tracing::info!(agent = %agent_id, held = worker.held().len(), timeout = ?config.drain_timeout, "draining");
    let exit = if tokio::time::timeout(config.drain_timeout, tracker.wait())
        .await
        .is_ok()
    {
        Exit::Drained
    } else {
        worker.abort();
        tracker.wait().await;
        Exit::Abandoned
    };
    if let Ok(mut e) = ending.lock() {
        *e = if exit == Exit::Drained {
            session::Ending::Bye
        } else {
            session::Ending::Abandon
        };
    }
    keeper_stop.cancel();
    let _ = tokio::join!(keeper, sweeper, kept_runs);
    // Nothing computes any more: stop worker programs (stdin closed, then
    // their process groups killed after a grace period).
    worker.shutdown_kernels().await;
    session_stop.cancel();
    let _ = session.await;
    tracing::info!(agent = %agent_id, exit = ?exit, "ttg-agent stopped");
    if unauthorized.is_cancelled() {
        return Err(Error::Unauthorized);
    }
    Ok(exit)
}
