//! One running worker program (`mode=worker`): started in its own process
//! group, greeted with the handshake, then fed chunks one at a time over
//! the worker protocol. Its stderr goes to the agent's log, line by line,
//! with the run id and the chunk in flight; the last [`STDERR_TAIL`] bytes
//! are kept for error messages.

use std::collections::VecDeque;
use std::path::PathBuf;
use std::process::Stdio;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::process::{Child, ChildStdin, ChildStdout};
use tokio::task::JoinHandle;

use super::protocol::{self, FromProgram, ToProgram, VERSION};
use super::STDERR_TAIL;
use crate::kernels::ChunkInput;
use crate::sys::ProcessGroup;

/// Longest stdout line accepted besides the values (an error's traceback).
const LINE_SLACK: u64 = 1 << 20;
/// Longest stderr line logged as one record.
const LOG_LINE: usize = 4_096;

/// What identifies the programs that may serve a chunk: the same run, and
/// the same `program` and `args` arguments as submitted (a warm program is
/// found without resolving the path again; every start resolves it and
/// checks the allow-list).
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Key {
    /// The run served.
    pub run_id: String,
    /// The `program` argument.
    pub program: String,
    /// The `args` argument.
    pub args: String,
}

/// Why serving a chunk failed.
#[derive(Debug)]
pub enum Served {
    /// The user's code reported an error for this chunk; the program still
    /// speaks the protocol and serves the next chunk.
    ChunkFailed(String),
    /// The program crashed or broke the protocol: it is killed, and the
    /// next chunk gets a fresh one.
    Broken(String),
}

/// A live worker program.
pub struct Program {
    /// Which chunks it may serve.
    pub key: Key,
    /// The canonical path started.
    path: PathBuf,
    pid: u32,
    child: Child,
    stdin: ChildStdin,
    stdout: BufReader<ChildStdout>,
    stderr: Stderr,
    line: Vec<u8>,
    /// Last in the struct: the group is killed after the pipes close.
    _group: ProcessGroup,
}

/// The stderr pump: logs each line, keeps the tail.
struct Stderr {
    tail: Arc<Mutex<VecDeque<u8>>>,
    chunk: Arc<Mutex<Option<u64>>>,
    pump: JoinHandle<()>,
}

impl Program {
    /// Start `path` (the resolved, allowed `key.program`) with `argv` and
    /// complete the handshake within `within`.
    pub async fn start(
        key: Key,
        path: PathBuf,
        argv: &[String],
        within: Duration,
        chunk: &ChunkInput,
    ) -> Result<Program, String> {
        let mut cmd = tokio::process::Command::new(&path);
        cmd.args(argv)
            .env("TTG_RUN_ID", &key.run_id)
            .env("TTG_MODE", "worker")
            .env("TTG_PROTOCOL", VERSION.to_string())
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .kill_on_drop(true);
        crate::sys::own_group_dies_with_agent(&mut cmd);
        let mut child = cmd
            .spawn()
            .map_err(|e| format!("cannot start {}: {e}", path.display()))?;
        let group = ProcessGroup::of(child.id());
        let pid = child.id().unwrap_or(0);
        let (Some(stdin), Some(stdout), Some(stderr)) =
            (child.stdin.take(), child.stdout.take(), child.stderr.take())
        else {
            return Err("the program's pipes could not be opened".into());
        };
        let stderr = Stderr::pump(stderr, &key.run_id, pid);
        let mut p = Program {
            key,
            path,
            pid,
            child,
            stdin,
            stdout: BufReader::with_capacity(64 * 1024, stdout),
            stderr,
            line: Vec::with_capacity(4_096),
            _group: group,
        };
        let axes = chunk.named_space().map(|_| chunk.axis_names());
        let outputs = chunk.sweep.as_ref().map(|s| s.outputs.clone());
        match tokio::time::timeout(within, p.handshake(axes, outputs)).await {
            Ok(Ok(())) => Ok(p),
            Ok(Err(e)) => Err(e),
            Err(_) => Err(format!(
                "{} did not answer the handshake within {:.3} s (start_timeout_s); process group killed. \
                 A worker must read {{\"type\":\"hello\",…}} on stdin and answer {{\"type\":\"ready\",\"protocol\":{VERSION}}} \
                 on stdout (docs/kernels.md); {}",
                p.path.display(),
                within.as_secs_f64(),
                p.stderr.tail()
            )),
        }
    }

