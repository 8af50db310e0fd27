//! `mode=chunk`: the program runs once per chunk. Environment
//! `TTG_PARAM_START`, `TTG_PARAM_END` (exclusive), `TTG_RUN_ID`,
//! `TTG_CHUNK_INDEX`, `TTG_ATTEMPT`; the parameters one per line on stdin;
//! one number per parameter on stdout, in order. A non-zero exit, malformed
//! or short output, or a run past `timeout_s` fails the attempt with the
//! tail of stderr as the error. The program's process group is killed when
//! the chunk ends, whatever the outcome.
//!
//! A run with a named space or outputs: `TTG_AXES` and `TTG_OUTPUTS` name
//! them (comma-separated); stdin has one JSON object per point (axis name
//! → value) instead of the index; stdout has, per point in order, one
//! number per output in `TTG_OUTPUTS` order. A chunk of one point also
//! gets each coordinate as `TTG_AXIS_<name>` (SLURM-array style).

use std::path::Path;
use std::process::Stdio;
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio_util::sync::CancellationToken;

use super::{tail, ExecError};
use crate::kernels::{ChunkInput, KernelError};
use crate::sys::ProcessGroup;

/// Run `path` over the chunk.
pub(super) async fn compute(
    path: &Path,
    argv: &[String],
    timeout: Duration,
    chunk: &ChunkInput,
    cancel: &CancellationToken,
) -> Result<Vec<f64>, KernelError> {
    let n = (chunk.end - chunk.start) as usize;
    let k = chunk.outputs();
    let (mut child, group) = spawn(path, argv, chunk)?;
    let limit = (n * k) as u64 * 64 + 4_096;
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
    let values = judge(path, status, out, &err, n * k, limit)?;
    Ok(by_output(values, chunk))
}

/// Point after point (each point's outputs together, as programs print
/// them) → output after output (as kernels return them).
fn by_output(values: Vec<f64>, chunk: &ChunkInput) -> Vec<f64> {
    let (n, k) = (chunk.len(), chunk.outputs());
    if k == 1 {
        return values;
    }
    let mut out = vec![0.0; n * k];
    for (j, v) in values.into_iter().enumerate() {
        out[(j % k) * n + j / k] = v;
    }
    out
}

/// Start the program in its own process group (killed when the guard
/// drops, and when the agent dies), with the chunk in its environment.
fn spawn(
    path: &Path,
    argv: &[String],
    chunk: &ChunkInput,
) -> Result<(tokio::process::Child, ProcessGroup), KernelError> {
    let mut cmd = tokio::process::Command::new(path);
    cmd.args(argv)
        .env("TTG_PARAM_START", chunk.start.to_string())
        .env("TTG_PARAM_END", chunk.end.to_string())
        .env("TTG_RUN_ID", &chunk.run_id)
        .env("TTG_CHUNK_INDEX", chunk.chunk_index.to_string())
        .env("TTG_ATTEMPT", chunk.attempt.to_string())
        .env("TTG_MODE", "chunk")
        .env("TTG_OUTPUTS", chunk.output_names().join(","))
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true);
    if chunk.named_space().is_some() {
        let names = chunk.axis_names();
        cmd.env("TTG_AXES", names.join(","));
        if chunk.len() == 1 {
            for (n, v) in names.iter().zip(chunk.points().next().unwrap_or_default()) {
                cmd.env(format!("TTG_AXIS_{n}"), v.to_string());
            }
        }
    }
    crate::sys::own_group_dies_with_agent(&mut cmd);
    let child = cmd
        .spawn()
        .map_err(|e| KernelError::Failed(format!("cannot start {}: {e}", path.display())))?;
    let group = ProcessGroup::of(child.id());
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
    let mut buf = Vec::with_capacity(chunk.len() * 8);
    if chunk.named_space().is_some() {
        let names = chunk.axis_names();
        for p in chunk.points() {
            // Serialising a JSON value into a Vec cannot fail.
            let _ = serde_json::to_writer(&mut buf, &super::protocol::point_json(&names, p));
            buf.push(b'\n');
        }
    } else {
        for p in chunk.start..chunk.end {
            buf.extend_from_slice(p.to_string().as_bytes());
            buf.push(b'\n');
        }
    }
    let feed = async move {
        if let Some(mut w) = stdin.take() {
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
            "more than {limit} bytes on stdout for {n} values"
        )));
    }
    parse_output(&out, n).map_err(|e| KernelError::Failed(format!("{e}; {}", tail(err))))
}

/// Parse one number per parameter.
fn parse_output(out: &[u8], n: usize) -> Result<Vec<f64>, ExecError> {
    let text = std::str::from_utf8(out).map_err(|_| ExecError("output is not UTF-8".into()))?;
    let mut values = Vec::with_capacity(n);
    for (i, word) in text.split_whitespace().enumerate() {
        if i >= n {
            return Err(ExecError(format!(
                "more than {n} values on stdout (one per parameter and output expected)"
            )));
        }
        let v: f64 = word
            .parse()
            .ok()
            .filter(|v: &f64| v.is_finite())
            .ok_or_else(|| {
                ExecError(format!(
                    "malformed output: value {} is {:?}, not a finite number",
                    i + 1,
                    super::shown(word)
                ))
            })?;
        values.push(v);
    }
    if values.len() < n {
        return Err(ExecError(format!(
            "short output: {} values on stdout, {n} expected (one per parameter and output)",
            values.len()
        )));
    }
    Ok(values)
}

#[cfg(test)]
mod tests {
    use super::*;

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
        assert!(parse_output(b"1\nnan\n3\n", 3)
            .unwrap_err()
            .to_string()
            .contains("value 2 is \"nan\", not a finite number"));
        assert!(parse_output(b"1e999\n", 1).is_err());
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
            let _ = super::super::words::split_words(&s);
            if let Ok(v) = parse_output(&out, n) {
                prop_assert_eq!(v.len(), n);
            }
        }
    }
}
