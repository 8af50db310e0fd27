//! One run's commands: `ttgctl status`, `cancel`, `retry`, `delete`, `wait`
//! and `logs`.

use std::time::{Duration, Instant};

use tokio_stream::StreamExt;
use ttg_proto::v1::{event, CancelRequest, DeleteRequest, RetryRequest, RunState, WatchRequest};

use crate::client::{self, CliError, CliResult, EXIT_FAILED, EXIT_OK};
use crate::output::{state_name, status_json, status_text, Out};

/// One run (`status`, `retry`, `delete`).
#[derive(clap::Args, Debug)]
pub struct RunArg {
    /// Run id, a unique prefix of one, or `latest` (also `-`) for the most recent run.
    pub run: String,
}

/// `ttgctl cancel`'s arguments.
#[derive(clap::Args, Debug)]
pub struct CancelArgs {
    /// Run id, a unique prefix of one, or `latest` (also `-`).
    pub run: String,
    /// Reason, recorded in the run's events and shown by `status`.
    #[arg(long, default_value = "", hide_default_value = true)]
    pub reason: String,
}

/// `ttgctl wait`'s arguments.
#[derive(clap::Args, Debug)]
pub struct WaitArgs {
    /// Run id, a unique prefix of one, or `latest` (also `-`).
    pub run: String,
    /// Give up after this long (e.g. 90s, 2h) with exit code 4; the run goes on [default: wait for ever].
    #[arg(long, value_parser = humantime::parse_duration)]
    pub timeout: Option<Duration>,
}

/// `ttgctl logs`'s arguments.
#[derive(clap::Args, Debug)]
pub struct LogsArgs {
    /// Run id, a unique prefix of one, or `latest` (also `-`).
    pub run: String,
    /// Only this chunk's attempts.
    #[arg(long, value_name = "N")]
    pub chunk: Option<u64>,
    /// Only the attempts that failed for good (their chunk was dead-lettered).
    #[arg(long)]
    pub failed: bool,
    /// Keep printing failures as they happen, until the run ends.
    #[arg(short = 'f', long)]
    pub follow: bool,
}

/// Print one run's status.
pub async fn status(server: &str, run_id: &str, out: Out) -> CliResult<i32> {
    let mut c = client::control(server).await?;
    let st = client::run_status(&mut c, run_id).await?;
    if out.quiet {
        println!("{}", state_name(st.state));
    } else if !out.value(&status_json(&st)) {
        print!("{}", status_text(&st));
    }
    Ok(EXIT_OK)
}

/// Cancel a run.
pub async fn cancel(server: &str, run_id: &str, reason: &str, out: Out) -> CliResult<i32> {
    let mut c = client::control(server).await?;
    let r = c
        .cancel(CancelRequest {
            run_id: run_id.to_string(),
            reason: reason.to_string(),
        })
        .await?
        .into_inner();
    report(
        out,
        run_id,
        serde_json::json!({"run_id": run_id, "state": state_name(r.state)}),
        format!("run {run_id} {}", state_name(r.state)),
    )
}

/// Re-queue a run's dead chunks with fresh attempts.
pub async fn retry(server: &str, run_id: &str, out: Out) -> CliResult<i32> {
    let mut c = client::control(server).await?;
    let r = c
        .retry(RetryRequest {
            run_id: run_id.to_string(),
        })
        .await?
        .into_inner();
    report(
        out,
        run_id,
        serde_json::json!({"run_id": run_id, "chunks_requeued": r.chunks_requeued, "state": state_name(r.state)}),
        format!(
            "run {run_id}: {} chunks re-queued (dead, or stopped by fail-fast); state {}",
            r.chunks_requeued,
            state_name(r.state)
        ),
    )
}

/// Delete a finished run's data.
pub async fn delete(server: &str, run_id: &str, out: Out) -> CliResult<i32> {
    let mut c = client::control(server).await?;
    let r = c
        .delete(DeleteRequest {
            run_id: run_id.to_string(),
        })
        .await?
        .into_inner();
    report(
        out,
        run_id,
        serde_json::json!({"run_id": run_id, "deleted": true, "state": state_name(r.state)}),
        format!("run {run_id} deleted (it was {})", state_name(r.state)),
    )
}

