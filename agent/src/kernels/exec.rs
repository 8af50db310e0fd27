//! `exec`: runs the user's own program once per chunk, so a real algorithm
//! plugs in without rebuilding TTG.
//!
//! Contract with the program: argv from the `args` argument (split like a
//! shell would, never run by one); environment `TTG_PARAM_START`,
//! `TTG_PARAM_END` (exclusive), `TTG_RUN_ID`, `TTG_CHUNK_INDEX`,
//! `TTG_ATTEMPT`; the parameters one per line on stdin; one number per
//! parameter on stdout, in order. A non-zero exit, malformed or short output,
//! or a run past `timeout_s` fails the attempt with the tail of stderr as the
//! error. The program runs in its own process group, which is killed on
//! timeout, cancel, agent drain timeout, or when the agent dies.

use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio_util::sync::CancellationToken;
use ttg_proto::kernels::{float_arg, text_arg, KernelSpec, EXEC};

use super::{ChunkInput, ComputeFuture, Kernel, KernelError};

/// Bytes of stderr kept for the error message.
const STDERR_TAIL: usize = 2_048;

/// The exec kernel, with the programs it may run.
pub struct Exec {
    /// Allowed program paths (files, or directories containing them),
    /// canonical; empty means any program.
    allow: Vec<PathBuf>,
}

impl Exec {
    /// An exec kernel that runs only programs under `allow` (any if empty).
    pub fn new(allow: Vec<PathBuf>) -> Self {
        Self { allow }
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
}

/// Split `s` into words like a POSIX shell would (whitespace, '…', "…",
/// backslash escapes), without expanding anything.
pub fn split_words(s: &str) -> Result<Vec<String>, ExecError> {
    let mut words = Vec::new();
    let mut cur = String::new();
    let mut in_word = false;
    let mut chars = s.chars();
    while let Some(c) = chars.next() {
        match c {
            c if c.is_whitespace() => {
                if in_word {
                    words.push(std::mem::take(&mut cur));
                    in_word = false;
                }
            }
            '\'' => {
                in_word = true;
                loop {
                    match chars.next() {
                        Some('\'') => break,
                        Some(c) => cur.push(c),
                        None => return Err(ExecError("unbalanced ' in args".into())),
                    }
                }
            }
            '"' => {
                in_word = true;
                loop {
                    match chars.next() {
                        Some('"') => break,
                        Some('\\') => match chars.next() {
                            Some(c @ ('"' | '\\' | '$' | '`')) => cur.push(c),
                            Some(c) => {
                                cur.push('\\');
                                cur.push(c);
                            }
                            None => return Err(ExecError("unbalanced \" in args".into())),
                        },
                        Some(c) => cur.push(c),
                        None => return Err(ExecError("unbalanced \" in args".into())),
                    }
                }
            }
            '\\' => {
                in_word = true;
                match chars.next() {
                    Some(c) => cur.push(c),
                    None => return Err(ExecError("trailing backslash in args".into())),
                }
            }
            c => {
                in_word = true;
                cur.push(c);
            }
        }
    }
    if in_word {
        words.push(cur);
    }
    Ok(words)
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

/// Parse one number per parameter.
fn parse_output(out: &[u8], n: usize) -> Result<Vec<f64>, ExecError> {
    let text = std::str::from_utf8(out).map_err(|_| ExecError("output is not UTF-8".into()))?;
    let mut values = Vec::with_capacity(n);
    for (i, word) in text.split_whitespace().enumerate() {
        if i >= n {
            return Err(ExecError(format!(
                "more than {n} values on stdout (one per parameter expected)"
            )));
        }
        let v: f64 = word.parse().map_err(|_| {
            ExecError(format!(
                "malformed output: value {} is {word:?}, not a number",
                i + 1
            ))
        })?;
        values.push(v);
    }
    if values.len() < n {
        return Err(ExecError(format!(
            "short output: {} values on stdout for {n} parameters",
            values.len()
        )));
    }
    Ok(values)
}

fn tail(bytes: &[u8]) -> String {
    let start = bytes.len().saturating_sub(STDERR_TAIL);
    let s = String::from_utf8_lossy(&bytes[start..]).trim().to_string();
    if s.is_empty() {
        "(stderr empty)".into()
    } else {
        format!("stderr: {s}")
    }
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
            let argv = split_words(text_arg(&EXEC, &chunk.args, "args").map_err(bad)?)?;
            let timeout =
                Duration::from_secs_f64(float_arg(&EXEC, &chunk.args, "timeout_s").map_err(bad)?);
            let path = self.resolve(program)?;
            let n = (chunk.end - chunk.start) as usize;

            let (mut child, group) = spawn(&path, &argv, chunk)?;
            let limit = (n as u64) * 64 + 4_096;
            let (out, err, status) = tokio::select! {
                r = exchange(&mut child, chunk, limit) => r,
                _ = tokio::time::sleep(timeout) => {
                    drop(group);
                    return Err(KernelError::Failed(format!(
                        "timed out after {:.3} s (timeout_s); process group killed", timeout.as_secs_f64()
                    )));
                }
                _ = cancel.cancelled() => {
                    drop(group);
                    return Err(KernelError::Cancelled);
                }
            };
            // Whatever the program left running in its group goes too.
            drop(group);
            judge(&path, status, out, &err, n, limit)
        })
    }
}

