//! One run's commands: `ttgctl status`, `cancel`, `retry` and `delete`.

use ttg_proto::v1::{CancelRequest, DeleteRequest, RetryRequest};

use crate::client::{self, CliResult, EXIT_OK};
use crate::output::{state_name, status_json, status_text, Format};

/// One run, by id (`status`, `retry`, `delete`).
#[derive(clap::Args, Debug)]
pub struct RunArg {
    /// Run id.
    pub run: String,
}

/// `ttgctl cancel`'s arguments.
#[derive(clap::Args, Debug)]
pub struct CancelArgs {
    /// Run id.
    pub run: String,
    /// Reason, recorded in the run's events (default none).
    #[arg(long, default_value = "")]
    pub reason: String,
}

/// Print one run's status.
pub async fn status(server: &str, run_id: &str, format: Format) -> CliResult<i32> {
    let mut c = client::control(server).await?;
    let st = client::run_status(&mut c, run_id).await?;
    match format {
        Format::Json => println!(
            "{}",
            serde_json::to_string_pretty(&status_json(&st)).unwrap_or_default()
        ),
        _ => print!("{}", status_text(&st)),
    }
    Ok(EXIT_OK)
}

/// Cancel a run.
pub async fn cancel(server: &str, run_id: &str, reason: &str, format: Format) -> CliResult<i32> {
    let mut c = client::control(server).await?;
    let r = c
        .cancel(CancelRequest {
            run_id: run_id.to_string(),
            reason: reason.to_string(),
        })
        .await?
        .into_inner();
    report(
        format,
        serde_json::json!({"run_id": run_id, "state": state_name(r.state)}),
        format!("run {run_id} {}", state_name(r.state)),
    )
}

/// Re-queue a run's dead chunks with fresh attempts.
pub async fn retry(server: &str, run_id: &str, format: Format) -> CliResult<i32> {
    let mut c = client::control(server).await?;
    let r = c
        .retry(RetryRequest {
            run_id: run_id.to_string(),
        })
        .await?
        .into_inner();
    report(
        format,
        serde_json::json!({"run_id": run_id, "chunks_requeued": r.chunks_requeued, "state": state_name(r.state)}),
        format!(
            "run {run_id}: {} chunks re-queued (dead, or stopped by fail-fast); state {}",
            r.chunks_requeued,
            state_name(r.state)
        ),
    )
}

/// Delete a finished run's data.
pub async fn delete(server: &str, run_id: &str, format: Format) -> CliResult<i32> {
    let mut c = client::control(server).await?;
    let r = c
        .delete(DeleteRequest {
            run_id: run_id.to_string(),
        })
        .await?
        .into_inner();
    report(
        format,
        serde_json::json!({"run_id": run_id, "deleted": true, "state": state_name(r.state)}),
        format!("run {run_id} deleted (it was {})", state_name(r.state)),
    )
}

/// Print what a command did to a run: `json` with -o json, else `text`.
fn report(format: Format, json: serde_json::Value, text: String) -> CliResult<i32> {
    match format {
        Format::Json => println!("{json}"),
        _ => println!("{text}"),
    }
    Ok(EXIT_OK)
}
