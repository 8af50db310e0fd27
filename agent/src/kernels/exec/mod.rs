//! `exec`: runs the user's own program, so a real algorithm plugs in
//! without rebuilding TTG. Two modes (the `mode` argument):
//! - [`per_chunk`] (`mode=chunk`, the default): a process per chunk,
//!   parameters on stdin, one number each on stdout.
//! - worker (`mode=worker`): one process per agent slot and run, started on
//!   the first chunk that needs it ([`program`]), kept by the [`pool`],
//!   serving chunks over the NDJSON worker [`protocol`].
//!
//! Either way: argv from the `args` argument (split like a shell would,
//! never run by one, [`words`]); the canonical path checked against
//! `--exec-allow` is the one started; each program runs in its own process
//! group, killed on timeout, cancel, agent drain timeout, or when the agent
//! dies; the tail of stderr becomes the error of a failed chunk.

mod per_chunk;
pub mod pool;
pub mod program;
pub mod protocol;
pub mod words;

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio_util::sync::CancellationToken;
use ttg_proto::kernels::{choice_arg, float_arg, text_arg, KernelSpec, EXEC};

use super::{ChunkInput, ComputeFuture, Kernel, KernelError};
use pool::{Acquired, Pool};
use program::{Key, Program, Served};
pub use words::split_words;

/// Bytes of stderr kept for the error message.
const STDERR_TAIL: usize = 2_048;

/// The exec kernel, with the programs it may run and its worker programs.
pub struct Exec {
    /// Allowed program paths (files, or directories containing them),
    /// canonical; empty means any program.
    allow: Vec<PathBuf>,
    /// Worker programs (`mode=worker`).
    pool: Arc<Pool>,
}

/// How the exec kernel runs: the allow-list and the worker pool's size.
#[derive(Debug, Clone)]
pub struct ExecOptions {
    /// `--exec-allow`, canonical (empty: any program).
    pub allow: Vec<PathBuf>,
    /// Worker programs at most: the agent's concurrency.
    pub slots: usize,
    /// `--exec-idle-s`: an idle worker program stops after this long.
    pub idle_after: Duration,
}

impl Exec {
    /// An exec kernel with these options.
    pub fn new(o: ExecOptions) -> Self {
        Self {
            allow: o.allow,
            pool: Pool::new(o.slots, o.idle_after),
        }
    }

    /// Resolve `program` like execvp would (PATH for a bare name) to its
    /// canonical path (no symlink left in it), and check that against the
    /// allow-list. The caller starts exactly the returned path: starting the
    /// path as given would follow a symlink that may have been swapped
    /// since the check.
    fn resolve(&self, program: &str) -> Result<PathBuf, ExecError> {
        let path = if program.contains('/') {
            PathBuf::from(program)
        } else {
            std::env::var_os("PATH")
                .and_then(|p| {
                    std::env::split_paths(&p)
                        .map(|d| d.join(program))
                        .find(|c| c.is_file())
                })
                .ok_or_else(|| ExecError(format!("program {program:?} not found on PATH")))?
        };
        let real = path
            .canonicalize()
            .map_err(|e| ExecError(format!("program {}: {e}", path.display())))?;
        if !self.allow.is_empty() && !self.allow.iter().any(|a| real == *a || real.starts_with(a)) {
            return Err(ExecError(format!(
                "program {} is not in this agent's --exec-allow list",
                real.display()
            )));
        }
        Ok(real)
    }

    /// Start a worker program for `key` in its own `exec.start` span: the
    /// path resolved and checked against the allow-list, the handshake
    /// answered within `start_within`.
    async fn start_worker(
        &self,
        key: Key,
        start_within: Duration,
        chunk: &ChunkInput,
        cancel: &CancellationToken,
    ) -> Result<Program, KernelError> {
        let path = self.resolve(&key.program)?;
        let argv = split_words(&key.args)?;
        let span = tracing::info_span!("exec.start", otel.name = "exec.start",
            run_id = %chunk.run_id, program = %path.display());
        let began = Instant::now();
        let start = Program::start(key, path, &argv, start_within, chunk);
        let started = tokio::select! {
            r = tracing::Instrument::instrument(start, span.clone()) => r,
            _ = cancel.cancelled() => return Err(KernelError::Cancelled),
        };
        metrics::histogram!("ttg_agent_exec_worker_start_seconds")
            .record(began.elapsed().as_secs_f64());
        match started {
            Ok(p) => {
                metrics::counter!("ttg_agent_exec_workers_started_total").increment(1);
                tracing::debug!(run = %chunk.run_id, pid = p.pid(), "worker started");
                Ok(p)
            }
            Err(e) => {
                ttg_proto::telemetry::set_error(&span, &e);
                metrics::counter!("ttg_agent_exec_worker_restarts_total", "reason" => "start")
                    .increment(1);
                Err(KernelError::Failed(e))
            }
        }
    }