    /// Process id of the program (its process group id too).
    pub fn pid(&self) -> u32 {
        self.pid
    }

    async fn handshake(
        &mut self,
        axes: Option<Vec<String>>,
        outputs: Option<Vec<String>>,
    ) -> Result<(), String> {
        let hello = ToProgram::Hello {
            protocol: VERSION,
            run_id: &self.key.run_id,
            axes,
            outputs,
        };
        if let Err(e) = self.send(&hello.line()).await {
            return Err(self.ended("before the handshake", &e).await);
        }
        match self.receive(LINE_SLACK).await? {
            Some(FromProgram::Ready { protocol }) if protocol == VERSION => Ok(()),
            Some(FromProgram::Ready { protocol }) => Err(format!(
                "{} speaks worker protocol {protocol}; this agent speaks {VERSION}",
                self.path.display()
            )),
            Some(FromProgram::Error { error, .. }) => Err(format!(
                "{} failed to start: {}",
                self.path.display(),
                bounded(&error)
            )),
            Some(other) => Err(format!(
                "{} answered the handshake with {other:?}, not {{\"type\":\"ready\",\"protocol\":{VERSION}}}",
                self.path.display()
            )),
            None => Err(self.ended("before the handshake", "").await),
        }
    }

    /// Serve one chunk. Cancel-safe in the sense that matters: a caller
    /// that stops waiting (timeout, cancel) must drop the program.
    pub async fn serve(&mut self, chunk: &ChunkInput) -> Result<Vec<f64>, Served> {
        if let Ok(mut c) = self.stderr.chunk.lock() {
            *c = Some(chunk.chunk_index);
        }
        let points = chunk.named_space().map(|_| {
            let names = chunk.axis_names();
            chunk
                .points()
                .map(|p| protocol::point_json(&names, p))
                .collect()
        });
        let msg = ToProgram::Chunk {
            chunk: chunk.chunk_index,
            attempt: chunk.attempt,
            start: chunk.start,
            end: chunk.end,
            points,
        };
        if let Err(e) = self.send(&msg.line()).await {
            return Err(Served::Broken(
                self.ended(&format!("during chunk {}", chunk.chunk_index), &e)
                    .await,
            ));
        }
        let n = chunk.end - chunk.start;
        let reply = self
            .receive(n * 64 * chunk.outputs() as u64 + LINE_SLACK)
            .await
            .map_err(Served::Broken)?;
        match reply {
            Some(FromProgram::Result {
                chunk: c,
                values,
                outputs,
            }) if c == chunk.chunk_index => {
                protocol::assemble(chunk, values, outputs).map_err(Served::ChunkFailed)
            }
            Some(FromProgram::Error { chunk: c, error })
                if c.is_none() || c == Some(chunk.chunk_index) =>
            {
                Err(Served::ChunkFailed(bounded(&error)))
            }
            Some(other) => Err(Served::Broken(format!(
                "worker answered chunk {} with {other:?}",
                chunk.chunk_index
            ))),
            None => Err(Served::Broken(
                self.ended(&format!("during chunk {}", chunk.chunk_index), "")
                    .await,
            )),
        }
    }

    async fn send(&mut self, line: &[u8]) -> Result<(), String> {
        self.stdin
            .write_all(line)
            .await
            .map_err(|e| format!("writing to its stdin: {e}"))?;
        self.stdin
            .flush()
            .await
            .map_err(|e| format!("writing to its stdin: {e}"))
    }