/// Start the program in its own process group (killed when the guard
/// drops, and when the agent dies), with the chunk in its environment.
fn spawn(
    path: &Path,
    argv: &[String],
    chunk: &ChunkInput,
) -> Result<(tokio::process::Child, GroupGuard), KernelError> {
    let mut cmd = tokio::process::Command::new(path);
    cmd.args(argv)
        .env("TTG_PARAM_START", chunk.start.to_string())
        .env("TTG_PARAM_END", chunk.end.to_string())
        .env("TTG_RUN_ID", &chunk.run_id)
        .env("TTG_CHUNK_INDEX", chunk.chunk_index.to_string())
        .env("TTG_ATTEMPT", chunk.attempt.to_string())
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true);
    crate::sys::own_group_dies_with_agent(&mut cmd);
    let child = cmd
        .spawn()
        .map_err(|e| KernelError::Failed(format!("cannot start {}: {e}", path.display())))?;
    let group = scopeguard(child.id());
    Ok((child, group))
}

/// Feed the parameters on stdin, read stdout (at most `limit` + 1 bytes)
/// and stderr (at most 1 MiB), and wait for the exit.
async fn exchange(
    child: &mut tokio::process::Child,
    chunk: &ChunkInput,
    limit: u64,
) -> (
    std::io::Result<Vec<u8>>,
    Vec<u8>,
    std::io::Result<std::process::ExitStatus>,
) {
    let mut stdin = child.stdin.take();
    let (start, end) = (chunk.start, chunk.end);
    let feed = async move {
        if let Some(mut w) = stdin.take() {
            let mut buf = Vec::with_capacity(((end - start) as usize) * 8);
            for p in start..end {
                buf.extend_from_slice(p.to_string().as_bytes());
                buf.push(b'\n');
            }
            // A program may exit without reading all of stdin; that is
            // judged by its output, not by a broken pipe here.
            let _ = w.write_all(&buf).await;
            let _ = w.shutdown().await;
        }
    };
    let stdout = child.stdout.take();
    let read_out = async move {
        let mut out = Vec::new();
        if let Some(r) = stdout {
            r.take(limit + 1).read_to_end(&mut out).await.map(|_| out)
        } else {
            Ok(out)
        }
    };
    let stderr = child.stderr.take();
    let read_err = async move {
        let mut err = Vec::new();
        if let Some(r) = stderr {
            let _ = r.take(1 << 20).read_to_end(&mut err).await;
        }
        err
    };
    let (_, out, err, status) = tokio::join!(feed, read_out, read_err, child.wait());
    (out, err, status)
}

/// The values, or why the program's run is a failed attempt.
fn judge(
    path: &Path,
    status: std::io::Result<std::process::ExitStatus>,
    out: std::io::Result<Vec<u8>>,
    err: &[u8],
    n: usize,
    limit: u64,
) -> Result<Vec<f64>, KernelError> {
    let status =
        status.map_err(|e| KernelError::Failed(format!("waiting for the program: {e}")))?;
    let out = out.map_err(|e| KernelError::Failed(format!("reading stdout: {e}")))?;
    if !status.success() {
        return Err(KernelError::Failed(format!(
            "{} exited with {status}; {}",
            path.display(),
            tail(err)
        )));
    }
    if out.len() as u64 > limit {
        return Err(KernelError::Failed(format!(
            "more than {limit} bytes on stdout for {n} parameters"
        )));
    }
    parse_output(&out, n).map_err(|e| KernelError::Failed(format!("{e}; {}", tail(err))))
}

/// Kills the process group when dropped.
struct GroupGuard(Option<u32>);

impl Drop for GroupGuard {
    fn drop(&mut self) {
        if let Some(pgid) = self.0 {
            crate::sys::kill_group(pgid);
        }
    }
}

fn scopeguard(pgid: Option<u32>) -> GroupGuard {
    GroupGuard(pgid)
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn words_split_like_a_shell_without_one() {
        assert_eq!(split_words("").unwrap(), Vec::<String>::new());
        assert_eq!(split_words(" a  b ").unwrap(), vec!["a", "b"]);
        assert_eq!(
            split_words(r#"--name "a b" 'c d' e\ f"#).unwrap(),
            vec!["--name", "a b", "c d", "e f"]
        );
        assert_eq!(
            split_words(r#""say \"hi\"" ''"#).unwrap(),
            vec![r#"say "hi""#, ""]
        );
        assert_eq!(split_words("$HOME;rm").unwrap(), vec!["$HOME;rm"]);
        assert!(split_words("'open").is_err());
        assert!(split_words("\"open").is_err());
    }

    #[test]
    fn output_is_one_number_per_parameter() {
        assert_eq!(
            parse_output(b"1\n2.5\n-3e2\n", 3).unwrap(),
            vec![1.0, 2.5, -300.0]
        );
        assert!(parse_output(b"1\n2\n", 3)
            .unwrap_err()
            .to_string()
            .contains("short output: 2 values"));
        assert!(parse_output(b"1\nx\n3\n", 3)
            .unwrap_err()
            .to_string()
            .contains("value 2 is \"x\""));
        assert!(parse_output(b"1 2 3 4", 3)
            .unwrap_err()
            .to_string()
            .contains("more than 3"));
    }
}

#[cfg(test)]
mod fuzz {
    use super::*;
    use proptest::prelude::*;

    proptest! {
        #![proptest_config(ProptestConfig { cases: 2_000, ..ProptestConfig::default() })]

        /// Users' `args` strings and programs' stdout: anything gives words
        /// or an error, never a panic; output parsing never yields more or
        /// fewer values than asked without an error.
        #[test]
        fn splitting_and_output_parsing_never_panic(s in ".{0,200}", out in proptest::collection::vec(any::<u8>(), 0..300), n in 0usize..20) {
            let _ = split_words(&s);
            if let Ok(v) = parse_output(&out, n) {
                prop_assert_eq!(v.len(), n);
            }
        }
    }
}