/// Print what a command did to a run: its id with -q, the fields with
/// -o json/yaml, else `text`.
fn report(out: Out, run_id: &str, json: serde_json::Value, text: String) -> CliResult<i32> {
    if out.quiet {
        println!("{run_id}");
    } else if !out.value(&json) {
        println!("{text}");
    }
    Ok(EXIT_OK)
}

/// Wait until the run ends: exit 0 if it succeeded, 1 if it failed or was
/// cancelled, 4 on `timeout`, 130 on Ctrl-C. Prints nothing.
pub async fn wait(server: &str, run_id: &str, timeout: Option<Duration>) -> CliResult<i32> {
    let deadline = timeout.map(|t| Instant::now() + t);
    let mut c = client::control(server).await?;
    let mut pause = Duration::from_millis(100);
    let interrupted = tokio::signal::ctrl_c();
    tokio::pin!(interrupted);
    loop {
        let st = client::run_status(&mut c, run_id).await?;
        match RunState::try_from(st.state).unwrap_or(RunState::Unspecified) {
            RunState::Succeeded => return Ok(EXIT_OK),
            RunState::Failed | RunState::Cancelled => return Ok(EXIT_FAILED),
            _ => {}
        }
        let mut sleep = pause;
        if let Some(d) = deadline {
            let left = d.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return Err(CliError::timeout(format!(
                    "run {run_id} still {} after {}; it goes on",
                    state_name(st.state),
                    humantime::format_duration(timeout.unwrap_or_default())
                )));
            }
            sleep = sleep.min(left);
        }
        tokio::select! {
            _ = tokio::time::sleep(sleep) => {}
            _ = &mut interrupted => {
                return Err(CliError::interrupted(format!(
                    "stopped waiting; run {run_id} goes on (`ttgctl wait {run_id}` again, or `ttgctl watch {run_id}`)"
                )));
            }
        }
        pause = (pause * 2).min(Duration::from_secs(2));
    }
}

/// Print the run's failed attempts (from its events): chunk, attempt,
/// agent, whether it was the last, and the error with the stderr tail the
/// agent recorded.
pub async fn logs(server: &str, run_id: &str, a: &LogsArgs, out: Out) -> CliResult<i32> {
    let mut c = client::control(server).await?;
    let mut stream = c
        .watch(WatchRequest {
            run_id: run_id.to_string(),
            after_event_id: String::new(),
            no_follow: !a.follow,
        })
        .await?
        .into_inner();
    let mut shown = 0u64;
    let mut list = Vec::new();
    while let Some(ev) = stream.next().await {
        let ev = ev?;
        let Some(event::Kind::ChunkFailed(f)) = ev.kind else {
            continue;
        };
        if a.chunk.is_some_and(|n| n != f.chunk_index) || (a.failed && !f.dead) {
            continue;
        }
        shown += 1;
        let fields = serde_json::json!({
            "chunk": f.chunk_index, "attempt": f.attempt, "agent": f.agent_id,
            "dead": f.dead, "time_ms": ev.time_ms, "error": f.error,
        });
        if out.structured() {
            list.push(fields);
            continue;
        }
        let when = humantime::format_rfc3339_millis(
            std::time::UNIX_EPOCH + Duration::from_millis(ev.time_ms.max(0) as u64),
        );
        println!(
            "{when} chunk {} attempt {} on {}{}:",
            f.chunk_index,
            f.attempt,
            f.agent_id,
            if f.dead { " (dead-lettered)" } else { "" }
        );
        for line in f.error.lines() {
            println!("    {line}");
        }
    }
    if out.structured() {
        out.value(&serde_json::Value::Array(list));
    } else if shown == 0 && !out.quiet {
        eprintln!(
            "no {}failed attempts{} in run {run_id}",
            if a.failed { "dead-lettered " } else { "" },
            a.chunk
                .map(|n| format!(" of chunk {n}"))
                .unwrap_or_default()
        );
    }
    Ok(EXIT_OK)
}