    /// Serve the chunk with a worker program of its run: a warm one, or one
    /// started now (its own `exec.start` span, bounded by `start_timeout_s`).
    async fn compute_in_worker(
        &self,
        key: Key,
        timeout: Duration,
        start_within: Duration,
        chunk: &ChunkInput,
        cancel: &CancellationToken,
    ) -> Result<Vec<f64>, KernelError> {
        let mut w = match self.pool.acquire(&key) {
            Acquired::Warm(w) => *w,
            Acquired::Cold(slot) => {
                let p = self.start_worker(key, start_within, chunk, cancel).await?;
                slot.with(p)
            }
        };
        let span = tracing::info_span!("exec.chunk", otel.name = "exec.chunk",
            run_id = %chunk.run_id, chunk = chunk.chunk_index, pid = w.prog.pid());
        let served = tokio::select! {
            r = tracing::Instrument::instrument(w.prog.serve(chunk), span) => Some(r),
            _ = tokio::time::sleep(timeout) => None,
            _ = cancel.cancelled() => {
                self.pool.discard(w, "cancel");
                return Err(KernelError::Cancelled);
            }
        };
        match served {
            Some(Ok(values)) => {
                self.pool.release(w);
                Ok(values)
            }
            Some(Err(Served::ChunkFailed(e))) => {
                self.pool.release(w);
                Err(KernelError::Failed(e))
            }
            Some(Err(Served::Broken(e))) => {
                self.pool.discard(w, "crash");
                Err(KernelError::Failed(e))
            }
            None => {
                let pid = w.prog.pid();
                self.pool.discard(w, "timeout");
                Err(KernelError::Failed(format!(
                    "timed out after {:.3} s (timeout_s); worker (pid {pid}) and its process group killed, the next chunk starts a fresh one",
                    timeout.as_secs_f64()
                )))
            }
        }
    }
}

/// What the exec kernel reports about a program: the message becomes the
/// chunk's error (KernelError::Failed), so it says what the program did.
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct ExecError(String);

impl From<ExecError> for KernelError {
    fn from(e: ExecError) -> Self {
        KernelError::Failed(e.0)
    }
}

/// The last [`STDERR_TAIL`] bytes of stderr, for an error message.
fn tail(bytes: &[u8]) -> String {
    let start = bytes.len().saturating_sub(STDERR_TAIL);
    let s = String::from_utf8_lossy(&bytes[start..]).trim().to_string();
    if s.is_empty() {
        "(stderr empty)".into()
    } else {
        format!("stderr: {s}")
    }
}

/// Something a program printed, shortened for an error message.
fn shown(s: &str) -> String {
    const MAX: usize = 200;
    if s.len() <= MAX {
        return s.to_string();
    }
    let mut end = MAX;
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    format!("{}…", &s[..end])
}

impl Kernel for Exec {
    fn spec(&self) -> &'static KernelSpec {
        &EXEC
    }

    fn compute<'a>(
        &'a self,
        chunk: &'a ChunkInput,
        cancel: &'a CancellationToken,
    ) -> ComputeFuture<'a> {
        Box::pin(async move {
            let bad = |e: ttg_proto::kernels::ArgError| KernelError::Failed(e.to_string());
            let program = text_arg(&EXEC, &chunk.args, "program").map_err(bad)?;
            let args = text_arg(&EXEC, &chunk.args, "args").map_err(bad)?;
            let timeout =
                Duration::from_secs_f64(float_arg(&EXEC, &chunk.args, "timeout_s").map_err(bad)?);
            match choice_arg(&EXEC, &chunk.args, "mode").map_err(bad)? {
                "worker" => {
                    let start_within = Duration::from_secs_f64(
                        float_arg(&EXEC, &chunk.args, "start_timeout_s").map_err(bad)?,
                    );
                    let key = Key {
                        run_id: chunk.run_id.clone(),
                        program: program.to_string(),
                        args: args.to_string(),
                    };
                    self.compute_in_worker(key, timeout, start_within, chunk, cancel)
                        .await
                }
                _ => {
                    let path = self.resolve(program)?;
                    let argv = split_words(args)?;
                    per_chunk::compute(&path, &argv, timeout, chunk, cancel).await
                }
            }
        })
    }

    fn runs_kept(&self) -> Vec<String> {
        self.pool.runs()
    }

    fn run_ended(&self, run_id: &str) {
        self.pool.run_ended(run_id);
    }

    fn shutdown(&self) -> super::ShutdownFuture<'_> {
        Box::pin(self.pool.shutdown())
    }
}

/// Allowed paths from `--exec-allow`, canonical.
pub fn allow_list(raw: &[String]) -> Result<Vec<PathBuf>, crate::Error> {
    raw.iter()
        .map(|p| {
            Path::new(p)
                .canonicalize()
                .map_err(|source| crate::Error::ExecAllow {
                    path: PathBuf::from(p),
                    source,
                })
        })
        .collect()
}