    /// The next message, None at end of output. Blank lines are skipped;
    /// anything else that is not a message breaks the protocol.
    async fn receive(&mut self, limit: u64) -> Result<Option<FromProgram>, String> {
        loop {
            self.line.clear();
            let read = (&mut self.stdout)
                .take(limit + 1)
                .read_until(b'\n', &mut self.line)
                .await
                .map_err(|e| format!("reading its stdout: {e}"))?;
            if read == 0 {
                return Ok(None);
            }
            if self.line.last() != Some(&b'\n') && read as u64 > limit {
                return Err(format!(
                    "worker printed a line longer than {limit} bytes on stdout"
                ));
            }
            let line = self.line.trim_ascii();
            if line.is_empty() {
                continue;
            }
            return protocol::parse(line).map(Some).map_err(|e| {
                format!(
                    "worker broke the protocol on stdout: {e} (print to stderr, or use a TTG library, which does)"
                )
            });
        }
    }

    /// Describe how the program ended (it closed stdout or its stdin):
    /// exit status and the tail of stderr.
    async fn ended(&mut self, when: &str, io: &str) -> String {
        let status = tokio::time::timeout(Duration::from_secs(1), self.child.wait()).await;
        // Let the pump read what stderr still holds.
        let _ = tokio::time::timeout(Duration::from_millis(500), &mut self.stderr.pump).await;
        let how = match status {
            Ok(Ok(s)) => format!("exited with {s}"),
            _ if io.is_empty() => "closed its stdout".to_string(),
            _ => format!("closed its stdout ({io})"),
        };
        format!(
            "worker {} (pid {}) {how} {when}; {}",
            self.path.display(),
            self.pid,
            self.stderr.tail()
        )
    }

    /// Stop gracefully: close stdin (the program's cue to exit), wait up to
    /// `grace`, then kill the process group.
    pub async fn stop(mut self, grace: Duration) {
        let Program {
            stdin,
            ref mut child,
            ..
        } = self;
        drop(stdin);
        let _ = tokio::time::timeout(grace, child.wait()).await;
        // Dropping `self.group` kills whatever is left.
    }
}

impl Stderr {
    fn pump(stderr: tokio::process::ChildStderr, run_id: &str, pid: u32) -> Stderr {
        let tail = Arc::new(Mutex::new(VecDeque::with_capacity(STDERR_TAIL)));
        let chunk = Arc::new(Mutex::new(None::<u64>));
        let (t, c, run) = (tail.clone(), chunk.clone(), run_id.to_string());
        let pump = tokio::spawn(async move {
            let mut r = BufReader::new(stderr);
            let mut line = Vec::new();
            loop {
                line.clear();
                match (&mut r)
                    .take(LOG_LINE as u64)
                    .read_until(b'\n', &mut line)
                    .await
                {
                    Ok(0) | Err(_) => return,
                    Ok(_) => {}
                }
                if let Ok(mut t) = t.lock() {
                    t.extend(line.iter().copied());
                    let over = t.len().saturating_sub(STDERR_TAIL);
                    t.drain(..over);
                }
                let chunk = c.lock().ok().and_then(|c| *c);
                let text = String::from_utf8_lossy(&line);
                tracing::info!(target: "ttg_agent::exec", run = %run, chunk = ?chunk, pid,
                    "worker stderr: {}", text.trim_end());
            }
        });
        Stderr { tail, chunk, pump }
    }

    fn tail(&self) -> String {
        let bytes: Vec<u8> = self
            .tail
            .lock()
            .map(|t| t.iter().copied().collect())
            .unwrap_or_default();
        super::tail(&bytes)
    }
}

/// An error text from the program, bounded for the chunk's error.
fn bounded(s: &str) -> String {
    const MAX: usize = 8_192;
    if s.len() <= MAX {
        return s.trim_end().to_string();
    }
    let mut cut = s.len() - MAX;
    while !s.is_char_boundary(cut) {
        cut += 1;
    }
    format!("…{}", s[cut..].trim_end())
}
